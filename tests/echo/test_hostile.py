"""Generated requests against libecho: a model of the real build's answers for
every text, and exactly one well-formed answer for any bytes at all."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import GENERATIONS, REQ_TYPE, Echo, echo_lib

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module", params=GENERATIONS)
def lib_ctx(request: pytest.FixtureRequest) -> Iterator[tuple[Echo, Any, str]]:
    echo = echo_lib(request.param)
    prefix = "pré fix"
    ctx = echo.create_prefix(prefix)
    yield echo, ctx, prefix
    assert echo.lib.echo_destroy(ctx) == 0


def upper_ascii(text: str) -> str:
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in text)


def chunked(text: str, cuts: list[int]) -> bytes:
    """``text`` as an indefinite-length CBOR text string cut at code points."""
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    parts = [text[a:b] for a, b in itertools.pairwise(points)]
    return b"\x7f" + b"".join(cbor2.dumps(p) for p in parts) + b"\xff"


@SETTINGS
@given(text=st.text(), cuts=st.lists(st.integers(0, 200), max_size=5), chunks=st.booleans())
def test_shout_matches_the_model(
    lib_ctx: tuple[Echo, Any, str], text: str, cuts: list[int], chunks: bool
) -> None:
    echo, ctx, prefix = lib_ctx
    if chunks:
        payload = b"\xa1\x63req\xa1\x64text" + chunked(text, cuts)
    else:
        payload = cbor2.dumps({"req": {"text": text}})
    rc, s = echo.call("shout", ctx, payload)
    assert rc == 0
    r = s.wait()[0]
    if echo.generation == "0.3" and len(text.encode()) > 512:
        assert (r.code, r.body) == (1, b"text must not exceed 512 bytes")
    else:
        want = {"shouted": f"{prefix}: {upper_ascii(text)}", "prefix": prefix}
        assert (r.code, r.body) == (0, cbor2.dumps(want))
    if echo.generation == "0.3":
        rc, s = echo.static_call("shout_anon", payload)
        assert rc == 0
        assert s.results[0].body == cbor2.dumps({"shouted": upper_ascii(text), "prefix": ""})


def check_one(method: str, results: list[Any]) -> None:
    """Exactly one final callback: RET_OK with one CBOR item, or RET_ERR with
    UTF-8 text that names the request type and a non-empty detail."""
    assert len(results) == 1, results
    r = results[0]
    assert r.code in (0, 1)
    if r.code == 0:
        cbor2.loads(r.body)
        return
    text = r.body.decode("utf-8")
    prefix = f"CBOR decode failed for {REQ_TYPE[method]}: "
    if text != "text must not exceed 512 bytes":
        assert text.startswith(prefix) and len(text) > len(prefix), text


@SETTINGS
@given(payload=st.binary(max_size=64), method=st.sampled_from(["version", "shout"]))
def test_any_bytes_get_one_answer(
    lib_ctx: tuple[Echo, Any, str], payload: bytes, method: str
) -> None:
    echo, ctx, _ = lib_ctx
    rc, s = echo.call(method, ctx, payload)
    assert rc == 0
    check_one(method, s.wait())
    if echo.generation == "0.3":
        static = "lib_version" if method == "version" else "shout_anon"
        rc, s = echo.static_call(static, payload)
        assert rc == 0
        check_one(static, s.results)


CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["req", "text", "x", "config"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@SETTINGS
@given(value=CBOR_VALUES)
def test_any_cbor_value_gets_one_answer(lib_ctx: tuple[Echo, Any, str], value: Any) -> None:
    """Well-formed CBOR of every shape; the valid ones are answered as the model says."""
    echo, ctx, prefix = lib_ctx
    rc, s = echo.call("shout", ctx, cbor2.dumps(value))
    assert rc == 0
    results = s.wait()
    check_one("shout", results)
    req = value.get("req", {}) if isinstance(value, dict) else None
    text = req.get("text", "") if isinstance(req, dict) else None
    valid = (
        isinstance(value, dict)
        and set(value) <= {"req"}
        and isinstance(req, dict)
        and set(req) <= {"text"}
        and isinstance(text, str)
    )
    assert (results[0].code == 0) == valid  # texts of at most 8 characters: no 0.3 limit
    if valid and isinstance(text, str):
        want = {"shouted": f"{prefix}: {upper_ascii(text)}", "prefix": prefix}
        assert results[0].body == cbor2.dumps(want)
