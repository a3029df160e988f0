"""Library events over the wire: who subscribed to what, and the fan-out.

``mytimerd.subscribe`` turns a connection into an event stream: one RET_OK
that acknowledges the subscription, then one RET_OK frame per event whose
body is the library's event body, byte for byte.

Publishing an event costs the same whatever the number of subscribers: it
is appended to one log, and subscribers keep a cursor in it. The fan-out
runs in slices, never inside the callback that received the event: a slice
visits a bounded number of subscribers and gives each what it has not had
yet in one write, so many events cost one write per subscriber. Slices take
at most about half of the event loop's time (after a slice that took d
seconds, the next waits d). A subscriber that does not read is paused by its
small socket buffer; one that falls behind by events
(``--max-subscriber-queue``), bytes (``--max-subscriber-bytes``) or time
(``--max-subscriber-lag``) is sent ``SlowSubscriber`` after anything it is
owed and cut off, so it holds nothing.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

from ..protocol import wire
from ..protocol.errors import DaemonError
from ..protocol.limits import Limits
from ..protocol.schema import Interface
from .connection import Connection
from .shares import Budget

#: Subscribers one fan-out slice visits at most.
SLICE: Final = 256
#: Bytes of events one write to one subscriber carries at most.
WRITE_CHUNK: Final = 64 * 1024
#: Slices shorter than this are followed at once, not after a timer.
_SHORT: Final = 0.0005


class Subscriber:
    """One event stream and where it is in the log.

    A plain class, not a dataclass: ``@dataclass`` compiles its methods at
    every start (see mytimerd/protocol/record.py)."""

    __slots__ = (
        "behind_since",
        "conn",
        "cursor",
        "names",
        "peer",
        "queued",
        "taken",
        "taken_bytes",
    )

    def __init__(
        self,
        conn: Connection,
        peer: str,
        names: frozenset[int] | None,
        cursor: int,
        taken: int,
        taken_bytes: int,
    ) -> None:
        self.conn = conn
        self.peer = peer
        #: Event indexes it receives; None for every event.
        self.names = names
        #: Sequence number of the next event it has not been given.
        self.cursor = cursor
        #: Events and bytes of its events given so far (against the per-name totals).
        self.taken = taken
        self.taken_bytes = taken_bytes
        #: When it first could not take waiting events (None: up to date or writing).
        self.behind_since: float | None = None
        self.queued = False


class EventHub:
    """The subscribers of one interface's events, and the sliced fan-out."""

    def __init__(
        self,
        interface: Interface,
        limits: Limits,
        schedule: Callable[[float, Callable[[], None]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``schedule(delay, callback)`` runs ``callback`` after ``delay``
        seconds (0: soon) on the event loop."""
        self.interface = interface
        self.limits = limits
        self._schedule = schedule
        self._clock = clock
        self._names = [e.name for e in interface.events]
        self.subscribers: dict[Connection, Subscriber] = {}
        # Subscribers per event index (publishing an event nobody wants is free).
        self._wanted = [0] * len(self._names)
        self.budget = Budget(
            "subscriptions",
            limits.max_subscribers,
            limits.max_subscribers_per_peer,
            "--max-subscribers",
            "--max-subscribers-per-peer",
        )
        # The log: event index, frame, and running byte total per entry;
        # entry i has sequence number _base + i.
        self._index: list[int] = []
        self._frames: list[bytes] = []
        self._ends: list[int] = []  # bytes up to and including entry i, since _base_bytes
        self._base = 0
        # Events and bytes published so far, per event index (cut-off counts).
        self._count = [0] * len(self._names)
        self._bytes = [0] * len(self._names)
        # Fan-out: subscribers to visit, whether a full sweep is due, its low mark.
        self._work: deque[Subscriber] = deque()
        self._sweep_due = False
        self._sweep_low: int | None = None
        self._scheduled = False
        # Join cache of one slice: (cursor, names) -> (data, new cursor, events, bytes).
        self._joined: dict[tuple[int, frozenset[int] | None], tuple[bytes, int, int, int]] = {}
        self.published: Counter[str] = Counter()
        self.delivered = 0
        self.cut_off = 0
        #: Called with (subscriber's connection, error) to end a slow subscriber.
        self.on_cut_off: Callable[[Connection, DaemonError], None] = lambda c, e: None
        #: Called with how long each fan-out slice took (seconds), for the loop-lag watch.
        self.on_slice: Callable[[float], None] = lambda seconds: None

    @property
    def _next(self) -> int:
        return self._base + len(self._frames)

    # subscriptions ----------------------------------------------------------

    def check_subscribe(self, conn: Connection, request: dict[str, Any]) -> list[str]:
        """The event names ``conn`` would receive; raises InvalidParameter for
        an unknown name, Overloaded/QuotaExceeded past the subscription budgets."""
        wanted = request.get("events") or self._names
        known = set(self._names)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            listed = ", ".join(self._names) or "none"
            raise DaemonError(
                "InvalidParameter", f"events: no event {unknown[0]!r} (this library has: {listed})"
            )
        verdict = self.budget.check(conn.peer)
        if verdict != "ok":
            raise DaemonError(
                "Overloaded" if verdict == "global" else "QuotaExceeded",
                self.budget.describe_refusal(verdict, conn.peer),
            )
        return list(dict.fromkeys(wanted))

    def subscribe(self, conn: Connection, names: list[str]) -> None:
        """Make ``conn`` a subscriber of ``names`` (checked by :meth:`check_subscribe`)."""
        indexes = frozenset(self._names.index(n) for n in names)
        every = None if len(indexes) == len(self._names) else indexes
        for i in indexes:
            self._wanted[i] += 1
        self.budget.take(conn.peer)
        sub = Subscriber(conn, conn.peer, every, self._next, *self._totals(every))
        self.subscribers[conn] = sub
        conn.stream = sub
        conn.subscribe()

    def drop(self, conn: Connection) -> None:
        """``conn`` is gone or cut off: it receives nothing more."""
        sub = self.subscribers.pop(conn, None)
        if sub is None:
            return
        conn.stream = None
        for i in range(len(self._names)) if sub.names is None else sub.names:
            self._wanted[i] -= 1
        self.budget.give(sub.peer)

    def unsent(self, conn: Connection) -> tuple[list[str], bytes] | None:
        """For a hand-over: the events ``conn`` subscribed to and every event
        it has not been given yet; None if it is not a subscriber."""
        sub = self.subscribers.get(conn)
        if sub is None:
            return None
        start = sub.cursor - self._base
        if sub.names is None:
            return list(self._names), b"".join(self._frames[start:])
        names = sub.names
        pairs = zip(self._index[start:], self._frames[start:], strict=True)
        owed = [frame for index, frame in pairs if index in names]
        return [self._names[i] for i in sorted(names)], b"".join(owed)

    # publishing ---------------------------------------------------------------

    def publish(self, index: int, body: bytes) -> None:
        """The library fired event number ``index``: log it for its subscribers."""
        if not 0 <= index < len(self._names):
            return
        self.published[self._names[index]] += 1
        if not self._wanted[index]:
            return
        frame = wire.encode_response(wire.RET_OK, body)
        self._index.append(index)
        self._frames.append(frame)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(frame))
        self._count[index] += 1
        self._bytes[index] += len(frame)
        self._joined.clear()
        self._sweep_due = True
        self._kick(0.0)

    def ready(self, conn: Connection) -> None:
        """``conn`` can take events again: visit it soon if it is behind."""
        sub = self.subscribers.get(conn)
        if sub is not None and sub.cursor < self._next and not sub.queued:
            sub.queued = True
            self._work.append(sub)
            self._kick(0.0)

    def tick(self, now: float) -> None:
        """Cut off subscribers that have left events waiting too long (the
        fan-out only visits them when something happens)."""
        lag = self.limits.max_subscriber_lag
        late = [
            s
            for s in self.subscribers.values()
            if s.behind_since is not None and now - s.behind_since > lag
        ]
        for sub in late:
            self._cut_off(sub, f"events have waited for you for more than {lag:g} s")

    # the fan-out ----------------------------------------------------------------

    def _kick(self, delay: float) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._schedule(delay, self._run)

    def _run(self) -> None:
        """One slice: visit up to :data:`SLICE` subscribers."""
        self._scheduled = False
        started = time.perf_counter()
        work = self._work
        if not work and self._sweep_due:
            self._sweep_due = False
            self._sweep_low = self._next
            for sub in self.subscribers.values():
                if not sub.queued:
                    sub.queued = True
                    work.append(sub)
        now = self._clock()
        for _ in range(min(SLICE, len(work))):
            sub = work.popleft()
            sub.queued = False
            if sub.conn in self.subscribers:
                self._visit(sub, now)
        if not work:
            self._end_sweep()
        self._joined.clear()
        took = time.perf_counter() - started
        self.on_slice(took)
        if work or self._sweep_due:
            # At most about half of the loop's time: wait as long as this slice took.
            self._kick(took if took > _SHORT else 0.0)

    def _visit(self, sub: Subscriber, now: float) -> None:
        """Give ``sub`` what waits for it in one write, or note that it cannot take it."""
        end = self._next
        if sub.cursor < end:
            behind, behind_bytes = self._behind(sub)
            limits = self.limits
            if behind > limits.max_subscriber_queue:
                self._cut_off(
                    sub,
                    f"more than {limits.max_subscriber_queue} events waited for you "
                    f"(--max-subscriber-queue)",
                )
                return
            if behind_bytes > limits.max_subscriber_bytes:
                self._cut_off(
                    sub,
                    f"more than {limits.max_subscriber_bytes} bytes of events waited for "
                    f"you (--max-subscriber-bytes)",
                )
                return
            if not behind:
                sub.cursor = end  # nothing of its own waits
            elif sub.conn.stream_ready():
                data, cursor, events, nbytes = self._join(sub.cursor, sub.names)
                sub.cursor = cursor
                sub.taken += events
                sub.taken_bytes += nbytes
                sub.behind_since = None
                self.delivered += events
                sub.conn.write_stream(data)
                if cursor < end and sub.conn.stream_ready() and not sub.queued:
                    sub.queued = True
                    self._work.append(sub)  # more than one write's worth: later
            elif sub.behind_since is None:
                sub.behind_since = now
        low = self._sweep_low
        if low is not None and sub.cursor < low:
            self._sweep_low = sub.cursor

    def _behind(self, sub: Subscriber) -> tuple[int, int]:
        """Events and bytes of ``sub``'s events published and not given to it."""
        count, nbytes = self._totals(sub.names)
        return count - sub.taken, nbytes - sub.taken_bytes

    def _totals(self, names: frozenset[int] | None) -> tuple[int, int]:
        if names is None:
            return sum(self._count), sum(self._bytes)
        return sum(self._count[i] for i in names), sum(self._bytes[i] for i in names)

    def _join(self, cursor: int, names: frozenset[int] | None) -> tuple[bytes, int, int, int]:
        """What a subscriber at ``cursor`` receiving ``names`` gets next, at
        most about :data:`WRITE_CHUNK` bytes: (data, new cursor, events, bytes)."""
        key = (cursor, names)
        hit = self._joined.get(key)
        if hit is not None:
            return hit
        start = cursor - self._base
        ends = self._ends
        before = ends[start - 1] if start else 0
        if names is None:
            # Whole events up to the chunk, at least one.
            stop = max(bisect.bisect_right(ends, before + WRITE_CHUNK, lo=start), start + 1)
            data = b"".join(self._frames[start:stop])
            out = (data, self._base + stop, stop - start, len(data))
        else:
            chunks: list[bytes] = []
            size = 0
            pos = start
            index, frames = self._index, self._frames
            while pos < len(frames):
                if index[pos] in names:
                    frame = frames[pos]
                    if chunks and size + len(frame) > WRITE_CHUNK:
                        break
                    chunks.append(frame)
                    size += len(frame)
                pos += 1
            out = (b"".join(chunks), self._base + pos, len(chunks), size)
        self._joined[key] = out
        return out

    def _end_sweep(self) -> None:
        """Every subscriber was visited: forget the log up to the lowest cursor."""
        low = self._sweep_low
        self._sweep_low = None
        if low is None:
            return
        if not self.subscribers:
            low = self._next
        drop = low - self._base
        if drop <= 0:
            return
        dropped_bytes = self._ends[drop - 1]
        del self._index[:drop], self._frames[:drop], self._ends[:drop]
        self._ends = [e - dropped_bytes for e in self._ends]
        self._base = low

    def _cut_off(self, sub: Subscriber, why: str) -> None:
        self.cut_off += 1
        conn = sub.conn
        self.drop(conn)
        err = DaemonError("SlowSubscriber", f"{why}; subscribe again and read faster")
        self.on_cut_off(conn, err)

    def snapshot(self) -> dict[str, Any]:
        """For mytimerd.stats."""
        per_name: Counter[str] = Counter()
        for sub in self.subscribers.values():
            for i in range(len(self._names)) if sub.names is None else sub.names:
                per_name[self._names[i]] += 1
        return {
            "published": dict(self.published),
            "subscribers": {name: per_name[name] for name in self._names},
            "delivered": self.delivered,
            "logged": len(self._frames),
            "cutOff": self.cut_off,
        }
