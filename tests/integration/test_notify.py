"""sd_notify (READY/STATUS/WATCHDOG/STOPPING), log levels and usage errors.

The test plays systemd: it binds an AF_UNIX datagram socket and hands its path
to the daemon in NOTIFY_SOCKET, then reads what the daemon reports.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest

from mytimerd.protocol import wire
from tests.integration.helpers import (
    VERSION_BODY,
    clean_env,
    run_daemon_to_exit,
    wait_until,
)
from tests.support.daemon import UnixAddress, WireClient, mytimerd_command
from tests.support.native import build_stuck_double

WATCHDOG_USEC = "400000"  # the daemon pings every 0.2 s while healthy


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return
        self.messages.extend(data.decode().splitlines())
        self.sock.setblocking(False)
        while True:  # and whatever else is queued
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.messages.extend(data.decode().splitlines())

    def wait_for(self, check: Callable[[list[str]], bool], timeout: float, what: str) -> None:
        """Read messages until ``check(self.messages)`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not check(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {self.messages}")
            self._read(min(left, 0.1))

    def wait_message(self, message: str, timeout: float = 15.0) -> None:
        """Wait until exactly ``message`` has arrived."""
        self.wait_for(lambda m: message in m, timeout, message)

    def drain(self) -> list[str]:
        """Read what is queued now; return and forget everything read so far."""
        self._read(0)
        out, self.messages = self.messages, []
        return out

    def collect(self, seconds: float) -> list[str]:
        """Everything that arrives during the next ``seconds``."""
        self.drain()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(left)
        return self.drain()

    def close(self) -> None:
        self.sock.close()


class Proc:
    """A mytimerd process started without the readiness loop (READY=1 is the signal)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                mytimerd_command(*args),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=clean_env(env),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def notify(sock_dir: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(sock_dir / "notify.sock")
    yield n
    n.close()


@pytest.fixture
def spawn(tmp_path: Path, notify: NotifySocket) -> Iterator[Callable[..., Proc]]:
    """Start daemons with NOTIFY_SOCKET set; kill leftovers after the test."""
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(
            list(args),
            {"NOTIFY_SOCKET": str(notify.path), **(env or {})},
            tmp_path / f"daemon-{len(procs)}.log",
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


def ping(path: Path) -> dict[str, object]:
    with WireClient(UnixAddress(str(path)), timeout=5) as c:
        value = c.call_value("mytimerd.ping")
    assert isinstance(value, dict)
    return value


def test_ready_status_stopping(
    spawn: Callable[..., Proc], notify: NotifySocket, sock_dir: Path
) -> None:
    """READY=1 comes only once calls are answered; STATUS= lines follow; no WATCHDOG=1
    without WATCHDOG_USEC; SIGTERM brings STOPPING=1 and exit status 0."""
    path = sock_dir / "d.sock"
    d = spawn("--unix", str(path))
    notify.wait_message("READY=1")
    with WireClient(UnixAddress(str(path)), timeout=5) as c:  # no retry: must work now
        assert c.call("version") == wire.Response(wire.RET_OK, VERSION_BODY)
    notify.wait_message(f"STATUS=Ready: unix:{path} (bound)")
    # The periodic status line counts the call just made.
    notify.wait_for(
        lambda m: any(x.startswith("STATUS=Serving") and "1 calls answered" in x for x in m),
        5,
        "STATUS=Serving ... 1 calls answered",
    )
    assert d.stop() == 0, d.log()
    notify.wait_message("STOPPING=1", timeout=5)
    msgs = notify.drain()
    assert msgs.index("READY=1") < msgs.index("STOPPING=1")
    assert "WATCHDOG=1" not in msgs


def test_watchdog_pings_while_healthy(
    spawn: Callable[..., Proc], notify: NotifySocket, sock_dir: Path
) -> None:
    """With WATCHDOG_USEC=400000 (and no WATCHDOG_PID) WATCHDOG=1 arrives repeatedly."""
    d = spawn("--unix", str(sock_dir / "w.sock"), env={"WATCHDOG_USEC": WATCHDOG_USEC})
    notify.wait_message("READY=1")
    notify.drain()
    notify.wait_for(lambda m: m.count("WATCHDOG=1") >= 4, 5, "4 WATCHDOG=1 pings")
    assert d.stop() == 0, d.log()


def test_watchdog_for_another_pid_is_not_pinged(
    spawn: Callable[..., Proc], notify: NotifySocket, sock_dir: Path
) -> None:
    """WATCHDOG_PID naming another process: the watchdog is not ours, no WATCHDOG=1."""
    d = spawn(
        "--unix",
        str(sock_dir / "o.sock"),
        env={"WATCHDOG_USEC": WATCHDOG_USEC, "WATCHDOG_PID": "1"},
    )
    notify.wait_message("READY=1")
    assert "WATCHDOG=1" not in notify.collect(1.0)  # five ping periods
    assert d.stop() == 0, d.log()


@pytest.mark.parametrize("mode", ["silent", "block"])
def test_watchdog_stops_while_library_stuck(
    spawn: Callable[..., Proc], notify: NotifySocket, sock_dir: Path, tmp_path: Path, mode: str
) -> None:
    """A library that stops answering (silent) or blocks in a call: ping says unhealthy,
    STATUS says so and WATCHDOG=1 stops (systemd would restart the daemon); once the
    library answers again, pings resume, and SIGTERM still exits 0."""
    double = build_stuck_double()
    control = tmp_path / "control"
    control.write_text("ok")
    path = sock_dir / "s.sock"
    d = spawn(
        "--unix",
        str(path),
        "--library",
        str(double),
        "--probe-timeout",
        "0.5",
        "--drain-timeout",
        "2",
        env={"WATCHDOG_USEC": WATCHDOG_USEC, "STUCK_TIMER_CONTROL": str(control)},
    )
    notify.wait_message("READY=1")
    notify.wait_for(lambda m: m.count("WATCHDOG=1") >= 2, 5, "WATCHDOG=1 while healthy")
    assert ping(path)["healthy"] is True
    control.write_text(mode)
    wait_until(lambda: ping(path)["healthy"] is False, 10, "ping to report healthy false")
    late = notify.collect(1.2)  # six ping periods
    assert "WATCHDOG=1" not in late, late
    notify.wait_for(
        lambda m: any(x.startswith("STATUS=") and "UNHEALTHY" in x for x in late + m),
        3,
        "an UNHEALTHY status line",
    )
    control.write_text("ok")
    wait_until(lambda: ping(path)["healthy"] is True, 10, "ping to report healthy again")
    notify.drain()
    notify.wait_for(lambda m: "WATCHDOG=1" in m, 5, "WATCHDOG=1 after recovery")
    assert d.stop() == 0, d.log()


@pytest.mark.parametrize("level", ["debug", "warning"])
def test_log_level(tmp_path: Path, sock_dir: Path, level: str) -> None:
    """--log-level debug logs the info lines (ready, stopping); warning logs none."""
    path = sock_dir / "l.sock"
    d = Proc(["--unix", str(path), "--log-level", level], {}, tmp_path / "l.log")
    try:
        wait_until(lambda: path.exists() or d.proc.poll() is not None, 15, "the socket")
        with WireClient(UnixAddress(str(path)), timeout=5) as c:
            assert cbor2.loads(c.call("version").body) == "nim-timer v0.1.0"
        assert d.stop() == 0, d.log()
    finally:
        d.kill()
    text = d.log()
    if level == "debug":
        assert " INFO ready: serving " in text and " INFO stopping: " in text, text
    else:
        assert text == "", text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-payload", "0"], "--max-payload: must be positive, got 0"),
        (["--timeout", "-1"], "--timeout: must be positive, got -1"),
        (["--tcp", "127.0.0.1", "notaport"], "port 'notaport' is not a number"),
        (["--tcp", "127.0.0.1", "70000"], "port 70000 is out of range 1..65535"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
    ],
)
def test_invalid_options(sock_dir: Path, args: list[str], message: str) -> None:
    """An invalid option value: exit status 2, usage and a message, nothing bound."""
    path = sock_dir / "never.sock"
    result = run_daemon_to_exit(["--unix", str(path), *args])
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage: mytimerd"), result.stderr
    assert message in result.stderr, result.stderr
    assert not path.exists()
