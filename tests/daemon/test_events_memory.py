"""Events over the wire, in memory: subscribe, fan-out byte for byte, a
subscriber that falls behind, and methods the library lacks."""

from __future__ import annotations

import asyncio

import cbor2

from mytimerd.daemon import introspection
from mytimerd.protocol import wire
from tests.daemon.test_server_memory import Rig, echo, error_name, in_loop

SUBSCRIBE_ECHO = wire.encode_request(
    "mytimerd.subscribe", cbor2.dumps({"events": ["on_echo_fired"]})
)
EVENT = cbor2.dumps({"eventType": "on_echo_fired", "payload": {"message": "hi", "echoCount": 1}})


def test_a_subscriber_gets_an_ack_then_the_library_s_event_bodies() -> None:
    rig = Rig(generation="0.3")
    conn, transport = rig.connect()
    conn.data_received(wire.encode_request("mytimerd.subscribe", b"\xa0"))  # {}: every event
    rig.library.fire(0, EVENT)
    rig.library.fire(1, b"\xa0raw-body-kept")  # bytes pass through untouched
    rig.results()
    ack, first, second = transport.responses()
    assert cbor2.loads(ack.body) == {"subscribed": ["on_echo_fired", "on_job_scheduled"]}
    assert (first.ret, first.body) == (wire.RET_OK, EVENT)
    assert second.body == b"\xa0raw-body-kept"
    stats = introspection.stats(rig.server)["events"]
    assert stats["published"] == {"on_echo_fired": 1, "on_job_scheduled": 1}


def test_subscribers_get_only_what_they_asked_for_and_many_at_once() -> None:
    rig = Rig(generation="0.3")
    echoes = [rig.connect() for _ in range(100)]
    for conn, _ in echoes:
        conn.data_received(SUBSCRIBE_ECHO)
    jobs, jobs_t = rig.connect()
    jobs.data_received(
        wire.encode_request("mytimerd.subscribe", cbor2.dumps({"events": ["on_job_scheduled"]}))
    )
    for _ in range(10):
        rig.library.fire(0, EVENT)
    rig.results()
    assert all(len(t.responses()) == 11 for _, t in echoes)
    assert len(jobs_t.responses()) == 1  # the ack only


def test_unknown_events_are_refused_by_name() -> None:
    rig = Rig()
    conn, transport = rig.connect()
    conn.data_received(
        wire.encode_request("mytimerd.subscribe", cbor2.dumps({"events": ["on_job_scheduled"]}))
    )
    (answer,) = transport.responses()
    assert answer.body == (
        b"mytimerd.InvalidParameter: events: no event 'on_job_scheduled' "
        b"(this library has: on_echo_fired)"
    )


def test_a_subscribed_connection_takes_no_calls() -> None:
    async def run() -> None:
        rig = Rig(linger=0.01)
        conn, transport = rig.connect()
        conn.data_received(SUBSCRIBE_ECHO + echo("x"))
        _ack, refused = transport.responses()
        assert error_name(refused) == "Subscribed"
        assert transport.eof_written
        assert rig.library.submitted == 0

    in_loop(run)


def test_a_subscriber_that_falls_behind_is_cut_off_holding_nothing() -> None:
    async def run() -> None:
        rig = Rig(max_subscriber_queue=5, linger=0.01)
        slow, slow_t = rig.connect()
        fast, fast_t = rig.connect()
        slow.data_received(SUBSCRIBE_ECHO)
        fast.data_received(SUBSCRIBE_ECHO)
        slow.pause_writing()  # its socket is full
        for _ in range(6):
            rig.library.fire(0, EVENT)
            rig.results()
        *_, last = slow_t.responses()
        assert error_name(last) == "SlowSubscriber"
        assert len(slow_t.responses()) == 2  # the ack, then the error: no queued event
        assert slow_t.eof_written
        await asyncio.sleep(0.05)
        slow_t.feed_eof()
        assert slow_t.closed and not slow_t.aborted  # closed without a reset
        assert len(fast_t.responses()) == 7  # the others never noticed
        rig.library.fire(0, EVENT)
        rig.results()
        assert introspection.stats(rig.server)["events"]["cutOff"] == 1
        assert introspection.stats(rig.server)["events"]["subscribers"]["on_echo_fired"] == 1

    in_loop(run)


def test_a_paused_subscriber_catches_up_within_its_queue() -> None:
    rig = Rig(max_subscriber_queue=5)
    conn, transport = rig.connect()
    conn.data_received(SUBSCRIBE_ECHO)
    conn.pause_writing()
    for _ in range(5):
        rig.library.fire(0, EVENT)
    rig.results()
    assert len(transport.responses()) == 1
    conn.resume_writing()
    rig.run_soon()
    assert len(transport.responses()) == 6
    *_, last = transport.responses()
    assert last.body == EVENT  # six frames, one write


def test_a_method_the_library_lacks_is_unavailable() -> None:
    rig = Rig()
    rig.library.unavailable = frozenset({"complex"})
    conn, transport = rig.connect()
    conn.data_received(wire.encode_request("complex", b"\xa0") + echo("still served"))
    rig.library.answer(min(rig.library.held))
    rig.results()
    unavailable, served = transport.responses()
    assert error_name(unavailable) == "MethodUnavailable"
    assert served.ret == wire.RET_OK
    described = introspection.describe(rig.server)
    assert [m["name"] for m in described["methods"] if not m["available"]] == ["complex"]


def test_events_behind_a_call_still_in_flight_are_bounded_too() -> None:
    async def run() -> None:
        rig = Rig(max_subscriber_queue=5, linger=0.01)
        conn, transport = rig.connect()
        conn.data_received(echo("slow") + SUBSCRIBE_ECHO)  # the echo heads the line
        for _ in range(6):
            rig.library.fire(0, EVENT)
            rig.results()
        assert transport.responses() == []  # the echo still heads the line
        assert introspection.stats(rig.server)["events"]["cutOff"] == 1
        rig.library.answer(min(rig.library.held))
        rig.results()
        # The call made before subscribing keeps its answer; the error comes last.
        answer, ack, refusal = transport.responses()
        assert cbor2.loads(answer.body)["req"]["message"] == "slow"
        assert cbor2.loads(ack.body) == {"subscribed": ["on_echo_fired"]}
        assert error_name(refusal) == "SlowSubscriber"
        assert transport.eof_written

    in_loop(run)


def test_a_hand_over_carries_the_events_a_subscriber_was_owed() -> None:
    """Events a subscriber could not take yet (its socket was full) are
    what the hand-over's state carries for it, byte for byte and in order;
    those of events it did not ask for are not."""
    rig = Rig(generation="0.3")
    conn, transport = rig.connect()
    conn.data_received(SUBSCRIBE_ECHO)
    rig.library.fire(0, EVENT)
    rig.results()
    assert len(transport.responses()) == 2  # the ack and the first event
    conn.pause_writing()
    later = [cbor2.dumps({"eventType": "on_echo_fired", "payload": {"n": i}}) for i in range(3)]
    for body in later:
        rig.library.fire(0, body)
        rig.library.fire(1, b"\xa0not-asked-for")
    rig.results()
    assert conn.hold()
    names, owed = rig.server.events.unsent(conn)  # type: ignore[misc]
    assert names == ["on_echo_fired"]
    assert owed == b"".join(wire.encode_response(wire.RET_OK, body) for body in later)
    other, _ = rig.connect()
    assert rig.server.events.unsent(other) is None  # not a subscriber
