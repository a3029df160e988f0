"""Every limit the daemon enforces: name, default, command-line option, doc.

One table: the daemon builds its options from it (:data:`FIELDS`),
``mytimerd.describe`` reports it and the README lists it.
"""

from __future__ import annotations

from typing import Any, Final

from .cbor import MAX_ITEMS
from .record import Record

#: Most connections --lane-slots may give the lane (the glue's slot numbers).
MAX_LANE_SLOTS: Final = 1024
#: Longest --read-ahead-wait, in microseconds: the event loop busy waits that
#: long for one client; past it, sleeping until the request wakes it is cheaper.
MAX_READ_AHEAD_WAIT: Final = 1000


class LimitField(Record):
    """One limit: its field's name and type ("int" or "float"), default,
    option, unit, doc, and whether 0 is a meaningful value (it turns
    something off)."""

    name: str
    type: str
    default: Any
    option: str
    unit: str
    doc: str
    zero_ok: bool


#: (default, option, unit, doc, zero_ok) of each limit, in the order of the fields.
_specs: list[tuple[Any, str, str, str, bool]] = []


def _limit(default: Any, option: str, unit: str, doc: str, zero_ok: bool = False) -> Any:
    """A limit's default; the rest goes to :data:`FIELDS` (by position: each
    field of :class:`Limits` takes one)."""
    _specs.append((default, option, unit, doc, zero_ok))
    return default


class Limits(Record):
    """The daemon's limits (all have command-line options).

    A :class:`Record`, not a dataclass: ``@dataclass`` compiled its methods
    at every start (2 ms for this class; see record.py).
    """

    max_method_len: int = _limit(
        256,
        "--max-method-len",
        "bytes",
        "Longest method name accepted; longer is answered MethodNameTooLong and closed.",
    )
    max_payload: int = _limit(
        1 << 20,
        "--max-payload",
        "bytes",
        "Largest request payload; larger is answered FrameTooLarge (unread) and closed.",
    )
    max_items: int = _limit(
        MAX_ITEMS,
        "--max-items",
        "items",
        "Most CBOR data items in one request (map keys count), counted while decoding; "
        "more is answered InvalidCBOR before it costs more than a few milliseconds.",
    )
    max_connections: int = _limit(
        16384,
        "--max-connections",
        "connections",
        "Connections served at once; more are answered TooManyConnections and closed.",
    )
    max_connections_per_peer: int = _limit(
        2048,
        "--max-connections-per-peer",
        "connections",
        "Connections one peer may hold at once, TLS handshakes under way included (per "
        "uid on unix sockets, from SO_PEERCRED; per address on TCP); left at its default, "
        "also never more than half of what the descriptor limit leaves for connections. "
        "More are answered TooManyConnections and closed.",
    )
    max_tls_handshakes: int = _limit(
        1024,
        "--max-tls-handshakes",
        "handshakes",
        "TLS handshakes under way at once; a TCP client past it is closed at once "
        "(no answer is possible before TLS), counted and logged.",
    )
    max_tls_handshakes_per_peer: int = _limit(
        64,
        "--max-tls-handshakes-per-peer",
        "handshakes",
        "TLS handshakes one address may have under way at once; past it the "
        "connection is closed at once, counted and logged.",
    )
    max_tls_hello: int = _limit(
        16384,
        "--max-tls-hello",
        "bytes",
        "Largest TLS ClientHello accepted; a client announcing more is refused before "
        "OpenSSL allocates for it (a stalled handshake costs little).",
    )
    max_in_flight: int = _limit(
        128,
        "--max-in-flight",
        "calls",
        "Answers a connection may be owed (calls in flight and answers waiting for "
        "their turn or for the client to read); past it the daemon stops reading from "
        "that client until it catches up (backpressure).",
    )
    max_held_calls: int = _limit(
        16384,
        "--max-held-calls",
        "calls",
        "Library calls submitted and not yet answered by the library, across all "
        "connections (a call timed out or left by its client still counts until the "
        "library answers it); past it new library calls are answered Overloaded.",
    )
    max_held_bytes: int = _limit(
        64 << 20,
        "--max-held-bytes",
        "bytes",
        "Request bytes of those calls, across all connections; past it new library "
        "calls are answered Overloaded.",
    )
    max_held_calls_per_peer: int = _limit(
        2048,
        "--max-held-calls-per-peer",
        "calls",
        "Held library calls (as --max-held-calls) of one peer: a unix uid, a TCP "
        "address, or with mutual TLS the certificate's name; they count after it "
        "disconnects. Past it its library calls are answered QuotaExceeded.",
    )
    max_held_bytes_per_peer: int = _limit(
        8 << 20,
        "--max-held-bytes-per-peer",
        "bytes",
        "Request bytes of one peer's held calls; past it its library calls are "
        "answered QuotaExceeded.",
    )
    max_buffered_bytes: int = _limit(
        256 << 20,
        "--max-buffered-bytes",
        "bytes",
        "Bytes of unfinished request frames buffered across all connections; the "
        "connection that would take the total past it is answered Overloaded and closed.",
    )
    max_buffered_bytes_per_peer: int = _limit(
        32 << 20,
        "--max-buffered-bytes-per-peer",
        "bytes",
        "Bytes of unfinished request frames of one peer's connections; the connection "
        "that would take it past this is answered QuotaExceeded and closed.",
    )
    idle_timeout: float = _limit(
        60.0,
        "--idle-timeout",
        "seconds",
        "A connection owed no answer that has not completed a frame (or been written "
        "to) for this long is closed (event subscribers excepted); a half-sent frame "
        "does not reset the clock.",
    )
    tls_handshake_timeout: float = _limit(
        10.0,
        "--tls-handshake-timeout",
        "seconds",
        "Time a TCP client has to complete the TLS handshake before it is closed.",
    )
    max_subscriber_queue: int = _limit(
        1024,
        "--max-subscriber-queue",
        "events",
        "Events waiting for one subscriber (it does not read, or a call it made before "
        "subscribing holds the line); past it the subscriber is sent SlowSubscriber, "
        "after any answer it is owed, and cut off.",
    )
    max_subscriber_bytes: int = _limit(
        1 << 20,
        "--max-subscriber-bytes",
        "bytes",
        "Bytes of events waiting for one subscriber; a subscriber that falls further "
        "behind is sent SlowSubscriber and cut off.",
    )
    max_subscriber_lag: float = _limit(
        10.0,
        "--max-subscriber-lag",
        "seconds",
        "Time a subscriber may leave events waiting (it does not read, or a call it "
        "made before subscribing holds the line); past it, SlowSubscriber and cut off.",
    )
    max_subscribers: int = _limit(
        4096,
        "--max-subscribers",
        "subscribers",
        "Event subscriptions (connections after mytimerd.subscribe) at once; past it "
        "mytimerd.subscribe is answered Overloaded.",
    )
    max_subscribers_per_peer: int = _limit(
        256,
        "--max-subscribers-per-peer",
        "subscribers",
        "Event subscriptions of one peer; past it mytimerd.subscribe is answered QuotaExceeded.",
    )
    timeout: float = _limit(
        30.0,
        "--timeout",
        "seconds",
        "Time the library has to answer a call before it is answered Timeout.",
    )
    max_delay: float = _limit(
        3600.0,
        "--max-delay",
        "seconds",
        "Longest delay a request may ask the library for (echo's delayMs): such a call "
        "holds its peer's share of the budget until it ends; longer is answered "
        "InvalidParameter.",
    )
    drain_grace: float = _limit(
        0.0,
        "--drain-grace",
        "seconds",
        "On SIGTERM/SIGINT, time the daemon keeps serving while mytimerd.ping reports it "
        "draining (accepting: false), so that a load balancer's health check takes it out "
        "first; then the drain begins. 0: drain at once. A second signal cuts it short.",
        zero_ok=True,
    )
    drain_timeout: float = _limit(
        10.0,
        "--drain-timeout",
        "seconds",
        "On SIGTERM/SIGINT, the longest the drain takes: in-flight calls get until "
        "--linger before it to finish (then Timeout); connections still open at it "
        "are closed and the daemon exits. Also the longest a connection ending after a "
        "final answer waits for its client.",
    )
    fd_store_max: int = _limit(
        0,
        "--fd-store-max",
        "descriptors",
        "Descriptors the daemon may put in systemd's file descriptor store when it stops "
        "(the unit's FileDescriptorStoreMax=; systemd 254 and later tell the daemon "
        "themselves). With 2 or more, plaintext connections are handed to the next "
        "instance, which resumes them, instead of being drained: one descriptor carries "
        "every connection, one their state. 0: never.",
        zero_ok=True,
    )
    probe_timeout: float = _limit(
        5.0,
        "--probe-timeout",
        "seconds",
        "Time the library has to answer the liveness probe (the --probe-method call) "
        "before the daemon reports itself unhealthy and stops pinging systemd's watchdog.",
    )

    create_timeout: float = _limit(
        5.0,
        "--create-timeout",
        "seconds",
        "Time the library has to create its context at start-up before the daemon "
        "gives up (exit status 4).",
    )
    teardown_timeout: float = _limit(
        5.0,
        "--teardown-timeout",
        "seconds",
        "After the drain, time the library has to destroy its context before the "
        "daemon exits anyway.",
    )
    linger: float = _limit(
        1.0,
        "--linger",
        "seconds",
        "After a connection's last answer (a final error, or the drain) the daemon "
        "half-closes and reads and discards until the client closes its side, or (unix "
        "sockets only) has read every byte and sent nothing for this long, or "
        "--drain-timeout passes: closing with unread input would reset the connection "
        "and could destroy answers the client has not read.",
    )
    drain_idle_grace: float = _limit(
        0.25,
        "--drain-idle-grace",
        "seconds",
        "During a drain, how long a connection keeps being read: every request it "
        "sends is answered ShuttingDown (not started: a client may send it elsewhere). "
        "A connection owed nothing whose client has gone quiet ends sooner.",
    )
    loop_stall_warning: float = _limit(
        0.25,
        "--loop-stall-warning",
        "seconds",
        "The journal warns (rate-limited) when the event loop stalls longer, naming "
        "what ran; stats report the longest stall of the last minute.",
    )

    read_ahead_wait: int = _limit(
        50,
        "--read-ahead-wait",
        "microseconds",
        "While one client makes all the calls (its last 8 in a row, with no other call "
        "in flight), after each answer the event loop (or the lane, in C) waits up to "
        "this long on its socket for its next request, busy (a core stays awake while it "
        "calls back to back), instead of sleeping until the request wakes it: on a "
        "virtual machine that wake-up costs more than the call. A wait in vain halves "
        "the next one (down to 4 us); one that saw a request doubles it. 0: never wait; "
        f"at most {MAX_READ_AHEAD_WAIT}.",
        zero_ok=True,
    )
    lane_slots: int = _limit(
        1024,
        "--lane-slots",
        "connections",
        "Connections whose quick calls (methods called with {}, such as version) may "
        "be served in C, with no Python per call, while they make them "
        f"one after another (at most {MAX_LANE_SLOTS}); a client calling alone is served "
        "there on the spot (see --read-ahead-wait), and several, while no other call is "
        "in flight, round after round while their answers are due, 100 us of a turn at "
        "most (--read-ahead-wait 0 turns both off). TLS connections too, on the session "
        "Python's ssl made. A connection there holds one call of "
        "its peer's --max-held-calls-per-peer; one peer may take a quarter of them. "
        "0: serve every call in Python.",
        zero_ok=True,
    )

    def to_json(self) -> dict[str, Any]:
        """camelCase name -> value, as served by mytimerd.describe."""
        out = {}
        for f in FIELDS:
            head, *rest = f.name.split("_")
            key = head + "".join(part.title() for part in rest)
            if f.unit == "seconds":
                key += "Seconds"
            elif f.unit == "microseconds":
                key += "Micros"
            out[key] = getattr(self, f.name)
        return out


#: Every limit, in order (what ``dataclasses.fields`` gave when Limits was a dataclass).
FIELDS: Final = tuple(
    LimitField(name, Limits.__annotations__[name], *spec)
    for name, spec in zip(Limits._fields, _specs, strict=True)
)
