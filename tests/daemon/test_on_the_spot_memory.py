"""Answers on the spot, in memory: calls whose answers the library gives
within microseconds are answered in the same turn of the loop (the quick
path of ``{}`` calls, and :meth:`Library.call` waited for), with the same
order, budgets, counters and refusals as calls answered later."""

from __future__ import annotations

import logging

import cbor2
import pytest

from mytimerd.daemon.connection import Connection
from mytimerd.daemon.server import ALONE
from mytimerd.protocol import wire
from tests.daemon.test_server_memory import Rig, echo, error_name, in_loop
from tests.support.memory import FakeTransport

VERSION = wire.encode_request("version", b"\xa0")


def settle(rig: Rig, conn_calls: int = ALONE + 1) -> tuple[Connection, FakeTransport]:
    """A connection that has made enough calls in a row for its answers to
    be waited for (every one answered)."""
    conn, transport = rig.connect()
    for _ in range(conn_calls):
        conn.data_received(VERSION)
        rig.results()
    assert len(transport.responses()) == conn_calls
    return conn, transport


def test_a_lone_client_s_calls_are_answered_on_the_spot() -> None:
    """The first calls of a connection go the usual way (answered through
    results()); once it alone has called ALONE times in a row, its calls are
    waited for and answered within data_received, on the quick path."""
    rig = Rig(inline=True)
    conn, transport = rig.connect()
    for _ in range(ALONE + 3):
        conn.data_received(VERSION)
        rig.results()
    assert rig.library.waits == [False] * ALONE + [True] * 3
    written = len(transport.responses())
    conn.data_received(VERSION)
    assert len(transport.responses()) == written + 1  # no results() needed
    assert not rig.server.pending and len(rig.server.ledger) == 0
    assert rig.server.stats.calls["version"]["ok"] == ALONE + 4
    assert all(r.ret == wire.RET_OK for r in transport.responses())


def test_clients_taking_turns_are_not_waited_for() -> None:
    """Calls of connections that take turns are never waited for: the next
    client's call is read while the library answers."""
    rig = Rig(inline=True)
    conns = [rig.connect() for _ in range(3)]
    for _ in range(5):
        for conn, _ in conns:
            conn.data_received(VERSION)
        rig.results()
    assert rig.library.waits == [False] * 15
    assert all(len(t.responses()) == 5 for _, t in conns)


def test_a_pipelined_burst_keeps_its_order_around_other_calls() -> None:
    """Quick frames, a call of another kind (held by the library), then
    quick frames again, in one read: answered in request order."""
    rig = Rig(inline=True)
    conn, transport = settle(rig)
    conn.data_received(VERSION * 3 + echo("held") + VERSION * 2)
    assert len(transport.responses()) == ALONE + 1 + 3  # up to the echo
    (held,) = rig.library.held
    rig.library.answer(held)
    rig.results()
    responses = transport.responses()[ALONE + 1 :]
    assert len(responses) == 6
    assert cbor2.loads(responses[3].body)["req"]["message"] == "held"
    assert [cbor2.loads(r.body) for r in responses[:3] + responses[4:]] == ["fake v1"] * 5


def test_a_quick_call_answered_later_holds_its_place() -> None:
    """A quick call the library does not answer in time becomes an ordinary
    call in flight: its place comes before what follows it in the read,
    and its peer's share holds it until the answer."""
    rig = Rig(inline=True)
    conn, transport = settle(rig)
    rig.library.answers_version = False
    before = len(transport.responses())
    conn.data_received(VERSION + wire.encode_request("mytimerd.ping", b"\xa0"))
    assert len(transport.responses()) == before  # the ping waits behind the version call
    assert len(rig.server.pending) == 1 and len(rig.server.ledger) == 1
    rig.library.answer(min(rig.library.held), body=cbor2.dumps("late"))
    rig.results()
    version, ping = transport.responses()[before:]
    assert cbor2.loads(version.body) == "late"
    assert cbor2.loads(ping.body)["healthy"] is True
    assert len(rig.server.ledger) == 0


def test_a_peer_at_its_share_is_refused_as_ever() -> None:
    """The quick path takes nothing from a peer whose share of held calls is
    full: the call is refused QuotaExceeded, as on the ordinary path."""
    rig = Rig(inline=True, max_held_calls_per_peer=2, max_held_calls=100)
    conn, transport = settle(rig)
    other, _ = rig.connect()  # the same peer (one address): it fills the share
    other.data_received(echo("a") + echo("b"))
    assert len(rig.library.held) == 2
    before = len(transport.responses())
    conn.data_received(VERSION)
    (refused,) = transport.responses()[before:]
    assert error_name(refused) == "QuotaExceeded"


@pytest.mark.parametrize("state", ["draining", "streaming"])
def test_only_a_serving_connection_takes_the_quick_path(state: str) -> None:
    """A draining connection answers ShuttingDown; a subscriber is ended
    (Subscribed): the quick path takes neither's calls."""

    async def run() -> None:
        rig = Rig(inline=True)
        conn, transport = settle(rig)
        if state == "draining":
            rig.server.draining = True
            conn.drain()
            name = "ShuttingDown"
        else:
            conn.data_received(
                wire.encode_request(
                    "mytimerd.subscribe", cbor2.dumps({"events": ["on_echo_fired"]})
                )
            )
            name = "Subscribed"
        calls = rig.library.submitted
        conn.data_received(VERSION)
        assert rig.library.submitted == calls
        assert error_name(transport.responses()[-1]) == name

    in_loop(run)


def test_debug_logging_takes_the_ordinary_path(caplog: pytest.LogCaptureFixture) -> None:
    """With debug logging (which logs each library error) the quick path
    takes nothing; a call waited for is still answered on the spot, through
    call(), counted once and holding nothing."""
    rig = Rig(inline=True)
    conn, transport = settle(rig)
    with caplog.at_level(logging.DEBUG, logger="mytimerd"):
        before = len(rig.library.waits)
        conn.data_received(VERSION)
        assert len(rig.library.waits) == before + 1  # call(), not quick()
    assert rig.library.waits[-1] is True
    assert transport.responses()[-1].ret == wire.RET_OK
    assert rig.server.stats.calls["version"]["ok"] == ALONE + 2
    assert not rig.server.pending and len(rig.server.ledger) == 0
