"""What the journal tells operators: every refused call with its error name,
method and peer as structured fields, rate-limited with the number
suppressed; library errors and connections at debug."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import cbor2
import pytest

from mytimerd.daemon.service import LoopErrors
from mytimerd.protocol import wire
from tests.daemon.test_server_memory import Rig, echo, in_loop
from tests.support.daemon import Daemon


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The refusal records captured so far."""
    return [r for r in caplog.records if hasattr(r, "ERROR")]


def test_refused_calls_are_logged_with_structured_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "mytimerd")
    rig = Rig()
    conn, _ = rig.connect()
    conn.data_received(
        wire.encode_request("nope", b"\xa0") + wire.encode_request("echo", b"\xa1\x63req\x01")
    )
    unknown, invalid = refusals(caplog)
    assert (unknown.ERROR, unknown.METHOD, unknown.PEER) == (  # type: ignore[attr-defined]
        "UnknownMethod",
        "(unknown)",
        "ip:192.0.2.1",
    )
    assert unknown.levelno == logging.INFO
    assert (invalid.ERROR, invalid.METHOD) == ("InvalidParameter", "echo")  # type: ignore[attr-defined]
    expected = "refused echo from ip:192.0.2.1: InvalidParameter: req: expected a map"
    assert expected in invalid.getMessage()


def test_a_flood_is_rate_limited_and_says_how_much_was_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "mytimerd")
    rig = Rig()
    conn, _ = rig.connect()
    conn.data_received(wire.encode_request("nope", b"\xa0") * 100)
    assert len(refusals(caplog)) == 1
    rig.clock.advance(1.5)
    rig.server.tick()  # the slow tick flushes the count of a kind gone quiet
    flushed = refusals(caplog)[-1]
    assert flushed.getMessage() == "99 more refusals (UnknownMethod) suppressed in the last 2 s"
    conn.data_received(wire.encode_request("nope", b"\xa0") * 3)
    rig.clock.advance(1.5)
    conn.data_received(wire.encode_request("nope", b"\xa0"))
    last = refusals(caplog)[-1].getMessage()
    assert last.endswith("(3 more like it suppressed)"), last
    assert len(refusals(caplog)) == 3


def test_timeouts_and_attacks_are_warnings(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        rig = Rig(timeout=1.0, max_payload=64, linger=0.01)
        conn, _ = rig.connect()
        conn.data_received(echo("late"))
        rig.clock.advance(1.5)
        rig.server.tick()
        other, _ = rig.connect()
        other.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    caplog.set_level(logging.INFO, "mytimerd")
    in_loop(run)
    timeout, http = refusals(caplog)
    assert timeout.levelno == http.levelno == logging.WARNING
    assert (timeout.ERROR, timeout.METHOD) == ("Timeout", "echo")  # type: ignore[attr-defined]
    assert "this looks like an HTTP request, not the mytimerd framing" in http.getMessage()


def test_debug_shows_connections_and_library_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "mytimerd")
    rig = Rig()
    conn, transport = rig.connect()
    conn.data_received(echo("x"))
    (call_id,) = rig.library.held
    rig.library.answer(call_id, wire.RET_ERR, b"job name must not be empty")
    rig.results()
    conn.connection_lost(None)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug == [
        "connection from ip:192.0.2.1 (1 open)",
        "library error in echo for ip:192.0.2.1: job name must not be empty",
        "connection from ip:192.0.2.1 closed (client)",
    ]
    del transport


def test_a_real_daemon_logs_what_it_refused(daemon_factory: Callable[..., Daemon]) -> None:
    """The operator's view: each refusal of the issue shows in the log."""
    d = daemon_factory("--max-payload", "1024", "--timeout", "0.3")
    with d.client() as c:
        assert c.call("nope").ret == wire.RET_ERR
        assert c.call("echo", cbor2.dumps({"req": {"delayMs": "5"}})).ret == wire.RET_ERR
        assert c.call("echo", cbor2.dumps({"req": {"delayMs": 2000}})).ret == wire.RET_ERR
    with d.client() as c:
        c.send(wire.encode_request("echo", b"\xa0" * 1025))
        assert c.recv().ret == wire.RET_ERR
    with d.client() as c:
        c.send(b"GET / HTTP/1.1\r\n\r\n")
        assert b"looks like an HTTP request" in c.recv().body
    deadline = time.monotonic() + 5
    wanted = [
        "refused (unknown) from uid:",
        "refused echo from uid:0: InvalidParameter: req.delayMs: expected an integer",
        "refused echo from uid:0: Timeout: echo did not complete within 0.3 s",
        "refused echo from uid:0: FrameTooLarge: payload of 1025 bytes exceeds the limit of 1024",
        "refused (unknown) from uid:0: MethodNameTooLong: method name of 1195725856 bytes",
    ]
    while not all(w in d.log() for w in wanted):
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)


def test_os_errors_of_the_loop_are_one_rate_limited_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        handler = LoopErrors(interval=10.0)
        for _ in range(5):
            handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                },
            )
        with caplog.at_level(logging.ERROR):
            handler(loop, {"message": "a bug", "exception": ValueError("x")})
    finally:
        loop.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "socket.accept() out of system resource: [Errno 24] Too many open files"
    ]
    assert not any(r.exc_info for r in warnings)
    assert any(r.levelno == logging.ERROR and "a bug" in r.getMessage() for r in caplog.records)
