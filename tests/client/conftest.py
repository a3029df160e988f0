"""Fixtures for the client and mytimerctl tests: a fake server and a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import pytest

import mytimerd
from mytimerd.protocol import wire

#: What a fake handler returns: (ret, body) to answer, or None to hang up.
Answer = tuple[int, bytes] | None
Handler = Callable[[str, bytes], Answer]

ROOT = Path(__file__).resolve().parents[2]
#: The library of generation 0.3 (the bundled libmy_timer.so is 0.2).
LIB03 = Path(mytimerd.__file__).resolve().parent / "_lib" / "libmy_timer-0.3.so"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds about 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mtc"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ok(value: object) -> Answer:
    """A RET_OK answer carrying ``value`` as CBOR."""
    return wire.RET_OK, cbor2.dumps(value)


def err(text: str) -> Answer:
    """A RET_ERR answer with raw ``text``."""
    return wire.RET_ERR, text.encode()


def canned(method: str, payload: bytes) -> Answer:
    """Answers shaped like the real daemon's, for the methods the tests use."""
    request = cbor2.loads(payload)
    if method == "version":
        return ok("nim-timer v0.1.0")
    if method == "echo":
        req = request.get("req", {})
        return ok({"echoed": req.get("message", ""), "timerName": "fake"})
    if method == "complex":
        messages = request.get("req", {}).get("messages", [])
        return ok(
            {
                "summary": f"received {len(messages)} messages",
                "itemCount": len(messages),
                "hasNote": "note" in request.get("req", {}),
            }
        )
    if method == "schedule":
        name = request.get("job", {}).get("name", "")
        if not name:
            return err("job name must not be empty")
        return ok(
            {"jobId": f"fake:{name}", "willRunCount": 1, "firstRunAtMs": 0, "effectiveBackoffMs": 0}
        )
    return err(f"mytimerd.UnknownMethod: no method {method!r} (try: version, echo)")


@dataclass
class FakeServer:
    """A server speaking the framing on a unix socket, answering through ``handler``.

    It runs its own event loop in a thread so blocking clients can be tested
    from the test's thread. ``greeting`` is sent on connect before any request
    (as a daemon refusing a connection does); ``delay`` holds every answer back.
    """

    path: Path
    handler: Handler = canned
    greeting: bytes = b""
    close_after_greeting: bool = False
    delay: float = 0.0
    requests: list[tuple[str, object]] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @property
    def address(self) -> str:
        """The ``unix:`` address text."""
        return f"unix:{self.path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_unix_server(self._serve, str(self.path))
        )
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = wire.RequestParser(max_method_len=256, max_payload=1 << 20)
        if self.greeting:
            writer.write(self.greeting)
        if self.close_after_greeting:
            await writer.drain()
            writer.close()
            return
        try:
            while data := await reader.read(65536):
                for event in parser.feed(data):
                    assert isinstance(event, wire.Request)
                    method = event.method.decode()
                    with contextlib.suppress(Exception):
                        self.requests.append((method, cbor2.loads(event.payload)))
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    answer = self.handler(method, event.payload)
                    if answer is None:
                        return
                    writer.write(wire.encode_response(*answer))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        """Close the server and stop its loop."""

        async def shutdown() -> None:
            self._server.close()
            # Handlers still sleeping or reading would die with the loop, noisily.
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def fake(sock_dir: Path) -> Iterator[FakeServer]:
    """A fake server with canned answers on ``sock_dir/f.sock``."""
    server = FakeServer(sock_dir / "f.sock")
    yield server
    server.stop()


def _check_alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(
            f"mytimerd exited with {proc.returncode} before listening:\n"
            + log.read_text(errors="replace")[-2000:]
        )


def wait_for_socket(
    path: Path, proc: subprocess.Popen[bytes], log: Path, seconds: float = 15
) -> None:
    """Wait until ``path`` accepts connections (or fail if ``proc`` died)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _check_alive(proc, log)
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                time.sleep(0.05)
                continue
            return
    raise TimeoutError(f"mytimerd did not listen on {path} within {seconds} s")


def wait_for_tcp(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 15) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _check_alive(proc, log)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
            continue
        return
    raise TimeoutError(f"mytimerd did not listen on port {port} within {seconds} s")


@dataclass
class Daemon:
    """A running mytimerd process, where it listens and its stderr log."""

    proc: subprocess.Popen[bytes]
    path: Path
    port: int
    log: Path

    @property
    def address(self) -> str:
        """The ``unix:`` address text."""
        return f"unix:{self.path}"

    @property
    def tcp(self) -> str:
        """The ``tcp:`` address text."""
        return f"tcp:127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_daemon(sock_dir: Path, *extra: str, port: int | None = None) -> Daemon:
    """Start ``python -m mytimerd`` on a unix socket and a TCP port; wait until it listens.

    The socket is ``sock_dir/d.sock``; the port is ``port``, or a free one.
    """
    path = sock_dir / "d.sock"
    port = _free_port() if port is None else port
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    log = sock_dir / "daemon.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mytimerd",
                "--unix",
                str(path),
                "--tcp",
                "127.0.0.1",
                str(port),
                "--log-level",
                "warning",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stderr=stderr,
        )
    try:
        wait_for_socket(path, proc, log)
        wait_for_tcp(port, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Daemon(proc, path, port, log)


def stop_daemon(daemon: Daemon) -> None:
    """SIGTERM the daemon and wait for it (kill it if it does not stop)."""
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(20)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()


def restart_daemon(daemon: Daemon, *extra: str) -> Daemon:
    """Stop ``daemon`` and start a new one on the same socket path and TCP port."""
    stop_daemon(daemon)
    return start_daemon(daemon.path.parent, *extra, port=daemon.port)


def _module_daemon(*extra: str) -> Iterator[Daemon]:
    directory = Path(tempfile.mkdtemp(prefix="mtd"))
    running = start_daemon(directory, *extra)
    yield running
    died = running.proc.poll()
    stop_daemon(running)
    log = running.log.read_text(errors="replace")[-3000:]
    shutil.rmtree(directory, ignore_errors=True)
    assert died is None, f"mytimerd exited with {died} during the tests:\n{log}"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One real daemon per test module (named "mytimerd", the default; library 0.2).

    Teardown fails if the daemon died during the module: a test must not crash it.
    """
    yield from _module_daemon()


@pytest.fixture(scope="module")
def daemon03() -> Iterator[Daemon]:
    """One real daemon per test module serving the 0.3 library (:data:`LIB03`)."""
    yield from _module_daemon("--library", str(LIB03))


@pytest.fixture
def own_daemon(sock_dir: Path) -> Iterator[Daemon]:
    """A real daemon for one test (which may stop it)."""
    running = start_daemon(sock_dir, "--name", "own")
    yield running
    stop_daemon(running)
