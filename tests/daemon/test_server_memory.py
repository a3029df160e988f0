"""The server in memory: a fake library, fake transports and a test clock.

Ordering, backpressure, timeouts, health, the watchdog, drain and every
limit, each in milliseconds and with no socket or process.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import cbor2
import pytest

from mytimerd.daemon import introspection
from mytimerd.daemon.config import Config
from mytimerd.daemon.connection import Connection
from mytimerd.daemon.health import MAX_PROBES
from mytimerd.daemon.server import Server
from mytimerd.protocol import interfaces, wire
from mytimerd.protocol.errors import parse_error_body
from mytimerd.protocol.limits import Limits
from tests.support.memory import Clock, FakeLibrary, FakeTransport

T = TypeVar("T")


class Rig:
    """A server over a fake library, with what it told systemd."""

    def __init__(
        self,
        watchdog: float | None = None,
        real_time: bool = False,
        generation: str = "0.2",
        inline: bool = False,
        **limits: Any,
    ):
        """``inline``: the library answers version calls on the spot when
        waited for, and serves them on its quick path."""
        self.library = FakeLibrary()
        self.library.answers_inline = inline
        #: Socket pairs made by connect_unix (closed with the test's process).
        self.sockets: list[socket.socket] = []
        self.clock = Clock()
        self.notes: list[str] = []
        config = Config(limits=Limits(**limits), watchdog=watchdog)
        self.interface = interfaces.bundled(generation)
        #: Work the server scheduled on the loop (fan-out and result slices).
        self.soon: list[Callable[[], None]] = []
        self.server = Server(
            config,
            self.library,
            self.interface,
            self.notes.append,
            time.monotonic if real_time else self.clock,
            schedule=lambda delay, callback: self.soon.append(callback),
        )

    def connect(self, address: str = "192.0.2.1") -> tuple[Connection, FakeTransport]:
        """A new client connection from TCP ``address`` (the peer ``ip:ADDRESS``)."""
        conn = Connection(self.server)
        transport = FakeTransport(protocol=conn, peername=(address, 40000))
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def connect_unix(self) -> tuple[Connection, FakeTransport, socket.socket]:
        """A new client connection over a real unix socket pair (the peer
        ``uid:N``), and the client's end of the pair."""
        ours, theirs = socket.socketpair()
        self.sockets += (ours, theirs)
        conn = Connection(self.server)
        transport = FakeTransport(protocol=conn, sock=ours)
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport, theirs

    def results(self) -> None:
        """The library's descriptor fired; then the loop runs what it scheduled."""
        self.server.on_results()
        self.run_soon()

    def run_soon(self, turns: int = 1000) -> int:
        """Run scheduled work until none is left; how many callbacks ran."""
        ran = 0
        while self.soon and ran < turns:
            self.soon.pop(0)()
            ran += 1
        assert not self.soon, "scheduled work did not settle"
        return ran


def echo(message: str, delay_ms: int = 0) -> bytes:
    """A framed echo request."""
    return wire.encode_request(
        "echo", cbor2.dumps({"req": {"message": message, "delayMs": delay_ms}})
    )


def error_name(response: wire.Response) -> str | None:
    """The daemon error name of a RET_ERR response."""
    assert response.ret == wire.RET_ERR
    return parse_error_body(response.body)[0]


def in_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in a fresh event loop (call_later and drain need one)."""
    return asyncio.run(make())  # type: ignore[arg-type]


def test_answers_come_back_in_request_order() -> None:
    rig = Rig()
    _, bystander = rig.connect()
    conn, transport = rig.connect()
    conn.data_received(b"".join(echo(m) for m in "abc"))
    for call_id in sorted(rig.library.held, reverse=True):  # the library answers last first
        rig.library.answer(call_id)
        rig.results()
    assert [cbor2.loads(r.body)["req"]["message"] for r in transport.responses()] == list("abc")
    assert bystander.written == b""


def test_in_flight_limit_holds_requests_and_stops_reading() -> None:
    rig = Rig(max_in_flight=2)
    conn, transport = rig.connect()
    conn.data_received(b"".join(echo(str(i)) for i in range(5)))
    assert len(rig.library.held) == 2
    assert not transport.reading
    first = min(rig.library.held)
    rig.library.answer(first)
    rig.results()
    assert len(rig.library.held) == 2  # the third started in its place
    assert not transport.reading
    while rig.library.held:
        rig.library.answer(min(rig.library.held))
        rig.results()
    assert transport.reading
    assert len(transport.responses()) == 5


def test_paused_writing_stops_reading_until_resumed() -> None:
    rig = Rig()
    conn, transport = rig.connect()
    conn.pause_writing()
    assert not transport.reading
    conn.resume_writing()
    assert transport.reading


def test_daemon_methods_and_errors_keep_order_behind_calls() -> None:
    rig = Rig()
    conn, transport = rig.connect()
    conn.data_received(
        echo("slow")
        + wire.encode_request("mytimerd.ping", b"\xa0")
        + wire.encode_request("nope", b"\xa0")
    )
    assert transport.written == b""  # the ping and the error wait for the echo
    rig.library.answer(min(rig.library.held))
    rig.results()
    first, ping, unknown = transport.responses()
    assert first.ret == wire.RET_OK
    assert cbor2.loads(ping.body)["healthy"] is True
    assert error_name(unknown) == "UnknownMethod"


@pytest.mark.parametrize(
    ("frame", "name"),
    [
        (wire.encode_request("echo", b"\xa1\x63req\x01"), "InvalidParameter"),
        (wire.encode_request("echo", b"\xff"), "InvalidCBOR"),
        (wire.encode_request("nope", b"\xa0"), "UnknownMethod"),
    ],
)
def test_refused_requests_never_reach_the_library(frame: bytes, name: str) -> None:
    rig = Rig()
    conn, transport = rig.connect()
    conn.data_received(frame)
    assert rig.library.submitted == 0
    (response,) = transport.responses()
    assert error_name(response) == name
    assert rig.server.stats.errors[name] == 1
    assert not transport.closed


def test_frame_limits_answer_then_close_once_the_client_closes() -> None:
    async def run() -> None:
        rig = Rig(max_payload=16, max_method_len=8, linger=0.01)
        for frame, name in (
            (wire.encode_request("echo", b"\xa0" * 17), "FrameTooLarge"),
            (wire.encode_request("x" * 9, b"\xa0"), "MethodNameTooLong"),
        ):
            conn, transport = rig.connect()
            conn.data_received(frame + echo("after"))
            (response,) = transport.responses()
            assert error_name(response) == name
            assert transport.eof_written and not transport.closed
            await asyncio.sleep(0.05)  # quiet past --linger: TCP cannot tell it read
            assert not transport.closed
            transport.feed_eof()
            assert transport.closed and not transport.aborted
        assert rig.library.submitted == 0

    in_loop(run)


def test_too_many_connections_is_answered_and_closed() -> None:
    async def run() -> None:
        rig = Rig(max_connections=1, linger=0.01)
        rig.connect()
        _, transport = rig.connect()
        (response,) = transport.responses()
        assert error_name(response) == "TooManyConnections"
        assert rig.server.stats.connections_refused == 1
        assert len(rig.server.connections) == 1

    in_loop(run)


def test_library_refusing_a_call_is_shutting_down() -> None:
    rig = Rig()
    conn, transport = rig.connect()
    rig.library.accepting = False
    conn.data_received(echo("x"))
    (response,) = transport.responses()
    assert error_name(response) == "ShuttingDown"


def test_timeout_answers_and_counts_the_late_result() -> None:
    rig = Rig(timeout=2.0)
    conn, transport = rig.connect()
    conn.data_received(echo("late"))
    (call_id,) = rig.library.held
    rig.clock.advance(1.9)
    rig.server.tick()
    assert transport.written == b""
    rig.clock.advance(0.2)
    rig.server.tick()
    (response,) = transport.responses()
    assert error_name(response) == "Timeout"
    rig.library.answer(call_id)
    rig.results()
    assert rig.server.stats.late_results == 1
    assert len(transport.responses()) == 1


def test_health_probes_watchdog_and_status() -> None:
    rig = Rig(watchdog=0.5, probe_timeout=2.0)
    rig.server.tick()
    rig.results()
    assert "WATCHDOG=1" in rig.notes
    assert any(n.startswith("STATUS=Serving 0 connections") for n in rig.notes)
    rig.library.answers_version = False
    rig.notes.clear()
    for _ in range(30):  # 3 s of ticks
        rig.clock.advance(0.1)
        rig.server.tick()
        rig.results()
    healthy, why = rig.server.health_verdict()
    assert not healthy and "liveness probe" in why
    watchdogs_while_sick = rig.notes.count("WATCHDOG=1")
    # Pinged only while the first probe was young (< probe_timeout).
    assert 1 <= watchdogs_while_sick <= 4
    assert any("UNHEALTHY" in n for n in rig.notes)
    # A library that never answers holds a bounded number of probes.
    assert len(rig.library.held) <= MAX_PROBES
    for call_id in list(rig.library.held):
        rig.library.answer(call_id, body=cbor2.dumps("fake v1"))
    rig.results()
    assert rig.server.health_verdict() == (True, "ok")


def test_a_blocking_library_call_is_unhealthy() -> None:
    rig = Rig(probe_timeout=1.0)
    rig.library.in_call_seconds = 1.5
    healthy, why = rig.server.health_verdict()
    assert not healthy and "blocking" in why


def test_stats_surface_the_library_counters() -> None:
    rig = Rig()
    rig.library.stale = {"echo": 2}
    conn, transport = rig.connect()
    conn.data_received(echo("x") + wire.encode_request("mytimerd.stats", b"\xa0"))
    rig.library.answer(min(rig.library.held))
    rig.results()
    stats = cbor2.loads(transport.responses()[1].body)
    assert stats["library"] == {
        "queued": 1,
        "submitted": 1,
        "completed": 0,
        "staleWarnings": 0,
        "staleWarningsByMethod": {"echo": 2},
        "events": 0,
    }
    assert stats["inFlight"] == 1


def test_drain_answers_what_finishes_and_timeout_for_what_the_library_kept() -> None:
    async def run() -> None:
        rig = Rig(real_time=True, drain_timeout=0.3, linger=0.05)
        conn, transport = rig.connect()
        conn.data_received(echo("quick") + echo("stuck"))
        quick, _stuck = sorted(rig.library.held)
        loop = asyncio.get_running_loop()

        def answer_quick() -> None:
            rig.library.answer(quick)
            rig.results()

        loop.call_later(0.1, answer_quick)
        started = loop.time()
        await rig.server.shutdown()
        assert 0.3 <= loop.time() - started < 1.0
        ok, late = transport.responses()
        assert ok.ret == wire.RET_OK
        assert error_name(late) == "Timeout"  # started: not ShuttingDown (not started)
        assert b"--drain-timeout 0.3 s" in late.body
        assert transport.eof_written and transport.closed

    in_loop(run)


def test_drain_sheds_what_was_read_but_not_started_and_exits_when_answered() -> None:
    async def run() -> None:
        rig = Rig(real_time=True, drain_timeout=5.0, linger=0.05, max_in_flight=2)
        conn, transport = rig.connect()
        conn.data_received(b"".join(echo(str(i)) for i in range(4)))
        assert len(rig.library.held) == 2 and not transport.reading
        loop = asyncio.get_running_loop()

        def answer_all() -> None:
            for call_id in list(rig.library.held):
                rig.library.answer(call_id)
            rig.results()

        loop.call_later(0.1, answer_all)
        loop.call_later(0.2, transport.feed_eof)  # the client reads the end and closes
        started = loop.time()
        await rig.server.shutdown()
        assert loop.time() - started < 0.5  # not the 5 s drain timeout
        responses = transport.responses()
        assert [r.ret for r in responses[:2]] == [wire.RET_OK, wire.RET_OK]
        assert [error_name(r) for r in responses[2:]] == ["ShuttingDown", "ShuttingDown"]
        assert b"was not started" in responses[2].body
        assert transport.eof_written and transport.closed
        assert rig.server.stats.errors["ShuttingDown"] == 2
        conn.data_received(echo("after the end"))  # discarded, never started
        assert rig.library.submitted == 2

    in_loop(run)


def test_a_connection_accepted_during_the_drain_is_served_once() -> None:
    async def run() -> None:
        rig = Rig(real_time=True, drain_timeout=5.0, linger=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        drain = loop.create_task(rig.server.shutdown())
        await asyncio.sleep(0)
        conn, transport = rig.connect()  # accepted just before the listeners closed
        conn.data_received(echo("late arrival"))
        (call_id,) = rig.library.held
        rig.library.answer(call_id)
        rig.results()
        loop.call_later(0.1, transport.feed_eof)  # the client reads its answer and closes
        await drain
        assert loop.time() - started < 1.0  # not the 5 s drain timeout
        (response,) = transport.responses()
        assert cbor2.loads(response.body)["req"]["message"] == "late arrival"
        assert transport.eof_written and transport.closed

    in_loop(run)


def test_drain_ends_early_once_connections_are_idle() -> None:
    """An idle unix client that has read everything is closed after
    --linger; an idle TCP one once it closes (TCP cannot tell it read)."""

    async def run() -> None:
        rig = Rig(real_time=True, drain_timeout=5.0, drain_idle_grace=0.05, linger=0.05)
        _, unix, _client = rig.connect_unix()
        _, tcp = rig.connect()
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, tcp.feed_eof)
        started = loop.time()
        await rig.server.shutdown()
        assert 0.3 <= loop.time() - started < 1.0
        assert unix.eof_written and unix.closed and tcp.eof_written and tcp.closed
        assert not rig.server.connections

    in_loop(run)


def test_a_request_of_too_many_items_is_refused_while_decoding() -> None:
    rig = Rig(max_items=100)
    conn, transport = rig.connect()
    tags = cbor2.dumps({"req": {"tags": ["t"] * 10_000}})
    conn.data_received(wire.encode_request("complex", tags))
    (response,) = transport.responses()
    assert error_name(response) == "InvalidCBOR"
    assert "more than 100 data items (--max-items)" in response.body.decode()
    assert rig.library.submitted == 0


def test_stats_are_keyed_by_known_method_names_only() -> None:
    async def run() -> None:
        rig = Rig(max_payload=8, linger=0.01)
        for i in range(50):
            conn, _ = rig.connect()
            conn.data_received(wire.encode_request(f"random-{i}", b"\xa0" * 9))
        conn, _ = rig.connect()
        conn.data_received(wire.encode_request("echo", b"\xa0" * 9))
        assert set(rig.server.stats.calls) == {"(unknown)", "echo"}
        assert rig.server.stats.errors["FrameTooLarge"] == 51

    in_loop(run)


def test_daemon_answers_count_toward_the_in_flight_limit() -> None:
    rig = Rig(max_in_flight=4)
    conn, transport = rig.connect()
    conn.data_received(echo("slow") + wire.encode_request("mytimerd.describe", b"\xa0") * 20)
    # The slow call heads the queue: 3 describe answers wait behind it, the
    # other 17 requests are not even started, and reading stops.
    assert not transport.reading
    assert transport.written == b""
    rig.library.answer(min(rig.library.held))
    rig.results()
    assert len(transport.responses()) == 21
    assert transport.reading


def test_a_client_that_does_not_read_stops_dispatch() -> None:
    rig = Rig(max_in_flight=64)
    conn, transport = rig.connect()
    conn.pause_writing()  # the client's socket buffer is full
    conn.data_received(wire.encode_request("mytimerd.describe", b"\xa0") * 10)
    assert transport.written == b""  # nothing answered, nothing queued
    conn.resume_writing()
    assert len(transport.responses()) == 10


def test_the_held_call_budget_outlives_timeouts_and_refuses_overload() -> None:
    payload_bytes = len(cbor2.dumps({"req": {"message": "x" * 100, "delayMs": 0}}))
    rig = Rig(timeout=1.0, max_held_calls=3, max_held_bytes=10 * payload_bytes)
    conn, transport = rig.connect()
    conn.data_received(echo("x" * 100) * 3)
    rig.clock.advance(1.5)
    rig.server.tick()  # all three answered Timeout; the library still holds them
    conn.data_received(echo("x" * 100) + wire.encode_request("mytimerd.ping", b"\xa0"))
    *timeouts, overloaded, ping = transport.responses()
    assert [error_name(r) for r in timeouts] == ["Timeout"] * 3
    assert error_name(overloaded) == "Overloaded"
    assert ping.ret == wire.RET_OK
    assert len(rig.library.held) == 3
    rig.library.answer(min(rig.library.held))
    rig.results()  # the library let one go: one call fits again
    conn.data_received(echo("x" * 100))
    assert len(rig.library.held) == 3
    stats = introspection.stats(rig.server)
    assert stats["held"] == {"calls": 3, "bytes": 3 * payload_bytes, "bufferedBytes": 0}


def test_the_held_byte_budget() -> None:
    rig = Rig(max_held_bytes=1000)
    conn, transport = rig.connect()
    conn.data_received(echo("x" * 600) + echo("y" * 600) + echo("z"))
    held = [cbor2.loads(h.payload)["req"]["message"][0] for h in rig.library.held.values()]
    assert held == ["x", "z"]
    for call_id in list(rig.library.held):
        rig.library.answer(call_id)
    rig.results()
    x, overloaded, z = transport.responses()
    assert error_name(overloaded) == "Overloaded"
    assert x.ret == z.ret == wire.RET_OK


def test_idle_connections_close_and_a_half_frame_does_not_keep_one_open() -> None:
    rig = Rig(idle_timeout=10.0)
    _, quiet = rig.connect()
    half, half_t = rig.connect()
    busy, busy_t = rig.connect()
    busy.data_received(echo("held"))
    half.data_received(b"\x00\x00\x00\xc8")  # a 200-byte method name follows...
    for _ in range(12):
        rig.clock.advance(1.0)
        half.data_received(b"m")  # ...a byte at a time: never a whole frame
        rig.server.tick()
        rig.results()
    assert quiet.closed and half_t.closed
    assert not busy_t.closed  # owed an answer: not idle
    assert rig.server.stats.closed["idle"] == 2
    assert rig.server.connections == {busy}


def test_unfinished_frames_share_one_buffer_budget() -> None:
    async def run() -> None:
        rig = Rig(max_buffered_bytes=1000, linger=0.01)
        frame = echo("x" * 900)
        a, a_t = rig.connect()
        b, b_t = rig.connect()
        a.data_received(frame[:600])
        assert rig.server.ledger.buffered.total == 600
        b.data_received(frame[:600])  # 1200 > 1000: b is refused, a is not
        (refusal,) = b_t.responses()
        assert error_name(refusal) == "Overloaded"
        assert b"--max-buffered-bytes 1000" in refusal.body
        assert b_t.eof_written and not a_t.eof_written
        assert rig.server.ledger.buffered.total == 600  # b's share is free at once
        b_t.feed_eof()
        assert b_t.closed
        a.data_received(frame[600:])  # a's frame completes
        assert rig.server.ledger.buffered.total == 0
        assert len(rig.library.held) == 1

    in_loop(run)
