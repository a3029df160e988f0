"""One client connection: bytes in, frames out, answers in request order.

A :class:`Connection` knows framing, ordering, backpressure and how a
connection ends; it knows nothing of methods or the library. It hands every
complete frame to its :class:`Host` (the server), which answers through a
small interface: :meth:`Connection.reserve` a place in the answer order,
:meth:`Connection.complete` it, :meth:`Connection.deliver` what became
writable; :meth:`Connection.answer` for answers known at once.

Its life is one explicit :class:`State` with named transitions, as h11 keeps
a connection's state: :meth:`~Connection.subscribe` (SERVING -> STREAMING),
:meth:`~Connection.drain` (-> DRAINING), :meth:`~Connection.finish` (a last
answer, then -> ENDING), :meth:`~Connection.reject` and
:meth:`~Connection.close` (-> CLOSED). Every close has one reason, counted
once by the host when the connection is gone.

Ending never resets a connection while its client may still read: after the
last answer the daemon half-closes, reads and discards what the client still
sends (at a bounded pace), and closes when the client closes its side, when
the kernel shows the client has read every byte and it has been quiet for
``--linger`` (unix sockets only: TCP cannot tell), or at the latest after
``--drain-timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import fcntl
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from ..protocol import wire
from ..protocol.limits import Limits
from . import tlslane
from .handover import Resume
from .readahead import READ_AHEAD_SLICE as READ_AHEAD_SLICE  # (tests patch it here)
from .tls import certificate_names
from .tlslayer import TLSLayer

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_perf_counter: Final = time.perf_counter

#: Bytes a subscribed connection may send that are not yet a whole frame
#: (a subscriber has nothing to say; this is only slack for a stray call).
STREAM_READ_MAX: Final = 512
#: A read that takes longer than this (decoding, validating, dispatching) is
#: reported to the loop-lag watch.
LONG_CALLBACK: Final = 0.005
#: Bytes of a refused connection's first request read (and dropped) before it closes.
REJECT_READ: Final = 64 * 1024
#: A subscriber's kernel send buffer and the event loop's write buffer mark:
#: a subscriber that does not read shows backpressure within about this much.
STREAM_BUFFER: Final = 64 * 1024
#: Most requests one callback reads ahead for a lone client (and for
#: READ_AHEAD_SLICE at most).
READ_AHEAD_TURNS: Final = 16
#: Reads in a row that were quick calls only (and none left in part) after
#: which a connection owing nothing is offered to the host's lane.
LANE_RUN: Final = 8
#: An ending connection's share of discarding: after this many bytes (about
#: one read) its reading pauses until the host gives it a turn (its client's
#: sends back up in the kernel meanwhile).
DISCARD_SLICE: Final = 256 * 1024
_SIOCINQ: Final = 0x541B  # FIONREAD: bytes we have not read
_SIOCOUTQ: Final = 0x5411  # TIOCOUTQ: on unix sockets, bytes the peer has not read
_COUNT = struct.Struct("i")


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, tuple[int, int] | None]:
    """Where a connection comes from: ``uid:N`` on unix, ``ip:ADDRESS`` on
    TCP, and on unix the peer's (uid, gid) from SO_PEERCRED."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _, uid, gid = _PEERCRED.unpack(creds)
        return f"uid:{uid}", (uid, gid)
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple):
        return f"ip:{peername[0]}", None
    return "unknown", None


class State(enum.Enum):
    """Where a connection is in its life."""

    #: TLS handshake under way; not admitted yet.
    HANDSHAKE = "handshake"
    #: Reads requests and answers them in order.
    SERVING = "serving"
    #: An event stream since mytimerd.subscribe: events go out, a call ends it.
    STREAMING = "streaming"
    #: The daemon is stopping: no new requests; what is owed goes out.
    DRAINING = "draining"
    #: The daemon is stopping and will hand the connection to the next
    #: instance: nothing more is read, what was read is answered.
    HOLDING = "holding"
    #: A last answer is queued: flush, half-close, discard input, then close.
    ENDING = "ending"
    CLOSED = "closed"


# The states by name, for identity tests on the hot path: membership in a set
# of enum members would call Enum.__hash__, a Python function, each time.
_SERVING: Final = State.SERVING
_STREAMING: Final = State.STREAMING
_DRAINING: Final = State.DRAINING
_HOLDING: Final = State.HOLDING
_ENDING: Final = State.ENDING


def _reading(state: State) -> bool:
    """Whether a connection in ``state`` reads and dispatches requests."""
    return state is _SERVING or state is _STREAMING


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
        or reject it."""

    def begin_handshake(self, conn: Connection) -> bool:
        """A TLS connection was accepted; False to close it at once."""

    def handshake_done(self, conn: Connection, exc: BaseException | None) -> None:
        """The handshake of a TLS connection ended (``exc`` None: it succeeded)."""

    def forget(self, conn: Connection) -> None:
        """The connection is gone (``conn.close_reason`` says how)."""

    def handle(self, conn: Connection, request: wire.Request) -> None:
        """Answer ``request``: reserve a place or answer at once."""

    #: Whether :meth:`quick` may take calls.
    quick_calls: bool

    #: Whether :meth:`enter_lane` may take connections.
    lane_calls: bool

    def enter_lane(self, conn: Connection, fd: int, tls: object = None) -> int:
        """``conn``, owing nothing after a run of quick calls, offers its
        socket to the lane (:mod:`.lane`), and with TLS its session
        (:mod:`.tlslane`): its slot, or -1."""

    def leave_lane(self, conn: Connection) -> None:
        """Take ``conn`` back from the lane: :meth:`Connection.left_lane`
        follows at once."""

    def quick(self, conn: Connection, data: bytes) -> int:
        """Answer the calls at the start of ``data`` it can at once (it may
        leave the last one in flight, with a reserved place); the bytes of
        whole frames it took."""

    def refuse_frame(
        self, conn: Connection, event: wire.MethodNameTooLong | wire.FrameTooLarge
    ) -> None:
        """Answer a frame that cannot be read; the connection ends."""

    def refuse_stream_input(self, conn: Connection) -> None:
        """A subscriber sends more than a stray call: end it (Subscribed)."""

    def shed(self, conn: Connection, request: wire.Request) -> None:
        """Answer a request that was read but will not be started (ShuttingDown)."""

    def rebuffer(self, conn: Connection, delta: int) -> bool:
        """``conn`` now buffers ``delta`` more bytes of partial frames (fewer if
        negative); False if that is past a budget (it was finished)."""

    def stream_ready(self, conn: Connection) -> None:
        """A subscriber can take events again (owes nothing, writable)."""

    def note_stall(self, seconds: float, what: str) -> None:
        """One of the connection's callbacks ran ``seconds`` (long)."""

    def read_ahead(self, conn: Connection, fd: int, take: bool) -> bytes:
        """``conn`` (plaintext, owing nothing) was answered: its next request
        if it calls alone and sends it within moments, else b"" (the loop
        reads on). Without ``take`` only wait for it (b""), and leave it to
        the loop."""

    def discard_later(self, conn: Connection) -> None:
        """An ending connection dropped its :data:`DISCARD_SLICE` and stopped
        reading: call :meth:`Connection.resume_discarding` in its turn."""


class Connection(asyncio.Protocol):
    """One client connection: frames in, answers out in request order."""

    def __init__(
        self, host: Host, tls: ssl.SSLContext | None = None, resume: Resume | None = None
    ) -> None:
        """``resume``: where the previous instance left this connection
        (taken back from systemd's store), for the host to apply at admission."""
        self.host = host
        self.resume = resume
        self._tls = tls
        #: What the client certificate names (TLS only; None on plain connections).
        self.tls_names: list[str] | None = None
        limits = host.limits
        self._limits = limits
        self._parser = wire.RequestParser(limits.max_method_len, limits.max_payload)
        self._max_in_flight = limits.max_in_flight
        self._quick = host.quick_calls
        self._answers: collections.deque[ResponsePlace] = collections.deque()
        # Requests received but not started: the in-flight limit holds them.
        self._backlog: collections.deque[wire.RequestEvent] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.state = State.SERVING if tls is None else State.HANDSHAKE
        #: How the connection closed, once it has (counted once by the host).
        self.close_reason: str | None = None
        self._read_paused = False
        self._write_paused = False
        # The client closed its side: close once every answer is written.
        self._peer_eof = False
        self._eof_sent = False
        self._seen_frame = False
        # DRAINING: requests still to answer ShuttingDown before reading stops.
        self._shed_left = 0
        # Bytes of partial frames held by the parser, as last told to the host.
        self._buffered = 0
        # When a frame last arrived or answers were last written.
        self.last_active = host.clock()
        # ENDING: when the client last sent something, and the end's timer.
        self._last_input = 0.0
        self._ending_since = 0.0
        self._end_timer: asyncio.TimerHandle | None = None
        # ENDING: bytes dropped since reading last paused; pausing now.
        self._discarded = 0
        self._discard_paused = False
        #: Where the connection comes from (``uid:N``, ``ip:ADDRESS``): the
        #: key of the connection and handshake budgets.
        self.origin = "unknown"
        #: Who calls: the origin, or with mutual TLS ``cert:NAME``; the key
        #: of the call, buffer and subscription budgets.
        self.peer = "unknown"
        #: The peer's (uid, gid) on a unix socket, None on TCP.
        self.creds: tuple[int, int] | None = None
        #: The event hub's bookkeeping while STREAMING.
        self.stream: Any = None
        # Reading ahead for a lone client: the socket (-1: none), what takes
        # its bytes (this connection, or its TLS layer, which decrypts and
        # hands the requests back), and whether a read-ahead is under way.
        self._fd = -1
        self._feed: Callable[[bytes], None] = self._receive
        self._ahead = False
        #: Its slot in the host's lane, -1 while the loop serves it.
        self.lane_slot = -1
        # May be offered to the lane (with a socket, the host has one, and
        # with TLS the session can be lent), and its reads in a row that
        # were quick calls only.
        self._lane_ok = False
        # Its TLS layer, once the handshake is done.
        self._layer: TLSLayer | None = None
        self._quick_run = 0

    # asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        self.origin, self.creds = peer_of(transport)
        self.peer = self.origin
        if self._tls is None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self._fd = sock.fileno()
                self._lane_ok = self.host.lane_calls
            self.host.admit(self)
        elif self.host.begin_handshake(self):
            layer = TLSLayer(
                self._transport,
                self._tls,
                self,
                self._limits.tls_handshake_timeout,
                lambda exc: self._tls_done(layer, exc),
                max_hello=self._limits.max_tls_hello,
            )
        else:
            self.close("refused")

    def _tls_done(self, layer: TLSLayer, exc: BaseException | None) -> None:
        self.host.handshake_done(self, exc)
        if exc is not None:
            # The layer has closed the socket; this connection never served.
            self._transport = None
            self._gone("handshake")
            return
        # From now on answers go through TLS.
        self._transport = cast(asyncio.Transport, layer)
        self._layer = layer
        self.tls_names = certificate_names(layer.get_extra_info("peercert"))
        sock = layer.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()
            self._feed = layer.data_received
            self._lane_ok = self.host.lane_calls and tlslane.available()
        if self.tls_names:
            self.peer = f"cert:{self.tls_names[0]}"
        self.state = State.SERVING
        self.host.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._gone("client")

    def data_received(self, data: bytes) -> None:
        started = _perf_counter()
        self._receive(data)
        # (a call in flight: not alone; a read-ahead under way: its TLS
        # layer handing back what it read)
        if self._fd >= 0 and not self._answers and not self._ahead:
            self._ahead = True
            try:
                self._read_ahead(started)
            finally:
                self._ahead = False
        if self._quick_run >= LANE_RUN and self._lane_ok and not self._answers:
            self._offer_lane()
        took = _perf_counter() - started
        if took > LONG_CALLBACK:
            self.host.note_stall(took, f"requests from {self.peer}")

    def _receive(self, data: bytes) -> None:
        state = self.state
        if state is not _SERVING and state is not _HOLDING:
            if state is _STREAMING:
                if self._parser.buffered + len(data) > STREAM_READ_MAX:
                    # A subscriber has nothing to say: refuse before buffering any of it.
                    self.host.refuse_stream_input(self)
                    return
            elif state is not _DRAINING:  # ENDING: dropped, at a bounded pace
                self._last_input = time.monotonic()
                self._discarded += len(data)
                if self._discarded >= DISCARD_SLICE and not self._discard_paused:
                    self._discard_paused = True
                    self._pause_reading()
                    self.host.discard_later(self)
                return
        elif (
            state is _SERVING
            and self._quick
            and not self._buffered
            and not self._answers
            and not self._backlog
            and not self._write_paused
        ):
            # Owes nothing and holds no part of a frame: the calls at the
            # start of data may be answered before it is parsed at all.
            used = self.host.quick(self, data)
            if used:
                self.last_active = self.host.clock()
                self._seen_frame = True
                self._flush()
                if used == len(data):
                    self._quick_run += 1
                    return
                data = data[used:]
        self._quick_run = 0
        parser = self._parser
        events = parser.feed(data)
        buffered = parser.buffered
        if buffered != self._buffered:
            delta, self._buffered = buffered - self._buffered, buffered
            if not self.host.rebuffer(self, delta):
                return
        if events:  # a half frame does not count as activity (--idle-timeout)
            self.last_active = self.host.clock()
            fresh = not self._seen_frame
            self._seen_frame = True
            self._backlog.extend(events)
            if state is not _DRAINING:
                self._dispatch()
                return
            if fresh:  # accepted just before the drain: its first read is served
                self._dispatch()
            self._shed()
            self._flush()
            if self._shed_left <= 0:
                # A client that pipelines on after the drain began: read no
                # more of it (what it sends from now on is never started).
                self._pause_reading()

    def _read_ahead(self, started: float) -> None:
        """Serve the next requests of a lone client as they come, without
        going back to the loop: while it owes nothing and the host finds
        one, at most :data:`READ_AHEAD_TURNS` of them or for
        :data:`READ_AHEAD_SLICE`; then wait for the next one to arrive
        before the loop's turn (which then need not sleep to read it). Over
        TLS what is read goes to the TLS layer, which hands the requests
        back through :meth:`data_received`."""
        transport = self._transport
        for turn in range(READ_AHEAD_TURNS + 1):
            if (
                self.state is not _SERVING
                or self._read_paused
                or self._write_paused
                or self._answers
                or self._buffered
                or self._backlog
                or transport is None
                or transport.is_closing()
                or transport.get_write_buffer_size()
            ):
                return
            take = turn < READ_AHEAD_TURNS and _perf_counter() - started <= READ_AHEAD_SLICE
            data = self.host.read_ahead(self, self._fd, take)
            if not data:
                return
            self._feed(data)

    def eof_received(self) -> bool:
        if self.state is State.ENDING:
            if self.close_reason is None:
                self.close_reason = "ended"
            return False  # the client has read our end: close now
        # Keep the write side open: answers to pipelined calls still go out.
        self._peer_eof = True
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
        if self._backlog and (_reading(self.state) or self.state is _HOLDING):
            self._dispatch()
        if (
            not self._backlog
            and self._read_paused
            and not self._write_paused
            and self._transport is not None
            and not self._peer_eof
            and (
                (_reading(self.state) and len(self._answers) < self._max_in_flight)
                # Draining: what is read is answered at once, up to _shed_left.
                or (self.state is _DRAINING and self._shed_left > 0)
            )
        ):
            self._read_paused = False
            self._transport.resume_reading()
        if self._quick_run >= LANE_RUN and self._lane_ok and not self._answers:
            self._offer_lane()

    def _offer_lane(self) -> None:
        """After a run of quick calls, owing nothing and holding no part of
        a frame, with every answer taken by the kernel: offer the socket to
        the host's lane, which reads it from now on until it gives it back
        (:meth:`left_lane`)."""
        transport = self._transport
        if (
            self.state is not _SERVING
            or self.lane_slot >= 0
            or self._backlog
            or self._buffered
            or self._read_paused
            or self._write_paused
            or self._peer_eof
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return
        tls = None
        if self._layer is not None:
            tls = self._layer.lane_session()
            if tls is None:
                return
        slot = self.host.enter_lane(self, self._fd, tls)
        if slot >= 0:
            self.lane_slot = slot
            self._pause_reading()

    def left_lane(self, unwritten: bytes, sent: bytes, last_active: float) -> None:
        """Back from the lane: write the rest of an answer it could not,
        then read on from the requests it had read and not served (behind a
        call it had in flight, which the host made this connection's), and
        with TLS from what the session holds unread. With TLS, ``unwritten``
        is sealed already."""
        self.lane_slot = -1
        self._quick_run = 0
        self.last_active = max(self.last_active, last_active)
        layer = self._layer
        transport = self._transport
        if unwritten and transport is not None:
            if layer is not None:
                layer.write_sealed(unwritten)
            else:
                transport.write(unwritten)
        if sent:
            self._receive(sent)
        if layer is not None:
            layer.read_held()
        self.deliver()

    def answer(self, frame: bytes) -> None:
        """Queue an immediate answer behind the calls already in flight."""
        self._answers.append(ResponsePlace(frame))

    @property
    def plaintext(self) -> bool:
        """Whether the connection is served without TLS."""
        return self._tls is None

    @property
    def seen_frame(self) -> bool:
        """Whether the client has sent a whole frame yet."""
        return self._seen_frame

    def owes_nothing(self) -> bool:
        """No answer owed and no request waiting (a half frame may be buffered)."""
        return not self._answers and not self._backlog

    # transitions ----------------------------------------------------------------

    def subscribe(self) -> None:
        """SERVING -> STREAMING: from now on events go out and a call ends
        the connection. Its buffers shrink so that a subscriber that does
        not read shows backpressure within :data:`STREAM_BUFFER` bytes."""
        if self.state is not _HOLDING:  # a subscribe read before the hold
            self.state = State.STREAMING
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A socket the kernel will not resize keeps its buffer.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER)
        transport.set_write_buffer_limits(high=STREAM_BUFFER)

    def stream_ready(self) -> bool:
        """Whether events may be written now: streaming, owed nothing, writable."""
        return (
            self.state is State.STREAMING
            and not self._answers
            and not self._write_paused
            and self._transport is not None
        )

    def write_stream(self, data: bytes) -> None:
        """Write events (the hub checked :meth:`stream_ready`)."""
        transport = self._transport
        if transport is not None:
            transport.write(data)

    def drain(self) -> None:
        """The daemon is stopping: start no new request, answer what was read.

        Calls in flight are answered as they finish. What was read but not
        started, and the requests read from now on, are answered
        ShuttingDown: not started, so a client may send them again
        elsewhere. (A client that pipelines on past ``--max-in-flight`` such
        answers is read no more.) A fresh connection (accepted just before the listeners
        closed, nothing read yet) is served its first read. The server ends
        the connection (:meth:`finish`) once it owes nothing and its client
        has gone quiet, or when ``--drain-idle-grace`` has passed. A TLS
        handshake under way is closed: nothing was asked yet.
        """
        if self.state is State.HANDSHAKE:
            self.close("shutdown")
            return
        if self.lane_slot >= 0:
            self.host.leave_lane(self)
        if not (_reading(self.state) or self.state is _HOLDING):
            return
        self.state = State.DRAINING
        # Requests read after this are answered ShuttingDown, up to what one
        # connection may be owed: a client that pipelines on is not fed forever.
        self._shed_left = self._max_in_flight + len(self._backlog)
        if self._seen_frame:
            self._shed()
        # Requests held back in the kernel by the in-flight limit are read and
        # answered now (behind the calls in flight), not left unanswered.
        self.deliver()

    def hold(self) -> bool:
        """SERVING/STREAMING -> HOLDING, for a hand-over to the next instance:
        read nothing more; what was read is still answered. False (nothing
        changes) for a connection in any other state."""
        if self.lane_slot >= 0:
            self.host.leave_lane(self)
        if not _reading(self.state) or self._peer_eof:
            return False
        self.state = State.HOLDING
        self._pause_reading()
        return True

    def quiet(self) -> bool:
        """HOLDING, owed nothing, and every answer taken by the kernel: the
        socket can change hands without a byte lost."""
        transport = self._transport
        return (
            self.state is _HOLDING
            and not self._answers
            and not self._backlog
            and transport is not None
            and not transport.get_write_buffer_size()
        )

    def detach(self) -> tuple[int, bytes]:
        """A :meth:`quiet` connection is about to leave this process: a new
        descriptor of its socket (the caller passes it on and closes it) and
        the bytes of a frame received in part. Nothing changes here until
        :meth:`let_go`."""
        transport = self._transport
        assert transport is not None and self.state is _HOLDING
        return os.dup(transport.get_extra_info("socket").fileno()), self._parser.pending()

    def let_go(self) -> None:
        """The connection was handed over: close it here ("handover")
        without the client seeing it, since its socket lives on elsewhere."""
        self.close_reason = "handover"
        transport = self._transport
        if transport is not None:
            transport.abort()
        else:
            self._gone("handover")

    def finish(self, frame: bytes | None = None) -> None:
        """-> ENDING: send ``frame`` (if any) after every answer owed, then
        half-close; requests not started are dropped. Later calls to finish
        are ignored: a connection ends once."""
        if self.state in (State.ENDING, State.CLOSED):
            return
        if self.lane_slot >= 0:
            self.host.leave_lane(self)
        self.state = State.ENDING
        self._backlog.clear()
        if self._buffered:  # no frame will be read any more: drop the partial one
            self.host.rebuffer(self, -self._buffered)
            self._buffered = 0
            limits = self._limits
            self._parser = wire.RequestParser(limits.max_method_len, limits.max_payload)
        if frame is not None:
            self.answer(frame)
        self._flush()

    def reject(self, frame: bytes, linger: bool) -> None:
        """Refused at admission: answer ``frame`` and end. With ``linger`` it
        ends as :meth:`finish` does (no reset while the client reads);
        without, it closes at once, so that a flood of refused connections
        costs one accept, a read and a close each. The read takes what the
        client already sent: closing with it unread would reset the
        connection."""
        if linger:
            self.close_reason = "refused"  # however it ends, it was refused
            self.finish(frame)
            return
        transport = self._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    os.read(sock.fileno(), REJECT_READ)
            transport.write(frame)
        self.close("refused")

    def close(self, reason: str) -> None:
        """-> CLOSED now (after the transport writes what it holds)."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.lane_slot >= 0:
            self.host.leave_lane(self)  # the lane must let go of the socket first
        transport = self._transport
        if transport is not None:
            transport.close()
        else:
            self._gone(reason)

    # internals -----------------------------------------------------------------

    def _gone(self, reason: str) -> None:
        """The connection is closed: give back what it holds, tell the host once."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self.close_reason is None:
            self.close_reason = reason
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None
        if self._buffered:
            self.host.rebuffer(self, -self._buffered)
            self._buffered = 0
        self._answers.clear()
        self._backlog.clear()
        self.host.forget(self)

    def _dispatch(self) -> None:
        """Start received requests while the client reads its answers and owes
        fewer than the in-flight limit: every answer counts, daemon and error
        answers too, so no request shape bypasses backpressure."""
        backlog = self._backlog
        answers = self._answers
        limit = self._max_in_flight
        handle = self.host.handle
        while backlog and not self._write_paused:
            state = self.state
            # Serving, streaming, holding, or the one read of a draining connection.
            if not (
                state is _SERVING or state is _STREAMING or state is _DRAINING or state is _HOLDING
            ):
                break
            while (
                backlog
                and len(answers) < limit
                and (
                    state is _SERVING
                    or state is _STREAMING
                    or state is _DRAINING
                    or state is _HOLDING
                )
            ):
                event = backlog.popleft()
                if type(event) is wire.Request:
                    handle(self, event)
                else:
                    self.host.refuse_frame(self, event)  # type: ignore[arg-type]
                state = self.state
            self._flush()
            if len(answers) >= limit:
                break  # a call in flight heads the queue: wait for it
        if backlog or len(answers) >= limit:
            self._pause_reading()

    def _flush(self) -> None:
        """Write every answer that is next in order; move on when none is owed."""
        transport = self._transport
        if transport is None:
            return
        answers = self._answers
        if answers:
            frame = answers[0].frame
            if frame is None:
                return  # the call heading the order is still in flight
            answers.popleft()
            if answers and answers[0].frame is not None:
                out = [frame]
                while answers and answers[0].frame is not None:
                    out.append(answers.popleft().frame)  # type: ignore[arg-type]
                frame = b"".join(out)
            # One answer (the usual case) is written as it is: no list, no copy.
            transport.write(frame)
            self.last_active = self.host.clock()
            if answers:
                return
        state = self.state
        if state is _ENDING:
            self._half_close(transport)
        elif self._peer_eof and not self._backlog:
            self.close("client")
        elif state is _STREAMING and not self._write_paused:
            self.host.stream_ready(self)

    def _half_close(self, transport: asyncio.Transport) -> None:
        """Every answer is written: half-close and read to discard until the
        client closes, goes quiet, or the end's deadline passes."""
        if self._eof_sent:
            return
        self._eof_sent = True
        if not transport.can_write_eof() or transport.is_closing():
            self.close("ended")
            return
        transport.write_eof()
        if not self._discard_paused:  # else it reads again in its turn
            self._read_paused = False
            transport.resume_reading()
        # The loop's own clock: these times pace its timers.
        self._last_input = self._ending_since = time.monotonic()
        self._end_timer = asyncio.get_running_loop().call_later(
            self._limits.linger, self._check_end
        )

    def _check_end(self) -> None:
        """Close at the deadline whatever the client does, or before it once
        the client has read every byte and gone quiet (closing then loses
        nothing, whatever it sends later)."""
        self._end_timer = None
        transport = self._transport
        if transport is None or self.state is not State.ENDING:
            return
        limits = self._limits
        now = time.monotonic()
        if now - self._ending_since >= limits.drain_timeout:
            if self.close_reason is None:
                self.close_reason = "deadline"
            if transport.get_write_buffer_size():
                transport.abort()  # it does not read: do not wait for it
            else:
                transport.close()
            return
        quiet = now - self._last_input
        if quiet >= limits.linger and not self._discard_paused and self._all_read(transport):
            self.close("ended")
            return
        wait = max(limits.linger - quiet, 0.05)
        wait = min(wait, limits.drain_timeout - (now - self._ending_since))
        self._end_timer = asyncio.get_running_loop().call_later(max(wait, 0.01), self._check_end)

    @staticmethod
    def _all_read(transport: asyncio.Transport) -> bool:
        """Nothing left to read either way: the client has read every byte
        written (only a unix socket tells: there a byte counts as sent until
        its reader takes it) and none of its own waits unread (a close would
        reset)."""
        if transport.get_write_buffer_size():
            return False
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return False  # TCP counts bytes as sent once acknowledged, read or not
        try:
            fd = sock.fileno()
            return not any(
                _COUNT.unpack(fcntl.ioctl(fd, request, _COUNT.pack(0)))[0]
                for request in (_SIOCOUTQ, _SIOCINQ)
            )
        except OSError:
            return False

    def resume_discarding(self) -> None:
        """Its turn: read (and drop) another :data:`DISCARD_SLICE`."""
        self._discard_paused = False
        self._discarded = 0
        transport = self._transport
        if transport is not None and self.state is State.ENDING:
            # Input the pause held back was not yet seen: quiet counts from here.
            self._last_input = time.monotonic()
            self._read_paused = False
            transport.resume_reading()

    def _shed(self) -> None:
        """Answer what was read but not started ShuttingDown (a frame that
        cannot be read ends the connection as ever)."""
        backlog = self._backlog
        while backlog and self.state is _DRAINING:
            event = backlog.popleft()
            if type(event) is wire.Request:
                self._shed_left -= 1
                self.host.shed(self, event)
            else:
                self.host.refuse_frame(self, event)  # type: ignore[arg-type]
        backlog.clear()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
