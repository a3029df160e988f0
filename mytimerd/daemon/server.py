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
import collections
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import cbor2

from .. import __version__
from ..protocol import wire
from ..protocol.errors import DaemonError
from ..protocol.schema import Interface
from . import handover, introspection, readahead
from .activation import BOUND, Listener
from .admission import Admission, permission_denied
from .config import Config
from .connection import LONG_CALLBACK, Connection, ResponsePlace, State
from .events import EventHub
from .gate import UnixGate, hand_over
from .health import Health
from .journal import RefusalLog
from .lane import Lane
from .library import EVENT_ID_BASE, Library, Result
from .looplag import LoopLag
from .readahead import READ_AHEAD_MIN_WAIT as READ_AHEAD_MIN_WAIT  # (tests patch it here)
from .shares import Budget, CallLedger, nearly_full
from .stats import LIBRARY_ERROR, OK, Stats
from .tls import handshake_failure

log = logging.getLogger("mytimerd")
_perf_counter: Final = time.perf_counter

#: The one periodic tick: timeouts, liveness probes, health, watchdog, status.
TICK: Final = 0.1
#: How often the drain looks at its connections; also how long a draining
#: connection owed nothing must have been quiet before it is ended.
DRAIN_STEP: Final = 0.02
#: How often STATUS= is sent to systemd and idle connections are looked for.
SLOW_TICK: Final = 1.0
#: The request every liveness probe and the start-up check send to the probe
#: method (``version`` unless --probe-method names another): ``{}``.
_PROBE_REQUEST: Final = b"\xa0"
#: Library results handled in one turn of the loop; the rest wait for the next.
RESULTS_SLICE: Final = 1024
#: While degraded, the journal repeats its warning at most this often (seconds).
_DEGRADED_REPEAT: Final = 60.0
#: Calls in a row by one connection after which its calls' answers are
#: waited for on the spot (Server._alone).
ALONE: Final = 2
#: Calls in a row by one connection, none in flight, after which the loop
#: waits on its socket for its next request after each answer
#: (:meth:`Server.read_ahead`); many, as a wait for one client while others
#: call would hold them: with several calling, one seldom calls 8 in a row.
READ_AHEAD_STREAK: Final = 8
#: Ending connections that get a turn to read (and drop) another
#: DISCARD_SLICE of what their clients send, per turn of the loop: the loop's
#: discarding per turn is bounded however many connections end at once.
DISCARD_TURNS: Final = 8
#: A connection in the lane that completes no request for this long (at
#: most half --idle-timeout) goes back to the loop, whose idle timeout then
#: applies; so does one whose call has been in flight for LANE_SLOW (the
#: loop's --timeout then applies to it).
LANE_QUIET: Final = 1.0
LANE_SLOW: Final = TICK
#: The first bytes of a response frame that answers RET_OK.
_RET_OK_HEAD: Final = wire.RET_OK.to_bytes(4, "big")


class Call:
    """A library call in flight.

    A plain class, not a dataclass: ``@dataclass`` compiles its methods at
    every start (see mytimerd/protocol/record.py)."""

    __slots__ = ("conn", "method", "place", "started")

    def __init__(self, conn: Connection, place: ResponsePlace, method: str, started: float) -> None:
        self.conn = conn
        self.place = place
        self.method = method
        self.started = started


def _wake(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` (a reader callback may run again before it is removed)."""
    if not future.done():
        future.set_result(None)


def _no_notify(message: str) -> None:
    """Not run by systemd: nobody to tell."""


def _schedule(delay: float, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the running loop after ``delay`` seconds (0: soon)."""
    loop = asyncio.get_running_loop()
    if delay > 0:
        loop.call_later(delay, callback)
    else:
        loop.call_soon(callback)


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
        schedule: Callable[[float, Callable[[], None]], None] = _schedule,
    ) -> None:
        """``interface``: the library's methods and events, as described;
        ``tls``: the context TCP listeners serve with (None: plaintext);
        ``schedule(delay, callback)``: run work later on the loop (slices)."""
        self.config = config
        self.interface = interface
        self.tls = tls
        self.limits = config.limits
        self.library = library
        self.notify = notify
        self.clock = clock
        self.stats = Stats(clock)
        self.refusals = RefusalLog(clock)
        self.loop_lag = LoopLag(clock, self.limits.loop_stall_warning)
        self._schedule = schedule
        self.events = EventHub(interface, self.limits, schedule, clock)
        self.events.on_cut_off = self._cut_off
        self.events.on_slice = self._note_slice
        self.admission = Admission(config)
        #: The connections being served (refused ones and handshakes are not).
        self.connections = self.admission.open
        self.pending: dict[int, Call] = {}
        # Results taken from the library and not handed out yet.
        self._results: collections.deque[Result] = collections.deque()
        self._hand_out_scheduled = False
        #: Every call the library has not answered yet (answered Timeout by
        #: the daemon or not), and unfinished frames, each per peer.
        self.ledger = CallLedger(self.limits)
        #: The shared budgets, for health, stats and the journal.
        self.budgets: list[Budget] = [
            self.ledger.calls,
            self.ledger.bytes,
            self.ledger.buffered,
            self.admission.connections,
            self.admission.handshakes,
            self.events.budget,
        ]
        self._degraded: list[str] = []
        self._degraded_logged = -math.inf
        self._max_delay_ms = round(self.limits.max_delay * 1000)
        # Who made the last calls, and how many in a row (_alone).
        self._caller: Connection | None = None
        self._streak = 0
        # How long read_ahead waits for the caller now, and at most.
        self._read_ahead_max = self.limits.read_ahead_wait / 1e6
        self._read_ahead_wait = self._read_ahead_max
        #: Whether the library's quick path serves calls (:meth:`quick`).
        self.quick_calls = bool(library.quicken(self._quick_methods()))
        #: The lane serving quick calls in C (:mod:`.lane`); None when off.
        self.lane: Lane | None = library.lane(self.limits.lane_slots) if self.quick_calls else None
        self.lane_calls = self.lane is not None
        # Slot -> the connection in it; peer -> its connections there.
        self._lane_conns: dict[int, Connection] = {}
        self._lane_peers: dict[str, int] = {}
        self._lane_share = max(1, self.limits.lane_slots // 4)
        self._lane_quiet = min(LANE_QUIET, self.limits.idle_timeout / 2)
        # Calls the lane answered, and connections it gave back by why.
        self._lane_answered = 0
        self._lane_backs: collections.Counter[str] = collections.Counter()
        self.next_id = 1
        self.library_version: str | None = None
        self.listeners: list[Listener] = []
        self.health = Health(
            self.limits.probe_timeout,
            lambda probe_id: library.submit(config.probe_method, probe_id, _PROBE_REQUEST),
        )
        self._healthy = True
        self._last_slow_tick = -math.inf
        self._last_watchdog = -math.inf
        self._servers: list[asyncio.Server] = []
        self._gates: list[UnixGate] = []
        # uid -> (message, frame) of the gate's PermissionDenied.
        self._early: dict[int, tuple[str, bytes]] = {}
        # Connections accepted at the drain, until their protocol is made.
        self._accepting: set[asyncio.Task[None]] = set()
        self._daemon_methods: dict[str, Callable[[Server], Any]] = {
            "mytimerd.describe": introspection.describe,
            "mytimerd.ping": introspection.ping,
            "mytimerd.stats": introspection.stats,
        }
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        # Ending connections waiting for their turn to discard, in order.
        self._discarding: collections.deque[Connection] = collections.deque()
        self._discard_turn: asyncio.Handle | None = None
        #: Set when the daemon announces it will stop (--drain-grace): ping
        #: reports it not accepting while it still serves.
        self.announced_drain = False
        #: Set when the drain starts: connections take no new requests.
        self.draining = False
        self._drain_began = math.inf

    # start-up ---------------------------------------------------------------

    async def start(
        self, listeners: list[Listener], stored: list[tuple[int, str]] | None = None
    ) -> None:
        """Learn the library's version, take back the connections a previous
        instance left in systemd's store (``stored``: descriptor, name),
        start the tick, accept on every listener."""
        self.library_version = await self._ask_version()
        if stored:
            # Before the library's results are read: a resumed subscriber
            # misses none of this instance's events.
            await self._adopt(stored)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.library.fd, self.on_results)
        if self.lane is not None:
            loop.add_reader(self.lane.fd, self._lane_turn)
        self._schedule_tick()
        self.listeners = listeners
        for listener in listeners:
            tls = self.tls if listener.tcp_host is not None else None
            if tls is None and listener.tcp_host is None and self.admission.restricted:
                self._gates.append(UnixGate(listener, lambda: Connection(self), self._refuse_early))
                continue
            self._servers.append(
                await loop.create_server(
                    lambda tls=tls: Connection(self, tls),  # type: ignore[misc]
                    sock=listener.sock,
                    backlog=socket.SOMAXCONN,
                )
            )

    async def _adopt(self, stored: list[tuple[int, str]]) -> None:
        """Resume the connections of systemd's store with the state stored
        beside them; close those the state does not describe (a crash in the
        middle of a hand-over, another version's state): never guess where a
        client's frames begin."""
        # Out of the store first: should this instance die, the next must not
        # resume them a second time from a state that is stale by then.
        for name in sorted(handover.NAMES):
            self.notify(f"FDSTOREREMOVE=1\nFDNAME={name}")
        conns = [
            conn
            for fd, name in stored
            if name == handover.CONN_NAME
            for conn in handover.unload(fd, self.limits.max_connections)
        ]
        states = [fd for fd, name in stored if name == handover.STATE_NAME]
        resumes: dict[int, handover.Resume] = {}
        why = ""
        if len(states) != 1:
            why = "no state was stored with them" if not states else f"{len(states)} states"
            for fd in states:
                os.close(fd)
        else:
            limit = handover.state_limit(
                self.limits.max_connections, self.limits.max_buffered_bytes
            )
            try:
                version, resumes = handover.decode(handover.read_state(states[0], limit))
            except handover.HandoverError as exc:
                why = f"their state is unusable: {exc}"
            else:
                if version != __version__:
                    log.info("taking back connections from mytimerd %s", version)
        taken = 0
        for fd in conns:
            try:
                resume = resumes.get(handover.inode_of(fd))
            except OSError:
                resume = None
            if resume is None:
                os.close(fd)
                continue
            hand_over(socket.socket(fileno=fd), self._resumed(resume), self._accepting)
            taken += 1
        if self._accepting:
            await asyncio.wait(list(self._accepting))
        if why:
            log.error(
                "closed %d connections from systemd's file descriptor store: %s",
                len(conns),
                why,
                extra={"HANDOVER_CLOSED": len(conns)},
            )
        elif taken or conns:
            log.info(
                "took back %d connections from systemd's file descriptor store%s",
                taken,
                f" (closed {len(conns) - taken} the state does not describe)"
                if taken < len(conns)
                else "",
                extra={"HANDOVER_TAKEN": taken},
            )

    def _resumed(self, resume: handover.Resume) -> Callable[[], Connection]:
        """The protocol factory of one resumed connection."""
        return lambda: Connection(self, resume=resume)

    def _resume(self, conn: Connection, resume: handover.Resume) -> None:
        """Go on where the previous instance stopped: what it owed first,
        the subscription, then the part of a frame it had read."""
        if resume.owed:
            conn.answer(resume.owed)
        if resume.events is not None:
            try:
                names = self.events.check_subscribe(conn, {"events": list(resume.events)})
            except DaemonError as exc:  # the events changed with the library, or no room
                self._end_with(conn, "mytimerd.subscribe", exc)
                return
            self.events.subscribe(conn, names)
        conn.deliver()
        if resume.received:
            conn.data_received(resume.received)

    async def _ask_version(self) -> str | None:
        """One probe call (a version call) before serving: proves the
        context answers; its answer is the library's version."""
        timeout = self.limits.probe_timeout
        deadline = self.clock() + timeout
        if not self.library.submit(self.config.probe_method, 0, _PROBE_REQUEST):
            return None
        loop = asyncio.get_running_loop()
        while self.clock() < deadline:
            for _, ret, body in self.library.results():
                if ret == wire.RET_OK:
                    value = cbor2.loads(body)
                    return value if isinstance(value, str) else repr(value)
                return None
            # Woken by the library's descriptor, not a polling interval: the
            # answer comes in well under a millisecond, and every start waits
            # for it before it serves (5 ms of a cold start with a 5 ms poll).
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.library.fd, _wake, readable)
            try:
                await asyncio.wait_for(readable, max(0.0, deadline - self.clock()))
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(self.library.fd)
        log.warning(
            "the library did not answer %s within %.1f s", self.config.probe_method, timeout
        )
        return None

    # connections (the Host interface of Connection) ---------------------------

    def admit(self, conn: Connection) -> None:
        """Serve ``conn``, or answer why not and close it."""
        if conn.tls_names is None:  # a TLS connection was counted at its handshake
            self.stats.connection_accepted()
        err, at_fd_limit = self.admission.admit(conn)
        if err is not None:
            self.stats.connection_refused(err.name, at_fd_limit)
            self.refusals(err.name, conn.peer, "(connection)", err.message)
            frame = wire.encode_response(wire.RET_ERR, err.body())
            conn.reject(frame, linger=self.admission.may_linger(conn))
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "connection from %s (%d open)",
                conn.peer,
                len(self.connections),
                extra={"PEER": conn.peer},
            )
        if conn.resume is not None:
            resume, conn.resume = conn.resume, None
            self._resume(conn, resume)
        if self.draining:  # accepted just before the listeners closed
            conn.drain()

    def _refuse_early(self, uid: int, gid: int, refused: int = 0) -> bytes | None:
        """A unix peer at the gate: the answer to close it with at once when
        the allow-lists refuse it and refused connections may not linger
        any more (a flood); None to serve it the ordinary way. With
        ``refused``, no peer waits: the gate has closed that many of (uid,
        gid) with this answer on its own, and they are counted."""
        origin = f"uid:{uid}"
        if not refused and (
            not self.admission.refuses(uid, gid) or not self.admission.lingering_full(origin)
        ):
            return None
        early = self._early.get(uid)
        if early is None:  # a flood comes from few uids: each answer is made once
            if len(self._early) >= 64:
                self._early.clear()
            err = permission_denied(uid)
            early = self._early[uid] = (
                err.message,
                wire.encode_response(wire.RET_ERR, err.body()),
            )
        count = refused or 1
        self.stats.connection_accepted(count)
        self.stats.connection_refused("PermissionDenied", count=count)
        self.stats.connection_closed("refused", count)
        self.refusals("PermissionDenied", origin, "(connection)", early[0], count)
        return early[1]

    def begin_handshake(self, conn: Connection) -> bool:
        """A TLS client connected: count its handshake, or close it at once
        (counted and logged) when a budget leaves no room."""
        self.stats.connection_accepted()
        why = self.admission.begin_handshake(conn)
        if why is None:
            return True
        self.stats.connection_refused("TooManyConnections")
        self.refusals(
            "TooManyConnections", conn.origin, "(TLS connection)", f"closed before TLS: {why}"
        )
        return False

    def handshake_done(self, conn: Connection, exc: BaseException | None) -> None:
        """A handshake ended (``exc`` None: it succeeded); failures are
        counted and logged, rate-limited."""
        self.admission.end_handshake(conn)
        if exc is None:
            return
        self.stats.handshake_failed()
        self.refusals(
            "TLSHandshake",
            conn.origin,
            "(connection)",
            f"TLS handshake failed: {handshake_failure(exc)}",
        )

    def forget(self, conn: Connection) -> None:
        """``conn`` is gone; its calls in flight finish and are dropped."""
        self.events.drop(conn)
        if log.isEnabledFor(logging.DEBUG) and conn in self.connections:
            log.debug(
                "connection from %s closed (%s)",
                conn.peer,
                conn.close_reason,
                extra={"PEER": conn.peer},
            )
        if conn.lane_slot >= 0 and self.lane is not None:
            # (every close leaves the lane first; this one closed regardless)
            self.lane.take(conn.lane_slot)
            self._lane_release(conn)
            conn.lane_slot = -1
        self.admission.forget(conn)
        self.stats.connection_closed(conn.close_reason or "client")

    def handle(self, conn: Connection, request: wire.Request) -> None:
        """Validate and dispatch one request; its answer lands in ``conn``'s order."""
        started = self.clock()
        method = self.interface.by_name.get(request.method)
        try:
            if conn.stream is not None:
                raise DaemonError(
                    "Subscribed",
                    "this connection is an event stream; make calls on another connection",
                )
            if method is None:
                self.interface.lookup(request.method)  # raises UnknownMethod
                raise AssertionError("unreachable")
            value = method.validate(request.payload, self.limits.max_items)
            if method.held_paths:
                self._check_delays(method.held_paths, value)
            if method.name == "mytimerd.subscribe":
                names = self.events.check_subscribe(conn, value)
                self.events.subscribe(conn, names)
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
                self._end_with(conn, name, exc)
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
        refused = self.ledger.check_call(conn.peer, size)
        if refused is not None:
            self._answer_error(conn, method.name, refused, started)
            return
        call_id = self.next_id
        answer = self.library.call(method.name, call_id, request.payload, self._alone(conn, 1))
        if answer is False:
            err = DaemonError("ShuttingDown", "the library is shutting down")
            self._answer_error(conn, method.name, err, started)
            return
        self.next_id = call_id + 1
        if answer is True:
            self.ledger.hold(call_id, conn.peer, size)
            self.pending[call_id] = Call(conn, conn.reserve(), method.name, started)
            return
        # Answered on the spot: nothing was held past this line, so the
        # ledger never saw it (no other call was checked meanwhile).
        ok = answer[:4] == _RET_OK_HEAD
        self.stats.record(method.name, OK if ok else LIBRARY_ERROR, self.clock() - started)
        if not ok and log.isEnabledFor(logging.DEBUG):
            self._log_library_error(method.name, conn, answer[8:])
        conn.answer(answer)

    def _alone(self, conn: Connection, calls: int) -> bool:
        """``conn`` makes ``calls`` calls: whether it made the last
        :data:`ALONE` calls before them, so that its answers are worth
        waiting for on the spot: the loop has nothing else to do meanwhile.
        With several clients calling, answers are collected as they come
        (the next client's call is read meanwhile), not one at a time."""
        if conn is self._caller:
            streak = self._streak
            self._streak = streak + calls
            return streak >= ALONE
        self._caller = conn
        self._streak = calls
        self._read_ahead_wait = self._read_ahead_max
        return False

    def _calls_alone(self, conn: Connection) -> bool:
        """Whether ``conn`` may be read ahead (by the loop, or by the lane in
        C): its last :data:`READ_AHEAD_STREAK` calls were the only ones,
        none is in flight, and --read-ahead-wait is not 0."""
        return (
            conn is self._caller
            and self._streak >= READ_AHEAD_STREAK
            and not self.pending
            and self._read_ahead_max > 0
        )

    def read_ahead(self, conn: Connection, fd: int, take: bool) -> bytes:
        """If ``conn`` calls alone (its last :data:`READ_AHEAD_STREAK` calls
        were the only ones, and none is in flight), wait a while for its next
        request (and with ``take`` read it). The wait halves after one in
        vain, down to :data:`READ_AHEAD_MIN_WAIT`, and doubles after one that
        saw the request, up to ``--read-ahead-wait`` (0: no waiting): a
        client that calls now and then costs little busy waiting."""
        if not self._calls_alone(conn):
            return b""
        wait = self._read_ahead_wait
        data = readahead.spin_read(fd, wait) if take else b""
        if data or (not take and readahead.spin_wait(fd, wait)):
            self._read_ahead_wait = min(self._read_ahead_max, wait * 2)
        else:
            self._read_ahead_wait = min(self._read_ahead_max, max(READ_AHEAD_MIN_WAIT, wait / 2))
        return data

    # the lane -------------------------------------------------------------------

    def enter_lane(self, conn: Connection, fd: int, tls: object = None) -> int:
        """``conn`` (owing nothing, after a run of quick calls) offers its
        socket ``fd``, and with TLS its session ``tls``
        (:func:`.tlslane.session`), to the lane: its slot there, or -1 if not
        taken: no lane, draining, debug logging, its peer's share of the
        lane or of held calls full, the lane full."""
        lane = self.lane
        if (
            lane is None
            or self.draining
            or log.isEnabledFor(logging.DEBUG)  # the lane does not log library errors
        ):
            return -1
        peer = conn.peer
        there = self._lane_peers.get(peer, 0)
        if there >= self._lane_share or self.ledger.check_call(peer, 1) is not None:
            return -1
        slot = lane.add(fd, tls)
        if slot < 0:
            return -1
        self._lane_peers[peer] = there + 1
        # Its one call in flight, counted while it is there.
        self.ledger.hold(-1 - slot, peer, 1)
        self._lane_conns[slot] = conn
        return slot

    def leave_lane(self, conn: Connection) -> None:
        """Take ``conn`` back from the lane (before its state changes)."""
        self._lane_back(conn.lane_slot, "taken")

    def _lane_release(self, conn: Connection) -> None:
        """Give back what ``conn``'s place in the lane held."""
        slot = conn.lane_slot
        del self._lane_conns[slot]
        self.ledger.release(-1 - slot)
        peer = conn.peer
        left = self._lane_peers[peer] - 1
        if left:
            self._lane_peers[peer] = left
        else:
            del self._lane_peers[peer]

    def _lane_back(self, slot: int, why: str) -> None:
        """The connection in ``slot`` goes back to the loop (counted by
        ``why``): its call in flight (if any) becomes an ordinary one, then
        it writes what the lane did not and reads on from what it sent."""
        assert self.lane is not None
        self._lane_backs[why] += 1
        conn = self._lane_conns[slot]
        taken = self.lane.take(slot)
        self._lane_release(conn)
        in_flight = taken.in_flight
        if in_flight is not None:
            # Its answer comes as an orphan of the lane's (_lane_turn). In
            # pending a little out of age order: --timeout may end it up to
            # LANE_SLOW late.
            self.ledger.hold(in_flight.call_id, conn.peer, 1)
            self.pending[in_flight.call_id] = Call(
                conn, conn.reserve(), in_flight.method, in_flight.started
            )
        conn.left_lane(taken.unwritten, taken.sent, taken.last_active)

    def _lane_turn(self) -> None:
        """The lane has work: one bounded turn of it, then what it handed back."""
        assert self.lane is not None
        started = _perf_counter()
        conns = self._lane_conns
        sole = next(iter(conns.values())) if len(conns) == 1 else None
        # The lane's only connection, calling alone: the lane may serve it
        # on the spot, as read-ahead would. Several, with no call in flight
        # outside the lane: the turn may wait for their answers due.
        idle = self._calls_alone(sole) if sole is not None else not self.pending
        turn = self.lane.run(self._read_ahead_max if idle else 0.0)
        if sole is not None and turn.calls:
            self._alone(sole, turn.calls)  # its calls count as a Python caller's
        record = self.stats.record_many
        for method, ret, seconds in turn.answered:
            record(method, OK if ret == wire.RET_OK else LIBRARY_ERROR, seconds)
        self._lane_answered += turn.calls
        for slot, why in turn.back:
            self._lane_back(slot, why)
        if turn.orphans:
            self._results.extend(turn.orphans)
            self._hand_out()
        took = _perf_counter() - started
        if took > LONG_CALLBACK:
            self.loop_lag.note(took, "the lane")

    def _lane_sweep(self) -> None:
        """Take back the lane's quiet connections and slow calls."""
        if self._lane_conns and self.lane is not None:
            for slot, why in self.lane.sweep(self._lane_quiet, LANE_SLOW):
                self._lane_back(slot, why)

    def lane_snapshot(self) -> dict[str, Any]:
        """For mytimerd.stats: the lane's connections now, its room (0: off),
        the calls it answered and the connections it gave back, by why."""
        return {
            "connections": len(self._lane_conns),
            "slots": self.lane.slots if self.lane is not None else 0,
            "calls": self._lane_answered,
            "handedBack": dict(self._lane_backs),
        }

    def _quick_methods(self) -> list[str]:
        """The library methods whose calls with ``{}`` (a0) :meth:`handle`
        would take as they are: the same validation, no delay to check, a
        name and payload within the framing's limits; so the quick path
        serves exactly the calls the slow one would make."""
        limits = self.limits
        if limits.max_payload < 1:
            return []
        names = []
        for method in self.interface.library_methods:
            if (
                method.name in self.library.unavailable
                or len(method.name.encode()) > limits.max_method_len
            ):
                continue
            try:
                value = method.validate(b"\xa0", limits.max_items)
                self._check_delays(method.held_paths, value)
            except DaemonError:
                continue
            names.append(method.name)
        return names

    def quick(self, conn: Connection, data: bytes) -> int:
        """Serve the calls at the start of ``data`` (frames of a connection
        that owes nothing) that the library's quick path takes: calls with
        ``{}`` answered within a few microseconds, their answers queued in
        ``conn``; the last one may go on as an ordinary call in flight.
        Returns the bytes they took (0: none; the ordinary path reads
        ``data``). With the peer's share of the library full, or debug
        logging on (which logs each library error), none is taken."""
        if self.ledger.check_call(conn.peer, 1) is not None or log.isEnabledFor(logging.DEBUG):
            return 0
        call_id = self.next_id
        used, frames, made = self.library.quick(data, call_id, self._alone(conn, 1))
        self._streak += len(made) - 1  # _alone counted one call
        if not made:
            return 0
        self.next_id = call_id + len(made)
        record = self.stats.record
        for method, ret, seconds in made:
            if ret >= 0:
                record(method, OK if ret == wire.RET_OK else LIBRARY_ERROR, seconds)
        if frames:
            conn.answer(frames)
        method, ret, seconds = made[-1]
        if ret < 0:  # in flight: one call, which check_call allowed
            call_id += len(made) - 1
            self.ledger.hold(call_id, conn.peer, 1)
            self.pending[call_id] = Call(conn, conn.reserve(), method, self.clock() - seconds)
        return used

    def _check_delays(self, paths: tuple[tuple[str, ...], ...], value: Any) -> None:
        """Refuse a delay longer than --max-delay: the call would hold its
        peer's share of the library's budget that long."""
        for path in paths:
            item = value
            for key in path:
                item = item.get(key) if isinstance(item, dict) else None
            if isinstance(item, int) and item > self._max_delay_ms:
                raise DaemonError(
                    "InvalidParameter",
                    f"{'.'.join(path)}: {item} ms is longer than this daemon lets a call "
                    f"wait ({self._max_delay_ms} ms, --max-delay {self.limits.max_delay:g} s)",
                )

    def refuse_frame(
        self, conn: Connection, event: wire.MethodNameTooLong | wire.FrameTooLarge
    ) -> None:
        """Answer a frame that cannot be read, then end the connection."""
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
        self._end_with(conn, method, err)

    def refuse_stream_input(self, conn: Connection) -> None:
        """A subscriber sent more than a stray call: end it."""
        err = DaemonError(
            "Subscribed",
            "this connection is an event stream and reads no requests; make calls on "
            "another connection",
        )
        self._end_with(conn, "(unfinished frame)", err)

    def rebuffer(self, conn: Connection, delta: int) -> bool:
        """Account for partial frames, per peer and across all connections;
        end the connection that takes either past its bound."""
        err = self.ledger.rebuffer(conn.peer, delta)
        if err is None:
            return True
        self.stats.record_refusal(err.name)
        self.refusals(err.name, conn.peer, "(unfinished frame)", err.message)
        conn.finish(wire.encode_response(wire.RET_ERR, err.body()))
        return False

    def shed(self, conn: Connection, request: wire.Request) -> None:
        """Answer a request read but not started before the drain: ShuttingDown."""
        known = self.interface.by_name.get(request.method)
        err = DaemonError("ShuttingDown", "the daemon is stopping; this request was not started")
        self._answer_error(conn, known.name if known else "(unknown)", err, self.clock())

    def stream_ready(self, conn: Connection) -> None:
        """A subscriber can take events again."""
        self.events.ready(conn)

    def _cut_off(self, conn: Connection, err: DaemonError) -> None:
        """The event hub cut off a slow subscriber: its last answer says why."""
        self.stats.record_refusal(err.name)
        self.refusals(err.name, conn.peer, "(events)", err.message)
        conn.finish(wire.encode_response(wire.RET_ERR, err.body()))

    def _note_slice(self, seconds: float) -> None:
        if seconds > LONG_CALLBACK:
            self.loop_lag.note(seconds, "the event fan-out")

    def note_stall(self, seconds: float, what: str) -> None:
        """A connection's callback ran long: the loop-lag watch names it."""
        self.loop_lag.note(seconds, what)

    def discard_later(self, conn: Connection) -> None:
        """Queue an ending connection for its next turn to discard (each
        connection waits in the queue at most once)."""
        self._discarding.append(conn)
        if self._discard_turn is None:
            self._discard_turn = asyncio.get_running_loop().call_soon(self._next_discard_turn)

    def _next_discard_turn(self) -> None:
        self._discard_turn = None
        queue = self._discarding
        for _ in range(min(DISCARD_TURNS, len(queue))):
            queue.popleft().resume_discarding()
        if queue:
            self._discard_turn = asyncio.get_running_loop().call_soon(self._next_discard_turn)

    # answers ------------------------------------------------------------------

    def _answer_error(
        self, conn: Connection, method: str, err: DaemonError, started: float
    ) -> None:
        self.stats.record_error(method, err.name, self.clock() - started)
        self.refusals(err.name, conn.peer, method, err.message)
        conn.answer(wire.encode_response(wire.RET_ERR, err.body()))

    def _end_with(self, conn: Connection, method: str, err: DaemonError) -> None:
        """Answer ``err`` last and end the connection."""
        self.stats.record_error(method, err.name, 0.0)
        self.refusals(err.name, conn.peer, method, err.message)
        conn.finish(wire.encode_response(wire.RET_ERR, err.body()))

    def _finish(self, call: Call, ret: int, body: bytes, error: str | None = None) -> None:
        """Answer ``call``; ``error`` names the daemon error it was answered with."""
        call.conn.complete(call.place, wire.encode_response(ret, body))
        seconds = self.clock() - call.started
        if error:
            self.stats.record_error(call.method, error, seconds)
        else:
            self.stats.record(call.method, OK if ret == wire.RET_OK else LIBRARY_ERROR, seconds)

    def _log_library_error(self, method: str, conn: Connection, body: bytes) -> None:
        log.debug(
            "library error in %s for %s: %s",
            method,
            conn.peer,
            body.decode("utf-8", "replace"),
            extra={"METHOD": method, "PEER": conn.peer},
        )

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
        """The library has results: take them, and hand them out in slices."""
        self._results.extend(self.library.results())
        self._hand_out()

    def _hand_out(self) -> None:
        """Hand at most :data:`RESULTS_SLICE` results to their connections;
        the rest wait for the next turn of the loop."""
        self._hand_out_scheduled = False
        started = _perf_counter()
        results = self._results
        take = results.popleft
        touched: dict[Connection, None] = {}  # ordered: answers go out as they came
        pending = self.pending
        release = self.ledger.release
        finish = self._finish
        clock = self.clock
        debug = log.isEnabledFor(logging.DEBUG)
        for _ in range(min(RESULTS_SLICE, len(results))):
            call_id, ret, body = take()
            release(call_id)
            call = pending.pop(call_id, None)
            if call is None:
                if self.health.owns(call_id):
                    self.health.answered(call_id, clock())
                elif call_id >= EVENT_ID_BASE:
                    self.events.publish(call_id - EVENT_ID_BASE, body)
                else:  # answered Timeout already
                    self.stats.late_result()
                continue
            finish(call, ret, body)
            conn = call.conn
            if ret != wire.RET_OK and debug:
                self._log_library_error(call.method, conn, body)
            touched[conn] = None
        for conn in touched:
            conn.deliver()
        if results and not self._hand_out_scheduled:
            self._hand_out_scheduled = True
            self._schedule(0.0, self._hand_out)
        took = _perf_counter() - started
        if took > LONG_CALLBACK:
            self.loop_lag.note(took, "library results")

    # the tick: timeouts, health, watchdog, status ---------------------------------

    def _schedule_tick(self) -> None:
        self._tick_due = self.clock() + TICK
        self._ticker = asyncio.get_running_loop().call_later(TICK, self._on_tick)

    def _on_tick(self) -> None:
        # How late the tick fires is how long the loop was kept from it.
        self.loop_lag.tick(max(0.0, self.clock() - self._tick_due))
        self.tick()
        self._schedule_tick()

    def tick(self) -> None:
        """Time out late calls, probe the library, report health to systemd."""
        now = self.clock()
        self._lane_sweep()
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
            self.events.tick(now)
            self._check_budgets(now)
            self.refusals.flush()
            self.notify(f"STATUS={self.status_line(healthy, why)}")
            self._last_slow_tick = now

    def _check_budgets(self, now: float) -> None:
        """Warn when a global budget is nearly exhausted (rate-limited), and
        when it is not any more."""
        reasons = nearly_full(self.budgets)
        if reasons and (not self._degraded or now - self._degraded_logged >= _DEGRADED_REPEAT):
            log.warning(
                "degraded: %s",
                "; ".join(reasons),
                extra={"DEGRADED": 1, "DEGRADED_REASONS": "; ".join(reasons)},
            )
            self._degraded_logged = now
        elif self._degraded and not reasons:
            log.info("no longer degraded: every budget has room again", extra={"DEGRADED": 0})
        self._degraded = reasons

    def announce_drain(self) -> None:
        """The daemon will stop soon: report not accepting through ping (a
        balancer's health check) while still serving."""
        self.announced_drain = True

    def accepting(self) -> bool:
        """Whether a balancer should send work here: healthy and not stopping."""
        return self.health_verdict()[0] and not self.announced_drain and not self.draining

    def degraded(self) -> list[str]:
        """Why the daemon is degraded now (a global budget nearly exhausted)."""
        return nearly_full(self.budgets)

    def _close_idle(self, older_than: float) -> None:
        idle = [
            conn
            for conn in self.connections
            # A subscriber waits for events, not for itself: never idle.
            if conn.last_active <= older_than
            and conn.owes_nothing()
            and conn.stream is None
            and conn.lane_slot < 0  # the lane's sweep gives it back first
        ]
        for conn in idle:
            conn.close("idle")

    def _expire(self, older_than: float) -> None:
        expired: list[int] = []
        for call_id, call in self.pending.items():  # insertion order = age order
            if call.started > older_than or len(expired) >= RESULTS_SLICE:
                break  # the rest at the next tick: a bounded slice per tick
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
        if self._degraded:
            text += f"; DEGRADED: {self._degraded[0]}"
        return text if healthy else f"{text}; UNHEALTHY: {why}"

    # shutdown ------------------------------------------------------------------

    async def shutdown(self, store: handover.Store | None = None) -> None:
        """The drain: stop accepting and reading, answer everything read, end
        every connection cleanly; return once every connection is closed,
        ``--drain-timeout`` at the latest. In-flight calls get until
        ``--linger`` before that deadline (then Timeout), so that their
        answers still go out in time.

        With a ``store``, plaintext connections are not ended but handed to
        it once everything they sent is answered (:mod:`.handover`), as
        many as it takes; the rest are drained."""
        self.draining = True
        for listener in self.listeners:
            if listener.name == BOUND:
                self._take_waiting(listener)
        for srv in self._servers:
            srv.close()
        for gate in self._gates:
            gate.close()
        for listener in self.listeners:
            listener.close()
        # Every connection leaves the lane (its reader stays for the answers
        # of calls still in flight there, now the loop's).
        for conn in list(self._lane_conns.values()):
            self.leave_lane(conn)
        held = self._hold() if store is not None else []
        for conn in self.admission.counted():
            if conn.state is not State.HOLDING:
                conn.drain()
        limits = self.limits
        start = self._drain_began = self.clock()
        deadline = start + limits.drain_timeout
        calls_deadline = deadline - min(limits.linger, limits.drain_timeout / 2)
        # One step at least: a connection accepted just before the listeners
        # closed may not have been made yet.
        while await self._drain_step(calls_deadline) and self.pending:
            self.notify(
                f"STATUS=Stopping: {len(self.pending)} calls in flight, "
                f"{len(self.connections)} connections open"
            )
        calls = list(self.pending.values())
        self.pending.clear()
        self._fail(
            calls,
            # Started, so not ShuttingDown (which says "not started: send it
            # again"): the library may still carry it out.
            lambda call: DaemonError(
                "Timeout",
                f"the daemon stopped before the library answered {call.method} "
                f"(--drain-timeout {limits.drain_timeout:g} s)",
            ),
        )
        if held and store is not None:
            await self._hand_over(held, store)
            # The connections handed over wait for the next instance, which
            # starts once this one exits: the rest (TLS, clients that did not
            # read) get --linger more, not the whole --drain-timeout.
            deadline = min(deadline, self.clock() + limits.linger)
        # Connections end once their client has read the end (or went quiet).
        while self.admission.counted() and await self._drain_step(deadline):
            pass  # each step waits a little
        for conn in self.admission.counted():
            conn.close("shutdown")
        if self._ticker is not None:
            self._ticker.cancel()
        if self._discard_turn is not None:
            self._discard_turn.cancel()
        self._discarding.clear()
        asyncio.get_running_loop().remove_reader(self.library.fd)
        if self.lane is not None:
            asyncio.get_running_loop().remove_reader(self.lane.fd)
        # Let the transports write what they hold before the loop ends.
        await asyncio.sleep(0)

    def _hold(self) -> list[Connection]:
        """Stop reading the plaintext connections, to hand them over (TLS
        keys live in this process: those connections drain)."""
        return [conn for conn in self.admission.counted() if conn.plaintext and conn.hold()]

    async def _hand_over(self, held: list[Connection], store: handover.Store) -> None:
        """Once the ``held`` connections owe nothing and the kernel has every
        answer (``--linger`` at most), put them and their state in the
        store; drain those that do not get there."""
        deadline = self.clock() + self.limits.linger
        while any(c.state is State.HOLDING and not c.quiet() for c in held):
            if self.clock() >= deadline:
                break
            await asyncio.sleep(DRAIN_STEP)
        conns: list[Connection] = []
        fds: list[int] = []
        resumes: list[handover.Resume] = []
        owed_room = handover.MAX_OWED
        for conn in held:
            if not conn.quiet():
                conn.drain()  # a client that does not read: it ends as in any drain
                continue
            unsent = self.events.unsent(conn)
            events, owed = (None, b"") if unsent is None else (tuple(unsent[0]), unsent[1])
            if len(owed) > owed_room:
                conn.drain()
                continue
            owed_room -= len(owed)
            fd, received = conn.detach()
            conns.append(conn)
            fds.append(fd)
            resumes.append(handover.Resume(handover.inode_of(fd), received, owed, events))
        if not conns:
            return
        try:
            stored = handover.store(store.notify, fds, handover.encode(resumes, __version__))
        finally:
            for fd in fds:
                os.close(fd)
        if stored == len(conns):
            for conn in conns:
                conn.let_go()
            log.info(
                "handed %d connections to systemd's file descriptor store",
                stored,
                extra={"HANDOVER_STORED": stored},
            )
            return
        # Take back what went in (without its state the next instance would
        # close it) and end these connections here.
        store.notify(f"FDSTOREREMOVE=1\nFDNAME={handover.CONN_NAME}", [])
        log.error(
            "systemd did not take %d connections into its file descriptor store: they are drained",
            len(conns),
        )
        for conn in conns:
            conn.drain()

    def _take_waiting(self, listener: Listener) -> None:
        """Accept the connections waiting on a socket this process bound (its
        close would reset them), to serve each its first read; systemd keeps
        its own sockets open, so theirs wait for the next instance."""
        tls = self.tls if listener.tcp_host is not None else None
        for _ in range(self.limits.max_connections):
            try:
                sock, _ = listener.sock.accept()
            except OSError:  # nothing more waits (or the socket is gone)
                return
            hand_over(sock, lambda: Connection(self, tls), self._accepting)

    async def _drain_step(self, until: float) -> bool:
        """Wait a little; end connections that owe nothing and have been quiet
        for a step, and every one once ``--drain-idle-grace`` has passed since
        the drain began (its calls in flight still get their answers). False
        once ``until`` has passed."""
        await asyncio.sleep(DRAIN_STEP)
        now = self.clock()
        grace = self.limits.drain_idle_grace
        late = now - self._drain_began >= grace
        for conn in list(self.connections):
            if conn.state is State.HOLDING:
                continue  # waits for the hand-over
            if not conn.seen_frame:
                # Nothing read yet: it has the grace, from when it was made or
                # the drain began, to send its request (a busy loop may read
                # it late; it is served).
                if now - max(conn.last_active, self._drain_began) >= grace:
                    conn.finish()
            elif late or (conn.owes_nothing() and now - conn.last_active >= DRAIN_STEP):
                conn.finish()
        return now < until
