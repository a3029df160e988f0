"""Helpers shared by the integration tests (real processes, real sockets)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from tests.support.daemon import mytimerd_command

#: The spec's worked example: RET_OK body of ``version`` (CBOR text "nim-timer v0.1.0").
VERSION_BODY = bytes.fromhex("706e696d2d74696d65722076302e312e30")

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.01) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without systemd's hand-over/notify variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_STREAM"))
    }
    env.update(extra or {})
    return env


def run_daemon_to_exit(
    args: Iterable[str], timeout: float = 20.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run mytimerd expecting it to exit by itself (a refusal); return the result."""
    return subprocess.run(
        mytimerd_command(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(env),
    )


def stale_unix_socket(path: Path) -> None:
    """Leave a unix socket file at ``path`` that nobody listens on."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert path.is_socket()


def connect_refused(path: Path) -> bool:
    """Whether connecting to the unix socket ``path`` is refused (nobody listens)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return True
        return False


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound on this machine."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
