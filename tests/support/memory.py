"""In-memory doubles for testing the server without sockets or a library:
a fake library, a fake transport and a clock the test moves."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import cbor2

from mytimerd.daemon.library import EVENT_ID_BASE, Result, Status
from mytimerd.protocol import wire


class Clock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class Held:
    """A call the fake library has not answered yet."""

    method: str
    payload: bytes


class FakeLibrary:
    """Implements the server's Library protocol in memory.

    ``version`` (calls and liveness probes) is answered at once while
    ``answers_version`` is true; every other call is held until the test
    answers it with :meth:`answer`. Answers appear in :meth:`results`, or
    are returned by :meth:`call` itself while ``answers_inline`` is true.
    """

    path = "fake://libmy_timer"
    direct = True
    generation = "0.2"

    def __init__(self) -> None:
        # A real descriptor, so the server can register and unregister it.
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.held: dict[int, Held] = {}
        self.answers_version = True
        self.answers_inline = False
        #: The ``wait`` of each call() and quick(), in order.
        self.waits: list[bool] = []
        self.accepting = True
        self.in_call_seconds = 0.0
        self.unavailable: frozenset[str] = frozenset()
        self.unheard: frozenset[str] = frozenset()
        self.stale: dict[str, int] = {}
        self.submitted = 0
        self.completed = 0
        self._ready: list[Result] = []

    def submit(self, method: str, call_id: int, payload: bytes) -> bool:
        """Hold the call, or answer a version call at once."""
        if not self.accepting:
            return False
        self.submitted += 1
        if method == "version" and self.answers_version:
            self._ready.append((call_id, wire.RET_OK, cbor2.dumps("fake v1")))
            self.completed += 1
        else:
            self.held[call_id] = Held(method, payload)
        return True

    def call(self, method: str, call_id: int, payload: bytes, wait: bool) -> bytes | bool:
        """:meth:`submit`; a version call waited for is answered on the spot
        (its response frame) while ``answers_inline`` is true, otherwise later."""
        self.waits.append(wait)
        if not self.submit(method, call_id, payload):
            return False
        if wait and self.answers_inline and self._ready and self._ready[-1][0] == call_id:
            _, ret, body = self._ready.pop()
            return wire.encode_response(ret, body)
        return True

    def quicken(self, names: object) -> list[str]:
        """Serve version calls on the quick path while ``answers_inline`` is
        true (it must be set before the server is made)."""
        return ["version"] if self.answers_inline else []

    def quick(
        self, data: bytes, first_id: int, wait: bool
    ) -> tuple[int, bytes, list[tuple[str, int, float]]]:
        """The glue's quick path in Python: version calls with ``{}`` at
        the start of ``data``, answered at once while ``answers_version``
        is true and ``wait``, else the first one is held (and ends the run)."""
        self.waits.append(wait)
        version = wire.encode_request("version", b"\xa0")
        used, frames = 0, b""
        made: list[tuple[str, int, float]] = []
        while data.startswith(version, used) and self.accepting:
            used += len(version)
            call_id = first_id + len(made)
            self.submit("version", call_id, b"\xa0")
            if call_id in self.held or not wait:  # answered later, through results()
                made.append(("version", -1, 0.0))
                break
            _, ret, body = self._ready.pop()
            frames += wire.encode_response(ret, body)
            made.append(("version", ret, 0.0))
        return used, frames, made

    def lane(self, slots: int) -> None:
        """No lane: its calls are the glue's, tested against the real library."""
        return None

    def answer(self, call_id: int, ret: int = wire.RET_OK, body: bytes | None = None) -> None:
        """Answer a held call (by default: its own payload echoed)."""
        held = self.held.pop(call_id)
        self._ready.append((call_id, ret, held.payload if body is None else body))
        self.completed += 1

    def results(self) -> list[Result]:
        """What the library answered since the last look."""
        out, self._ready = self._ready, []
        return out

    def status(self) -> Status:
        """Counters; ``in_call_seconds`` is set by the test."""
        return Status(self.in_call_seconds, len(self.held), self.submitted, self.completed, 0)

    def fire(self, index: int, body: bytes) -> None:
        """The library fires event number ``index`` of the interface."""
        self._ready.append((EVENT_ID_BASE + index, wire.RET_OK, body))

    def stale_warnings(self) -> dict[str, int]:
        """Set by the test."""
        return self.stale

    def shutdown(self, timeout: float) -> str:
        """Close the descriptor."""
        os.close(self.fd)
        return "destroyed"


@dataclass
class FakeTransport:
    """Records what the connection writes and how it steers reading."""

    written: bytearray = field(default_factory=bytearray)
    reading: bool = True
    closed: bool = False
    aborted: bool = False
    eof_written: bool = False
    buffered: int = 0
    #: How many write() calls the connection made.
    writes: int = 0
    high_water: int | None = None
    peername: tuple[str, int] = ("192.0.2.1", 40000)
    #: The protocol to tell when closed, as asyncio does.
    protocol: Any = None
    #: A unix peer: the daemon's end of a real socket pair (what the kernel
    #: says of it is real; what the connection writes still goes to written).
    sock: socket.socket | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        """A TCP peer by peername, or with ``sock`` a unix one."""
        if self.sock is not None:
            return self.sock if name == "socket" else default
        return self.peername if name == "peername" else default

    def feed_eof(self) -> None:
        """The client closed its side: tell the protocol, and close unless
        it keeps the transport open, as asyncio does."""
        if not self.protocol.eof_received():
            self.close()

    def write(self, data: bytes) -> None:
        """Record ``data`` (a real transport refuses it after close or write_eof)."""
        assert not self.closed, "write after close"
        assert not self.eof_written, "write after write_eof"
        self.written += data
        self.writes += 1

    def pause_reading(self) -> None:
        """Reading stops."""
        self.reading = False

    def resume_reading(self) -> None:
        """Reading goes on."""
        self.reading = True

    def close(self) -> None:
        """The connection is closed; the protocol hears of it once."""
        if not self.closed and self.protocol is not None:
            self.closed = True
            self.protocol.connection_lost(None)
        self.closed = True

    def abort(self) -> None:
        """Closed at once, unsent data dropped."""
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        """Whether close() was called."""
        return self.closed

    def can_write_eof(self) -> bool:
        """Stream sockets can half-close."""
        return True

    def write_eof(self) -> None:
        """Half-close."""
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        """Bytes the kernel has not taken yet (set by the test)."""
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Record the high-water mark (the test pauses writing itself)."""
        self.high_water = high

    def responses(self) -> list[wire.Response]:
        """Every response frame written so far, parsed."""
        return wire.ResponseParser().feed(bytes(self.written))
