"""Per-peer shares of every budget, in memory: one peer past its share is
refused by name while another peer is served; the fan-out works in bounded
slices; a connection ends without a reset; every close is counted once."""

from __future__ import annotations

import asyncio

import cbor2
import pytest

from mytimerd.daemon import introspection
from mytimerd.daemon.connection import DISCARD_SLICE, STREAM_READ_MAX, State
from mytimerd.daemon.events import SLICE
from mytimerd.daemon.looplag import UNNAMED, LoopLag
from mytimerd.daemon.server import DISCARD_TURNS
from mytimerd.daemon.shares import Budget
from mytimerd.protocol import wire
from tests.daemon.test_server_memory import Rig, echo, error_name, in_loop
from tests.support.memory import Clock

SUBSCRIBE = wire.encode_request("mytimerd.subscribe", b"\xa0")
EVENT = cbor2.dumps({"eventType": "on_echo_fired", "payload": {"message": "hi", "echoCount": 1}})


def test_budget_refuses_past_the_share_and_past_the_total() -> None:
    budget = Budget("things", limit=5, share=3, option="--max-things", share_option="--per")
    budget.take("a", 3)
    assert budget.check("a") == "peer"
    assert budget.check("b", 2) == "ok"
    budget.take("b", 2)
    assert budget.check("b") == "global"
    assert budget.top() == [("a", 3), ("b", 2)]
    assert "a has 3 things, its share (--per 3)" in budget.describe_refusal("peer", "a")
    budget.give("a", 3)
    assert budget.top() == [("b", 2)]  # a peer holding nothing leaves no entry


def test_one_peer_past_its_held_call_share_is_refused_and_others_are_served() -> None:
    rig = Rig(max_held_calls_per_peer=3, max_held_calls=100)
    attacker, _ = rig.connect("192.0.2.66")
    attacker.data_received(echo("a") * 3)
    second, second_t = rig.connect("192.0.2.66")  # another connection, the same peer
    second.data_received(echo("a"))
    (refused,) = second_t.responses()
    assert error_name(refused) == "QuotaExceeded"
    assert b"ip:192.0.2.66 has 3 library calls held" in refused.body
    assert b"--max-held-calls-per-peer 3" in refused.body
    attacker.close("client")  # held calls keep counting after it leaves
    again, again_t = rig.connect("192.0.2.66")
    again.data_received(echo("b"))
    assert error_name(again_t.responses()[0]) == "QuotaExceeded"
    bystander, _bystander_t = rig.connect("192.0.2.7")
    bystander.data_received(echo("c"))
    assert len(rig.library.held) == 4  # three of the attacker's, one of the bystander's
    stats = introspection.stats(rig.server)
    top = stats["budgets"]["max-held-calls"]["top"]
    assert top[0] == {"peer": "ip:192.0.2.66", "amount": 3}


def test_past_the_global_held_budget_it_is_overloaded() -> None:
    rig = Rig(max_held_calls_per_peer=3, max_held_calls=4)
    for address in ("192.0.2.1", "192.0.2.2"):
        conn, _ = rig.connect(address)
        conn.data_received(echo("x") * 2)
    third, third_t = rig.connect("192.0.2.3")
    third.data_received(echo("y"))
    (refused,) = third_t.responses()
    assert error_name(refused) == "Overloaded"
    assert b"--max-held-calls 4" in refused.body


def test_held_bytes_have_a_per_peer_share_too() -> None:
    rig = Rig(max_held_bytes_per_peer=100)
    conn, transport = rig.connect()
    conn.data_received(echo("x" * 60) + echo("y" * 60))
    rig.library.answer(min(rig.library.held))
    rig.results()
    _x, refused = transport.responses()  # in request order, after the first echo
    assert error_name(refused) == "QuotaExceeded"
    assert b"--max-held-bytes-per-peer 100" in refused.body


def test_unfinished_frames_have_a_per_peer_share() -> None:
    async def run() -> None:
        rig = Rig(max_buffered_bytes_per_peer=1000, linger=0.01)
        frame = echo("x" * 900)
        a1, _ = rig.connect("192.0.2.66")
        a2, a2_t = rig.connect("192.0.2.66")
        b, b_t = rig.connect("192.0.2.7")
        a1.data_received(frame[:600])
        a2.data_received(frame[:600])  # the attacker's second half frame passes its share
        assert error_name(a2_t.responses()[0]) == "QuotaExceeded"
        b.data_received(frame[:600])  # another peer is not affected
        assert b_t.responses() == []
        assert rig.server.ledger.buffered.total == 1200

    in_loop(run)


def test_a_delay_longer_than_max_delay_is_refused() -> None:
    rig = Rig(max_delay=2.0)
    conn, transport = rig.connect()
    conn.data_received(echo("too long", 2001) + echo("ok", 2000))
    (refused,) = transport.responses()
    assert error_name(refused) == "InvalidParameter"
    assert b"req.delayMs: 2001 ms is longer" in refused.body
    assert b"--max-delay 2 s" in refused.body
    assert len(rig.library.held) == 1


def test_subscriptions_have_a_global_bound_and_a_per_peer_share() -> None:
    rig = Rig(max_subscribers=3, max_subscribers_per_peer=2)
    answers = []
    for address in ("192.0.2.66", "192.0.2.66", "192.0.2.66", "192.0.2.7", "192.0.2.8"):
        conn, transport = rig.connect(address)
        conn.data_received(SUBSCRIBE)
        (first,) = transport.responses()
        answers.append(error_name(first) if first.ret else None)
    assert answers == [None, None, "QuotaExceeded", None, "Overloaded"]


def test_a_subscriber_s_partial_frame_pins_no_budget() -> None:
    async def run() -> None:
        rig = Rig(linger=0.01)
        conn, transport = rig.connect()
        conn.data_received(SUBSCRIBE)
        conn.data_received(wire.encode_request("echo", b"\xa0" * 4000)[: STREAM_READ_MAX + 1])
        _ack, refused = transport.responses()
        assert error_name(refused) == "Subscribed"
        assert conn.state is State.ENDING
        assert rig.server.ledger.buffered.total == 0

    in_loop(run)


def test_calls_after_subscribing_end_the_stream_once() -> None:
    async def run() -> None:
        rig = Rig(linger=0.01)
        conn, transport = rig.connect()
        version = wire.encode_request("version", b"\xa0")
        conn.data_received(SUBSCRIBE + version + version)
        conn.data_received(version)  # after the end: discarded, never written
        _ack, refused = transport.responses()
        assert error_name(refused) == "Subscribed"
        assert transport.eof_written
        await asyncio.sleep(0.05)
        transport.feed_eof()
        assert transport.closed and conn.close_reason == "ended"
        assert rig.server.stats.closed == {"ended": 1}

    in_loop(run)


def test_the_fan_out_is_sliced_and_writes_once_per_subscriber() -> None:
    rig = Rig(max_subscribers=4096, max_subscribers_per_peer=4096)
    subscribers = [rig.connect() for _ in range(3 * SLICE)]
    for conn, _ in subscribers:
        conn.data_received(SUBSCRIBE)
    writes_before = [t.writes for _, t in subscribers]
    for _ in range(50):
        rig.library.fire(0, EVENT)
    rig.server.on_results()  # publishing costs no write at all
    assert all(t.writes == w for (_, t), w in zip(subscribers, writes_before, strict=True))
    assert rig.run_soon() >= 3  # at least one slice per SLICE subscribers
    for (_, transport), before in zip(subscribers, writes_before, strict=True):
        assert transport.writes == before + 1  # fifty events, one write
        assert len(transport.responses()) == 51
    assert introspection.stats(rig.server)["events"]["delivered"] == 50 * 3 * SLICE


def test_a_subscriber_that_does_not_read_is_cut_off_after_the_lag() -> None:
    async def run() -> None:
        rig = Rig(max_subscriber_lag=2.0, linger=0.01)
        conn, transport = rig.connect()
        conn.data_received(SUBSCRIBE)
        conn.pause_writing()
        rig.library.fire(0, EVENT)
        rig.results()
        rig.clock.advance(1.0)
        rig.server.tick()
        assert conn.state is State.STREAMING
        rig.clock.advance(1.5)
        rig.server.tick()
        _ack, refused = transport.responses()
        assert error_name(refused) == "SlowSubscriber"
        assert b"--max-subscriber-lag" not in refused.body or b"2 s" in refused.body

    in_loop(run)


@pytest.mark.parametrize("client_closes", [True, False])
def test_an_ending_connection_reads_until_the_client_is_done(client_closes: bool) -> None:
    """Over TCP only the client's close ends it before the deadline: quiet
    proves nothing (its kernel takes answers the client may not have read)."""

    async def run() -> None:
        rig = Rig(max_payload=16, linger=0.05, drain_timeout=0.4)
        conn, transport = rig.connect()
        conn.data_received(wire.encode_request("echo", b"\xa0" * 17))
        assert transport.eof_written
        for _ in range(5):  # the client is still sending: no close, no reset
            await asyncio.sleep(0.03)
            conn.data_received(b"more of what it pipelined")
            assert not transport.closed
        await asyncio.sleep(0.1)  # quiet for longer than --linger
        assert not transport.closed
        if client_closes:
            transport.feed_eof()
            assert conn.close_reason == "ended"
        else:
            await asyncio.sleep(0.3)
            assert conn.close_reason == "deadline"
        assert transport.closed and not transport.aborted

    in_loop(run)


def test_an_ending_unix_connection_closes_once_its_client_has_read_everything() -> None:
    """On a unix socket the kernel counts a byte as unsent until the client
    reads it: quiet for --linger with nothing unread either way ends it."""

    async def run() -> None:
        rig = Rig(max_payload=16, linger=0.05, drain_timeout=5.0)
        conn, transport, client = rig.connect_unix()
        ours = transport.sock
        assert ours is not None and conn.peer.startswith("uid:")
        conn.data_received(wire.encode_request("echo", b"\xa0" * 17))
        assert transport.eof_written
        ours.send(b"an answer the client has not read")
        await asyncio.sleep(0.15)
        assert not transport.closed  # quiet, but its answer is unread
        client.recv(100)
        client.send(b"what it sends after the end")  # unread by us: a close would reset
        await asyncio.sleep(0.15)
        assert not transport.closed
        ours.recv(100)  # the connection's read (discarded)
        await asyncio.sleep(0.15)
        assert transport.closed and not transport.aborted and conn.close_reason == "ended"

    in_loop(run)


def test_ending_connections_discard_a_slice_per_turn_of_the_loop() -> None:
    """However many connections end while their clients send, the loop reads
    DISCARD_TURNS of them per turn after their first DISCARD_SLICE."""

    async def run() -> None:
        rig = Rig(max_payload=16, linger=0.05, drain_timeout=5.0)
        ends = [rig.connect() for _ in range(3 * DISCARD_TURNS)]
        for conn, transport in ends:
            conn.data_received(wire.encode_request("echo", b"\xa0" * 17))
            assert transport.eof_written and transport.reading
            conn.data_received(b"\0" * (DISCARD_SLICE - 1))
            assert transport.reading  # within its slice
            conn.data_received(b"\0")
            assert not transport.reading  # paused: it waits for a turn
        for turn in range(1, 4):
            await asyncio.sleep(0)
            assert sum(t.reading for _, t in ends) == turn * DISCARD_TURNS
        for _, transport in ends:
            transport.feed_eof()
            assert transport.closed and not transport.aborted

    in_loop(run)


def test_an_ending_connection_that_never_reads_is_aborted_at_the_deadline() -> None:
    async def run() -> None:
        rig = Rig(max_payload=16, linger=0.02, drain_timeout=0.1)
        conn, transport = rig.connect()
        transport.buffered = 1 << 20  # the client reads nothing
        conn.data_received(wire.encode_request("echo", b"\xa0" * 17))
        await asyncio.sleep(0.2)
        assert transport.aborted and conn.close_reason == "deadline"

    in_loop(run)


def test_an_ending_connection_waits_for_its_turn_across_the_half_close() -> None:
    """Paused for its turn while an answer is still owed: the half-close
    after that answer does not let it read before its turn."""

    async def run() -> None:
        rig = Rig(max_payload=64, linger=0.05, drain_timeout=5.0)
        conn, transport = rig.connect()
        conn.data_received(echo("held") + wire.encode_request("echo", b"\xa0" * 65))
        assert not transport.eof_written  # the held call is owed first
        conn.data_received(b"\0" * DISCARD_SLICE)
        assert not transport.reading
        (call_id,) = rig.library.held
        rig.library.answer(call_id)
        rig.results()
        assert transport.eof_written and not transport.reading
        await asyncio.sleep(0)
        assert transport.reading

    in_loop(run)


def test_degraded_when_a_global_budget_is_nearly_full() -> None:
    rig = Rig(max_held_calls=10, max_held_calls_per_peer=10)
    conn, _ = rig.connect("192.0.2.66")
    conn.data_received(echo("x") * 8)
    assert introspection.ping(rig.server)["degraded"] is False
    conn.data_received(echo("x"))
    ping = introspection.ping(rig.server)
    assert ping["degraded"] is True and ping["healthy"] is True
    assert "library calls held: 9 of 10 (--max-held-calls)" in ping["degradedReasons"][0]
    assert "ip:192.0.2.66" in ping["degradedReasons"][0]
    rig.server.tick()
    assert "DEGRADED" in rig.notes[-1]


def test_loop_lag_names_what_ran_and_forgets_after_a_minute() -> None:
    clock = Clock()
    lag = LoopLag(clock, warn_after=0.25)
    lag.note(0.3, "the event fan-out")
    lag.tick(0.32)  # the late tick is explained by the fan-out
    assert lag.longest() == (0.32, "the event fan-out")
    clock.advance(30)
    lag.tick(0.05)  # nothing of ours ran that long
    assert lag.longest()[0] == 0.32
    clock.advance(45)
    lag.tick(0.04)
    assert lag.longest() == (0.05, UNNAMED)


def test_ping_opens_with_accepting_and_reports_a_drain_announced() -> None:
    rig = Rig()
    conn, transport = rig.connect()
    conn.data_received(wire.encode_request("mytimerd.ping", b"\xa0"))
    (answer,) = transport.responses()
    # The bytes a balancer's health check expects: the map's first entry.
    assert answer.body[1:].startswith(bytes.fromhex("69616363657074696e67f5"))
    rig.server.announce_drain()
    ping = introspection.ping(rig.server)
    assert (ping["accepting"], ping["draining"], ping["healthy"]) == (False, True, True)
    conn.data_received(echo("still served"))
    assert len(rig.library.held) == 1
