"""docs/protocol.md's hex examples are real frames of the protocol.

Every ```hex block of the document must follow an ``<!-- example: NAME -->``
marker, and NAME must be listed below with what the frame holds. Each block
is decoded by the project's own sans-IO parsers, so an example with a wrong
length prefix or a typo in a byte fails here rather than in a reader's client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest

from mytimerd.protocol import errors, interfaces, wire
from mytimerd.protocol.limits import Limits

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# A marker, optional blank lines, then a fenced block whose info string is hex.
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\s*```hex\n(.*?)```", re.DOTALL)
HEX_FENCE = re.compile(r"^```hex\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Req:
    """An expected request frame: method name and decoded CBOR payload."""

    method: str
    payload: Any


@dataclass(frozen=True)
class Resp:
    """An expected response frame: result code and body (CBOR value or text)."""

    ret: int
    body: Any


EXPECTED: dict[str, Req | Resp] = {
    "version-request": Req("version", {}),
    "version-response": Resp(wire.RET_OK, "nim-timer v0.1.0"),
    "echo-request": Req("echo", {"req": {"message": "hello", "delayMs": 0}}),
    "echo-response": Resp(wire.RET_OK, {"echoed": "hello", "timerName": "mytimerd"}),
    "daemon-error-response": Resp(
        wire.RET_ERR,
        "mytimerd.UnknownMethod: no method 'frobnicate' (try: version, echo, complex, "
        "schedule, mytimerd.describe, mytimerd.ping, mytimerd.stats)",
    ),
    "library-error-response": Resp(wire.RET_ERR, "job name must not be empty"),
}


def examples() -> dict[str, bytes]:
    """Every marked hex block of the document, by marker name, as bytes."""
    text = DOC.read_text()
    found: dict[str, bytes] = {}
    for name, block in EXAMPLE.findall(text):
        assert name not in found, f"example {name!r} appears twice"
        found[name] = bytes.fromhex("".join(block.split()))
    # A hex block without a marker would be skipped silently by the pattern.
    assert len(HEX_FENCE.findall(text)) == len(found), "a ```hex block lacks its example marker"
    return found


def test_every_example_is_expected_and_every_expected_example_is_there() -> None:
    assert sorted(examples()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_decodes_to_exactly_the_expected_frame(name: str) -> None:
    data = examples()[name]
    expected = EXPECTED[name]
    if isinstance(expected, Req):
        limits = Limits()
        parser = wire.RequestParser(limits.max_method_len, limits.max_payload)
        events = parser.feed(data)
        assert parser.buffered == 0, "bytes left over after the frame"
        assert len(events) == 1, events
        frame = events[0]
        assert isinstance(frame, wire.Request), frame
        assert frame.method.decode() == expected.method
        assert cbor2.loads(frame.payload) == expected.payload
        # The payload must also pass the daemon's own checks, as a real one would.
        interfaces.lookup(frame.method).validate(frame.payload)
        assert wire.encode_request(expected.method, frame.payload) == data
    else:
        rparser = wire.ResponseParser()
        responses = rparser.feed(data)
        assert rparser.buffered == 0, "bytes left over after the frame"
        assert len(responses) == 1, responses
        response = responses[0]
        assert response.ret == expected.ret
        if response.ret == wire.RET_OK:
            assert cbor2.loads(response.body) == expected.body
            # The library's answers are what cbor2.dumps produces, byte for byte.
            assert cbor2.dumps(expected.body) == response.body
        else:
            # RET_ERR bodies are UTF-8 text, not CBOR.
            assert response.body.decode("utf-8") == expected.body


def test_error_examples_are_told_apart_as_the_document_says() -> None:
    found = examples()
    daemon = wire.ResponseParser().feed(found["daemon-error-response"])[0]
    name, message = errors.parse_error_body(daemon.body)
    assert name == "UnknownMethod" and name in errors.CATALOGUE
    assert message.startswith("no method 'frobnicate'")
    library = wire.ResponseParser().feed(found["library-error-response"])[0]
    assert errors.parse_error_body(library.body) == (None, "job name must not be empty")


def test_unknown_method_example_names_only_real_methods() -> None:
    # The example's method list is hand-written; a renamed or removed method
    # would leave it describing a daemon that no longer exists.
    expected = EXPECTED["daemon-error-response"]
    assert isinstance(expected, Resp)
    listed = re.search(r"\(try: (.*)\)$", expected.body)
    assert listed is not None
    for method in listed.group(1).split(", "):
        interfaces.lookup(method.encode())
