"""Real mytimerd processes and a raw wire client for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import cbor2

from mytimerd.protocol import wire
from mytimerd.protocol.address import Address, TcpAddress, UnixAddress


class WireClient:
    """A blocking client speaking the raw framing (no mytimerd.client)."""

    def __init__(self, address: Address, timeout: float = 10.0, source: str | None = None) -> None:
        """Connect to ``address``; on TCP from the local address ``source`` if given
        (another loopback address is another peer to the daemon)."""
        if isinstance(address, UnixAddress):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = address.path
        else:
            info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
            self.sock = socket.socket(info[0], socket.SOCK_STREAM)
            target = info[4]
            if source is not None:
                self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(target)  # type: ignore[arg-type]
        self.parser = wire.ResponseParser()
        self._ready: list[wire.Response] = []

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def request(self, method: str | bytes, payload: bytes = b"\xa0") -> None:
        """Send one request frame without waiting."""
        self.send(wire.encode_request(method, payload))

    def recv(self) -> wire.Response:
        """The next response; raises ConnectionError on EOF."""
        while not self._ready:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("connection closed by the daemon")
            self._ready.extend(self.parser.feed(data))
        return self._ready.pop(0)

    def call(self, method: str | bytes, payload: bytes = b"\xa0") -> wire.Response:
        """Send one request and wait for its response."""
        self.request(method, payload)
        return self.recv()

    def call_value(self, method: str, value: object = None) -> object:
        """Call with a CBOR-encoded request; return the decoded RET_OK value."""
        resp = self.call(method, cbor2.dumps({} if value is None else value))
        assert resp.ret == wire.RET_OK, resp.body
        return cbor2.loads(resp.body)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Whether the daemon closes the connection within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Daemon:
    """A mytimerd process started by the tests."""

    def __init__(self, proc: subprocess.Popen[bytes], address: Address, log: Path) -> None:
        self.proc = proc
        self.address = address
        self.log_path = log

    def client(self, timeout: float = 10.0) -> WireClient:
        """A new connection to the daemon."""
        return WireClient(self.address, timeout)

    def log(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon."""
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the daemon and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"mytimerd did not exit within {timeout} s:\n{self.log()}"
            ) from None


def mytimerd_command(*args: str) -> list[str]:
    """The command line that runs this checkout's daemon."""
    return [sys.executable, "-m", "mytimerd", *args]


def wait_ready(address: Address, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until the daemon answers mytimerd.ping on ``address``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"mytimerd exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
            )
        try:
            with WireClient(address, timeout=2.0) as c:
                if c.call("mytimerd.ping").ret == wire.RET_OK:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mytimerd not ready after {timeout} s:\n{log.read_text()}")
        time.sleep(0.02)


def start_daemon(
    workdir: Path,
    args: Iterable[str] = (),
    *,
    address: Address | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 15.0,
    command: list[str] | None = None,
) -> Daemon:
    """Start mytimerd bound to ``address`` (default: a unix socket in workdir)."""
    args = list(args)
    if address is None:
        address = UnixAddress(str(workdir / "mytimerd.sock"))
        args += ["--unix", address.path]
    log = workdir / f"mytimerd-{time.monotonic_ns()}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            command or mytimerd_command(*args),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=full_env,
        )
    wait_ready(address, proc, log, ready_timeout)
    return Daemon(proc, address, log)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = [
    "Daemon",
    "TcpAddress",
    "UnixAddress",
    "WireClient",
    "free_tcp_port",
    "mytimerd_command",
    "start_daemon",
]
