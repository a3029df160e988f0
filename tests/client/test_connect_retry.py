"""A unix connect() that meets a full listen queue (EAGAIN) is retried within the connect timeout.

Issue 17, item 5: a flood of connects (even from a uid the daemon refuses)
fills the daemon's listen queue, and a client's non-blocking connect() then
fails at once with EAGAIN instead of waiting. These tests fill a real
listener's queue (listen(0), connections it never accepts), then either
start accepting after a while (every client must get in and get its answer)
or never do (every client must fail after its connect timeout, saying why).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import uvloop

from mytimerd.client import AsyncClient, Client, ConnectError, ctl
from mytimerd.client.common import CONNECT_RETRY_FIRST, CONNECT_RETRY_LONGEST, unix_connect
from mytimerd.protocol import wire

#: What the listener answers to every request.
VERSION = "full-queue v1"
#: When the listener starts accepting, in seconds after the test's client starts.
ACCEPT_AFTER = 0.2
#: The connect timeout of clients that must give up: long enough to retry many times.
GIVE_UP_AFTER = 0.3


class FullQueue:
    """A unix listener whose listen queue is full of connections it has not accepted.

    :meth:`accept_after` starts a thread that, after a delay, accepts every
    connection and answers each request of each with :data:`VERSION`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(0)
        self.fillers: list[socket.socket] = []
        self.accepting_since: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        while self._fill_one():
            pass
        assert self.fillers, "not even one connection fitted in the listen queue"

    def _fill_one(self) -> bool:
        """Queue one more connection; False once the queue is full (EAGAIN)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(self.path))
        except BlockingIOError as exc:
            sock.close()
            assert exc.errno == errno.EAGAIN
            return False
        self.fillers.append(sock)
        return True

    def accept_after(self, delay: float) -> None:
        """Start accepting (and answering) every connection ``delay`` seconds from now."""
        self._start(self._accept, delay)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, delay: float) -> None:
        if self._stop.wait(delay):
            return
        self.accepting_since = time.monotonic()
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by close()
            self._start(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        parser = wire.RequestParser(max_method_len=256, max_payload=1 << 20)
        answer = wire.encode_response(wire.RET_OK, cbor2.dumps(VERSION))
        with conn:
            conn.settimeout(0.05)
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                for _ in parser.feed(data):
                    conn.sendall(answer)

    def close(self) -> None:
        """Stop the threads; close the listener and the queued connections."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in self.fillers:
            sock.close()
        self.listener.close()


@pytest.fixture
def full(sock_dir: Path) -> Iterator[FullQueue]:
    """A listener on ``sock_dir/full.sock`` whose listen queue is full."""
    queue = FullQueue(sock_dir / "full.sock")
    yield queue
    queue.close()


def _run(event_loop: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` on a fresh loop of the kind named (asyncio's own or uvloop)."""
    factory = uvloop.new_event_loop if event_loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _check_gave_up(exc: ConnectError, full: FullQueue, elapsed: float) -> None:
    """``exc`` is the connect timeout's EAGAIN, raised after (and not long after) it."""
    assert exc.errnos == [errno.EAGAIN]
    assert exc.attempts == [(exc.address, exc.reason)]
    assert str(exc.address) == f"unix:{full.path}"
    assert f"listen queue stayed full for {GIVE_UP_AFTER:g} s (EAGAIN)" in str(exc)
    assert GIVE_UP_AFTER <= elapsed < GIVE_UP_AFTER + 2


# --- the pauses ------------------------------------------------------------------------


class _AlwaysFull:
    """A stand-in socket whose every connect() meets a full queue."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, path: str) -> None:
        self.attempts += 1
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")


def test_pauses_double_from_1_ms_to_50_ms_and_end_at_the_timeout() -> None:
    """The pauses double from the first to the longest, and never outlast the timeout."""
    sock = _AlwaysFull()
    attempts = unix_connect(sock, "/nowhere", None)  # type: ignore[arg-type]
    pauses = [next(attempts) for _ in range(10)]
    assert pauses[0] == CONNECT_RETRY_FIRST == 0.001
    assert pauses[:6] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]
    assert pauses[6:] == [CONNECT_RETRY_LONGEST] * 4 == [0.05] * 4
    assert sock.attempts == 10

    start = time.monotonic()
    with pytest.raises(BlockingIOError) as caught:
        for pause in unix_connect(sock, "/nowhere", 0.1):  # type: ignore[arg-type]
            assert pause <= CONNECT_RETRY_LONGEST
            time.sleep(pause)
    assert 0.1 <= time.monotonic() - start < 1
    assert caught.value.errno == errno.EAGAIN


def test_other_failures_are_not_retried(sock_dir: Path) -> None:
    """No socket at the path: ENOENT at once, with no pause."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        with pytest.raises(FileNotFoundError):
            next(unix_connect(sock, str(sock_dir / "none.sock"), 10))


# --- the blocking client and mytimerctl ------------------------------------------------


def test_client_waits_for_room_in_the_queue(full: FullQueue) -> None:
    """Client connects once the daemon accepts again, well within its connect timeout."""
    full.accept_after(ACCEPT_AFTER)
    start = time.monotonic()
    with Client(f"unix:{full.path}", connect_timeout=10, timeout=10) as client:
        connected = time.monotonic()
        assert client.call("version") == VERSION
    assert full.accepting_since is not None
    assert connected - start >= ACCEPT_AFTER  # it did wait: the queue was full
    # Tried again within the longest pause of room appearing (slack for a loaded machine).
    assert connected - full.accepting_since < 1


def test_client_gives_up_at_its_connect_timeout(full: FullQueue) -> None:
    """Never accepted: ConnectError naming the full queue (EAGAIN) after the timeout, no hang."""
    start = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        Client(f"unix:{full.path}", connect_timeout=GIVE_UP_AFTER).connect()
    _check_gave_up(caught.value, full, time.monotonic() - start)


def test_mytimerctl_waits_for_room_in_the_queue(
    capsys: pytest.CaptureFixture[str], full: FullQueue
) -> None:
    full.accept_after(ACCEPT_AFTER)
    code = ctl.main(["--unix", str(full.path), "--json", "version"])
    out, err = capsys.readouterr()
    assert (code, err) == (ctl.EXIT_OK, "")
    assert out.strip() == f'"{VERSION}"'


def test_mytimerctl_names_the_full_queue(
    capsys: pytest.CaptureFixture[str], full: FullQueue
) -> None:
    """Exit 3 with the reason, and no hint to start a daemon that is there."""
    code = ctl.main(["--unix", str(full.path), "--timeout", str(GIVE_UP_AFTER), "version"])
    out, err = capsys.readouterr()
    assert code == ctl.EXIT_UNREACHABLE
    assert out == ""
    assert err.startswith(
        f"mytimerctl: cannot connect to the daemon at unix:{full.path}: "
        f"its listen queue stayed full for {GIVE_UP_AFTER:g} s (EAGAIN)"
    )
    assert "systemctl start" not in err


# --- the asyncio client, on both event loops -------------------------------------------


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_async_client_waits_for_room_in_the_queue(full: FullQueue, event_loop: str) -> None:
    """asyncio's loop took EAGAIN for a connect in progress and reported a connection
    that was not there (the first read failed, EINVAL); uvloop failed at once."""

    async def main() -> tuple[float, float, object]:
        start = time.monotonic()
        async with AsyncClient(f"unix:{full.path}", connect_timeout=10, timeout=10) as client:
            connected = time.monotonic()
            return start, connected, await client.call("version")

    full.accept_after(ACCEPT_AFTER)
    start, connected, answer = _run(event_loop, main())
    assert answer == VERSION
    assert full.accepting_since is not None
    assert connected - start >= ACCEPT_AFTER
    assert connected - full.accepting_since < 1


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_async_client_gives_up_at_its_connect_timeout(full: FullQueue, event_loop: str) -> None:
    async def main() -> None:
        await AsyncClient(f"unix:{full.path}", connect_timeout=GIVE_UP_AFTER).connect()

    start = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        _run(event_loop, main())
    _check_gave_up(caught.value, full, time.monotonic() - start)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_async_client_cancelled_while_waiting_closes_its_socket(
    full: FullQueue, event_loop: str
) -> None:
    """Cancelled during a pause, the connect leaves no socket open behind it."""

    async def main() -> None:
        client = AsyncClient(f"unix:{full.path}", connect_timeout=10)
        task = asyncio.create_task(client.connect())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()

    before = _open_unix_sockets()
    _run(event_loop, main())
    assert _open_unix_sockets() == before


def _open_unix_sockets() -> int:
    """How many sockets this process has open (each is a descriptor naming ``socket:``)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += fd.readlink().as_posix().startswith("socket:")
    return count
