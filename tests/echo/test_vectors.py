"""Every recorded vector of both generations, replayed against libecho.

Request CBOR in; return code, final callback code and body out, compared
byte for byte with what the real Nim build answered; events as observed
(none: listeners with an empty and a made-up name receive nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest

from tests.support.ffi_host import Sink

from .conftest import GENERATIONS, REQ_TYPE, Echo, echo_lib, expectation, load_vectors

CASES = [
    pytest.param(g, i, id=f"{g}-{i:02d}-{c['name']}")
    for g in GENERATIONS
    for i, c in enumerate(load_vectors(g)["calls"])
]


class Replay:
    """One context per generation, created from the create vector, with two
    listeners that must never be called; every sink it handed out must hold
    exactly one final answer once the context is destroyed."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        payload = bytes.fromhex(load_vectors(echo.generation)["create"]["request_hex"])
        self.ctx, self.create_sink = echo.create(payload)
        assert self.ctx != echo.ffi.NULL
        self.listener_sinks: list[Sink] = []
        self.ids = []
        for name in (b"", b"on_shout"):
            ud, s = echo.sink()
            lid = echo.lib.echo_add_event_listener(self.ctx, name, echo.cb, ud)
            assert lid >= 1
            self.ids.append(lid)
            self.listener_sinks.append(s)
        self.sinks: list[Sink] = []


@pytest.fixture(scope="module")
def replays() -> Iterator[dict[str, Replay]]:
    made: dict[str, Replay] = {}
    yield made
    for r in made.values():
        for lid in r.ids:
            assert r.echo.lib.echo_remove_event_listener(r.ctx, lid) == 0
        assert r.echo.lib.echo_destroy(r.ctx) == 0
        assert [len(s.results) for s in r.sinks] == [1] * len(r.sinks), "a second answer"
        assert all(not s.results for s in r.listener_sinks), "the echo library has no events"


def replay(replays: dict[str, Replay], generation: str) -> Replay:
    if generation not in replays:
        replays[generation] = Replay(echo_lib(generation))
    return replays[generation]


@pytest.mark.parametrize("generation", GENERATIONS)
def test_create_vector(generation: str, replays: dict[str, Replay]) -> None:
    r = replay(replays, generation)
    res = r.create_sink.wait()[0]
    assert res.code == 0
    assert cbor2.loads(res.body) == str(int(r.echo.ffi.cast("uintptr_t", r.ctx)))
    assert res.thread != threading.get_ident(), "create's RET_OK comes from the library thread"


@pytest.mark.parametrize(("generation", "index"), CASES)
def test_call_vector(generation: str, index: int, replays: dict[str, Replay]) -> None:
    r = replay(replays, generation)
    echo = r.echo
    r.create_sink.wait()  # as a host does: calls only after create's callback
    call: dict[str, Any] = load_vectors(generation)["calls"][index]
    payload = bytes.fromhex(call["request_hex"])
    if call.get("static"):
        rc, s = echo.static_call(call["method"], payload)
        # answered on the caller's thread, before the call returned
        assert len(s.results) == 1
        assert s.results[0].thread == threading.get_ident()
    else:
        rc, s = echo.call(call["method"], r.ctx, payload)
        assert s.wait()[0].thread != threading.get_ident()
    r.sinks.append(s)
    assert rc == 0, "the call is accepted; decode errors come through the callback"
    res = s.wait()[0]
    assert res.code == call["ret"], res.body
    mode, want = expectation(call)
    if mode == "prefix":
        # the real library's detail is empty; libecho names the unknown key
        assert res.body.startswith(want)
        assert res.body[len(want) :].startswith(b"unknown field '"), res.body
        assert want.decode() == f"CBOR decode failed for {REQ_TYPE[call['method']]}: "
    else:
        assert res.body == want
    assert "events" not in call or call["events"] == []
    assert all(not ls.results for ls in r.listener_sinks)


def test_vector_files_cover_both_generations() -> None:
    """The copies in tests/vectors hold what the spec says: 33 and 45 calls,
    context prefix "demo", and every 0.3 static call flagged."""
    v02, v03 = load_vectors("0.2"), load_vectors("0.3")
    assert len(v02["calls"]) == 33 and len(v03["calls"]) == 45
    for v in (v02, v03):
        assert cbor2.loads(bytes.fromhex(v["create"]["request_hex"])) == {
            "config": {"prefix": "demo"}
        }
    assert not any(c.get("static") for c in v02["calls"])
    statics = {c["method"] for c in v03["calls"] if c.get("static")}
    assert statics == {"lib_version", "shout_anon"}
