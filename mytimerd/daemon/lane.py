"""The lane: quick calls served in C for connections that make them one
after another, with no Python per call (glue/lane.h).

A connection that has made a run of quick calls (methods served with
``{}``, as :meth:`~mytimerd.daemon.server.Server.quick` takes them) and
owes nothing is given to the lane: the event loop stops reading it, and the
lane reads its requests, makes the calls and writes the answers, in C, when
the loop finds the lane's descriptor readable; a TLS connection with its
session, which Python's ssl lends (:mod:`.tlslane`). A client calling alone (the
lane's only connection, and the loop's only caller, with no call in flight
elsewhere) is served on the spot, one call after another, for a bounded
slice of each turn, as the loop's read-ahead would in Python; several, with
no call in flight elsewhere, round after round while their answers are due,
so that a busy lane does not wake the loop for every round. Anything else
hands it back with what it sent and any answer not yet written, in order;
so does a quiet connection, a slow call and every change of the
connection's state (drain, hand-over, end).

Bounds: the lane holds at most ``--lane-slots`` connections, each with one
call in flight and :data:`LANE_IN` bytes of requests; a connection in the
lane holds one call of its peer's ``--max-held-calls-per-peer`` (its call
in flight, always counted), and one peer at most a quarter of the slots.
"""

from __future__ import annotations

from typing import Final, NamedTuple, cast

from .._glue import ffi, lib
from .library import Result
from .records import unpack_records

#: Bytes of requests a connection in the lane may have sent and not been served.
LANE_IN: Final = lib.MT_LANE_IN
#: Ids of the lane's calls: from here up (below events' ids, above calls').
LANE_ID_BASE: Final = 1 << 62
#: Answers one turn writes, at most.
TURN_CALLS: Final = 256
#: Connections one sweep gives back, at most.
SWEEP_SLICE: Final = 64
#: Why a connection came back, by the glue's code.
WHY: Final = {
    lib.MT_LANE_OTHER: "other",
    lib.MT_LANE_EOF: "eof",
    lib.MT_LANE_ERROR: "error",
    lib.MT_LANE_FULL: "full",
    lib.MT_LANE_QUIET: "quiet",
    lib.MT_LANE_AHEAD: "ahead",
}
_ORPHANS: Final = 1 << 16
_BACKS: Final = lib.MT_LANE_EVENTS + TURN_CALLS


class InFlight(NamedTuple):
    """The call a connection had in flight when it left the lane."""

    call_id: int
    method: str
    started: float  # time.monotonic()'s clock


class Taken(NamedTuple):
    """What a connection leaving the lane brings: the unwritten rest of an
    answer (written first), then the requests it sent that were not served."""

    unwritten: bytes
    sent: bytes
    in_flight: InFlight | None
    last_active: float  # time.monotonic()'s clock


class Turn(NamedTuple):
    """What one turn of the lane did."""

    #: (slot, why) of connections to take back, why from :data:`WHY`.
    back: list[tuple[int, str]]
    #: The answers written (or handed back unwritten), in runs of one method
    #: and outcome: (method, ret, the latency of each in seconds).
    answered: list[tuple[str, int, list[float]]]
    #: How many answers that is.
    calls: int
    #: Answers of calls that left the lane while in flight.
    orphans: list[Result]


class Lane:
    """The glue's lane of one library host (see the module's docstring)."""

    def __init__(self, handle: object, names: list[str], slots: int) -> None:
        """``handle``: the glue's mt_lane; ``names``: method names by the
        glue's method number."""
        self._lane = handle
        self._names = names
        self.slots = slots
        self.fd: int = lib.mt_lane_fd(handle)
        self._back = ffi.new("mt_lane_back[]", _BACKS)
        self._nback = ffi.new("int *")
        self._tally = ffi.new("mt_lane_tally[]", TURN_CALLS)
        self._ntally = ffi.new("int *")
        self._secs_c = ffi.new("double[]", TURN_CALLS)
        self._secs = memoryview(ffi.buffer(self._secs_c)).cast("d")
        self._ncalls = ffi.new("int *")
        self._orphans = ffi.new("uint8_t[]", _ORPHANS)
        self._orphans_len = ffi.new("int64_t *")
        self._state = ffi.new("mt_lane_state *")
        self._cap = 1 << 12
        self._buf = ffi.new("uint8_t[]", self._cap)

    def __len__(self) -> int:
        return int(lib.mt_lane_count(self._lane))

    def add(self, fd: int, tls: object = None) -> int:
        """Take the connection on socket ``fd`` (its reading paused), with
        ``tls`` in that TLS session (:func:`.tlslane.session`): its slot, or
        -1 when the lane is full."""
        return int(lib.mt_lane_add(self._lane, fd, ffi.NULL if tls is None else tls))

    def take(self, slot: int) -> Taken:
        """Give ``slot``'s connection back, whatever it is doing."""
        st = self._state
        while True:
            size = lib.mt_lane_take(self._lane, slot, self._buf, self._cap, st)
            if size >= 0:
                break
            self._cap = max(-size, self._cap * 2)
            self._buf = ffi.new("uint8_t[]", self._cap)
        data = ffi.buffer(self._buf, size)[:] if size else b""
        in_len = st.in_len
        in_flight = None
        if st.call_id:
            in_flight = InFlight(st.call_id, self._names[st.method], st.started_ns / 1e9)
        return Taken(data[in_len:], data[:in_len], in_flight, st.last_ns / 1e9)

    def run(self, lone: float = 0.0) -> Turn:
        """One bounded turn of the lane's work; ``lone`` > 0: the loop has
        nothing else to do, so the lane's only connection may be served on
        the spot, waiting up to that many seconds for each of its requests,
        and several may be served round after round while their answers are
        due (each method's usual time), for a bounded slice."""
        lib.mt_lane_run(
            self._lane,
            int(lone * 1e9),
            self._back,
            _BACKS,
            self._nback,
            self._tally,
            self._ntally,
            self._secs_c,
            TURN_CALLS,
            self._ncalls,
            self._orphans,
            _ORPHANS,
            self._orphans_len,
        )
        return Turn(
            self._backs(self._nback[0]), self._answered(), self._ncalls[0], self._orphaned()
        )

    def sweep(self, idle: float, slow: float) -> list[tuple[int, str]]:
        """Connections quiet for ``idle`` seconds, or with a call in flight
        for ``slow``: to be taken back, at most :data:`SWEEP_SLICE` (the
        rest at the next sweep: taking one back costs the loop Python)."""
        n = lib.mt_lane_sweep(self._lane, int(idle * 1e9), int(slow * 1e9), self._back, SWEEP_SLICE)
        return self._backs(n)

    def _backs(self, n: int) -> list[tuple[int, str]]:
        back = self._back
        return [(back[i].slot, WHY[back[i].why]) for i in range(n)]

    def _answered(self) -> list[tuple[str, int, list[float]]]:
        tally = self._tally
        names = self._names
        secs = self._secs
        out = []
        at = 0
        for i in range(self._ntally[0]):  # a loop, not a comprehension: no function per turn
            run = tally[i]
            count = run.count
            # (a memoryview cast to "d" gives floats; typeshed says ints)
            latencies = cast(list[float], secs[at : at + count].tolist())
            out.append((names[run.method], run.ret, latencies))
            at += count
        return out

    def _orphaned(self) -> list[Result]:
        size = self._orphans_len[0]
        if not size:
            return []
        out: list[Result] = []
        unpack_records(ffi.buffer(self._orphans, size)[:], out)
        return out
