"""libecho's ABI beyond the vectors: symbols, description, callback contract,
threads, lifecycle, listeners, the static calls, and the real build's hazards
(native/echo/README.md)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from typing import Any

import cbor2
import cffi
import pytest

from .conftest import (
    ECHO_DIR,
    GENERATIONS,
    SLACK,
    VARIANT,
    Echo,
    build_echo,
    echo_lib,
    shout_req,
    wait_until,
)


def shouted(prefix: str, text: str, sep: str = ": ") -> bytes:
    """The answer a real build gives: only ASCII letters upper-cased."""
    up = "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in text)
    return cbor2.dumps({"shouted": prefix + sep + up, "prefix": prefix})


def answer(echo: Echo, method: str, ctx: Any, payload: bytes) -> tuple[int, bytes]:
    rc, s = echo.call(method, ctx, payload)
    assert rc == 0
    r = s.wait()[0]
    return r.code, r.body


# ---- symbols and description --------------------------------------------------


@pytest.mark.parametrize("generation", GENERATIONS)
def test_exports_exactly_the_real_symbol_table(generation: str) -> None:
    path = build_echo(generation, VARIANT)
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True
    ).stdout
    ours = {tuple(line.split()[1:]) for line in out.splitlines() if line.strip()}
    recorded = (ECHO_DIR / f"symbols-{generation}.txt").read_text().splitlines()
    real = {tuple(line.split()[1:]) for line in recorded if line.strip()}
    assert len(real) == (11 if generation == "0.2" else 10)
    assert ours == real


@pytest.mark.parametrize("generation", GENERATIONS)
def test_description_names_exported_entry_points(generation: str) -> None:
    """Each `; <symbol> (<kind>)` of the bundled CDDL is exported; the kinds
    are those the library implements."""
    text = (ECHO_DIR / f"echo-{generation}.cddl").read_text()
    assert text.splitlines()[0].startswith("; CDDL schema for `echo`")
    procs = dict(re.findall(r"^; (echo_\w+) \((ctor|ffi|ffiStatic|dtor)\)$", text, re.M))
    suffix = "_cbor" if generation == "0.2" else ""
    want = {"echo_create": "ctor", "echo_shout": "ffi", "echo_version": "ffi"}
    want["echo_destroy"] = "dtor"
    if generation == "0.3":
        want |= {"echo_lib_version": "ffiStatic", "echo_shout_anon": "ffiStatic"}
    assert procs == want
    lib = echo_lib(generation).lib
    for name, kind in procs.items():
        # the CDDL names procs without the 0.2 suffix; the CBOR entry point has it
        symbol = name + suffix if kind in ("ctor", "ffi") else name
        assert hasattr(lib, symbol), symbol


# ---- create ---------------------------------------------------------------------


def test_create_empty_request_has_empty_prefix(echo: Echo) -> None:
    ctx, s = echo.create(b"\xa0")
    assert ctx != echo.ffi.NULL
    assert s.wait()[0].code == 0
    try:
        assert answer(echo, "shout", ctx, shout_req("hi")) == (0, shouted("", "hi"))
    finally:
        assert echo.lib.echo_destroy(ctx) == 0


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"", "unexpected eof"),
        (b"\x80", "Expected: map but found: array"),
        (cbor2.dumps({"config": []}), "Expected: map but found: array"),
        (
            cbor2.dumps({"config": {"prefix": 5}}),
            "Expected: text string but found: unsigned integer",
        ),
        (cbor2.dumps({"config": {"name": "x"}}), "unknown field 'name' in EchoConfig"),
        (cbor2.dumps({"cfg": {}}), "unknown field 'cfg' in EchoCreateCtorReq"),
        (
            b"\xa1\x66config\xa1\x66prefix\x62\xc3\x28",
            "invalid UTF-8 in text string at config.prefix",
        ),
    ],
)
def test_create_refused_synchronously(echo: Echo, payload: bytes, detail: str) -> None:
    ctx, s = echo.create(payload)
    assert ctx == echo.ffi.NULL
    assert len(s.results) == 1, "the error is reported before create returns"
    r = s.results[0]
    assert r.thread == threading.get_ident()
    assert (r.code, r.body.decode()) == (1, f"ffiCtor: failed to decode request: {detail}")


def test_create_null_payload_or_callback(echo: Echo) -> None:
    """Both crash the real build; here: NULL with an error, or NULL silently."""
    ud, s = echo.sink()
    assert echo.fn("create")(echo.ffi.NULL, 9, echo.cb, ud) == echo.ffi.NULL
    assert [(r.code, r.body) for r in s.results] == [
        (1, b"ffiCtor: failed to decode request: NULL payload pointer with length 9")
    ]
    payload = cbor2.dumps({"config": {"prefix": "p"}})
    assert echo.fn("create")(payload, len(payload), echo.ffi.NULL, echo.ffi.NULL) == echo.ffi.NULL


def test_prefix_in_chunks_and_duplicates(echo: Echo) -> None:
    # {"config": {"prefix": "de" "mo"}} with an indefinite-length text
    ctx, s = echo.create(b"\xa1\x66config\xa1\x66prefix\x7f\x62de\x62mo\xff")
    assert s.wait()[0].code == 0
    try:
        assert answer(echo, "shout", ctx, shout_req("x")) == (0, shouted("demo", "x"))
    finally:
        assert echo.lib.echo_destroy(ctx) == 0
    ctx, s = echo.create(b"\xa1\x66config\xa2\x66prefix\x61a\x66prefix\x61b")
    assert ctx == echo.ffi.NULL
    assert s.results[0].body == (
        b"ffiCtor: failed to decode request: duplicate field 'prefix' in EchoConfig"
    )


# ---- the callback contract ---------------------------------------------------------


def test_invalid_context(echo: Echo) -> None:
    ffi, lib = echo.ffi, echo.lib
    gone = echo.create_prefix("gone")
    assert lib.echo_destroy(gone) == 0
    for ctx in (ffi.NULL, ffi.cast("void *", 0x1234), gone):
        for method in ("version", "shout"):
            rc, s = echo.call(method, ctx, b"\xa0")
            assert rc == 1
            assert [(r.code, r.body) for r in s.results] == [(1, b"ctx is not a valid FFI context")]
            assert s.results[0].thread == threading.get_ident()
    assert lib.echo_destroy(gone) == 1
    assert lib.echo_destroy(ffi.NULL) == 1
    assert lib.echo_destroy(ffi.cast("void *", 0x1234)) == 1


def test_missing_callback(echo: Echo, ctx: Any) -> None:
    ffi = echo.ffi
    for method in ("version", "shout"):
        assert echo.fn(method)(ctx, ffi.NULL, ffi.NULL, b"\xa0", 1) == 2
        assert echo.fn(method)(ffi.NULL, ffi.NULL, ffi.NULL, b"\xa0", 1) == 2


def test_answers_come_from_the_library_thread(echo: Echo, ctx: Any) -> None:
    threads = set()
    for method, payload in (("version", b"\xa0"), ("shout", b"\x80"), ("shout", shout_req("a"))):
        _, s = echo.call(method, ctx, payload)
        threads.add(s.wait()[0].thread)
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_concurrent_callers_one_context(echo: Echo, ctx: Any) -> None:
    """8 threads x 100 shouts: each answered once and correctly; the
    callbacks of one context never overlap."""
    echo.overlaps = 0
    errors: list[str] = []

    def worker(n: int) -> None:
        sinks = [(i, echo.call("shout", ctx, shout_req(f"t{n}-{i}"))) for i in range(100)]
        for i, (rc, s) in sinks:
            r = s.wait()
            if rc != 0 or len(r) != 1 or r[0].body != shouted("demo", f"t{n}-{i}"):
                errors.append(f"{n}/{i}: {rc} {r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert echo.overlaps == 0


def test_async_callers_never_wait_for_a_stuck_library_thread(echo: Echo, ctx: Any) -> None:
    """A host callback that blocks holds up answers, never callers (the real
    0.2 build blocks every later caller)."""
    release = threading.Event()
    ud, first = echo.sink()

    def block(code: int, body: bytes) -> None:
        release.wait(10)

    echo.hooks[echo.handle(ud)] = block
    assert echo.fn("version")(ctx, echo.cb, ud, b"\xa0", 1) == 0
    assert wait_until(lambda: echo.active == 1)
    t0 = time.monotonic()
    rcs = [echo.call("shout", ctx, shout_req(str(i))) for i in range(20)]
    assert time.monotonic() - t0 < 1.0 * SLACK
    assert all(rc == 0 and not s.results for rc, s in rcs)
    release.set()
    assert first.wait()[0].code == 0
    for i, (_, s) in enumerate(rcs):
        assert s.wait()[0].body == shouted("demo", str(i))


@pytest.mark.parametrize("generation", GENERATIONS)
def test_handoff_mode_answers_before_the_call_returns(generation: str, env: dict[str, str]) -> None:
    """ECHO_SUBMIT_MODE=handoff: the real 0.2 build's timing (a quick answer
    is delivered, from the library thread, before the call returns)."""
    echo = echo_lib(generation)
    env["ECHO_SUBMIT_MODE"] = "handoff"
    ctx = echo.create_prefix("demo")
    try:
        for method, payload in (("version", b"\xa0"), ("shout", shout_req("a")), ("shout", b"")):
            rc, s = echo.call(method, ctx, payload)
            assert rc == 0 and len(s.results) == 1
            assert s.results[0].thread != threading.get_ident()
    finally:
        assert echo.lib.echo_destroy(ctx) == 0


@pytest.mark.parametrize("bad", ["sync", "HANDOFF", "async ", "1"])
def test_invalid_submit_mode_fails_create(echo: Echo, env: dict[str, str], bad: str) -> None:
    env["ECHO_SUBMIT_MODE"] = bad
    ctx, s = echo.create(b"\xa0")
    assert ctx == echo.ffi.NULL
    assert s.results[0].body.decode() == (
        f"ffiCtor: invalid ECHO_SUBMIT_MODE '{bad}' (expected 'async' or 'handoff')"
    )


def test_calls_from_a_callback_are_refused(echo: Echo, ctx: Any) -> None:
    lib, ffi = echo.lib, echo.ffi
    seen: dict[str, Any] = {}
    inner_ud, inner = echo.sink()

    def hook(code: int, body: bytes) -> None:
        seen["version"] = echo.fn("version")(ctx, echo.cb, inner_ud, b"\xa0", 1)
        seen["destroy"] = lib.echo_destroy(ctx)
        seen["add"] = lib.echo_add_event_listener(ctx, b"", echo.cb, inner_ud)
        seen["remove"] = lib.echo_remove_event_listener(ctx, 1)
        seen["create"] = echo.fn("create")(b"\xa0", 1, echo.cb, inner_ud) == ffi.NULL
        if echo.generation == "0.3":
            seen["static"] = lib.echo_lib_version(echo.cb, inner_ud, b"\xa0", 1)

    ud, s = echo.sink()
    echo.hooks[echo.handle(ud)] = hook
    assert echo.fn("version")(ctx, echo.cb, ud, b"\xa0", 1) == 0
    s.wait()
    want = {"version": 1, "destroy": 1, "add": 0, "remove": 1, "create": True}
    if echo.generation == "0.3":
        want["static"] = 1
    assert seen == want
    time.sleep(0.05)
    assert inner.results == [], "a refused call does not call back"
    assert answer(echo, "version", ctx, b"\xa0")[0] == 0, "the context survived"


def test_destroy_answers_every_queued_call(echo: Echo) -> None:
    for _ in range(50):
        ctx = echo.create_prefix("d")
        sinks = [echo.call("shout", ctx, shout_req(str(i)))[1] for i in range(20)]
        assert echo.lib.echo_destroy(ctx) == 0
        assert [[r.body for r in s.results] for s in sinks] == [
            [shouted("d", str(i))] for i in range(20)
        ]


def test_create_destroy_cycles_leave_nothing_behind(echo: Echo) -> None:
    def counts() -> tuple[int, int]:
        return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))

    before = counts()
    for _ in range(300):
        ctx, s = echo.create(b"\xa0")
        s.wait()
        assert echo.lib.echo_destroy(ctx) == 0
    assert wait_until(lambda: counts() == before), (before, counts())


# ---- listeners ------------------------------------------------------------------------


def test_listeners_get_ids_and_nothing_else(echo: Echo, ctx: Any) -> None:
    lib, ffi = echo.lib, echo.ffi
    ud, ev = echo.sink()
    names = [b"", ffi.NULL, b"on_shout", b"on_echo_fired", b"on_job_scheduled"]
    ids = [lib.echo_add_event_listener(ctx, n, echo.cb, ud) for n in names]
    assert all(i >= 1 for i in ids) and len(set(ids)) == len(ids)
    assert lib.echo_add_event_listener(ctx, b"", ffi.NULL, ffi.NULL) == 0
    assert lib.echo_add_event_listener(ffi.NULL, b"", echo.cb, ud) == 0
    for payload in (shout_req("x"), b"\xa0", b"\x80"):
        answer(echo, "shout", ctx, payload)
    time.sleep(0.05)
    assert ev.results == [], "the echo library declares no events"
    for i in ids:
        assert lib.echo_remove_event_listener(ctx, i) == 0
        assert lib.echo_remove_event_listener(ctx, i) == 1
    assert lib.echo_remove_event_listener(ffi.NULL, ids[0]) == 1


# ---- requests beyond the vectors ------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"\xa1\x63req\xa1\x64text\x62\xc3\x28", "invalid UTF-8 in text string at req.text"),
        (b"\xa1\x63req\xa1\x64text\x63\xed\xa0\x80", "invalid UTF-8 in text string at req.text"),
        (b"\xa2\x63req\xa0\x63req\xa0", "duplicate field 'req' in EchoShoutReq"),
        (b"\xa1\x63req\xa1\x64text\x7f\x61a\x01\xff", "malformed CBOR: a chunk of an"),
        (b"\xa1\x63req\xa1\x64text\x7f\x61a", "unexpected eof"),
        (b"\xa1\x63req\xa1\x64text\x7f\x61a\x62\xc3\xff", "invalid UTF-8 in text string"),
        (b"\xa1\x63req\xbf\x64text\x61a", "unexpected eof"),
        (b"\xa1\x63req\xa1\x64text\x7c", "malformed CBOR: reserved additional information 28"),
        (b"\xa1\x63req\xa1\x64text\x7b\x7f\xff\xff\xff\xff\xff\xff\xff", "unexpected eof"),
        (b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff", "unexpected eof"),
        (b"\xa1\x01\x02", "Expected: text string but found: unsigned integer"),
        (b"\xa1\x63req\xc0\xa0", "Expected: map but found: tag"),
        (b"\xa1\x63req\x20", "Expected: map but found: negative integer"),
        (b"\xa1\x63req\xa1\x64text\xf5", "Expected: text string but found: simple/float/break"),
        (b"\xa1\x63req\xff", "Expected: map but found: simple/float/break"),
        (b"\xa1\x6aextraextra\x00", "unknown field 'extraextra' in EchoShoutReq"),
        (b"\xa1\x63req\xa1\x63t\x01x\x00", "unknown field 't\\x01x' in ShoutRequest"),
    ],
)
def test_decode_details(echo: Echo, ctx: Any, payload: bytes, detail: str) -> None:
    """The real library echoes invalid UTF-8 back as invalid CBOR and leaves
    some details empty; libecho refuses and always names the problem."""
    code, body = answer(echo, "shout", ctx, payload)
    assert code == 1
    text = body.decode()
    prefix = "CBOR decode failed for EchoShoutReq: "
    assert text.startswith(prefix + detail), text


def test_null_payload_with_length(echo: Echo, ctx: Any) -> None:
    ud, s = echo.sink()
    assert echo.fn("shout")(ctx, echo.cb, ud, echo.ffi.NULL, 7) == 0
    assert s.wait()[0].body == (
        b"CBOR decode failed for EchoShoutReq: NULL payload pointer with length 7"
    )
    # a NULL pointer with length 0 is an empty payload
    assert echo.fn("version")(ctx, echo.cb, ud, echo.ffi.NULL, 0) == 0
    assert s.wait(2)[1].body == b"CBOR decode failed for EchoVersionReq: unexpected eof"


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 4096, 100_000])
def test_shout_length_limit(echo: Echo, ctx: Any, size: int) -> None:
    """0.3 refuses more than 512 bytes (MaxShoutLen), counted after the
    chunks of an indefinite string are joined; 0.2 has no limit."""
    text = ("abc" * size)[:size]
    chunks = b"".join(cbor2.dumps(text[i : i + 100]) for i in range(0, size, 100))
    for payload in (shout_req(text), b"\xa1\x63req\xa1\x64text\x7f" + chunks + b"\xff"):
        code, body = answer(echo, "shout", ctx, payload)
        if echo.generation == "0.3" and size > 512:
            assert (code, body) == (1, b"text must not exceed 512 bytes")
        else:
            assert (code, body) == (0, shouted("demo", text))


def test_native_abi_names_are_inert_in_02() -> None:
    """0.2 also exports echo_create / echo_shout / echo_version (nim-ffi's
    native C ABI in the real build). A host that mistakes them for CBOR entry
    points gets a failure and no callback, never a crash."""
    echo = echo_lib("0.2")
    ffi = cffi.FFI()
    ffi.cdef(
        "void *echo_create(const uint8_t *, size_t, void *, void *);"
        "int echo_shout(void *, void *, void *, const uint8_t *, size_t);"
        "int echo_version(void *, void *, void *, const uint8_t *, size_t);"
        "void libechoNimMain(void); void NimDestroyGlobals(void);"
    )
    lib = ffi.dlopen(str(echo.path))
    cb = ffi.cast("void *", echo.cb)
    ud, s = echo.sink()
    udp = ffi.cast("void *", echo.handle(ud))
    ctx = echo.create_prefix("demo")
    try:
        assert lib.echo_create(b"\xa0", 1, cb, udp) == ffi.NULL
        assert lib.echo_shout(ffi.cast("void *", 1), cb, udp, b"\xa0", 1) == 1
        assert lib.echo_version(ffi.cast("void *", 1), cb, udp, b"\xa0", 1) == 1
        lib.libechoNimMain()
        lib.NimDestroyGlobals()
        time.sleep(0.05)
        assert s.results == []
        assert answer(echo, "version", ctx, b"\xa0") == (0, cbor2.dumps("nim-echo v0.1.0"))
    finally:
        assert echo.lib.echo_destroy(ctx) == 0


# ---- 0.3 static calls -----------------------------------------------------------------


def test_static_calls() -> None:
    echo = echo_lib("0.3")
    lib, ffi = echo.lib, echo.ffi
    rc, s = echo.static_call("shout_anon", shout_req("Mixed 1"))
    assert rc == 0 and [r.body for r in s.results] == [shouted("", "Mixed 1", sep="")]
    assert s.results[0].thread == threading.get_ident()
    assert lib.echo_lib_version(ffi.NULL, ffi.NULL, b"\xa0", 1) == 2
    assert lib.echo_shout_anon(ffi.NULL, ffi.NULL, b"\xa0", 1) == 2
    ud, s = echo.sink()
    assert lib.echo_shout_anon(echo.cb, ud, ffi.NULL, 3) == 0
    assert s.results[0].body == (
        b"CBOR decode failed for EchoShoutAnonReq: NULL payload pointer with length 3"
    )


def test_static_calls_from_many_threads() -> None:
    echo = echo_lib("0.3")
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(200):
            text = f"w{n}-{i}"
            rc, s = echo.static_call("shout_anon", shout_req(text))
            if rc != 0 or [r.body for r in s.results] != [shouted("", text, sep="")]:
                errors.append(text)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- side by side with libmy_timer ----------------------------------------------------


FROM_TIMER = shout_req("from timer")


@pytest.mark.parametrize("generation", GENERATIONS)
def test_calls_across_libraries_from_callbacks(generation: str) -> None:
    """Each library refuses calls from its own callbacks only: calling
    libecho from a libmy_timer callback works, and the other way round."""
    from tests.native.conftest import Native
    from tests.support.native import build_native

    timer = Native(build_native(VARIANT))
    echo = echo_lib(generation)
    tctx, ts = timer.create("t")
    assert ts.wait()[0].code == 0
    ectx = echo.create_prefix("e")
    try:
        e_ud, e_sink = echo.sink()
        t_ud, t_sink = timer.sink()
        rcs: list[int] = []
        tud, tdone = timer.sink()
        timer.hooks[timer.handle(tud)] = lambda code, body: rcs.append(
            echo.fn("shout")(ectx, echo.cb, e_ud, FROM_TIMER, len(FROM_TIMER))
        )
        eud, edone = echo.sink()
        echo.hooks[echo.handle(eud)] = lambda code, body: rcs.append(
            timer.lib.my_timer_version_cbor(tctx, timer.cb, t_ud, b"\xa0", 1)
        )
        assert timer.lib.my_timer_version_cbor(tctx, timer.cb, tud, b"\xa0", 1) == 0
        assert echo.fn("version")(ectx, echo.cb, eud, b"\xa0", 1) == 0
        tdone.wait()
        edone.wait()
        assert rcs == [0, 0]
        assert e_sink.wait()[0].body == shouted("e", "from timer")
        assert cbor2.loads(t_sink.wait()[0].body) == "nim-timer v0.1.0"
    finally:
        assert echo.lib.echo_destroy(ectx) == 0
        assert timer.lib.my_timer_destroy(tctx) == 0
