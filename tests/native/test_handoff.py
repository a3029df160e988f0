"""native/'s handoff submit mode (MY_TIMER_SUBMIT_MODE=handoff): a library that
behaves like the real Nim build, so that hosts can be measured and tested
against the real build's timing without Nim.

A call returns only once the library thread has taken and handled the request;
callers of one context take turns, so while the library thread is busy the
caller waiting for it blocks and every other caller blocks behind that one;
destroy releases them all; answers are those of the default mode. The module
reruns itself under ASan+UBSan and TSan (the last test).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.support.ffi_host import Sink
from tests.support.native import build_native
from tests.support.sanitizers import run_pytest

from .conftest import SLACK, Native, build_native_03
from .test_gen03 import _check_vector, _quick_vectors

RET_OK = 0


def echo_req(message: str, delay: int) -> bytes:
    return cbor2.dumps({"req": {"message": message, "delayMs": delay}})


@pytest.fixture
def handoff() -> Iterator[None]:
    """Contexts created during the test use the handoff mode (read at create)."""
    saved = os.environ.get("MY_TIMER_SUBMIT_MODE")
    os.environ["MY_TIMER_SUBMIT_MODE"] = "handoff"
    yield
    if saved is None:
        del os.environ["MY_TIMER_SUBMIT_MODE"]
    else:
        os.environ["MY_TIMER_SUBMIT_MODE"] = saved


@pytest.fixture
def hctx(native: Native, handoff: None) -> Iterator[Any]:
    """A 0.2 context in handoff mode (destroyed by the test when it says so)."""
    c, s = native.create("demo")
    assert c != native.ffi.NULL, s.results
    assert s.wait()[0].code == RET_OK
    yield c
    native.lib.my_timer_destroy(c)  # RET_ERR if the test destroyed it already


def occupy(native: Native, ctx: Any) -> threading.Event:
    """Keeps the library thread busy inside a callback until the returned
    event is set (waits until it is in there)."""
    gate, inside = threading.Event(), threading.Event()
    ud, _ = native.sink()

    def hold(code: int, body: bytes) -> None:
        inside.set()
        gate.wait(10.0)

    native.hooks[native.handle(ud)] = hold
    # in handoff mode this call itself returns only once the callback did
    threading.Thread(
        target=native.lib.my_timer_version_cbor, args=(ctx, native.cb, ud, b"\xa0", 1), daemon=True
    ).start()
    assert inside.wait(2.0 * SLACK), "the library thread never ran the holding callback"
    return gate


class Caller(threading.Thread):
    """Makes one call from its own thread; records what had been delivered by
    the time the call returned."""

    def __init__(self, native: Native, ctx: Any, method: str, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.native, self.ctx, self.method, self.payload = native, ctx, method, payload
        self.returned = threading.Event()
        self.rc = -1
        self.sink: Sink | None = None
        self.delivered_at_return = -1

    def run(self) -> None:
        self.rc, self.sink = self.native.call(self.method, self.ctx, self.payload)
        self.delivered_at_return = len(self.sink.results)
        self.returned.set()


def test_a_call_returns_once_the_library_thread_took_it(native: Native, hctx: Any) -> None:
    # handlers that do not wait: answered, from the library thread, before the return
    for method, payload in [
        ("version", b"\xa0"),
        ("complex", cbor2.dumps({"req": {"messages": [], "tags": ["t"]}})),
        ("echo", echo_req("now", 0)),
        ("schedule", b"\x80"),  # a decode error
    ]:
        rc, s = native.call(method, hctx, payload)
        assert rc == RET_OK
        assert len(s.results) == 1, method
        assert s.results[0].thread != threading.get_ident()
    # a handler that waits: the call returns once the wait has begun, not when it ends
    t0 = time.monotonic()
    rc, s = native.call("echo", hctx, echo_req("later", 200))
    returned = time.monotonic() - t0
    assert rc == RET_OK and s.results == []
    assert returned < 0.1 * SLACK
    assert s.wait()[0].code == RET_OK
    assert s.results[0].at - t0 >= 0.2


def test_a_busy_library_thread_blocks_every_caller_until_it_takes_their_requests(
    native: Native, hctx: Any
) -> None:
    gate = occupy(native, hctx)
    callers = [Caller(native, hctx, "version", b"\xa0") for _ in range(3)]
    for c in callers:
        c.start()
    time.sleep(0.2)
    assert not any(c.returned.is_set() for c in callers), "a caller passed a busy thread"
    gate.set()
    for c in callers:
        assert c.returned.wait(2.0 * SLACK)
        assert c.rc == RET_OK
        assert c.delivered_at_return == 1  # taken, handled and answered before the return
        assert c.sink is not None and [r.code for r in c.sink.results] == [RET_OK]


def test_destroy_releases_the_caller_waiting_for_the_thread_and_those_waiting_their_turn(
    native: Native, hctx: Any
) -> None:
    gate = occupy(native, hctx)
    # one of them waits for the library thread, the others for their turn
    callers = [Caller(native, hctx, "echo", echo_req(str(i), 0)) for i in range(3)]
    for c in callers:
        c.start()
    time.sleep(0.3)  # all inside the call (a later one would see a destroyed context)
    assert not any(c.returned.is_set() for c in callers)
    destroyer = threading.Thread(target=native.lib.my_timer_destroy, args=(hctx,), daemon=True)
    destroyer.start()
    for c in callers:
        assert c.returned.wait(1.0 * SLACK), "destroy did not release a blocked caller"
        assert c.rc == RET_OK
    assert destroyer.is_alive()  # still draining: the library thread is held
    gate.set()
    destroyer.join(5.0 * SLACK)
    assert not destroyer.is_alive()
    for c in callers:  # their requests were drained: exactly one answer each
        assert c.sink is not None and [r.code for r in c.sink.results] == [RET_OK]


def test_waiting_requests_of_many_callers_still_run_concurrently(native: Native, hctx: Any) -> None:
    t0 = time.monotonic()
    callers = [Caller(native, hctx, "echo", echo_req(str(i), 100)) for i in range(32)]
    for c in callers:
        c.start()
    for c in callers:
        assert c.returned.wait(2.0 * SLACK)
        assert c.sink is not None
        assert c.sink.wait()[0].code == RET_OK
    assert max(c.sink.results[0].at for c in callers if c.sink) - t0 < 0.25 * SLACK


def test_the_02_vectors_in_handoff_mode(native: Native, hctx: Any, vectors: dict[str, Any]) -> None:
    ev_ud, ev = native.sink()
    lid = native.lib.my_timer_add_event_listener(hctx, b"on_echo_fired", native.cb, ev_ud)
    assert lid >= 1
    for v in vectors["calls"]:
        before = len(ev.results)
        rc, s = native.call(v["method"], hctx, bytes.fromhex(v["request_hex"]))
        assert rc == RET_OK
        if v["method"] in ("version", "complex"):
            assert len(s.results) == 1, v["name"]  # answered before the return
        r = s.wait()[0]
        assert r.code == v["ret"], (v["name"], r.body)
        if "ok_hex" in v:
            assert r.body.hex() == v["ok_hex"]
        if "err_text" in v:
            assert r.body.decode() == v["err_text"]
        if "err_prefix" in v:
            text = r.body.decode()
            assert text.startswith(v["err_prefix"]) and len(text) > len(v["err_prefix"])
        # 0.2: an echo's event comes before its reply, so it is in by now
        events = [e.body.hex() for e in ev.results[before:]]
        assert events == v.get("events_before_reply", []), v["name"]
    assert native.lib.my_timer_remove_event_listener(hctx, lid) == 0


def test_the_03_vectors_in_handoff_mode(
    native03: Native, handoff: None, vectors03: dict[str, Any]
) -> None:
    c, s = native03.create("demo")
    assert c != native03.ffi.NULL
    assert s.wait()[0].code == RET_OK
    try:
        for v in _quick_vectors(vectors03):
            _check_vector(native03, c, v, timeout=5.0)
    finally:
        assert native03.lib.my_timer_destroy(c) == RET_OK


@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_handoff_under_sanitizer(variant: str) -> None:
    """This module again, against the ASan+UBSan and TSan builds of both
    generations (in a python subprocess with the sanitizer runtime preloaded,
    as test_sanitizers_fuzz.py does for the other native tests)."""
    if os.environ.get("MYTIMER_NATIVE_VARIANT"):
        pytest.skip("already running against a sanitizer build")
    build_native(variant)
    build_native_03(variant)
    here = Path(__file__).resolve()
    run_pytest(
        variant,
        "MYTIMER",
        [str(here), "-k", "not under_sanitizer"],
        cwd=here.parents[2],
        timeout=240,
    )
