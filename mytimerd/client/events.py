"""Event subscriptions: ``Client.subscribe()`` and ``AsyncClient.subscribe()``.

``mytimerd.subscribe`` turns a connection into an event stream: the daemon
acknowledges it (``{"subscribed": [names]}``), then sends one RET_OK frame per
event, whose body is the library's event body (CBOR ``{"eventType": name,
"payload": {...}}``), and takes no more calls on that connection. So a
subscription has a connection of its own, and the client's calls keep
theirs. Each event is an :class:`Event`: its name, its decoded payload, and
the body's exact bytes.

The stream ends only with an error: the daemon's ``SlowSubscriber`` (more
events waited for this subscriber than ``--max-subscriber-queue``: it did
not read fast enough) or ``ShuttingDown``, raised as
:class:`~.errors.DaemonCallError`, or :class:`~.errors.ConnectionLost` when
the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..protocol import wire
from ..protocol.address import Address, TcpAddress
from .common import (
    MAX_RESPONSE,
    READ_SIZE,
    check_timeout,
    decode_body,
    encode_payload,
    os_reason,
    result_body,
)
from .errors import BadResponse, CallTimeout, ConnectionLost
from .tls import is_closed, tls_failure

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .blocking import Client

#: The daemon method that subscribes.
SUBSCRIBE = "mytimerd.subscribe"


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``name`` (the body's eventType), ``payload`` (decoded) and
    ``raw``, the body's bytes exactly as the library made them."""

    name: str
    payload: Any
    raw: bytes


def event_from_body(body: bytes, address: Address | None = None) -> Event:
    """The :class:`Event` of an event frame's body; BadResponse if it is not one."""
    value = decode_body(body, address)
    if not isinstance(value, dict) or not isinstance(value.get("eventType"), str):
        raise BadResponse(address, "an event that is not a map with a text eventType")
    return Event(value["eventType"], value.get("payload"), body)


def subscribe_payload(events: Sequence[str] | None) -> bytes:
    """The request of ``mytimerd.subscribe``: ``{}`` for every event, else the names."""
    if isinstance(events, str):
        raise TypeError("events must be a sequence of event names, not one string")
    return encode_payload({} if events is None else {"events": list(events)})


def _acknowledged(answer: Any) -> list[str]:
    names = answer.get("subscribed") if isinstance(answer, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


class Subscription:
    """The events of a blocking :class:`~.blocking.Client`'s subscription (see
    :meth:`Client.subscribe <.blocking.Client.subscribe>`): an iterator and a
    context manager. ``events`` holds the names the daemon acknowledged."""

    def __init__(self, client: Client, events: Sequence[str] | None, timeout: float | None):
        payload = subscribe_payload(events)
        self.timeout = check_timeout(timeout)
        self._client = client
        try:
            answer = decode_body(client.call_raw(SUBSCRIBE, payload), client.address)
        except BaseException:
            client.close()
            raise
        #: The events subscribed to, as the daemon acknowledged them.
        self.events: list[str] = _acknowledged(answer)
        self._closed = False

    @property
    def address(self) -> Address | None:
        """The daemon's address."""
        return self._client.address

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        """The next event, waiting for it (at most ``timeout`` seconds, if one was given)."""
        if self._closed:
            raise StopIteration
        client = self._client
        try:
            response = client._receive(SUBSCRIBE, self.timeout)
            return event_from_body(result_body(SUBSCRIBE, response, client.address), client.address)
        except CallTimeout:
            raise  # no event in time: the stream is intact
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the subscription's connection (iterating then stops)."""
        self._closed = True
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class AsyncSubscription:
    """The events of an :class:`~.aio.AsyncClient`'s subscription (see
    :meth:`AsyncClient.subscribe <.aio.AsyncClient.subscribe>`): an async
    iterator and an async context manager, subscribed at ``async with``,
    :meth:`open` or the first step. ``events`` holds the names the daemon
    acknowledged (once open)."""

    def __init__(
        self, client: AsyncClient, events: Sequence[str] | None, timeout: float | None
    ) -> None:
        self._payload = subscribe_payload(events)
        self.timeout = check_timeout(timeout)
        self._client = client
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._tls_name: str | None = None
        self._parser = wire.ResponseParser(MAX_RESPONSE)
        self._ready: list[wire.Response] = []
        self._closed = False
        #: The daemon's address, once open.
        self.address: Address | None = None
        #: The events subscribed to, as the daemon acknowledged them (once open).
        self.events: list[str] = []

    async def open(self) -> Self:
        """Subscribe (once): connect, ask, and wait for the daemon's acknowledgement.

        The client's ``timeout`` bounds the answer, its ``connect_timeout``
        the connection; the daemon's refusal is a DaemonCallError.
        """
        if self._writer is not None or self._closed:
            return self
        client = self._client
        address, reader, writer, tls_name = await client._open_first()
        self.address, self._reader, self._writer, self._tls_name = address, reader, writer, tls_name
        try:
            writer.write(wire.encode_request(SUBSCRIBE, self._payload))
            response = await self._receive(client.timeout)
            answer = decode_body(result_body(SUBSCRIBE, response, address), address)
        except BaseException:
            await self.aclose()
            raise
        self.events = _acknowledged(answer)
        return self

    async def _receive(self, limit: float | None) -> wire.Response:
        reader = self._reader
        assert reader is not None
        while not self._ready:
            try:
                async with asyncio.timeout(limit):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                raise CallTimeout(self.address, SUBSCRIBE, limit) from None
            except ssl.SSLError as exc:
                if not is_closed(exc):
                    assert isinstance(self.address, TcpAddress)
                    raise tls_failure(self.address, exc, self._tls_name or "") from None
                data = b""
            except OSError as exc:
                raise ConnectionLost(self.address, f"receiving failed: {os_reason(exc)}") from None
            if not data:
                raise ConnectionLost(self.address, "the daemon closed the connection")
            try:
                self._ready.extend(self._parser.feed(data))
            except wire.ProtocolError as exc:
                raise BadResponse(self.address, str(exc)) from None
        return self._ready.pop(0)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """The next event, waiting for it (at most ``timeout`` seconds, if one was given)."""
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        try:
            response = await self._receive(self.timeout)
            return event_from_body(result_body(SUBSCRIBE, response, self.address), self.address)
        except CallTimeout:
            raise  # no event in time: the stream is intact
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the subscription's connection (iterating then stops)."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
