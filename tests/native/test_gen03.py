"""The nim-ffi 0.3 generation build (make -C native GENERATION=0.3):
libmy_timer-0.3.so against abi-vectors-0.3.json, the static call, text
priorities, the echo limit, on_job_scheduled, exact-name listeners, the
event thread, RET_STALE_WARN, concurrency and lifecycle."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.ffi_host import Sink

from .conftest import SLACK, Native, assert_together

RET_OK, RET_ERR, RET_MISSING_CALLBACK, RET_STALE_WARN = 0, 1, 2, 3
INT64_MAX = 2**63 - 1

ABI_SYMBOLS_03 = {
    "my_timer_create",
    "my_timer_echo",
    "my_timer_version",
    "my_timer_lib_version",
    "my_timer_complex",
    "my_timer_schedule",
    "my_timer_destroy",
    "my_timer_add_event_listener",
    "my_timer_remove_event_listener",
}
EVENT_NAMES = (b"on_echo_fired", b"on_job_scheduled")


def echo_req(message: str, delay: int) -> bytes:
    return cbor2.dumps({"req": {"message": message, "delayMs": delay}})


def sched_req(priority: Any = None, backoff: int = 0, name: str = "j", **sched: Any) -> bytes:
    job: dict[str, Any] = {"name": name}
    if priority is not None:
        job["priority"] = priority
    return cbor2.dumps(
        {"job": job, "retry": {"maxAttempts": 1, "backoffMs": backoff}, "schedule": sched}
    )


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """Environment variables for the duration of a test (read at create)."""
    saved = dict(os.environ)
    yield os.environ  # type: ignore[misc]
    os.environ.clear()
    os.environ.update(saved)


def new_ctx(native: Native, name: str = "demo") -> Any:
    c, s = native.create(name)
    assert c != native.ffi.NULL, s.results
    assert s.wait()[0].code == RET_OK
    return c


def listen(native: Native, ctx: Any, name: Any) -> tuple[int, Sink]:
    ud, s = native.sink()
    lid = native.lib.my_timer_add_event_listener(ctx, name, native.cb, ud)
    return lid, s


def settle(seconds: float = 0.05) -> None:
    """Events trail replies in this generation: give stragglers a moment."""
    time.sleep(seconds * SLACK)


# ---- symbols, create, vectors ----------------------------------------------


def test_exports_exactly_the_03_abi(so_path03: Any) -> None:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(so_path03)], capture_output=True, text=True, check=True
    ).stdout
    assert {line.split()[-1] for line in out.splitlines() if line.strip()} == ABI_SYMBOLS_03


def test_create_vector(native03: Native, vectors03: dict[str, Any]) -> None:
    ctx, s = native03.create(payload=bytes.fromhex(vectors03["create"]["request_hex"]))
    try:
        assert ctx != native03.ffi.NULL
        r = s.wait()[0]
        assert r.code == vectors03["create"]["ret"] == RET_OK
        assert cbor2.loads(r.body) == str(int(native03.ffi.cast("uintptr_t", ctx)))
        assert r.thread != threading.get_ident()
    finally:
        assert native03.lib.my_timer_destroy(ctx) == 0


def _check_vector(native: Native, ctx: Any, v: dict[str, Any], timeout: float) -> None:
    """One vector, as recorded: listeners registered by exact name for both
    events; stale warnings before the one final callback; events, which may
    trail the reply, waited for and then checked to be exactly those."""
    ev_ud, ev = native.sink()
    ids = [native.lib.my_timer_add_event_listener(ctx, n, native.cb, ev_ud) for n in EVENT_NAMES]
    assert all(i >= 1 for i in ids)
    try:
        payload = bytes.fromhex(v["request_hex"])
        if v.get("static"):
            rc, s = native.static_call(v["method"], payload)
        else:
            rc, s = native.call(v["method"], ctx, payload)
        assert rc == RET_OK
        results = s.wait_final(timeout)
        finals = [r for r in results if r.code != RET_STALE_WARN]
        stale = [r for r in results if r.code == RET_STALE_WARN]
        assert len(finals) == 1 and results[-1] is finals[0], results
        final = finals[0]
        assert final.code == v["ret"], final.body
        if "ok_hex" in v:
            assert final.body.hex() == v["ok_hex"]
        if "err_text" in v:
            text = final.body.decode()
            if v["err_text"].endswith(": "):
                # The real library's detail is empty here; ours names the problem.
                assert text.startswith(v["err_text"]) and len(text) > len(v["err_text"]), text
            else:
                assert text == v["err_text"]
        assert [r.body.decode() for r in stale] == v.get("stale_warnings", [])
        assert all(r.thread == final.thread for r in stale)
        expected = v.get("events", [])
        if expected:
            ev.wait(len(expected))
        settle()
        assert [e.body.hex() for e in ev.results] == expected
        assert all(e.code == RET_OK for e in ev.results)
        if v.get("static"):
            assert final.thread == threading.get_ident()  # answered before returning
        else:
            assert final.thread != threading.get_ident()
    finally:
        for i in ids:
            assert native.lib.my_timer_remove_event_listener(ctx, i) == 0


def _quick_vectors(vectors03: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in vectors03["calls"] if not v.get("stale_warnings")]


def test_call_vectors(native03: Native, ctx03: Any, vectors03: dict[str, Any]) -> None:
    quick = _quick_vectors(vectors03)
    assert len(quick) == len(vectors03["calls"]) - 1
    for v in quick:
        _check_vector(native03, ctx03, v, timeout=5.0)


def test_stale_warning_vector_in_real_time(
    native03: Native, ctx03: Any, vectors03: dict[str, Any]
) -> None:
    """The recorded 5000 ms echo with the default 5 s interval: one
    RET_STALE_WARN "5000", then the reply and the event (5 s of wall time)."""
    (v,) = [v for v in vectors03["calls"] if v.get("stale_warnings")]
    t0 = time.monotonic()
    _check_vector(native03, ctx03, v, timeout=10.0 * SLACK)
    assert time.monotonic() - t0 >= 5.0


# ---- the static call --------------------------------------------------------


def test_lib_version_needs_no_context(native03: Native) -> None:
    rc, s = native03.static_call("lib_version", b"\xa0")
    assert rc == RET_OK
    # answered synchronously, on the caller's thread, before the call returned
    assert len(s.results) == 1 and s.results[0].thread == threading.get_ident()
    assert cbor2.loads(s.results[0].body) == "nim-timer v0.1.0"
    ffi, lib = native03.ffi, native03.lib
    assert lib.my_timer_lib_version(ffi.NULL, ffi.NULL, b"\xa0", 1) == RET_MISSING_CALLBACK
    for payload, detail in [
        (b"", "unexpected eof"),
        (b"\x80", "Expected: map but found: array"),
        (cbor2.dumps({"x": 1}), "unknown field 'x' in MyTimerLibVersionReq"),
    ]:
        rc, s = native03.static_call("lib_version", payload)
        assert rc == RET_OK
        assert [(r.code, r.body.decode()) for r in s.results] == [
            (RET_ERR, f"CBOR decode failed for MyTimerLibVersionReq: {detail}")
        ]
    ud, s = native03.sink()
    assert lib.my_timer_lib_version(native03.cb, ud, ffi.NULL, 3) == RET_OK
    assert s.results[0].code == RET_ERR
    assert s.results[0].body == (
        b"CBOR decode failed for MyTimerLibVersionReq: NULL payload pointer with length 3"
    )


def test_lib_version_from_many_threads(native03: Native) -> None:
    bad: list[Any] = []

    def run() -> None:
        for _ in range(300):
            rc, s = native03.static_call("lib_version", b"\xa0")
            if rc != RET_OK or [r.body for r in s.results] != [cbor2.dumps("nim-timer v0.1.0")]:
                bad.append((rc, s.results))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


# ---- schedule: the text priority -------------------------------------------


@pytest.mark.parametrize(
    ("priority", "backoff", "effective"),
    [
        (None, 0, 500),
        ("low", 0, 500),
        ("normal", 0, 250),
        ("high", 0, 125),
        ("low", -7, 500),
        ("high", -1, 125),
        ("low", 1, 2),
        ("normal", 1, 1),
        ("high", 1, 0),
        ("high", 3, 1),
        ("high", 100, 50),
        ("normal", INT64_MAX, INT64_MAX),
        ("high", INT64_MAX, INT64_MAX // 2),
        ("low", INT64_MAX // 2, INT64_MAX - 1),
    ],
)
def test_priority_and_effective_backoff(
    native03: Native, ctx03: Any, priority: Any, backoff: int, effective: int
) -> None:
    _, s = native03.call(
        "schedule", ctx03, sched_req(priority, backoff, startAtMs=7, intervalMs=0, jitter=None)
    )
    r = s.wait_final()[0]
    assert r.code == RET_OK, r.body
    answer = cbor2.loads(r.body)
    assert list(answer) == [
        "jobId",
        "willRunCount",
        "firstRunAtMs",
        "effectiveBackoffMs",
        "priority",
    ]
    assert answer == {
        "jobId": "demo:j",
        "willRunCount": 1,
        "firstRunAtMs": 7,
        "effectiveBackoffMs": effective,
        "priority": priority or "low",
    }
    assert r.body == cbor2.dumps(answer)  # shortest forms, key order as shown


def test_low_priority_backoff_overflow_is_an_error(native03: Native, ctx03: Any) -> None:
    _, s = native03.call("schedule", ctx03, sched_req("low", INT64_MAX))
    r = s.wait_final()[0]
    assert (r.code, r.body.decode()) == (
        RET_ERR,
        f"retry.backoffMs * 2 (priority low) overflows int64 (backoffMs={INT64_MAX})",
    )


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (1, "Expected: string but found: Unsigned"),
        (0, "Expected: string but found: Unsigned"),
        (-1, "Expected: string but found: Negative"),
        (b"low", "Expected: string but found: Bytes"),
        (["low"], "Expected: string but found: Array"),
        ({"low": 1}, "Expected: string but found: Map"),
        (cbor2.CBORTag(1, 0), "Expected: string but found: Tag"),
        (1.5, "Expected: string but found: SimpleOrFloat"),
        (True, "Expected: string but found: SimpleOrFloat"),
        (cbor2.undefined, "Expected: string but found: SimpleOrFloat"),
        ("", "Invalid value for 'JobPriority'"),
        ("LOW", "Invalid value for 'JobPriority'"),
        ("urgent", "Invalid value for 'JobPriority'"),
        ("high ", "Invalid value for 'JobPriority'"),
        ("normal\x00", "Invalid value for 'JobPriority'"),
    ],
)
def test_priority_decode_errors(native03: Native, ctx03: Any, value: Any, detail: str) -> None:
    payload = cbor2.dumps({"job": {"name": "j", "priority": value}, "retry": {"maxAttempts": 1}})
    _, s = native03.call("schedule", ctx03, payload)
    r = s.wait_final()[0]
    assert (r.code, r.body.decode()) == (
        RET_ERR,
        f"CBOR decode failed for MyTimerScheduleReq: {detail}",
    )


def test_null_priority_is_a_type_error_too(native03: Native, ctx03: Any) -> None:
    # priority is not an option: null is a wrong type, not "missing"
    payload = cbor2.dumps({"job": {"name": "j", "priority": None}, "retry": {"maxAttempts": 1}})
    _, s = native03.call("schedule", ctx03, payload)
    assert s.wait_final()[0].body == (
        b"CBOR decode failed for MyTimerScheduleReq: Expected: string but found: SimpleOrFloat"
    )


def test_business_rules_come_before_priority_arithmetic(native03: Native, ctx03: Any) -> None:
    for payload, text in [
        (sched_req("low", INT64_MAX, name=""), "job name must not be empty"),
        (
            cbor2.dumps({"job": {"name": "j", "priority": "low"}, "retry": {"maxAttempts": 0}}),
            "retry.maxAttempts must be positive",
        ),
    ]:
        _, s = native03.call("schedule", ctx03, payload)
        assert s.wait_final()[0].body.decode() == text


# ---- echo limit --------------------------------------------------------------


def test_echo_delay_limit(native03: Native, ctx03: Any) -> None:
    lid, ev = listen(native03, ctx03, b"on_echo_fired")
    for delay in (5001, 10**9, INT64_MAX):
        t0 = time.monotonic()
        _, s = native03.call("echo", ctx03, echo_req("big", delay))
        r = s.wait_final()
        assert [(x.code, x.body) for x in r] == [(RET_ERR, b"delayMs must not exceed 5000")]
        assert time.monotonic() - t0 < 0.5 * SLACK
    for delay in (-(2**63), -1, 0, 1):
        _, s = native03.call("echo", ctx03, echo_req(f"d{delay}", delay))
        assert s.wait_final()[0].code == RET_OK
    ev.wait(4)
    settle()
    assert [cbor2.loads(e.body)["payload"]["message"] for e in ev.results] == [
        "d-9223372036854775808",
        "d-1",
        "d0",
        "d1",
    ]
    assert native03.lib.my_timer_remove_event_listener(ctx03, lid) == 0


# ---- listeners and the event thread ----------------------------------------


def test_listeners_need_the_exact_event_name(native03: Native, ctx03: Any) -> None:
    ffi, lib = native03.ffi, native03.lib
    names = [b"on_echo_fired", b"on_echo_fired", b"on_job_scheduled", b"", ffi.NULL]
    names += [b"on_echo", b"ON_ECHO_FIRED", b"on_echo_fired "]
    pairs = [listen(native03, ctx03, n) for n in names]
    ids = [i for i, _ in pairs]
    assert all(i >= 1 for i in ids) and len(set(ids)) == len(ids)  # empty/NULL get an id too
    sinks = [s for _, s in pairs]
    _, e = native03.call("echo", ctx03, echo_req("x", 0))
    _, j = native03.call("schedule", ctx03, sched_req("normal", intervalMs=30000))
    e.wait_final(), j.wait_final()
    sinks[0].wait(), sinks[1].wait(), sinks[2].wait()
    settle()
    echo_ev = {"eventType": "on_echo_fired", "payload": {"message": "x", "echoCount": 1}}
    job_ev = {"eventType": "on_job_scheduled", "payload": {"jobId": "demo:j", "willRunCount": 2}}
    assert [cbor2.loads(r.body) for r in sinks[0].results] == [echo_ev]
    assert [cbor2.loads(r.body) for r in sinks[1].results] == [echo_ev]
    assert [cbor2.loads(r.body) for r in sinks[2].results] == [job_ev]
    for s in sinks[3:]:
        assert s.results == []  # wildcards of 0.2 receive nothing here
    assert lib.my_timer_remove_event_listener(ctx03, ids[0]) == 0
    assert lib.my_timer_remove_event_listener(ctx03, ids[0]) == 1
    assert lib.my_timer_remove_event_listener(ctx03, 10**12) == 1
    _, e = native03.call("echo", ctx03, echo_req("y", 0))
    e.wait_final()
    sinks[1].wait(2)
    settle()
    assert len(sinks[0].results) == 1 and len(sinks[1].results) == 2
    for i in ids[1:]:
        assert lib.my_timer_remove_event_listener(ctx03, i) == 0
    assert lib.my_timer_add_event_listener(ctx03, b"on_echo_fired", ffi.NULL, ffi.NULL) == 0
    assert lib.my_timer_add_event_listener(ffi.NULL, b"on_echo_fired", native03.cb, ffi.NULL) == 0


def test_failed_schedule_and_refused_echo_fire_no_event(native03: Native, ctx03: Any) -> None:
    _, echo_ev = listen(native03, ctx03, b"on_echo_fired")
    _, job_ev = listen(native03, ctx03, b"on_job_scheduled")
    for method, payload in [
        ("schedule", sched_req("high", name="")),
        ("schedule", sched_req(1)),
        ("schedule", sched_req("low", INT64_MAX)),
        ("echo", echo_req("no", 5001)),
        ("echo", b"\xa1\x63req\xa1\x67delayMs\x61x"),
        ("version", b"\xa0"),
        ("complex", cbor2.dumps({"req": {}})),
    ]:
        _, s = native03.call(method, ctx03, payload)
        s.wait_final()
    settle(0.1)
    assert echo_ev.results == [] and job_ev.results == []


def test_events_come_from_a_separate_thread(native03: Native, ctx03: Any) -> None:
    _, ev = listen(native03, ctx03, b"on_echo_fired")
    _, s = native03.call("echo", ctx03, echo_req("t", 1))
    reply = s.wait_final()[0]
    event = ev.wait()[0]
    assert event.thread not in (reply.thread, threading.get_ident())


def test_a_slow_listener_does_not_hold_up_replies(native03: Native, ctx03: Any) -> None:
    """Events may arrive after the reply: the library thread does not wait
    for listeners, and events keep their order."""
    ud, ev = native03.sink()
    release = threading.Event()

    def slow(code: int, body: bytes) -> None:
        release.wait(5)

    native03.hooks[native03.handle(ud)] = slow
    lid = native03.lib.my_timer_add_event_listener(ctx03, b"on_echo_fired", native03.cb, ud)
    sinks = [native03.call("echo", ctx03, echo_req(f"m{i}", 0))[1] for i in range(20)]
    t0 = time.monotonic()
    for s in sinks:
        assert s.wait_final()[0].code == RET_OK
    assert time.monotonic() - t0 < 1.0 * SLACK
    assert ev.results == []  # the first event is still stuck in the listener
    release.set()
    ev.wait(20)
    assert [cbor2.loads(r.body)["payload"]["message"] for r in ev.results] == [
        f"m{i}" for i in range(20)
    ]
    assert native03.lib.my_timer_remove_event_listener(ctx03, lid) == 0


def test_event_callbacks_never_overlap_each_other(native03: Native, ctx03: Any) -> None:
    active = [0]
    worst = [0]
    lock = threading.Lock()
    uds = []
    for name in (b"on_echo_fired", b"on_job_scheduled"):
        ud, _ = native03.sink()

        def hook(code: int, body: bytes) -> None:
            with lock:
                active[0] += 1
                worst[0] = max(worst[0], active[0])
            time.sleep(0.0005)
            with lock:
                active[0] -= 1

        native03.hooks[native03.handle(ud)] = hook
        native03.lib.my_timer_add_event_listener(ctx03, name, native03.cb, ud)
        uds.append(ud)
    sinks = []
    for i in range(60):
        if i % 2:
            sinks.append(native03.call("echo", ctx03, echo_req("o", i % 3))[1])
        else:
            sinks.append(native03.call("schedule", ctx03, sched_req("high"))[1])
    for s in sinks:
        s.wait_final()
    settle(0.2)
    assert worst[0] == 1


def test_reentrant_calls_from_an_event_are_refused(native03: Native, ctx03: Any) -> None:
    ffi, lib = native03.ffi, native03.lib
    seen: dict[str, Any] = {}
    ud, ev = native03.sink()

    def in_event(code: int, body: bytes) -> None:
        inner_ud, inner = native03.sink()
        seen["add"] = lib.my_timer_add_event_listener(ctx03, b"on_echo_fired", native03.cb, ud)
        seen["remove"] = lib.my_timer_remove_event_listener(ctx03, 1)
        seen["echo"] = lib.my_timer_echo(ctx03, native03.cb, inner_ud, b"\xa0", 1)
        seen["lib_version"] = lib.my_timer_lib_version(native03.cb, inner_ud, b"\xa0", 1)
        seen["destroy"] = lib.my_timer_destroy(ctx03)
        seen["create"] = lib.my_timer_create(b"\xa0", 1, native03.cb, inner_ud)
        seen["inner"] = inner

    native03.hooks[native03.handle(ud)] = in_event
    lid = lib.my_timer_add_event_listener(ctx03, b"on_echo_fired", native03.cb, ud)
    _, s = native03.call("echo", ctx03, echo_req("r", 0))
    s.wait_final()
    ev.wait()
    assert seen["add"] == 0 and seen["remove"] == RET_ERR and seen["echo"] == RET_ERR
    assert seen["lib_version"] == RET_ERR and seen["destroy"] == RET_ERR
    assert seen["create"] == ffi.NULL and seen["inner"].results == []
    assert lib.my_timer_remove_event_listener(ctx03, lid) == 0
    _, s = native03.call("version", ctx03, b"\xa0")
    assert s.wait_final()[0].code == RET_OK


def test_destroy_delivers_every_queued_event(native03: Native) -> None:
    c = new_ctx(native03)
    ud, ev = native03.sink()
    native03.hooks[native03.handle(ud)] = lambda code, body: time.sleep(0.01)
    native03.lib.my_timer_add_event_listener(c, b"on_job_scheduled", native03.cb, ud)
    sinks = [native03.call("schedule", c, sched_req("normal", name=f"j{i}"))[1] for i in range(15)]
    assert native03.lib.my_timer_destroy(c) == 0
    assert all(len(s.results) == 1 and s.results[0].code == RET_OK for s in sinks)
    assert [cbor2.loads(r.body)["payload"]["jobId"] for r in ev.results] == [
        f"demo:j{i}" for i in range(15)
    ]


# ---- RET_STALE_WARN (interval shortened with the MY_TIMER_STALE_WARN_MS test aid) ----


def test_stale_warnings_every_interval_then_the_reply(
    native03: Native, env: dict[str, str]
) -> None:
    env["MY_TIMER_STALE_WARN_MS"] = "40"
    c = new_ctx(native03)
    try:
        _, ev = listen(native03, c, b"on_echo_fired")
        cases = {130: ["40", "80", "120"], 120: ["40", "80", "120"], 39: [], 0: [], -5: []}
        sinks = {d: native03.call("echo", c, echo_req(str(d), d))[1] for d in cases}
        for delay, warnings in cases.items():
            results = sinks[delay].wait_final(3 * SLACK)
            assert [(r.code, r.body.decode()) for r in results[:-1]] == [
                (RET_STALE_WARN, w) for w in warnings
            ]
            assert results[-1].code == RET_OK
            assert cbor2.loads(results[-1].body) == {"echoed": str(delay), "timerName": "demo"}
            if len(results) > 1:
                # from the library thread, in time order, each no earlier than due
                assert {r.thread for r in results} == {results[-1].thread}
                assert [r.at for r in results] == sorted(r.at for r in results)
        ev.wait(5)
    finally:
        assert native03.lib.my_timer_destroy(c) == 0


def test_stale_warning_on_a_schedule_and_when_cancelled(
    native03: Native, env: dict[str, str]
) -> None:
    env["MY_TIMER_STALE_WARN_MS"] = "1"
    env["MY_TIMER_DESTROY_GRACE_MS"] = "30"
    c = new_ctx(native03)
    _, s = native03.call("schedule", c, sched_req("high"))
    results = s.wait_final()
    assert [(r.code, r.body) for r in results[:-1]] == [(RET_STALE_WARN, b"1")]
    assert results[-1].code == RET_OK
    _, long = native03.call("echo", c, echo_req("long", 5000))
    time.sleep(0.02)
    assert native03.lib.my_timer_destroy(c) == 0
    codes = [r.code for r in long.results]
    assert codes[-1] == RET_ERR and set(codes[:-1]) == {RET_STALE_WARN} and len(codes) >= 5
    assert long.results[-1].body == b"echo cancelled: context destroyed"
    assert [int(r.body) for r in long.results[:-1]] == list(range(1, len(codes)))


def test_stale_interval_zero_disables_warnings(native03: Native, env: dict[str, str]) -> None:
    env["MY_TIMER_STALE_WARN_MS"] = "0"
    c = new_ctx(native03)
    try:
        _, s = native03.call("echo", c, echo_req("q", 30))
        assert [r.code for r in s.wait_final()] == [RET_OK]
    finally:
        assert native03.lib.my_timer_destroy(c) == 0


@pytest.mark.parametrize("bad", ["-1", "x", "3600001", "5s"])
def test_invalid_stale_interval_fails_create(
    native03: Native, env: dict[str, str], bad: str
) -> None:
    env["MY_TIMER_STALE_WARN_MS"] = bad
    c, s = native03.create("x")
    assert c == native03.ffi.NULL
    text = (
        f"ffiCtor: invalid MY_TIMER_STALE_WARN_MS '{bad}' (expected an integer from 0 to 3600000)"
    )
    assert [(r.code, r.body.decode()) for r in s.results] == [(RET_ERR, text)]


def test_the_02_build_ignores_the_stale_knob(native: Native, env: dict[str, str]) -> None:
    env["MY_TIMER_STALE_WARN_MS"] = "bogus"
    c = new_ctx(native)
    try:
        _, s = native.call("echo", c, echo_req("q", 20))
        assert [r.code for r in s.wait(1)] == [RET_OK]
        time.sleep(0.02)
        assert len(s.results) == 1
    finally:
        assert native.lib.my_timer_destroy(c) == 0


# ---- concurrency and lifecycle ------------------------------------------------


def test_64_echoes_of_100ms(native03: Native, ctx03: Any) -> None:
    before = native03.overlaps
    t0 = time.monotonic()
    sinks = [native03.call("echo", ctx03, echo_req(f"m{i}", 100))[1] for i in range(64)]
    results = [s.wait_final()[-1] for s in sinks]
    assert all(r.code == RET_OK for r in results)
    assert_together(t0, [r.at for r in results])
    assert native03.overlaps == before  # no listeners: replies alone never overlap


def test_threads_submitting_with_listener_churn(native03: Native, ctx03: Any) -> None:
    ev_ud, ev = native03.sink()
    for name in EVENT_NAMES:
        native03.lib.my_timer_add_event_listener(ctx03, name, native03.cb, ev_ud)
    stop = threading.Event()
    per_thread = 150
    sinks: list[list[tuple[str, Sink]]] = [[] for _ in range(4)]

    def submit(k: int) -> None:
        for i in range(per_thread):
            method, payload = [
                ("echo", echo_req(f"{k}.{i}", i % 3)),
                ("schedule", sched_req(["low", "normal", "high"][i % 3], name=f"{k}.{i}")),
                ("version", b"\xa0"),
                ("complex", cbor2.dumps({"req": {"messages": [{}], "tags": ["t"]}})),
            ][i % 4]
            rc, s = native03.call(method, ctx03, payload)
            assert rc == RET_OK
            sinks[k].append((method, s))

    def churn() -> None:
        ud, _ = native03.sink()
        while not stop.is_set():
            lid = native03.lib.my_timer_add_event_listener(ctx03, b"on_echo_fired", native03.cb, ud)
            assert lid >= 1
            assert native03.lib.my_timer_remove_event_listener(ctx03, lid) == 0

    churner = threading.Thread(target=churn)
    churner.start()
    threads = [threading.Thread(target=submit, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for per in sinks:
        for _, s in per:
            results = s.wait_final()
            assert [r.code for r in results] == [RET_OK]
    stop.set()
    churner.join()
    n_events = sum(1 for per in sinks for m, _ in per if m in ("echo", "schedule"))
    ev.wait(n_events, timeout=5 * SLACK)
    settle()
    assert len(ev.results) == n_events


def test_create_destroy_cycles_leave_no_threads(native03: Native) -> None:
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    before = threads()
    for i in range(200):
        c = new_ctx(native03, f"c{i}")
        native03.lib.my_timer_add_event_listener(
            c, b"on_echo_fired", native03.cb, native03.ffi.NULL
        )
        native03.call("echo", c, echo_req("e", 1))
        assert native03.lib.my_timer_destroy(c) == 0
    assert threads() == before


def test_destroy_drains_and_invalidates(native03: Native) -> None:
    c = new_ctx(native03)
    _, ev = listen(native03, c, b"on_echo_fired")
    sinks = [native03.call("echo", c, echo_req(str(i), 100))[1] for i in range(5)]
    assert native03.lib.my_timer_destroy(c) == 0
    assert [len(s.results) for s in sinks] == [1] * 5 and len(ev.results) == 5
    rc, s = native03.call("version", c, b"\xa0")
    assert rc == RET_ERR and s.results[0].body == b"ctx is not a valid FFI context"
    assert native03.lib.my_timer_destroy(c) == RET_ERR


def test_handoff_mode(native03: Native, env: dict[str, str]) -> None:
    env["MY_TIMER_SUBMIT_MODE"] = "handoff"
    c = new_ctx(native03)
    try:
        _, s = native03.call("version", c, b"\xa0")
        assert len(s.results) == 1  # delivered before the call returned
        _, s = native03.call("echo", c, echo_req("h", 5001))
        assert [r.body for r in s.results] == [b"delayMs must not exceed 5000"]
    finally:
        assert native03.lib.my_timer_destroy(c) == 0


# ---- hostile input: one final callback, never a crash ----------------------------

KEYS = ["job", "retry", "schedule", "name", "priority", "backoffMs", "maxAttempts"]
KEYS += ["req", "message", "delayMs", "x"]
_leaf = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.text(max_size=8),
    st.sampled_from(["low", "normal", "high", "", None, True, 1.5]),
    st.binary(max_size=4),
)
_tree = st.recursive(
    _leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.dictionaries(
            st.sampled_from(KEYS),
            kids,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


_PENDING: list[Sink] = []


@pytest.fixture(scope="module")
def hostile_ctx(native03: Native) -> Iterator[Any]:
    """A context whose destroy cancels what is left quickly; checks at the end
    that every call still waiting then got exactly one final callback."""
    saved = dict(os.environ)
    os.environ["MY_TIMER_DESTROY_GRACE_MS"] = "50"
    try:
        c = new_ctx(native03, "h")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield c
    assert native03.lib.my_timer_destroy(c) == 0
    for s in _PENDING:
        assert len(s.results) == 1 and s.results[0].code in (RET_OK, RET_ERR), s.results
    _PENDING.clear()


def _check_final(s: Sink) -> None:
    assert len(s.results) == 1, s.results
    r = s.results[0]
    if r.code == RET_OK:
        cbor2.loads(r.body)
    else:
        assert r.code == RET_ERR and r.body.decode()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(["schedule", "echo", "version", "complex"]), tree=_tree)
def test_structured_garbage(native03: Native, hostile_ctx: Any, method: str, tree: Any) -> None:
    payload = cbor2.dumps(
        {"req": tree} if method == "echo" and not isinstance(tree, dict) else tree
    )
    rc, s = native03.call(method, hostile_ctx, payload)
    assert rc == RET_OK
    with s.cond:
        s.cond.wait_for(lambda: bool(s.results), 0.2 * SLACK)
    if s.results:
        _check_final(s)
    else:  # an echo of up to 5 s: checked when the context is destroyed
        assert method == "echo"
        _PENDING.append(s)
