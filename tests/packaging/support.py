"""Helpers for driving an installed mytimerd inside a private system."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import cbor2

from tests.systemd.harness import Sandbox

SERVICE = "mytimerd.service"
SOCKET = "mytimerd.socket"
TCP_SOCKET = "mytimerd-tcp.socket"
UNITS = (SOCKET, TCP_SOCKET, SERVICE)
NOBODY = 65534


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def ctl(
    sb: Sandbox,
    *args: str,
    prog: str = "/usr/bin/mytimerctl",
    user: tuple[int, int, list[int] | None] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run the installed mytimerctl in the system, as root or as uid/gid/groups."""
    argv = [prog, *args]
    if user is not None:
        uid, gid, groups = user
        groups_opt = ["--clear-groups"] if not groups else ["--groups", ",".join(map(str, groups))]
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", *groups_opt, *argv]
    return sb.run(argv, check=False, timeout=timeout, env={"HOME": "/"})


def prop(sb: Sandbox, unit: str, name: str) -> str:
    return sb.prop(unit, name)


def main_pid(sb: Sandbox) -> int:
    return int(sb.prop(SERVICE, "MainPID"))


def group_id(sb: Sandbox, name: str = "mytimer") -> int | None:
    r = sb.run(["getent", "group", name], check=False)
    return int(r.stdout.split(":")[2]) if r.returncode == 0 else None


def call(path: Path, method: str, params: dict[str, object], timeout: float = 20) -> int:
    """One request on a new unix connection, by hand; returns the answer's code."""
    payload = cbor2.dumps(params)
    m = method.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(struct.pack(">I", len(m)) + m + struct.pack(">I", len(payload)) + payload)
        head = _recv_exact(s, 8)
        ret, n = struct.unpack(">iI", head)
        _recv_exact(s, n)
        return int(ret)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


class Load:
    """Clients calling the daemon continuously on its unix socket (from
    outside the namespace, through /proc/PID/root) until stopped; every
    result is kept. Each call is on a new connection, so a refused or
    dropped connection shows up as a failed call."""

    def __init__(self, sb: Sandbox, clients: int = 3, path: str = "/run/mytimerd.sock") -> None:
        self.path = sb.path(path)
        self.results: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def _client(self, i: int) -> None:
        while not self._stop.is_set():
            try:
                if i == 0:  # one client keeps a slower call in flight
                    ret = call(self.path, "echo", {"req": {"message": "x", "delayMs": 150}})
                else:
                    ret = call(self.path, "version", {})
                self.results.append("ok" if ret == 0 else f"ret={ret}")
            except Exception as e:
                self.results.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def failures(self) -> list[str]:
        return [r for r in self.results if r != "ok"]

    def summary(self) -> str:
        return ", ".join(f"{n} x {r}" for r, n in Counter(self.results).most_common(6))


def wait_calls(load: Load, n: int, timeout: float = 30) -> None:
    """Wait until the load has made ``n`` more calls (it is really running)."""
    start = len(load.results)
    deadline = time.monotonic() + timeout
    while len(load.results) < start + n:
        assert time.monotonic() < deadline, f"load made no progress: {load.summary()}"
        time.sleep(0.05)


def tree(root: Path) -> dict[str, str]:
    """Every path under root (relative) -> its kind (and symlink target)."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                found[rel] = "dir"
            elif p.is_char_device():
                found[rel] = "whiteout"  # overlayfs: removed from the lower layer
            else:
                found[rel] = "file"
    return found


class HeldConnection:
    """The original example's client, in a loop: one unix connection held
    for its whole life, one echo at a time, no reconnect logic. A failed
    call or a closed connection is recorded and ends it. Each echo fires
    an event named after its message (what :class:`Subscriber` checks)."""

    def __init__(self, sb: Sandbox, path: str = "/run/mytimerd.sock") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(sb.path(path)))
        #: Messages echoed successfully, in order.
        self.echoed: list[str] = []
        self.failure: str | None = None
        #: The longest wait for one answer (seconds).
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            message = f"held-{n}"
            payload = cbor2.dumps({"req": {"message": message, "delayMs": 0}})
            frame = struct.pack(">I", 4) + b"echo" + struct.pack(">I", len(payload)) + payload
            started = time.monotonic()
            try:
                self.sock.sendall(frame)
                ret, n_body = struct.unpack(">iI", _recv_exact(self.sock, 8))
                body = _recv_exact(self.sock, n_body)
            except Exception as e:
                self.failure = f"call {n}: {type(e).__name__}: {e}"
                return
            self.longest = max(self.longest, time.monotonic() - started)
            if ret != 0:
                self.failure = f"call {n}: ret={ret} {body[:200]!r}"
                return
            self.echoed.append(message)
            n += 1
            time.sleep(0.002)

    def __enter__(self) -> HeldConnection:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.sock.close()


class Subscriber:
    """A raw event stream held on one connection: ``mytimerd.subscribe``,
    then every event frame; the connection closing is recorded."""

    def __init__(self, sb: Sandbox, path: str = "/run/mytimerd.sock") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(sb.path(path)))
        method, payload = b"mytimerd.subscribe", cbor2.dumps({})
        self.sock.sendall(
            struct.pack(">I", len(method)) + method + struct.pack(">I", len(payload)) + payload
        )
        ret, n = struct.unpack(">iI", _recv_exact(self.sock, 8))
        assert ret == 0, _recv_exact(self.sock, n)
        _recv_exact(self.sock, n)
        #: The message of every on_echo_fired event, in order.
        self.messages: list[str] = []
        self.failure: str | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                ret, n = struct.unpack(">iI", _recv_exact(self.sock, 8))
                body = _recv_exact(self.sock, n)
            except OSError as e:  # the daemon closed it, or close() below
                if not self._closing:
                    self.failure = f"{type(e).__name__}: {e}"
                return
            if ret != 0:
                self.failure = f"ret={ret} {body[:200]!r}"
                return
            event = cbor2.loads(body)
            if event.get("eventType") == "on_echo_fired":
                self.messages.append(event["payload"]["message"])

    def wait_for(self, messages: list[str], timeout: float = 10) -> None:
        """Wait until every one of ``messages`` has arrived (or a failure)."""
        deadline = time.monotonic() + timeout
        while not set(messages) <= set(self.messages) and self.failure is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Stop reading."""
        self._closing = True
        self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self.sock.close()
