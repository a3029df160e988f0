"""The asyncio side of the daemon: connections, dispatch, health, drain.

Data flows one way: socket -> :class:`Connection` (framing) -> validated
request -> :class:`Server` -> library (or a daemon method) -> response frame,
queued in request order on its connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import cbor2

from .. import __version__
from ..protocol import errors, schema, wire
from ..protocol.errors import DaemonError
from ..protocol.limits import Limits
from .activation import Listener
from .library import Library
from .stats import LIBRARY_ERROR, OK, Stats

log = logging.getLogger("mytimerd")

#: How often timeouts are swept and the health of the library checked.
TICK: Final = 0.1
#: During a drain, a connection idle this long (nothing in flight, nothing
#: buffered) is closed; a fresh one gets this long to send its request.
DRAIN_IDLE_GRACE: Final = 0.5
#: After a final error (FrameTooLarge, TooManyConnections, ...), how long the
#: daemon keeps reading and discarding before it closes. Closing a socket with
#: unread input resets it, and the reset can destroy the answer in flight.
LINGER: Final = 1.0


class Slot:
    """A place in a connection's response order; ``frame`` is set when answered."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes | None = None) -> None:
        self.frame = frame


@dataclass(slots=True)
class Call:
    """A library call in flight."""

    conn: Connection
    slot: Slot
    method: str
    started: float


class Connection(asyncio.Protocol):
    """One client connection: frames in, responses out in request order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = wire.RequestParser(server.limits.max_method_len, server.limits.max_payload)
        self.queue: collections.deque[Slot] = collections.deque()
        # Requests received but not started: the in-flight limit holds them.
        self.backlog: collections.deque[wire.RequestEvent] = collections.deque()
        self.in_flight = 0
        self.transport: asyncio.Transport | None = None
        self.read_paused = False
        self.write_paused = False
        self.close_when_flushed = False
        self.closing = False
        self.last_active = time.monotonic()

    # asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connection_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering after a final error: discard
        self.last_active = time.monotonic()
        self.backlog.extend(self.parser.feed(data))
        self.dispatch()

    def dispatch(self) -> None:
        """Start received requests while the in-flight limit allows."""
        backlog = self.backlog
        limit = self.server.limits.max_in_flight
        handle = self.server.handle
        while backlog and self.in_flight < limit:
            event = backlog.popleft()
            if type(event) is wire.Request:
                handle(self, event)
            else:
                self.server.refuse_frame(self, event)  # type: ignore[arg-type]
                backlog.clear()
        self.flush()
        if backlog or self.in_flight >= limit:
            self._pause_reading()

    def eof_received(self) -> bool:
        if self.closing:
            return False
        # Keep the write side open: answers to pipelined calls still go out.
        self.close_when_flushed = True
        self.flush()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.maybe_resume()

    # used by the server ---------------------------------------------------

    def answer(self, frame: bytes) -> None:
        """Queue an immediate answer behind the calls already in flight."""
        self.queue.append(Slot(frame))

    def refuse(self, frame: bytes) -> None:
        """Send ``frame`` as the last answer, then close without a reset."""
        self.answer(frame)
        self.closing = True
        self.flush()

    def flush(self) -> None:
        """Write every answer that is next in order; close if asked to."""
        transport = self.transport
        if transport is None:
            return
        queue = self.queue
        if queue and queue[0].frame is not None:
            out = []
            while queue and queue[0].frame is not None:
                out.append(queue.popleft().frame)
            transport.write(b"".join(out))  # type: ignore[arg-type]
            self.last_active = time.monotonic()
        if queue:
            return
        if self.closing:
            if transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
                self.read_paused = False
                transport.resume_reading()
                asyncio.get_running_loop().call_later(LINGER, transport.close)
        elif self.close_when_flushed:
            transport.close()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def maybe_resume(self) -> None:
        """Start held requests, and read again once the limits allow it."""
        if self.backlog and not self.closing:
            self.dispatch()
        if (
            not self.backlog
            and self.read_paused
            and not self.write_paused
            and self.in_flight < self.server.limits.max_in_flight
            and self.transport is not None
            and not self.close_when_flushed
            and not self.closing
        ):
            self.read_paused = False
            self.transport.resume_reading()

    def is_idle(self) -> bool:
        """Nothing in flight, nothing half-received, nothing unwritten."""
        t = self.transport
        return (
            not self.queue
            and not self.backlog
            and self.parser.buffered == 0
            and (t is None or t.get_write_buffer_size() == 0)
        )


class Server:
    """Serves the listeners with one library context."""

    def __init__(
        self,
        library: Library,
        limits: Limits,
        timer_name: str,
        notify: Callable[[str], None],
    ) -> None:
        self.library = library
        self.limits = limits
        self.timer_name = timer_name
        self.notify = notify
        self.stats = Stats()
        self.connections: set[Connection] = set()
        self.pending: dict[int, Call] = {}
        self.next_id = 1
        self.library_version: str | None = None
        self.listeners: list[Listener] = []
        self._servers: list[asyncio.Server] = []
        # Liveness probes: id -> monotonic time sent. Probe ids count down
        # from the top of the id space so they never meet call ids.
        self._probes: dict[int, float] = {}
        self._next_probe = (1 << 64) - 1
        self._last_probe_answered: float | None = None
        self._slots = library.slots
        self._daemon_methods: dict[str, Callable[[], Any]] = {
            "mytimerd.describe": self.describe,
            "mytimerd.ping": self.ping,
            "mytimerd.stats": self.stats_response,
        }
        self._ticker: asyncio.TimerHandle | None = None

    # start-up -----------------------------------------------------------

    async def start(self, listeners: list[Listener]) -> None:
        """Learn the library's version, then accept on every listener."""
        self.library_version = await self._ask_version()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.library.fd, self._on_results)
        self._tick()
        self.listeners = listeners
        for listener in listeners:
            self._servers.append(
                await loop.create_server(
                    lambda: Connection(self), sock=listener.sock, backlog=socket.SOMAXCONN
                )
            )

    async def _ask_version(self) -> str | None:
        """One version call before serving: proves the context answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.probe_timeout
        if not self.library.submit(self._slots["version"], 0, b"\xa0"):
            return None
        while loop.time() < deadline:
            for _, ret, body in self.library.drain():
                if ret == wire.RET_OK:
                    value = cbor2.loads(body)
                    return value if isinstance(value, str) else repr(value)
                return None
            await asyncio.sleep(0.005)
        log.warning("the library did not answer version within %.1f s", self.limits.probe_timeout)
        return None

    # connections ----------------------------------------------------------

    def connection_made(self, conn: Connection) -> None:
        """Admit ``conn`` or answer TooManyConnections and close it."""
        self.stats.connections_total += 1
        if len(self.connections) >= self.limits.max_connections:
            self.stats.connections_refused += 1
            self.stats.errors["TooManyConnections"] += 1
            err = DaemonError(
                "TooManyConnections",
                f"{len(self.connections)} connections are open, the limit "
                f"(--max-connections) is {self.limits.max_connections}; retry later",
            )
            conn.refuse(wire.encode_response(wire.RET_ERR, err.body()))
            return
        self.connections.add(conn)

    def connection_lost(self, conn: Connection) -> None:
        """Forget ``conn``; its calls in flight finish and are dropped."""
        self.connections.discard(conn)

    # requests ---------------------------------------------------------------

    def handle(self, conn: Connection, request: wire.Request) -> None:
        """Validate and dispatch one request; its answer lands in ``conn``'s queue."""
        started = time.monotonic()
        method = schema.BY_NAME.get(request.method)
        try:
            if method is None:
                schema.lookup(request.method)  # raises UnknownMethod
                raise AssertionError("unreachable")
            method.validate(request.payload)
        except DaemonError as exc:
            self._answer_error(conn, method.name if method else "(unknown)", exc, started)
            return
        if not method.library:
            try:
                body = cbor2.dumps(self._daemon_methods[method.name]())
            except Exception:
                log.exception("daemon method %s failed", method.name)
                err = DaemonError("Internal", f"{method.name} failed; see the daemon's log")
                self._answer_error(conn, method.name, err, started)
                return
            self.stats.record(method.name, OK, time.monotonic() - started)
            conn.answer(wire.encode_response(wire.RET_OK, body))
            return
        call_id = self.next_id
        self.next_id = call_id + 1
        slot = Slot()
        if not self.library.submit(self._slots[method.name], call_id, request.payload):
            err = DaemonError("ShuttingDown", "the library is shutting down")
            self._answer_error(conn, method.name, err, started)
            return
        conn.queue.append(slot)
        conn.in_flight += 1
        self.pending[call_id] = Call(conn, slot, method.name, started)

    def _answer_error(
        self, conn: Connection, method: str, err: DaemonError, started: float
    ) -> None:
        self.stats.record_error(method, err.name, time.monotonic() - started)
        conn.answer(wire.encode_response(wire.RET_ERR, err.body()))

    def refuse_frame(
        self, conn: Connection, event: wire.MethodNameTooLong | wire.FrameTooLarge
    ) -> None:
        """Answer a frame that cannot be read, then close the connection."""
        if isinstance(event, wire.FrameTooLarge):
            err = DaemonError(
                "FrameTooLarge",
                f"payload of {event.length} bytes exceeds the limit of {event.limit}",
            )
            method = event.method.decode("utf-8", "replace")
        else:
            err = DaemonError(
                "MethodNameTooLong",
                f"method name of {event.length} bytes exceeds the limit of {event.limit}",
            )
            method = "(unknown)"
        self.stats.record_error(method, err.name, 0.0)
        conn.refuse(wire.encode_response(wire.RET_ERR, err.body()))

    def _finish(self, call: Call, ret: int, body: bytes, error: str | None = None) -> None:
        """Answer ``call``; ``error`` names the daemon error it was answered with."""
        call.slot.frame = wire.encode_response(ret, body)
        call.conn.in_flight -= 1
        seconds = time.monotonic() - call.started
        if error:
            self.stats.record_error(call.method, error, seconds)
        else:
            self.stats.record(call.method, OK if ret == wire.RET_OK else LIBRARY_ERROR, seconds)

    def _fail(self, call: Call, err: DaemonError) -> None:
        """Answer ``call`` with a daemon error instead of the library's answer."""
        self._finish(call, wire.RET_ERR, err.body(), err.name)

    @staticmethod
    def _deliver(conns: set[Connection]) -> None:
        """Write what became answerable and read again where limits allow."""
        for conn in conns:
            conn.flush()
            conn.maybe_resume()

    def _on_results(self) -> None:
        """The eventfd fired: hand every waiting result to its connection."""
        touched: set[Connection] = set()
        pending = self.pending
        for call_id, ret, body in self.library.drain():
            call = pending.pop(call_id, None)
            if call is None:
                if call_id in self._probes:
                    self._probe_answered(call_id)
                else:  # answered Timeout already
                    self.stats.late_results += 1
                continue
            self._finish(call, ret, body)
            touched.add(call.conn)
        self._deliver(touched)

    # timeouts and health ------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        self._expire(now - self.limits.timeout)
        self._probe(now)
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _expire(self, older_than: float) -> None:
        expired = []
        for call_id, call in self.pending.items():  # insertion order = age order
            if call.started > older_than:
                break
            expired.append(call_id)
        touched: set[Connection] = set()
        for call_id in expired:
            call = self.pending.pop(call_id)
            err = DaemonError(
                "Timeout",
                f"{call.method} did not complete within {self.limits.timeout:g} s (--timeout)",
            )
            self._fail(call, err)
            touched.add(call.conn)
        self._deliver(touched)

    def _probe(self, now: float) -> None:
        interval = min(1.0, self.limits.probe_timeout / 2)
        newest = max(self._probes.values(), default=None)
        if newest is not None and now - newest < interval:
            return
        probe_id = self._next_probe
        self._next_probe -= 1
        if self.library.submit(self._slots["version"], probe_id, b"\xa0"):
            self._probes[probe_id] = now
        # A library that never answers must not grow this without bound.
        stale = now - 10 * max(self.limits.probe_timeout, 1.0)
        for old in [k for k, sent in self._probes.items() if sent < stale]:
            del self._probes[old]

    def _probe_answered(self, probe_id: int) -> None:
        sent = self._probes.pop(probe_id)
        self._last_probe_answered = time.monotonic()
        # Probes sent before an answered one say nothing more.
        for old in [k for k, t in self._probes.items() if t <= sent]:
            del self._probes[old]

    def health(self) -> tuple[bool, str]:
        """(healthy, why): the library answers probes and no call is stuck."""
        now = time.monotonic()
        limit = self.limits.probe_timeout
        blocked = self.library.status().in_call_seconds
        if blocked > limit:
            return False, f"a library call has been blocking for {blocked:.1f} s"
        oldest = min(self._probes.values(), default=None)
        if oldest is not None and now - oldest > limit:
            return False, f"the library has not answered a liveness probe for {now - oldest:.1f} s"
        return True, "ok"

    # daemon methods ------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The mytimerd.describe response."""
        return {
            "daemon": {"name": "mytimerd", "version": __version__},
            "library": {"path": self.library.path, "version": self.library_version},
            "timerName": self.timer_name,
            "methods": [m.describe() for m in schema.METHODS],
            "limits": self.limits.describe(),
            "errors": {errors.PREFIX + k: v for k, v in errors.CATALOGUE.items()},
            "listeners": [{"name": x.name, "address": x.address} for x in self.listeners],
        }

    def ping(self) -> dict[str, Any]:
        """The mytimerd.ping response."""
        healthy, why = self.health()
        answered = self._last_probe_answered
        return {
            "healthy": healthy,
            "status": why,
            "uptimeSeconds": self.stats.uptime(),
            "library": {
                "lastProbeAgoSeconds": None if answered is None else time.monotonic() - answered,
                "submitBlockedSeconds": self.library.status().in_call_seconds,
                "inFlight": len(self.pending),
            },
        }

    def stats_response(self) -> dict[str, Any]:
        """The mytimerd.stats response."""
        return self.stats.snapshot(len(self.connections), len(self.pending))

    def status_line(self, healthy: bool, why: str) -> str:
        """A one-line STATUS= for systemctl status, given :meth:`health`."""
        calls = sum(sum(c.values()) for c in self.stats.calls.values())
        text = (
            f"Serving {len(self.connections)} connections, {len(self.pending)} calls in "
            f"flight, {calls} calls answered"
        )
        return text if healthy else f"{text}; UNHEALTHY: {why}"

    # shutdown ----------------------------------------------------------------

    async def drain(self) -> None:
        """Stop accepting, let calls finish within the drain deadline, close."""
        for srv in self._servers:
            srv.close()
        for listener in self.listeners:
            listener.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.drain_timeout
        while loop.time() < deadline:
            # Sleep first: connections asyncio accepted just before the close
            # are attached a loop iteration or two later, and must be served,
            # not dropped with the process.
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.is_idle() and now - conn.last_active >= DRAIN_IDLE_GRACE:
                    if conn.transport is not None:
                        conn.transport.close()
                    self.connections.discard(conn)
            if not self.pending and not self.connections:
                break
            self.notify(
                f"STATUS=Stopping: {len(self.pending)} calls in flight, "
                f"{len(self.connections)} connections open"
            )
        touched: set[Connection] = set()
        for call in self.pending.values():
            err = DaemonError(
                "ShuttingDown",
                f"the daemon stopped before the library answered "
                f"(--drain-timeout {self.limits.drain_timeout:g} s)",
            )
            self._fail(call, err)
            touched.add(call.conn)
        self.pending.clear()
        self._deliver(touched)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._ticker is not None:
            self._ticker.cancel()
        loop.remove_reader(self.library.fd)
        # Let the transports write what they hold before the loop ends.
        await asyncio.sleep(0)
