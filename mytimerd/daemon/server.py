"""The server: admits connections, answers requests with one library context,
keeps time (timeouts, health, watchdog) and shuts down with a drain.

Data flows one way: :class:`~.connection.Connection` (framing) -> validated
request -> :class:`Server` -> library (or a daemon method) -> an answer in
the connection's order. The server reaches connections only through their
small interface and the library only through :class:`~.library.Library`, so
all of it runs in memory against a fake library in the tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from ..protocol import wire
from ..protocol.errors import DaemonError
from ..protocol.schema import Interface
from . import introspection
from .activation import Listener
from .admission import Admission
from .config import Config
from .connection import Connection, ResponsePlace
from .events import EventHub
from .health import Health
from .journal import RefusalLog
from .library import EVENT_ID_BASE, Library
from .stats import LIBRARY_ERROR, OK, Stats

log = logging.getLogger("mytimerd")

#: The one periodic tick: timeouts, liveness probes, health, watchdog, status.
TICK: Final = 0.1
#: How often STATUS= is sent to systemd and idle connections are looked for.
SLOW_TICK: Final = 1.0
#: The request every liveness probe and the start-up check send: ``version({})``.
_VERSION_REQUEST: Final = b"\xa0"


@dataclass(slots=True)
class Call:
    """A library call in flight."""

    conn: Connection
    place: ResponsePlace
    method: str
    started: float


def _no_notify(message: str) -> None:
    """Not run by systemd: nobody to tell."""


class Server:
    """Serves the listeners with one library context."""

    def __init__(
        self,
        config: Config,
        library: Library,
        interface: Interface,
        notify: Callable[[str], None] = _no_notify,
        clock: Callable[[], float] = time.monotonic,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``interface``: the library's methods and events, as described;
        ``tls``: the context TCP listeners serve with (None: plaintext)."""
        self.config = config
        self.interface = interface
        self.tls = tls
        self.limits = config.limits
        self.library = library
        self.notify = notify
        self.clock = clock
        self.stats = Stats(clock)
        self.refusals = RefusalLog(clock)
        self.events = EventHub(interface, config.limits.max_subscriber_queue)
        self.admission = Admission(config, self.stats, self.refusals)
        #: The connections being served (refused ones are not).
        self.connections = self.admission.open
        self.pending: dict[int, Call] = {}
        # Call id -> request bytes, for every call the library has not answered
        # yet, answered by the daemon (Timeout) or not: the global budget.
        self.held: dict[int, int] = {}
        self.held_bytes = 0
        # Bytes of partial frames across all connections.
        self.buffered_bytes = 0
        self.next_id = 1
        self.library_version: str | None = None
        self.listeners: list[Listener] = []
        self.health = Health(
            self.limits.probe_timeout,
            lambda probe_id: library.submit("version", probe_id, _VERSION_REQUEST),
        )
        self._healthy = True
        self._last_slow_tick = -math.inf
        self._last_watchdog = -math.inf
        self._servers: list[asyncio.Server] = []
        self._daemon_methods: dict[str, Callable[[Server], Any]] = {
            "mytimerd.describe": introspection.describe,
            "mytimerd.ping": introspection.ping,
            "mytimerd.stats": introspection.stats,
        }
        self._ticker: asyncio.TimerHandle | None = None
        #: Set when the drain starts: connections take no new requests.
        self.draining = False

    # start-up ---------------------------------------------------------------

    async def start(self, listeners: list[Listener]) -> None:
        """Learn the library's version, start the tick, accept on every listener."""
        self.library_version = await self._ask_version()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.library.fd, self.on_results)
        self._schedule_tick()
        self.listeners = listeners
        for listener in listeners:
            tls = self.tls if listener.tcp_host is not None else None
            self._servers.append(
                await loop.create_server(
                    lambda tls=tls: Connection(self, tls),  # type: ignore[misc]
                    sock=listener.sock,
                    backlog=socket.SOMAXCONN,
                )
            )

    async def _ask_version(self) -> str | None:
        """One version call before serving: proves the context answers."""
        timeout = self.limits.probe_timeout
        deadline = self.clock() + timeout
        if not self.library.submit("version", 0, _VERSION_REQUEST):
            return None
        while self.clock() < deadline:
            for _, ret, body in self.library.results():
                if ret == wire.RET_OK:
                    value = cbor2.loads(body)
                    return value if isinstance(value, str) else repr(value)
                return None
            await asyncio.sleep(0.005)
        log.warning("the library did not answer version within %.1f s", timeout)
        return None

    # connections (the Host interface of Connection) ---------------------------

    def admit(self, conn: Connection) -> None:
        """Serve ``conn``, or answer why not and close it."""
        err = self.admission.admit(conn)
        if err is not None:
            conn.refuse(wire.encode_response(wire.RET_ERR, err.body()))
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "connection from %s (%d open)",
                conn.peer,
                len(self.connections),
                extra={"PEER": conn.peer},
            )
        if self.draining:  # accepted just before the listeners closed
            conn.drain()

    def begin_handshake(self, conn: Connection) -> bool:
        """A TLS client connected: count its handshake, or close it at once
        when the connection or descriptor limits leave no room."""
        return self.admission.begin_handshake(conn)

    def handshake_failed(self, conn: Connection, exc: BaseException | None) -> None:
        """A handshake ended (``exc`` None: it succeeded); failures are
        counted and logged, rate-limited."""
        self.admission.end_handshake(conn, exc)

    def forget(self, conn: Connection) -> None:
        """``conn`` is gone; its calls in flight finish and are dropped."""
        self.events.drop(conn)
        if log.isEnabledFor(logging.DEBUG) and conn in self.connections:
            log.debug("connection from %s closed", conn.peer, extra={"PEER": conn.peer})
        self.admission.drop(conn)

    def handle(self, conn: Connection, request: wire.Request) -> None:
        """Validate and dispatch one request; its answer lands in ``conn``'s order."""
        started = self.clock()
        method = self.interface.by_name.get(request.method)
        try:
            if conn.subscribed:
                raise DaemonError(
                    "Subscribed",
                    "this connection is an event stream; make calls on another connection",
                )
            if method is None:
                self.interface.lookup(request.method)  # raises UnknownMethod
                raise AssertionError("unreachable")
            method.validate(request.payload, self.limits.max_items)
            if method.name == "mytimerd.subscribe":
                names = self.events.subscribe(conn, cbor2.loads(request.payload))
                self.stats.record(method.name, OK, self.clock() - started)
                conn.answer(wire.encode_response(wire.RET_OK, cbor2.dumps({"subscribed": names})))
                return
            if method.name in self.library.unavailable:
                raise DaemonError(
                    "MethodUnavailable",
                    f"{self.library.path} lacks the entry point of {method.name}, which "
                    f"its description ({self.interface.source}) lists",
                )
        except DaemonError as exc:
            name = method.name if method else "(unknown)"
            if exc.name == "Subscribed":
                self.stats.record_error(name, exc.name, 0.0)
                self.refusals(exc.name, conn.peer, name, exc.message)
                conn.refuse(wire.encode_response(wire.RET_ERR, exc.body()))
                return
            self._answer_error(conn, name, exc, started)
            return
        if not method.library:
            try:
                body = cbor2.dumps(self._daemon_methods[method.name](self))
            except Exception:
                log.exception("daemon method %s failed", method.name)
                err = DaemonError("Internal", f"{method.name} failed; see the daemon's log")
                self._answer_error(conn, method.name, err, started)
                return
            self.stats.record(method.name, OK, self.clock() - started)
            conn.answer(wire.encode_response(wire.RET_OK, body))
            return
        size = len(request.payload)
        limits = self.limits
        if (
            len(self.held) >= limits.max_held_calls
            or self.held_bytes + size > limits.max_held_bytes
        ):
            err = DaemonError(
                "Overloaded",
                f"the library holds {len(self.held)} calls, {self.held_bytes} request bytes "
                f"(--max-held-calls {limits.max_held_calls}, --max-held-bytes "
                f"{limits.max_held_bytes}); retry later",
            )
            self._answer_error(conn, method.name, err, started)
            return
        call_id = self.next_id
        if not self.library.submit(method.name, call_id, request.payload):
            err = DaemonError("ShuttingDown", "the library is shutting down")
            self._answer_error(conn, method.name, err, started)
            return
        self.next_id = call_id + 1
        self.held[call_id] = size
        self.held_bytes += size
        self.pending[call_id] = Call(conn, conn.reserve(), method.name, started)

    def refuse_frame(
        self, conn: Connection, event: wire.MethodNameTooLong | wire.FrameTooLarge
    ) -> None:
        """Answer a frame that cannot be read, then close the connection."""
        if isinstance(event, wire.FrameTooLarge):
            err = DaemonError(
                "FrameTooLarge",
                f"payload of {event.length} bytes exceeds the limit of {event.limit}",
            )
            # Stats are keyed by known names only: a client chooses this one.
            known = self.interface.by_name.get(event.method)
            method = known.name if known else "(unknown)"
        else:
            foreign = wire.foreign_protocol(event.length)
            hint = f" (this looks like {foreign}, not the mytimerd framing)" if foreign else ""
            err = DaemonError(
                "MethodNameTooLong",
                f"method name of {event.length} bytes exceeds the limit of {event.limit}{hint}",
            )
            method = "(unknown)"
        self.stats.record_error(method, err.name, 0.0)
        self.refusals(err.name, conn.peer, method, err.message)
        conn.refuse(wire.encode_response(wire.RET_ERR, err.body()))

    def rebuffer(self, conn: Connection, delta: int) -> bool:
        """Account for partial frames across all connections; refuse the one
        that takes the total past --max-buffered-bytes (Overloaded)."""
        self.buffered_bytes += delta
        limit = self.limits.max_buffered_bytes
        if delta <= 0 or self.buffered_bytes <= limit:
            return True
        err = DaemonError(
            "Overloaded",
            f"connections hold {self.buffered_bytes} bytes of unfinished requests "
            f"(--max-buffered-bytes {limit}); retry later",
        )
        self.stats.record_refusal(err.name)
        self.refusals(err.name, conn.peer, "(unfinished frame)", err.message)
        conn.refuse(wire.encode_response(wire.RET_ERR, err.body()))
        return False

    def shed(self, conn: Connection, request: wire.Request) -> None:
        """Answer a request read but not started before the drain: ShuttingDown."""
        known = self.interface.by_name.get(request.method)
        err = DaemonError("ShuttingDown", "the daemon is stopping; this request was not started")
        self._answer_error(conn, known.name if known else "(unknown)", err, self.clock())

    # answers ------------------------------------------------------------------

    def _answer_error(
        self, conn: Connection, method: str, err: DaemonError, started: float
    ) -> None:
        self.stats.record_error(method, err.name, self.clock() - started)
        self.refusals(err.name, conn.peer, method, err.message)
        conn.answer(wire.encode_response(wire.RET_ERR, err.body()))

    def _finish(self, call: Call, ret: int, body: bytes, error: str | None = None) -> None:
        """Answer ``call``; ``error`` names the daemon error it was answered with."""
        call.conn.complete(call.place, wire.encode_response(ret, body))
        seconds = self.clock() - call.started
        if error:
            self.stats.record_error(call.method, error, seconds)
        else:
            self.stats.record(call.method, OK if ret == wire.RET_OK else LIBRARY_ERROR, seconds)

    def _fail(self, calls: list[Call], err: Callable[[Call], DaemonError]) -> None:
        """Answer ``calls`` with daemon errors instead of the library's answers."""
        touched: set[Connection] = set()
        for call in calls:
            e = err(call)
            self._finish(call, wire.RET_ERR, e.body(), e.name)
            self.refusals(e.name, call.conn.peer, call.method, e.message)
            touched.add(call.conn)
        for conn in touched:
            conn.deliver()

    def on_results(self) -> None:
        """The library has results: hand each to its connection."""
        touched: set[Connection] = set()
        pending = self.pending
        held = self.held
        debug = log.isEnabledFor(logging.DEBUG)
        for call_id, ret, body in self.library.results():
            size = held.pop(call_id, None)
            if size is not None:
                self.held_bytes -= size
            call = pending.pop(call_id, None)
            if call is None:
                if self.health.owns(call_id):
                    self.health.answered(call_id, self.clock())
                elif call_id >= EVENT_ID_BASE:
                    self.events.publish(call_id - EVENT_ID_BASE, body)
                else:  # answered Timeout already
                    self.stats.late_results += 1
                continue
            self._finish(call, ret, body)
            if ret != wire.RET_OK and debug:
                log.debug(
                    "library error in %s for %s: %s",
                    call.method,
                    call.conn.peer,
                    body.decode("utf-8", "replace"),
                    extra={"METHOD": call.method, "PEER": call.conn.peer},
                )
            touched.add(call.conn)
        for conn in touched:
            conn.deliver()

    # the tick: timeouts, health, watchdog, status ---------------------------------

    def _schedule_tick(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._on_tick)

    def _on_tick(self) -> None:
        self.tick()
        self._schedule_tick()

    def tick(self) -> None:
        """Time out late calls, probe the library, report health to systemd."""
        now = self.clock()
        self._expire(now - self.limits.timeout)
        self.health.tick(now)
        healthy, why = self.health_verdict()
        if healthy != self._healthy:
            (log.info if healthy else log.error)(
                "library %s",
                "healthy again" if healthy else why,
                extra={"LIBRARY_HEALTHY": int(healthy), "LIBRARY_STATUS": why},
            )
            self._healthy = healthy
        watchdog = self.config.watchdog
        if watchdog is not None and healthy and now - self._last_watchdog >= watchdog:
            self.notify("WATCHDOG=1")
            self._last_watchdog = now
        if now - self._last_slow_tick >= SLOW_TICK:
            self._close_idle(now - self.limits.idle_timeout)
            self.refusals.flush()
            self.notify(f"STATUS={self.status_line(healthy, why)}")
            self._last_slow_tick = now

    def _close_idle(self, older_than: float) -> None:
        idle = [
            conn
            for conn in self.connections
            # A subscriber waits for events, not for itself: never idle.
            if conn.last_active <= older_than and conn.owes_nothing() and not conn.subscribed
        ]
        for conn in idle:
            self.admission.drop(conn)
            conn.close()
        self.stats.idle_closed += len(idle)

    def _expire(self, older_than: float) -> None:
        expired = []
        for call_id, call in self.pending.items():  # insertion order = age order
            if call.started > older_than:
                break
            expired.append(call_id)
        timeout = self.limits.timeout
        self._fail(
            [self.pending.pop(call_id) for call_id in expired],
            lambda call: DaemonError(
                "Timeout", f"{call.method} did not complete within {timeout:g} s (--timeout)"
            ),
        )

    def health_verdict(self) -> tuple[bool, str]:
        """(healthy, why): the library answers probes and no call is stuck."""
        return self.health.verdict(self.clock(), self.library.status().in_call_seconds)

    def status_line(self, healthy: bool, why: str) -> str:
        """A one-line STATUS= for systemctl status, given :meth:`health_verdict`."""
        text = (
            f"Serving {len(self.connections)} connections, {len(self.pending)} calls in "
            f"flight, {self.stats.answered()} calls answered"
        )
        return text if healthy else f"{text}; UNHEALTHY: {why}"

    # shutdown ------------------------------------------------------------------

    async def shutdown(self) -> None:
        """The drain: stop accepting and reading, answer everything read, end
        every connection cleanly, return once in-flight calls are answered
        (``--drain-timeout`` at most, then ShuttingDown for what is left)."""
        self.draining = True
        for srv in self._servers:
            srv.close()
        for listener in self.listeners:
            listener.close()
        for conn in list(self.connections):
            conn.drain()
        limits = self.limits
        deadline = self.clock() + limits.drain_timeout
        while await self._drain_step(deadline):
            self.notify(
                f"STATUS=Stopping: {len(self.pending)} calls in flight, "
                f"{len(self.connections)} connections open"
            )
        calls = list(self.pending.values())
        self.pending.clear()
        self._fail(
            calls,
            lambda call: DaemonError(
                "ShuttingDown",
                f"the daemon stopped before the library answered "
                f"(--drain-timeout {limits.drain_timeout:g} s)",
            ),
        )
        # Connections answered by the deadline end cleanly within --linger.
        until = self.clock() + limits.linger
        while await self._drain_step(until):
            pass
        for conn in list(self.connections):
            conn.close()
        if self._ticker is not None:
            self._ticker.cancel()
        asyncio.get_running_loop().remove_reader(self.library.fd)
        # Let the transports write what they hold before the loop ends.
        await asyncio.sleep(0)

    async def _drain_step(self, until: float) -> bool:
        """Wait a little; end connections that have been owed nothing for
        ``--drain-idle-grace``. False once nothing is left or ``until`` passed."""
        await asyncio.sleep(0.02)
        now = self.clock()
        grace = self.limits.drain_idle_grace
        for conn in list(self.connections):
            if conn.owes_nothing() and now - conn.last_active >= grace:
                conn.end()
        return now < until and bool(self.pending or self.connections)
