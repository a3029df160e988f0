"""The glue's lane (glue/lane.h) against the bundled library, over real
socket pairs: it serves quick calls byte for byte, one at a time per
connection and in order; hands a connection back, with what it sent and any
answer not yet written, at anything else; and gives its calls in flight to
the loop when a connection is taken back (their answers come as orphans)."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise

import cbor2
import pytest

from mytimerd.daemon.host import BUNDLED_LIBRARY, LibraryHost
from mytimerd.daemon.lane import LANE_ID_BASE, SWEEP_SLICE, Lane, Turn
from mytimerd.protocol import interfaces, wire
from tests.support.sockets import fill

VERSION = wire.encode_request("version", b"\xa0")
ECHO = wire.encode_request("echo", cbor2.dumps({"req": {"message": "x", "delayMs": 0}}))


@pytest.fixture(scope="module")
def host() -> LibraryHost:
    """The bundled library, called directly, serving version quickly."""
    library = LibraryHost(BUNDLED_LIBRARY)
    library.start(interfaces.bundled(library.generation), {"config": {"name": "lane"}}, direct=True)
    assert library.quicken(["version"]) == ["version"]
    return library


@pytest.fixture
def lane(host: LibraryHost) -> Iterator[Lane]:
    """A lane of 4 slots (one per test: its slots all free at the start)."""
    made = host.lane(4)
    assert made is not None
    yield made
    for slot in range(4):
        made.take(slot)  # a free slot: nothing


def pair() -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, non-blocking; the client's end)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    return ours, theirs


def run_until(lane: Lane, done: Callable[[list[Turn]], bool], timeout: float = 5.0) -> list[Turn]:
    """Turns of the lane, as the loop runs them (when its descriptor is
    readable), until ``done(turns)``."""
    turns: list[Turn] = []
    deadline = time.monotonic() + timeout
    while not done(turns):
        assert time.monotonic() < deadline, f"lane did not get there: {turns}"
        select.select([lane.fd], [], [], 0.05)
        turns.append(lane.run())
    return turns


def run_timed(lane: Lane, calls: int, lone: float) -> tuple[list[Turn], float]:
    """Turns with the wait ``lone`` given, as the loop runs them, until
    ``calls`` answers (30 s at most): the turns, and the longest one in
    seconds."""
    turns: list[Turn] = []
    longest = 0.0
    deadline = time.monotonic() + 30
    while sum(t.calls for t in turns) < calls:
        assert time.monotonic() < deadline, f"{sum(t.calls for t in turns)} of {calls} answered"
        select.select([lane.fd], [], [], 0.05)
        started = time.monotonic()
        turns.append(lane.run(lone))
        longest = max(longest, time.monotonic() - started)
    return turns, longest


def answered(turns: list[Turn]) -> list[tuple[str, int, float]]:
    """Each answer of ``turns``: (method, ret, seconds), out of their runs."""
    out = [(m, r, s) for t in turns for m, r, secs in t.answered for s in secs]
    assert len(out) == sum(t.calls for t in turns)
    return out


def backs(turns: list[Turn]) -> list[tuple[int, str]]:
    return [b for t in turns for b in t.back]


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"EOF after {out!r}"
        out += chunk
    return out


def version_answer(host: LibraryHost) -> bytes:
    """The version call's response frame, as the library gives it."""
    assert host.submit("version", 1, b"\xa0")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        select.select([host.fd], [], [], 0.05)
        for call_id, ret, body in host.results():
            if call_id == 1:
                return wire.encode_response(ret, body)
    raise AssertionError("the library did not answer version")


def unread(sock: socket.socket) -> bytes:
    """What waits in ``sock`` (peeked, left there)."""
    try:
        return sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def test_quick_calls_are_answered_byte_for_byte_one_at_a_time(
    host: LibraryHost, lane: Lane
) -> None:
    """Requests sent one after another's answer: each answered, the
    library's answer byte for byte, and counted with its method and time."""
    expected = version_answer(host)
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    assert slot >= 0 and len(lane) == 1
    turns: list[Turn] = []
    for _ in range(5):
        theirs.sendall(VERSION)
        turns += run_until(lane, lambda t: len(answered(t)) == 1)
        assert read_exactly(theirs, len(expected)) == expected
    assert [(m, r) for m, r, _ in answered(turns)] == [("version", wire.RET_OK)] * 5
    assert all(0 < s < 5 for _, _, s in answered(turns))
    assert not backs(turns)
    taken = lane.take(slot)
    assert taken.sent == taken.unwritten == b"" and taken.in_flight is None
    assert 0 < time.monotonic() - taken.last_active < 5
    assert len(lane) == 0


def test_a_pipeline_goes_back_to_the_loop_in_order(host: LibraryHost, lane: Lane) -> None:
    """version, echo, version in one write: the first is answered (one call
    in flight at a time); then the connection comes back ("ahead") with the
    rest, unread by the library and in order, nothing in flight."""
    expected = version_answer(host)
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    theirs.sendall(VERSION + ECHO + VERSION)
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "ahead")]
    assert len(answered(turns)) == 1
    assert read_exactly(theirs, len(expected)) == expected
    taken = lane.take(slot)
    assert taken.sent + unread(ours) == ECHO + VERSION
    assert taken.unwritten == b"" and taken.in_flight is None


def test_another_request_hands_the_connection_back_unread(lane: Lane) -> None:
    """A request the lane does not serve: back ("other") with its bytes,
    nothing called."""
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    theirs.sendall(ECHO)
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "other")]
    assert not answered(turns)
    taken = lane.take(slot)
    assert taken.sent + unread(ours) == ECHO and taken.in_flight is None


def test_a_request_in_parts_waits_for_the_rest(host: LibraryHost, lane: Lane) -> None:
    """Five bytes of a request: nothing happens; the rest: it is answered."""
    expected = version_answer(host)
    ours, theirs = pair()
    lane.add(ours.fileno())
    theirs.sendall(VERSION[:5])
    turns = run_until(lane, lambda t: len(t) >= 3, timeout=1)
    assert not answered(turns) and not backs(turns)
    theirs.sendall(VERSION[5:])
    run_until(lane, lambda t: len(answered(t)) == 1)
    assert read_exactly(theirs, len(expected)) == expected


def test_a_frame_that_cannot_be_quick_goes_back_before_it_is_whole(lane: Lane) -> None:
    """A name longer than any quick method's, or a payload other than {}:
    back as soon as its first bytes show it (not buffered to the end)."""
    for start in (wire.encode_request("x" * 100, b"\xa0")[:8], VERSION[:11] + b"\x00\x00\x00\x02"):
        ours, theirs = pair()
        slot = lane.add(ours.fileno())
        theirs.sendall(start)
        turns = run_until(lane, lambda t: bool(backs(t)))
        assert backs(turns) == [(slot, "other")]
        assert lane.take(slot).sent == start


@pytest.mark.parametrize("at_once", [True, False], ids=["with-the-bytes", "later"])
def test_the_clients_end_hands_it_back_with_what_it_sent(lane: Lane, at_once: bool) -> None:
    """A client that sends half a request and closes its side, before the
    lane looks or after it read the half: back ("eof") with the half, which
    the loop then reads as the connection's end."""
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    theirs.sendall(VERSION[:3])
    if not at_once:
        run_until(lane, lambda t: len(t) >= 2, timeout=1)
    theirs.shutdown(socket.SHUT_WR)
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "eof")]
    assert lane.take(slot).sent == VERSION[:3]


def test_a_request_then_the_end_is_answered_first(host: LibraryHost, lane: Lane) -> None:
    """A request and the client's end in one go: the answer is written,
    then the connection goes back ("eof") for the loop to end it."""
    expected = version_answer(host)
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    theirs.sendall(VERSION)
    theirs.shutdown(socket.SHUT_WR)
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "eof")]
    assert len(answered(turns)) == 1
    assert read_exactly(theirs, len(expected)) == expected
    assert lane.take(slot).sent == b""


def test_a_socket_that_takes_no_more_hands_the_answer_back_unwritten(
    host: LibraryHost, lane: Lane
) -> None:
    """The client reads nothing and the socket is full: the answer goes back
    ("full") whole, for the loop to write first; nothing is lost or doubled."""
    expected = version_answer(host)
    ours, theirs = pair()
    assert fill(ours) > 0
    slot = lane.add(ours.fileno())
    theirs.sendall(VERSION + VERSION[:4])
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "full")]
    assert len(answered(turns)) == 1  # answered (counted), not written
    taken = lane.take(slot)
    assert taken.unwritten == expected
    assert taken.sent == VERSION[:4]
    assert taken.in_flight is None


def test_a_call_in_flight_when_taken_back_is_answered_as_an_orphan(
    host: LibraryHost, lane: Lane
) -> None:
    """Taken back between the call and its answer: take says which call it
    is, the lane writes nothing more, and the answer comes out as an orphan
    record with that id, for the loop's ordinary path."""
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    theirs.sendall(VERSION)
    run_until(lane, lambda t: len(t) >= 1 and not answered(t), timeout=2)
    taken = lane.take(slot)
    in_flight = taken.in_flight
    assert in_flight is not None, "the call was made and not yet answered in the lane"
    assert in_flight.method == "version"
    assert in_flight.call_id >= LANE_ID_BASE
    assert abs(in_flight.started - time.monotonic()) < 5
    turns = run_until(lane, lambda t: any(x.orphans for x in t))
    orphans = [o for t in turns for o in t.orphans]
    assert [(i, r) for i, r, _ in orphans] == [(in_flight.call_id, wire.RET_OK)]
    assert cbor2.loads(orphans[0][2]) == cbor2.loads(version_answer(host)[8:])
    assert not answered(turns)
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(1)  # the lane wrote nothing to it


def test_the_sweep_gives_back_quiet_connections_and_slow_calls(lane: Lane) -> None:
    """Quiet for the idle time: back; a call in flight longer than the slow
    time: back, with its call."""
    quiet, _quiet_peer = pair()
    busy, busy_peer = pair()
    q = lane.add(quiet.fileno())
    b = lane.add(busy.fileno())
    assert lane.sweep(60, 60) == []
    busy_peer.sendall(VERSION)
    run_until(lane, lambda t: len(t) >= 1 and not answered(t), timeout=2)
    assert sorted(lane.sweep(60, 0)) == [(b, "quiet")]
    assert lane.take(b).in_flight is not None
    assert lane.sweep(0, 60) == [(q, "quiet")]
    assert lane.take(q).in_flight is None


def test_a_full_lane_takes_no_more(lane: Lane) -> None:
    """4 slots: a fifth connection is refused (-1); a bad socket too."""
    socks = [pair() for _ in range(5)]
    slots = [lane.add(ours.fileno()) for ours, _ in socks[:4]]
    assert sorted(slots) == [0, 1, 2, 3]
    assert lane.add(socks[4][0].fileno()) == -1
    lane.take(slots[0])
    assert lane.take(slots[0]) == (b"", b"", None, 0.0)  # free: nothing there
    assert lane.add(-1) == -1
    assert lane.add(socks[4][0].fileno()) == slots[0]


def calling_back_to_back(
    sock: socket.socket, calls: int, expected: bytes, then: bytes | None = b""
) -> threading.Thread:
    """A client thread on ``sock``: ``calls`` version calls, each sent as
    the last one's answer (which must be ``expected``) is read, then
    ``then`` sent (None: its end); failures are raised by ``join()``."""
    failures: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(calls):
                sock.sendall(VERSION)
                assert read_exactly(sock, len(expected)) == expected
            if then is None:
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.sendall(then)
        except BaseException as exc:  # handed to the test by join()
            failures.append(exc)

    class Client(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            super().join(timeout)
            assert not self.is_alive(), "the client is still calling"
            if failures:
                raise failures[0]

    thread = Client(target=client, daemon=True)
    thread.start()
    return thread


def test_a_lone_connection_is_served_on_the_spot(host: LibraryHost, lane: Lane) -> None:
    """The lane's only connection, given a lone wait: served one call after
    another within a turn (its answers waited for, its next requests read
    as they come), every answer right, never handed back; a turn lasts
    about the lone slice (0.25 ms) and the waits, never the client's whole
    run (2,000 calls)."""
    expected = version_answer(host)
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    calls = 2000
    client = calling_back_to_back(theirs, calls, expected)
    turns, longest = run_timed(lane, calls, 0.001)
    client.join(5)
    assert [(m, r) for m, r, _ in answered(turns)] == [("version", wire.RET_OK)] * calls
    assert not backs(turns)
    busy = [t.calls for t in turns if t.calls]
    print(f"{len(busy)} turns answered {calls} calls, at most {max(busy)} in one")
    print(f"the longest turn: {longest * 1e3:.2f} ms")
    assert max(busy) >= 2, "no turn served more than one call on the spot"
    assert len(busy) < calls
    # slice + an answer's wait + a request's wait: about 1.35 ms; a loaded
    # machine stretches it, but never to the client's whole run
    assert longest < 0.05, f"one turn took {longest * 1e3:.1f} ms"
    assert lane.take(slot).sent == b""


def test_beside_other_work_a_turn_answers_each_connection_once(
    host: LibraryHost, lane: Lane
) -> None:
    """Two connections in the lane, and the loop has other work (no wait
    given): neither is waited for: one answer per connection per turn."""
    expected = version_answer(host)
    socks = [pair() for _ in range(2)]
    slots = [lane.add(ours.fileno()) for ours, _ in socks]
    calls = 200
    clients = [calling_back_to_back(theirs, calls, expected) for _, theirs in socks]
    turns = run_until(lane, lambda t: sum(x.calls for x in t) == 2 * calls, timeout=30)
    for client in clients:
        client.join(5)
    assert all(t.calls <= 2 for t in turns), max(t.calls for t in turns)
    assert not backs(turns)
    for slot in slots:
        assert lane.take(slot).sent == b""


def test_several_connections_are_served_round_after_round(host: LibraryHost, lane: Lane) -> None:
    """Four connections calling back to back, and the loop with nothing else
    to do (a wait given): a turn waits for the answers due, writes them and
    serves the requests that came meanwhile, so that turns answer more than
    one call per connection; every answer right, none handed back, and a
    turn lasts about the slice (0.1 ms) and one answer's wait, never the
    clients' whole run (4 x 1,000 calls)."""
    expected = version_answer(host)
    socks = [pair() for _ in range(4)]
    slots = [lane.add(ours.fileno()) for ours, _ in socks]
    calls = 1000
    clients = [calling_back_to_back(theirs, calls, expected) for _, theirs in socks]
    turns, longest = run_timed(lane, 4 * calls, 0.001)
    for client in clients:
        client.join(5)
    assert [(m, r) for m, r, _ in answered(turns)] == [("version", wire.RET_OK)] * 4 * calls
    assert not backs(turns)
    busy = [t.calls for t in turns if t.calls]
    rounds = sum(1 for n in busy if n > 4)  # a connection served twice or more
    print(f"{len(busy)} turns answered {4 * calls} calls, at most {max(busy)} in one")
    print(f"{rounds} turns served a connection more than once")
    print(f"the longest turn: {longest * 1e3:.2f} ms")
    assert rounds >= 10, "turns do not serve connections round after round"
    # a loaded machine stretches a turn, but never to the clients' whole run
    assert longest < 0.05, f"one turn took {longest * 1e3:.1f} ms"
    for slot in slots:
        assert lane.take(slot).sent == b""


@pytest.mark.parametrize("then", [None, ECHO], ids=["end", "other request"])
def test_a_lone_connection_goes_back_as_it_ends_or_sends_another_request(
    host: LibraryHost, lane: Lane, then: bytes | None
) -> None:
    """Served on the spot: its end, or a request the lane does not serve
    (with what it sent), hands it back at once, after its answers."""
    expected = version_answer(host)
    ours, theirs = pair()
    slot = lane.add(ours.fileno())
    client = calling_back_to_back(theirs, 50, expected, then)
    turns: list[Turn] = []
    deadline = time.monotonic() + 10
    while not backs(turns):
        assert time.monotonic() < deadline, f"not handed back: {turns[-3:]}"
        select.select([lane.fd], [], [], 0.05)
        turns.append(lane.run(0.005))
    client.join(5)
    assert len(answered(turns)) == 50
    assert backs(turns) == [(slot, "eof" if then is None else "other")]
    taken = lane.take(slot)
    assert taken.sent + unread(ours) == (then or b"") and taken.in_flight is None


def test_one_sweep_gives_back_a_bounded_slice(host: LibraryHost) -> None:
    """70 quiet connections: one sweep gives back SWEEP_SLICE of them (each
    costs the loop Python), the next the rest."""
    lane = host.lane(70)
    assert lane is not None
    socks = [pair() for _ in range(70)]
    slots = [lane.add(ours.fileno()) for ours, _ in socks]
    assert sorted(slots) == list(range(70))
    first = lane.sweep(0, 60)
    assert len(first) == SWEEP_SLICE and all(why == "quiet" for _, why in first)
    assert len(lane.sweep(0, 60)) == 70 - SWEEP_SLICE  # not handed back twice
    for slot in slots:
        lane.take(slot)
    assert len(lane) == 0


def test_a_turns_answers_come_in_runs_of_one_method_and_outcome() -> None:
    """Answers of two quick methods, one answered OK (version) and one
    with a library error (schedule's empty job name), from 8 connections
    at once: counted in runs, each of one method and outcome, never two
    alike in a row; every answer there once, with its latency."""
    library = LibraryHost(BUNDLED_LIBRARY)
    library.start(interfaces.bundled(library.generation), {"config": {"name": "runs"}}, direct=True)
    assert library.quicken(["version", "schedule"]) == ["version", "schedule"]
    lane = library.lane(8)
    assert lane is not None
    socks = [pair() for _ in range(8)]
    slots = [lane.add(ours.fileno()) for ours, _ in socks]
    schedule = wire.encode_request("schedule", b"\xa0")
    for k, (_, theirs) in enumerate(socks):
        theirs.sendall(VERSION if k % 4 < 2 else schedule)
    turns = run_until(lane, lambda t: len(answered(t)) == 8)
    for turn in turns:
        kinds = [(m, r) for m, r, _ in turn.answered]
        assert all(a != b for a, b in pairwise(kinds)), kinds
        assert all(secs for _, _, secs in turn.answered)
    made = answered(turns)
    assert sorted((m, r) for m, r, _ in made) == sorted(
        [("schedule", wire.RET_ERR)] * 4 + [("version", wire.RET_OK)] * 4
    )
    assert all(0 < s < 5 for _, _, s in made)
    for slot in slots:
        lane.take(slot)
