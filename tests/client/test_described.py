"""Calling another served library from Python (issue 18 item 3): ``client.call("shout", ...)``
checked against the daemon's describe, and ``client.shout(...)``."""

from __future__ import annotations

import asyncio

import cbor2
import pytest

from mytimerd.client import AsyncClient, Client, DaemonCallError
from mytimerd.client.described import Described

from .conftest import Answer, FakeServer, canned, ok

#: A describe answer in the exact form (every field named by its wire key), for
#: nim-ffi's echo library: shout takes {"req": {"text": tstr}}.
ECHO_DESCRIBE = {
    "methods": [
        {
            "name": "shout",
            "handler": "library",
            "request": {
                "type": "map",
                "typeName": "EchoShoutReq",
                "fields": [
                    {
                        "name": "req",
                        "type": "map",
                        "typeName": "ShoutRequest",
                        "fields": [{"name": "text", "type": "text", "optional": False}],
                    }
                ],
            },
        },
        {"name": "version", "request": {"type": "map", "fields": []}},
    ],
    "events": [],
}


def echo_library(method: str, payload: bytes) -> Answer:
    """A fake daemon serving the echo library."""
    if method == "mytimerd.describe":
        return ok(ECHO_DESCRIBE)
    if method == "shout":
        return ok({"shouted": cbor2.loads(payload)["req"]["text"].upper(), "prefix": ""})
    return canned(method, payload)


def test_a_described_method_is_called_by_name_and_as_an_attribute(fake: FakeServer) -> None:
    fake.handler = echo_library
    with Client(fake.address) as c:
        assert c.call("shout", {"req": {"text": "hi"}})["shouted"] == "HI"
        assert c.shout(req={"text": "yo"})["shouted"] == "YO"
        with pytest.raises(DaemonCallError, match="unknown key 'txt'") as info:
            c.shout(req={"txt": "x"})
        assert info.value.name == "InvalidParameter"
        with pytest.raises(DaemonCallError, match="checked by the client") as info:
            c.whisper()
        assert info.value.name == "UnknownMethod"
    # describe once; refused requests never left the client
    assert [m for m, _ in fake.requests] == ["mytimerd.describe", "shout", "shout"]


def test_async_client_checks_against_describe_too(fake: FakeServer) -> None:
    fake.handler = echo_library

    async def scenario() -> None:
        async with AsyncClient(fake.address) as c:
            assert (await c.shout(req={"text": "hi"}))["shouted"] == "HI"
            with pytest.raises(DaemonCallError, match="expected text"):
                await c.call("shout", {"req": {"text": 3}})

    asyncio.run(scenario())


def test_a_peer_without_describe_is_not_checked(fake: FakeServer) -> None:
    """The fake answers describe with an error: the request goes as given."""
    with Client(fake.address) as c, pytest.raises(DaemonCallError, match="UnknownMethod"):
        c.call("shout", {"req": {"text": "hi"}})
    assert [m for m, _ in fake.requests] == ["mytimerd.describe", "shout"]


def test_the_digest_identifies_the_description() -> None:
    assert Described(ECHO_DESCRIBE).digest == Described(dict(ECHO_DESCRIBE)).digest
    assert Described(ECHO_DESCRIBE).digest != Described({"methods": []}).digest
