"""Reading ahead for a lone client, in memory over real socket pairs: once
one client calls alone and owes nothing, its next request is read from its
socket within the callback that answered the last one, not through another
turn of the loop; never for a client that shares the daemon, with a call in
flight, or after a wait in vain until its calls come soon again; and one
callback reads ahead a bounded number of times for a bounded time."""

from __future__ import annotations

import socket
import time

import pytest

from mytimerd.daemon import connection, readahead, server
from mytimerd.daemon.connection import READ_AHEAD_SLICE, READ_AHEAD_TURNS, Connection
from mytimerd.daemon.server import READ_AHEAD_STREAK
from mytimerd.protocol import wire
from tests.daemon.test_server_memory import Rig, echo
from tests.support.memory import FakeTransport

VERSION = wire.encode_request("version", b"\xa0")


#: --read-ahead-wait of these tests: 50 ms, so that a test's own pace between
#: calls counts as calling soon (a wait in vain costs the test 50 ms).
PATIENT = 50_000


def make_rig(wait_us: int = PATIENT) -> Rig:
    """A server whose library answers version calls on the spot."""
    return Rig(inline=True, read_ahead_wait=wait_us)


def lone(rig: Rig) -> tuple[Connection, FakeTransport, socket.socket]:
    """A unix connection that has called alone READ_AHEAD_STREAK + 1 times,
    all answered (its last two answers waited for the next request in vain)."""
    conn, transport, theirs = rig.connect_unix()
    for _ in range(READ_AHEAD_STREAK + 1):
        conn.data_received(VERSION)
        rig.results()
    assert len(transport.responses()) == READ_AHEAD_STREAK + 1
    return conn, transport, theirs


def unread(sock: socket.socket) -> int:
    """Bytes waiting in the daemon's end of the pair (peeked, not taken)."""
    try:
        return len(sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0


def test_a_lone_client_s_next_request_is_read_on_the_spot() -> None:
    """Requests the client sent meanwhile are read and answered within the
    callback that answered the one the loop read."""
    rig = make_rig()
    conn, transport, theirs = lone(rig)
    ours = rig.sockets[-2]
    theirs.sendall(VERSION * 3)
    before = len(transport.responses())
    conn.data_received(VERSION)
    assert len(transport.responses()) == before + 4
    assert unread(ours) == 0
    assert rig.server.stats.calls["version"]["ok"] == READ_AHEAD_STREAK + 1 + 4
    assert all(r.ret == wire.RET_OK for r in transport.responses())


def test_a_partial_request_read_ahead_waits_for_the_loop() -> None:
    """Half a frame read ahead is kept like any other; reading ahead stops
    (the rest comes through the loop) and the call is answered once whole."""
    rig = make_rig()
    conn, transport, theirs = lone(rig)
    ours = rig.sockets[-2]
    theirs.sendall(VERSION + VERSION[:5])
    before = len(transport.responses())
    conn.data_received(VERSION)
    assert len(transport.responses()) == before + 2
    theirs.sendall(VERSION[5:] + VERSION)
    assert unread(ours) == len(VERSION) * 2 - 5  # not read: a frame is half read
    conn.data_received(ours.recv(1 << 16))
    assert len(transport.responses()) == before + 4


def test_no_read_ahead_before_the_streak() -> None:
    """A client whose last READ_AHEAD_STREAK - 1 calls were the only ones
    (answered on the spot already) is not waited for: with several clients
    calling, one often calls twice in a row, and waiting for it would hold
    the others."""
    rig = make_rig()
    conn, transport, theirs = rig.connect_unix()
    for _ in range(READ_AHEAD_STREAK - 2):
        conn.data_received(VERSION)
        rig.results()
    theirs.sendall(VERSION)
    conn.data_received(VERSION)
    rig.results()
    assert unread(rig.sockets[-2]) == len(VERSION)
    assert len(transport.responses()) == READ_AHEAD_STREAK - 1


def test_no_read_ahead_for_clients_that_take_turns() -> None:
    """Two clients calling by turns: each one's next request stays in its
    socket for the loop."""
    rig = make_rig()
    a, ta, a_theirs = rig.connect_unix()
    b, tb, b_theirs = rig.connect_unix()
    for _ in range(READ_AHEAD_STREAK + 2):
        a.data_received(VERSION)
        b.data_received(VERSION)
        rig.results()
    a_theirs.sendall(VERSION)
    b_theirs.sendall(VERSION)
    a.data_received(VERSION)
    b.data_received(VERSION)
    rig.results()
    assert unread(rig.sockets[0]) == unread(rig.sockets[2]) == len(VERSION)
    assert len(ta.responses()) == len(tb.responses()) == READ_AHEAD_STREAK + 3


def test_no_read_ahead_while_any_call_is_in_flight() -> None:
    """Another client's call in flight (the library holds echoes): the lone
    caller's next request waits for the loop, which then sees both."""
    rig = make_rig()
    other, _ = rig.connect()
    other.data_received(echo("held"))
    conn, _, theirs = lone(rig)
    assert rig.server.pending
    theirs.sendall(VERSION)
    conn.data_received(VERSION)
    assert unread(rig.sockets[-2]) == len(VERSION)


def test_the_wait_halves_in_vain_and_doubles_when_it_sees_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that calls now and then costs little waiting: each wait in
    vain halves the next, down to READ_AHEAD_MIN_WAIT; each that saw a
    request doubles it, up to --read-ahead-wait; a new lone caller starts
    at --read-ahead-wait."""
    monkeypatch.setattr(server, "READ_AHEAD_MIN_WAIT", 0.001)
    rig = make_rig(8000)
    conn, _, _ = lone(rig)  # its last answers waited 8, then 4 ms in vain
    waits: list[float] = []
    script: list[bytes] = []

    def recorded(fd: int, seconds: float) -> bytes:
        waits.append(seconds)
        return script.pop(0) if script else b""

    monkeypatch.setattr(readahead, "spin_read", recorded)
    for _ in range(4):
        conn.data_received(VERSION)
    assert waits == [0.002, 0.001, 0.001, 0.001]
    script[:] = [VERSION, VERSION]
    conn.data_received(VERSION)
    assert waits[4:] == [0.001, 0.002, 0.004]
    other, _ = rig.connect()
    other.data_received(VERSION)
    rig.results()
    conn.data_received(VERSION)  # in flight: it no longer calls alone
    rig.results()
    waits.clear()
    for _ in range(READ_AHEAD_STREAK - 1):  # after the one in flight
        conn.data_received(VERSION)
        rig.results()
    assert waits == [0.008]


def test_one_callback_reads_ahead_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client whose next request is always there: one callback reads ahead
    READ_AHEAD_TURNS times, then the loop runs (other clients are read); the
    request after them is left in the socket for the loop to read."""
    rig = make_rig()
    conn, transport, theirs = lone(rig)
    monkeypatch.setattr(readahead, "spin_read", lambda fd, seconds: VERSION)
    monkeypatch.setattr(connection, "READ_AHEAD_SLICE", 60.0)  # only the count bounds
    theirs.sendall(VERSION)
    before = len(transport.responses())
    started = time.perf_counter()
    conn.data_received(VERSION)
    assert len(transport.responses()) == before + 1 + READ_AHEAD_TURNS
    assert unread(rig.sockets[-2]) == len(VERSION)
    assert time.perf_counter() - started < PATIENT / 1e6  # it was there: no wait


def test_one_callback_reads_ahead_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose requests each take a while to come: reading ahead
    stops once READ_AHEAD_SLICE has passed (then one wait for the next,
    in vain here)."""
    rig = make_rig()
    conn, transport, _ = lone(rig)

    def slowly(fd: int, seconds: float) -> bytes:
        time.sleep(READ_AHEAD_SLICE / 4)
        return VERSION

    monkeypatch.setattr(readahead, "spin_read", slowly)
    before = len(transport.responses())
    started = time.perf_counter()
    conn.data_received(VERSION)
    took = time.perf_counter() - started
    read_ahead = len(transport.responses()) - before - 1
    assert 1 <= read_ahead < READ_AHEAD_TURNS
    # one more read at most, and the last wait
    assert took < READ_AHEAD_SLICE + READ_AHEAD_SLICE / 4 + PATIENT / 1e6 + 0.25


def test_no_read_ahead_without_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection without a socket (here a fake TCP transport) is never
    read ahead for."""
    rig = make_rig()
    conn, transport = rig.connect()
    called: list[int] = []

    def record(fd: int, seconds: float) -> bytes:
        called.append(fd)
        return b""

    monkeypatch.setattr(readahead, "spin_read", record)
    for _ in range(READ_AHEAD_STREAK + 3):
        conn.data_received(VERSION)
        rig.results()
    assert called == [] and len(transport.responses()) == READ_AHEAD_STREAK + 3


def test_the_peer_closing_is_left_to_the_loop() -> None:
    """The client closed after its last request: the wait sees the end
    without taking it, so the loop still gets its EOF."""
    rig = make_rig()
    conn, transport, theirs = lone(rig)
    ours = rig.sockets[-2]
    theirs.sendall(VERSION)
    theirs.shutdown(socket.SHUT_WR)
    before = len(transport.responses())
    conn.data_received(VERSION)
    assert len(transport.responses()) == before + 2
    assert ours.recv(16) == b""  # EOF still there for the loop


def test_no_read_ahead_after_calls_the_daemon_answers_itself() -> None:
    """Only a client's library calls make it a lone caller: after a
    daemon method (or a refusal) its next request waits for the loop."""
    rig = make_rig()
    conn, transport, theirs = rig.connect_unix()
    ping = wire.encode_request("mytimerd.ping", b"\xa0")
    for _ in range(READ_AHEAD_STREAK + 2):
        conn.data_received(ping)
    theirs.sendall(ping)
    conn.data_received(ping)
    assert unread(rig.sockets[-2]) == len(ping)
    assert len(transport.responses()) == READ_AHEAD_STREAK + 3


def test_read_ahead_wait_0_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """--read-ahead-wait 0: a lone client's next request is never waited
    for nor read; it stays for the loop."""
    rig = make_rig(0)
    called: list[float] = []

    def record(fd: int, seconds: float) -> bytes:
        called.append(seconds)
        return b""

    monkeypatch.setattr(readahead, "spin_read", record)
    monkeypatch.setattr(readahead, "spin_wait", lambda fd, seconds: bool(record(fd, seconds)))
    conn, _, theirs = lone(rig)
    theirs.sendall(VERSION)
    conn.data_received(VERSION)
    assert called == [] and unread(rig.sockets[-2]) == len(VERSION)
