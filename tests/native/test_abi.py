"""libmy_timer C implementation: the spec's vectors and the callback contract."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import cbor2
import pytest

from tests.support.ffi_host import Sink

from .conftest import SLACK, SPEC_DIR, Native, assert_together

ABI_SYMBOLS = {
    "my_timer_create_cbor",
    "my_timer_echo_cbor",
    "my_timer_version_cbor",
    "my_timer_complex_cbor",
    "my_timer_schedule_cbor",
    "my_timer_destroy",
    "my_timer_add_event_listener",
    "my_timer_remove_event_listener",
}


def echo_req(message: str, delay: int) -> bytes:
    return cbor2.dumps({"req": {"message": message, "delayMs": delay}})


def test_exports_exactly_the_abi(so_path: Any) -> None:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(so_path)], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert names == ABI_SYMBOLS


def test_create_vector(native: Native, vectors: dict[str, Any]) -> None:
    payload = bytes.fromhex(vectors["create"]["request_hex"])
    ctx, s = native.create(payload=payload)
    try:
        assert ctx != native.ffi.NULL
        r = s.wait(1)[0]
        assert r.code == 0
        assert cbor2.loads(r.body) == str(int(native.ffi.cast("uintptr_t", ctx)))
        assert r.thread != threading.get_ident()
    finally:
        assert native.lib.my_timer_destroy(ctx) == 0


def _call_vector_names() -> list[str]:
    """The names of the recorded calls in abi-vectors.json, read when the tests
    are collected (one test each). A missing file or one without calls is an
    error here, not zero tests."""
    calls = json.loads((SPEC_DIR / "abi-vectors.json").read_text())["calls"]
    names = [v["name"] for v in calls]
    if not names:
        raise ValueError("tests/vectors/abi-vectors.json records no calls")
    return names


@pytest.mark.parametrize("name", _call_vector_names())
def test_call_vectors(native: Native, ctx: Any, vectors: dict[str, Any], name: str) -> None:
    """Each recorded call, against the C library: the final code, the exact
    body (or error text or prefix) and the events fired before the reply."""
    (v,) = [v for v in vectors["calls"] if v["name"] == name]
    events: list[bytes] = []
    order: list[str] = []
    ev_ud, _ev_sink = native.sink()
    lid = native.lib.my_timer_add_event_listener(ctx, b"on_echo_fired", native.cb, ev_ud)
    assert lid >= 1

    def on_event(code: int, body: bytes) -> None:
        events.append(body)
        order.append("event")

    native.hooks[int(native.ffi.cast("uintptr_t", ev_ud))] = on_event
    try:
        rc, s = native.call(v["method"], ctx, bytes.fromhex(v["request_hex"]))
        assert rc == 0
        r = s.wait(1)[0]
        order.append("reply")
        assert r.code == v["ret"], r.body
        if "ok_hex" in v:
            assert r.body.hex() == v["ok_hex"]
        if "err_text" in v:
            assert r.body.decode() == v["err_text"]
        if "err_prefix" in v:
            text = r.body.decode()
            assert text.startswith(v["err_prefix"])
            assert len(text) > len(v["err_prefix"]), "detail must not be empty"
        expected_events = v.get("events_before_reply", [])
        assert [e.hex() for e in events] == expected_events
        if expected_events:
            assert order[0] == "event"
    finally:
        assert native.lib.my_timer_remove_event_listener(ctx, lid) == 0


def test_unknown_key_detail(native: Native, ctx: Any) -> None:
    payload = bytes.fromhex("a163726571a3676d6573736167656268696764656c61794d730065657874726101")
    _, s = native.call("echo", ctx, payload)
    assert s.wait()[0].body.decode() == (
        "CBOR decode failed for MyTimerEchoReq: unknown field 'extra' in EchoRequest"
    )


def test_results_come_from_library_thread(native: Native, ctx: Any) -> None:
    _, s = native.call("echo", ctx, echo_req("x", 1))
    assert s.wait()[0].thread != threading.get_ident()


def test_invalid_context(native: Native) -> None:
    ffi, lib = native.ffi, native.lib
    rc, s = native.call("version", ffi.NULL, b"\xa0")
    assert rc == 1
    # synchronous, on the caller's thread
    assert len(s.results) == 1
    assert s.results[0].code == 1
    assert s.results[0].body == b"ctx is not a valid FFI context"
    assert s.results[0].thread == threading.get_ident()
    bogus = ffi.cast("void *", 0x1234)
    rc, s = native.call("echo", bogus, echo_req("x", 0))
    assert rc == 1 and s.results[0].body == b"ctx is not a valid FFI context"
    c, cs = native.create("gone")
    cs.wait()
    assert lib.my_timer_destroy(c) == 0
    rc, s = native.call("version", c, b"\xa0")
    assert rc == 1 and len(s.results) == 1
    assert lib.my_timer_destroy(c) == 1
    assert lib.my_timer_destroy(ffi.NULL) == 1
    assert lib.my_timer_add_event_listener(ffi.NULL, b"x", native.cb, ffi.NULL) == 0
    assert lib.my_timer_remove_event_listener(ffi.NULL, 1) == 1


def test_missing_callback(native: Native, ctx: Any) -> None:
    ffi, lib = native.ffi, native.lib
    assert lib.my_timer_version_cbor(ctx, ffi.NULL, ffi.NULL, b"\xa0", 1) == 2
    assert lib.my_timer_echo_cbor(ffi.NULL, ffi.NULL, ffi.NULL, b"\xa0", 1) == 2
    assert lib.my_timer_add_event_listener(ctx, b"on_echo_fired", ffi.NULL, ffi.NULL) == 0


def test_empty_create_and_name(native: Native) -> None:
    c, s = native.create(payload=b"\xa0")
    assert c != native.ffi.NULL
    s.wait()
    try:
        _, e = native.call("echo", c, echo_req("m", 0))
        assert cbor2.loads(e.wait()[0].body) == {"echoed": "m", "timerName": ""}
        _, sc = native.call(
            "schedule",
            c,
            cbor2.dumps({"job": {"name": "j"}, "retry": {"maxAttempts": 1}, "schedule": {}}),
        )
        assert cbor2.loads(sc.wait()[0].body) == {
            "jobId": ":j",
            "willRunCount": 1,
            "firstRunAtMs": 0,
            "effectiveBackoffMs": 0,
        }
    finally:
        native.lib.my_timer_destroy(c)


def test_create_decode_error_is_synchronous(native: Native) -> None:
    c, s = native.create(payload=b"\x80")
    assert c == native.ffi.NULL
    assert len(s.results) == 1
    assert s.results[0].body == b"ffiCtor: failed to decode request: Expected: map but found: array"
    ud, s2 = native.sink()
    c = native.lib.my_timer_create_cbor(native.ffi.NULL, 5, native.cb, ud)
    assert c == native.ffi.NULL
    assert s2.results[0].code == 1 and b"NULL payload" in s2.results[0].body


def test_complex_and_schedule_values(native: Native, ctx: Any) -> None:
    _, s = native.call(
        "complex",
        ctx,
        cbor2.dumps(
            {"req": {"messages": [{"message": "a"}], "tags": [], "note": "", "retries": -5}}
        ),
    )
    assert cbor2.loads(s.wait()[0].body) == {
        "summary": "received 1 messages, note=, retries=-5",
        "itemCount": 1,
        "hasNote": True,
    }
    _, s = native.call("complex", ctx, cbor2.dumps({"req": {"note": None, "retries": None}}))
    assert s.wait()[0].body == cbor2.dumps(
        {"summary": "received 0 messages, note=<none>, retries=0", "itemCount": 0, "hasNote": False}
    )
    for interval, runs in [(0, 1), (-5, 1), (1, 60000), (60001, 1), (7, 8571)]:
        req = {
            "job": {"name": "n"},
            "retry": {"maxAttempts": 2, "backoffMs": -3},
            "schedule": {"startAtMs": -10, "intervalMs": interval, "jitter": None},
        }
        _, s = native.call("schedule", ctx, cbor2.dumps(req))
        assert s.wait()[0].body == cbor2.dumps(
            {"jobId": "demo:n", "willRunCount": runs, "firstRunAtMs": -10, "effectiveBackoffMs": -3}
        )


def test_concurrent_echoes_complete_in_completion_order(native: Native, ctx: Any) -> None:
    sinks: list[Sink] = []
    t0 = time.monotonic()
    for d in (100, 100, 50):
        rc, s = native.call("echo", ctx, echo_req(str(d), d))
        assert rc == 0
        sinks.append(s)
    results = [s.wait()[0] for s in sinks]
    assert all(r.code == 0 for r in results)
    assert results[2].at < results[0].at and results[2].at < results[1].at
    assert results[0].at <= results[1].at
    assert max(r.at for r in results) - t0 < 0.2 * SLACK


def test_64_echoes_of_100ms(native: Native, ctx: Any) -> None:
    before = native.overlaps
    sinks = []
    t0 = time.monotonic()
    for i in range(64):
        rc, s = native.call("echo", ctx, echo_req(f"m{i}", 100))
        assert rc == 0
        sinks.append(s)
    results = [s.wait()[0] for s in sinks]
    assert all(r.code == 0 for r in results)
    assert_together(t0, [r.at for r in results])
    assert native.overlaps == before


def test_events_wildcards_and_removal(native: Native, ctx: Any) -> None:
    ffi, lib = native.ffi, native.lib
    named_ud, named = native.sink()
    wild_ud, wild = native.sink()
    null_ud, nulls = native.sink()
    other_ud, other = native.sink()
    ids = [
        lib.my_timer_add_event_listener(ctx, b"on_echo_fired", native.cb, named_ud),
        lib.my_timer_add_event_listener(ctx, b"", native.cb, wild_ud),
        lib.my_timer_add_event_listener(ctx, ffi.NULL, native.cb, null_ud),
        lib.my_timer_add_event_listener(ctx, b"something_else", native.cb, other_ud),
    ]
    assert all(i >= 1 for i in ids) and len(set(ids)) == 4
    _, reply = native.call("echo", ctx, echo_req("ev", 0))
    r = reply.wait()[0]
    for s in (named, wild, nulls):
        e = s.wait()[0]
        assert e.at <= r.at
        assert cbor2.loads(e.body) == {
            "eventType": "on_echo_fired",
            "payload": {"message": "ev", "echoCount": 1},
        }
    assert other.results == []
    assert lib.my_timer_remove_event_listener(ctx, ids[0]) == 0
    assert lib.my_timer_remove_event_listener(ctx, ids[0]) == 1
    assert lib.my_timer_remove_event_listener(ctx, 999999) == 1
    _, reply = native.call("echo", ctx, echo_req("ev2", 0))
    reply.wait()
    assert len(named.results) == 1 and len(wild.results) == 2
    for i in ids[1:]:
        assert lib.my_timer_remove_event_listener(ctx, i) == 0


def test_reentrant_calls_get_ret_err(native: Native, ctx: Any) -> None:
    ffi, lib = native.ffi, native.lib
    seen: dict[str, Any] = {}
    ud, s = native.sink()
    ev_ud, ev = native.sink()
    lid = lib.my_timer_add_event_listener(ctx, b"on_echo_fired", native.cb, ev_ud)

    def in_event(code: int, body: bytes) -> None:
        seen["add"] = lib.my_timer_add_event_listener(ctx, b"", native.cb, ev_ud)
        seen["remove"] = lib.my_timer_remove_event_listener(ctx, lid)

    def in_reply(code: int, body: bytes) -> None:
        inner_ud, inner = native.sink()
        seen["version"] = lib.my_timer_version_cbor(ctx, native.cb, inner_ud, b"\xa0", 1)
        seen["inner"] = inner
        seen["destroy"] = lib.my_timer_destroy(ctx)
        seen["create"] = lib.my_timer_create_cbor(b"\xa0", 1, native.cb, inner_ud)

    native.hooks[int(ffi.cast("uintptr_t", ev_ud))] = in_event
    native.hooks[int(ffi.cast("uintptr_t", ud))] = in_reply
    assert lib.my_timer_echo_cbor(ctx, native.cb, ud, echo_req("r", 0), len(echo_req("r", 0))) == 0
    s.wait()
    ev.wait()
    assert seen["add"] == 0 and seen["remove"] == 1
    assert seen["version"] == 1 and seen["destroy"] == 1 and seen["create"] == ffi.NULL
    time.sleep(0.05)
    assert seen["inner"].results == []  # rejected without a callback
    assert lib.my_timer_remove_event_listener(ctx, lid) == 0
    # the context still works
    _, s2 = native.call("version", ctx, b"\xa0")
    assert s2.wait()[0].code == 0
