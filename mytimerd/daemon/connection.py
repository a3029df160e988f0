"""One client connection: bytes in, frames out, answers in request order.

A :class:`Connection` knows framing, ordering and backpressure; it knows
nothing of methods or the library. It hands every complete frame to its
:class:`Host` (the server), which answers through a small interface:
:meth:`Connection.reserve` a place in the answer order,
:meth:`Connection.complete` it, :meth:`Connection.deliver` what became
writable; :meth:`Connection.answer` and :meth:`Connection.refuse` for answers
known at once; :meth:`Connection.drain` and :meth:`Connection.end` at
shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Protocol, cast

from ..protocol import wire
from ..protocol.limits import Limits
from .tls import certificate_names
from .tlslayer import TLSLayer

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, tuple[int, int] | None]:
    """Who is calling: a key for --max-connections-per-peer (``uid:N`` on
    unix, ``ip:ADDRESS`` on TCP) and, on unix, the peer's (uid, gid) from
    SO_PEERCRED for the allow-lists."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _, uid, gid = _PEERCRED.unpack(creds)
        return f"uid:{uid}", (uid, gid)
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple):
        return f"ip:{peername[0]}", None
    return "unknown", None


class ResponsePlace:
    """A place in a connection's answer order; ``frame`` is set when answered."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes | None = None) -> None:
        self.frame = frame


class Host(Protocol):
    """What a connection needs from the server."""

    limits: Limits
    clock: Callable[[], float]

    def admit(self, conn: Connection) -> None:
        """A connection was accepted (TLS: and its handshake done): serve it,
        or refuse it."""

    def begin_handshake(self, conn: Connection) -> bool:
        """A TLS connection was accepted; False to close it at once."""

    def handshake_failed(self, conn: Connection, exc: BaseException | None) -> None:
        """The handshake of a TLS connection failed (None: it succeeded)."""

    def forget(self, conn: Connection) -> None:
        """The connection is gone."""

    def handle(self, conn: Connection, request: wire.Request) -> None:
        """Answer ``request``: reserve a place or answer at once."""

    def refuse_frame(
        self, conn: Connection, event: wire.MethodNameTooLong | wire.FrameTooLarge
    ) -> None:
        """Answer a frame that cannot be read; the connection ends."""

    def shed(self, conn: Connection, request: wire.Request) -> None:
        """Answer a request that was read but will not be started (ShuttingDown)."""

    def rebuffer(self, conn: Connection, delta: int) -> bool:
        """``conn`` now buffers ``delta`` more bytes of partial frames (fewer if
        negative); False if that is past the global budget (it was refused)."""


class Connection(asyncio.Protocol):
    """One client connection: frames in, answers out in request order."""

    def __init__(self, host: Host, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self._tls = tls
        #: What the client certificate names (TLS only; None on plain connections).
        self.tls_names: list[str] | None = None
        limits = host.limits
        self._parser = wire.RequestParser(limits.max_method_len, limits.max_payload)
        self._max_in_flight = limits.max_in_flight
        self._answers: collections.deque[ResponsePlace] = collections.deque()
        # Requests received but not started: the in-flight limit holds them.
        self._backlog: collections.deque[wire.RequestEvent] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._read_paused = False
        self._write_paused = False
        self._close_when_flushed = False
        self._closing = False
        self._draining = False
        #: An event stream since mytimerd.subscribe: it takes no calls.
        self.subscribed = False
        # Bytes of partial frames held by the parser, as last told to the host.
        self._buffered = 0
        self._eof_sent = False
        self._seen_frame = False
        # When a frame last arrived or answers were last written.
        self.last_active = host.clock()
        self.peer = "unknown"
        #: The peer's (uid, gid) on a unix socket, None on TCP.
        self.creds: tuple[int, int] | None = None

    # asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        self.peer, self.creds = peer_of(transport)
        if self._tls is None:
            self.host.admit(self)
        elif self.host.begin_handshake(self):
            layer = TLSLayer(
                self._transport,
                self._tls,
                self,
                self.host.limits.tls_handshake_timeout,
                lambda exc: self._tls_done(layer, exc),
            )
        else:
            self._transport.close()

    def _tls_done(self, layer: TLSLayer, exc: BaseException | None) -> None:
        self.host.handshake_failed(self, exc)
        if exc is not None:
            self._transport = None
            return
        # From now on answers go through TLS.
        self._transport = cast(asyncio.Transport, layer)
        self.tls_names = certificate_names(layer.get_extra_info("peercert"))
        self.host.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._buffered:
            self.host.rebuffer(self, -self._buffered)
            self._buffered = 0
        self.host.forget(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after a final error: discard
        events = self._parser.feed(data)
        buffered = self._parser.buffered
        if buffered != self._buffered:
            delta, self._buffered = buffered - self._buffered, buffered
            if not self.host.rebuffer(self, delta):
                return
        if events:  # a half frame does not count as activity (--idle-timeout)
            self.last_active = self.host.clock()
            self._seen_frame = True
            self._backlog.extend(events)
            self._dispatch()
            if self._draining:
                self._stop_reading()
                self._flush()

    def eof_received(self) -> bool:
        if self._closing:
            return False
        # Keep the write side open: answers to pipelined calls still go out.
        self._close_when_flushed = True
        self._flush()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.deliver()

    # the interface the server answers through --------------------------------

    def reserve(self) -> ResponsePlace:
        """A place for an answer that comes later."""
        place = ResponsePlace()
        self._answers.append(place)
        return place

    def complete(self, place: ResponsePlace, frame: bytes) -> None:
        """Fill a reserved place; :meth:`deliver` writes it when its turn comes."""
        place.frame = frame

    def deliver(self) -> None:
        """Write what is next in order; start held requests and read again
        once the limits allow."""
        self._flush()
        if self._backlog and not self._closing:
            self._dispatch()
        if (
            not self._backlog
            and self._read_paused
            and not self._write_paused
            and len(self._answers) < self._max_in_flight
            and self._transport is not None
            and not self._close_when_flushed
            and not self._closing
            and not self._draining
        ):
            self._read_paused = False
            self._transport.resume_reading()

    def answer(self, frame: bytes) -> None:
        """Queue an immediate answer behind the calls already in flight."""
        self._answers.append(ResponsePlace(frame))

    def refuse(self, frame: bytes) -> None:
        """Send ``frame`` as the last answer, then close without a reset."""
        self.answer(frame)
        self._closing = True
        self._flush()

    def push_event(self, frame: bytes, max_queue: int) -> bool:
        """Send an event to a subscriber, after what it is owed; False if more
        than ``max_queue`` would wait (the client does not read, or a call it
        made before subscribing holds the line)."""
        if self._closing or self._transport is None:
            return True
        self._answers.append(ResponsePlace(frame))
        if not self._write_paused:
            self._flush()
        return len(self._answers) <= max_queue

    def cut_off(self, frame: bytes) -> None:
        """Drop what waits, send ``frame`` last and end; a client that reads
        nothing is aborted after ``--linger`` instead of holding memory."""
        transport = self._transport
        if transport is None:
            return
        self._answers.clear()
        self._closing = True
        transport.write(frame)
        if transport.can_write_eof() and not self._eof_sent:
            self._eof_sent = True
            transport.write_eof()
        asyncio.get_running_loop().call_later(self.host.limits.linger, transport.abort)

    def drain(self) -> None:
        """The daemon is stopping: take no new requests, answer what was read.

        A connection that has sent requests stops reading now: what it sent
        and was read but not started is shed (answered ShuttingDown), calls
        in flight are answered as they finish. A fresh connection (accepted
        just before the listeners closed, nothing read yet) is read once, so
        the request its client already sent is served. Once nothing is owed
        the connection ends cleanly (:meth:`end`).
        """
        self._draining = True
        if self._seen_frame:
            self._stop_reading()
        self._flush()

    def end(self) -> None:
        """Half-close once every answer is written, discard what the peer
        still sends, and close when it closes or after ``--linger``: closing
        with unread input would reset the connection and could destroy the
        answers on their way."""
        self._closing = True
        self._flush()

    def owes_nothing(self) -> bool:
        """No answer owed and no request waiting (a half frame may be buffered)."""
        return not self._answers and not self._backlog

    def close(self) -> None:
        """Close now; answers not yet written are lost."""
        if self._transport is not None:
            self._transport.close()

    # internals -----------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start received requests while the client reads its answers and owes
        fewer than the in-flight limit: every answer counts, daemon and error
        answers too, so no request shape bypasses backpressure."""
        backlog = self._backlog
        answers = self._answers
        limit = self._max_in_flight
        handle = self.host.handle
        while backlog and not self._write_paused:
            while backlog and len(answers) < limit:
                event = backlog.popleft()
                if type(event) is wire.Request:
                    handle(self, event)
                else:
                    self.host.refuse_frame(self, event)  # type: ignore[arg-type]
                    backlog.clear()
            self._flush()
            if len(answers) >= limit:
                break  # a call in flight heads the queue: wait for it
        if backlog or len(answers) >= limit:
            self._pause_reading()

    def _flush(self) -> None:
        """Write every answer that is next in order; close if asked to."""
        transport = self._transport
        if transport is None:
            return
        answers = self._answers
        if answers and answers[0].frame is not None:
            out = []
            while answers and answers[0].frame is not None:
                out.append(answers.popleft().frame)
            transport.write(b"".join(out))  # type: ignore[arg-type]
            self.last_active = self.host.clock()
        if answers:
            return
        if self._closing:
            if not self._eof_sent and transport.can_write_eof() and not transport.is_closing():
                self._eof_sent = True
                transport.write_eof()
                self._read_paused = False
                transport.resume_reading()
                asyncio.get_running_loop().call_later(self.host.limits.linger, transport.close)
        elif self._close_when_flushed:
            transport.close()
        elif self._draining and self._seen_frame:
            self.end()

    def _stop_reading(self) -> None:
        """Read nothing more; shed what was read but not started."""
        self._pause_reading()
        backlog = self._backlog
        while backlog:
            event = backlog.popleft()
            if type(event) is wire.Request:
                self.host.shed(self, event)

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
