"""Validation before the library: strict CBOR, schema, ranges, messages."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mytimerd.protocol import cbor, interfaces
from mytimerd.protocol.errors import CATALOGUE, DaemonError, parse_error_body

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "abi-vectors.json").read_text()
)


def error_of(method: str, payload: bytes) -> str:
    with pytest.raises(DaemonError) as info:
        interfaces.lookup(method.encode()).validate(payload)
    return str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        c
        for c in VECTORS["calls"]
        if c["request_hex"] and not c.get("err_prefix") and "as text" not in c["name"]
    ],
    ids=lambda c: c["name"],
)
def test_spec_vectors_that_the_library_accepts_pass_validation(call: dict[str, str]) -> None:
    interfaces.lookup(call["method"].encode()).validate(bytes.fromhex(call["request_hex"]))


@pytest.mark.parametrize(
    ("method", "value", "expected"),
    [
        (
            "echo",
            {"req": {"message": "hi", "delayMs": "5"}},
            "mytimerd.InvalidParameter: req.delayMs: expected an integer, got a text string",
        ),
        (
            "echo",
            {"req": {"message": "hi", "delayMs": 0, "extra": 1}},
            "mytimerd.InvalidParameter: req: unknown key 'extra' "
            "(EchoRequest has: message, delayMs)",
        ),
        (
            "echo",
            {"req": {"message": None}},
            "mytimerd.InvalidParameter: req.message: null is not allowed here (not optional)",
        ),
        (
            "echo",
            {"req": {"delayMs": 10**13}},
            "mytimerd.InvalidParameter: req.delayMs: 10000000000000 is out of range "
            "[-1000000000000, 1000000000000]",
        ),
        (
            "echo",
            {"req": {"delayMs": 1.5}},
            "mytimerd.InvalidParameter: req.delayMs: expected an integer, got a float",
        ),
        (
            "echo",
            [1],
            "mytimerd.InvalidParameter: request: expected a map (MyTimerEchoReq), got an array",
        ),
        (
            "complex",
            {"req": {"messages": [{"message": 1}]}},
            "mytimerd.InvalidParameter: req.messages[0].message: expected a text string, "
            "got an integer",
        ),
        (
            "complex",
            {"req": {"tags": "t"}},
            "mytimerd.InvalidParameter: req.tags: expected an array, got a text string",
        ),
        (
            "schedule",
            {"job": {"priority": 2**63}},
            "mytimerd.InvalidParameter: job.priority: 9223372036854775808 is out of range "
            "[-9223372036854775808, 9223372036854775807]",
        ),
        (
            "schedule",
            {"schedule": {"startAtMs": 2**63 - 1, "jitter": 1}},
            "mytimerd.InvalidParameter: schedule.jitter: startAtMs + jitter = "
            "9223372036854775808 does not fit a 64-bit integer",
        ),
        (
            "version",
            {"x": 1},
            "mytimerd.InvalidParameter: request: unknown key 'x' (MyTimerVersionReq has: no keys)",
        ),
    ],
)
def test_schema_errors_name_the_path(method: str, value: object, expected: str) -> None:
    assert error_of(method, cbor2.dumps(value)) == expected


def test_options_accept_null_and_undefined() -> None:
    payload = cbor2.dumps({"req": {"note": None, "retries": cbor2.undefined}})
    interfaces.lookup(b"complex").validate(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "empty payload"),
        (b"\xa0\x00", "trailing bytes: the item ends at byte 1 of a 2-byte payload"),
        (b"\xc1\x00", "tag 1 is not accepted (at byte 0)"),
        (b"\xbf\xff", "indefinite-length items are not accepted (at byte 0)"),
        (b"\xa1\x63req\xa1\x67message\x62\xff\xfe", "req.message: invalid UTF-8 in text string"),
        (b"\x81" * 40, "nesting deeper than 16 levels"),
        (b"\xa2\x61a\x01\x61a\x02", "duplicate map key 'a'"),
        (b"\xa1\x01\x02", "map key is an integer, not a text string"),
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "unexpected end of payload"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "announces 18446744073709551615 items"),
        (b"\xf8\x20", "simple value 32 is not accepted"),
        (b"\x1c", "malformed initial byte 0x1c"),
    ],
)
def test_cbor_errors_are_precise(payload: bytes, expected: str) -> None:
    message = error_of("echo", payload)
    assert message.startswith("mytimerd.InvalidCBOR: ")
    assert expected in message


def test_unknown_method_lists_the_methods() -> None:
    with pytest.raises(DaemonError) as info:
        interfaces.lookup(b"frobnicate")
    assert str(info.value) == (
        "mytimerd.UnknownMethod: no method 'frobnicate' (try: echo, version, complex, "
        "schedule, mytimerd.describe, mytimerd.ping, mytimerd.stats, mytimerd.subscribe)"
    )


@given(st.binary(max_size=200))
def test_any_bytes_are_accepted_or_refused_with_a_named_error(payload: bytes) -> None:
    for method in interfaces.METHODS:
        try:
            method.validate(payload)
        except DaemonError as exc:
            assert exc.name in ("InvalidCBOR", "InvalidParameter")
            assert exc.message


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.text(max_size=10)
    | st.floats(allow_nan=False)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_decoder_agrees_with_cbor2_on_accepted_values(value: object) -> None:
    data = cbor2.dumps(value)
    assert cbor.loads(data) == cbor2.loads(data)


def test_error_bodies_split_into_name_and_message() -> None:
    assert parse_error_body(b"mytimerd.Timeout: slow") == ("Timeout", "slow")
    assert parse_error_body(b"job name must not be empty") == (None, "job name must not be empty")
    assert parse_error_body(b"bad \xff") == (None, "bad \ufffd")


def test_every_error_name_is_documented() -> None:
    with pytest.raises(ValueError, match="undocumented"):
        DaemonError("Nope", "x")
    assert all(doc.endswith(".") for doc in CATALOGUE.values())
