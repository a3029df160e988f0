"""Event subscriptions: ``Client.subscribe()`` and ``AsyncClient.subscribe()``.

``mytimerd.subscribe`` turns a connection into an event stream: the daemon
acknowledges it (``{"subscribed": [names]}``), then sends one RET_OK frame per
event, whose body is the library's event body (CBOR ``{"eventType": name,
"payload": {...}}``), and takes no more calls on that connection. So a
subscription has a connection of its own, and the client's calls keep
theirs. Each event is an :class:`Event`: its name, its decoded payload, and
the body's exact bytes.

When the connection ends (the daemon restarted or stopped: ``ShuttingDown``,
or the connection closed), a subscription connects and subscribes again, with
a growing pause between attempts (:class:`Resubscriber` decides, for both
clients), and its stream then carries a :class:`Gap`: when the gap began and
ended, since events fired in between were not delivered. With
``reconnect=False``, and always after the daemon's ``SlowSubscriber`` (more
events waited for this subscriber than ``--max-subscriber-queue``: it did not
read fast enough) or a refusal of the subscription itself, the stream ends
with that error: a :class:`~.errors.DaemonCallError`, or
:class:`~.errors.ConnectionLost` when the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from ..protocol import wire
from ..protocol.address import Address
from .common import READ_SIZE, check_timeout, decode_body, encode_payload, result_body
from .core import Channel
from .errors import (
    BadResponse,
    CallTimeout,
    ConnectionLost,
    DaemonCallError,
    MytimerError,
    TLSError,
    TransportError,
)

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .blocking import Client

#: The daemon method that subscribes.
SUBSCRIBE: Final = "mytimerd.subscribe"
#: The name of a :class:`Gap` marker in the stream.
GAP: Final = "mytimerd.gap"
#: Seconds between attempts to subscribe again: the first pause, doubled after
#: each failed attempt up to the longest (each one shortened by up to half at
#: random, so that the subscribers of a restarted daemon do not come back at once).
RECONNECT_FIRST: Final = 0.1
RECONNECT_LONGEST: Final = 5.0
#: The daemon's refusals after which subscribing again may succeed: it was stopping,
#: or had no room for the connection yet.
_PASSING: Final = frozenset({"ShuttingDown", "TooManyConnections", "Overloaded"})


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``name`` (the body's eventType), ``payload`` (decoded) and
    ``raw``, the body's bytes exactly as the library made them."""

    name: str
    payload: Any
    raw: bytes


@dataclass(frozen=True, slots=True)
class Gap(Event):
    """A marker in a reconnecting subscription's stream: its connection ended at
    ``began`` (``reason`` says why) and it was subscribed again at ``ended``
    (both :func:`time.time` seconds); events fired in between were not delivered.

    ``name`` is :data:`GAP` and ``payload`` holds the same (``began``,
    ``ended``, ``reason``, ``address``: where it subscribed again), so a loop
    that prints events prints the gap too; ``raw`` is empty.
    """

    began: float
    ended: float
    reason: str


class Resubscriber:
    """Whether and when a subscription subscribes again, for both clients (no I/O).

    :meth:`lost` is told how the stream ended, :meth:`retry` how an attempt
    to subscribe again failed; :meth:`pause` is the wait before the next
    attempt, :meth:`resubscribed` the :class:`Gap` marker once one succeeded.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        #: When the current gap began (None: subscribed).
        self.began: float | None = None
        self.reason = ""
        self._pause = RECONNECT_FIRST

    def lost(self, exc: BaseException) -> bool:
        """The stream ended with ``exc``: True if a gap begins (subscribe again),
        False if the subscription ends with ``exc``."""
        if not self.enabled or not self._passing(exc):
            return False
        if self.began is None:
            self.began = time.time()
            self.reason = str(exc)
            self._pause = RECONNECT_FIRST
        return True

    def retry(self, exc: BaseException) -> bool:
        """Subscribing again failed with ``exc``: True to try once more after :meth:`pause`.

        A refusal of the subscription (an event the new library lacks, a
        permission), a TLS failure or a broken protocol end it.
        """
        return self._passing(exc) or (
            isinstance(exc, TransportError) and not isinstance(exc, TLSError | BadResponse)
        )

    @staticmethod
    def _passing(exc: BaseException) -> bool:
        if isinstance(exc, DaemonCallError):
            return exc.name in _PASSING
        return isinstance(exc, ConnectionLost)

    def pause(self) -> float:
        """Seconds to wait before the next attempt (doubled for the one after)."""
        pause = self._pause * random.uniform(0.5, 1.0)
        self._pause = min(2 * self._pause, RECONNECT_LONGEST)
        return pause

    def resubscribed(self, address: Address | None) -> Gap:
        """Subscribed again (at ``address``): the gap's marker; the gap is over."""
        began, ended = self.began or time.time(), time.time()
        self.began = None
        payload = {"began": began, "ended": ended, "reason": self.reason, "address": str(address)}
        return Gap(GAP, payload, b"", began, ended, self.reason)


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


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a monotonic time; None: no limit), at least 0."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Subscription:
    """The events of a blocking :class:`~.blocking.Client`'s subscription (see
    :meth:`Client.subscribe <.blocking.Client.subscribe>`): an iterator of
    :class:`Event` (and :class:`Gap` markers, when it reconnected) and a
    context manager. ``events`` holds the names the daemon acknowledged."""

    def __init__(
        self,
        client: Client,
        events: Sequence[str] | None,
        timeout: float | None,
        reconnect: bool = True,
    ) -> None:
        self._payload = subscribe_payload(events)
        self.timeout = check_timeout(timeout)
        self._client = client
        self._resubscriber = Resubscriber(reconnect)
        #: The events subscribed to, as the daemon acknowledged them.
        self.events: list[str] = []
        self._closed = False
        self._subscribe()

    def _subscribe(self) -> None:
        client = self._client
        client.close()
        try:
            answer = decode_body(client.call_raw(SUBSCRIBE, self._payload), client.address)
        except BaseException:
            client.close()
            raise
        self.events = _acknowledged(answer)

    @property
    def address(self) -> Address | None:
        """The daemon's address."""
        return self._client.address

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        """The next event (or :class:`Gap`), waiting for it (at most ``timeout`` seconds,
        if one was given, reconnecting included)."""
        if self._closed:
            raise StopIteration
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        client = self._client
        try:
            while self._resubscriber.began is None:
                try:
                    response = client._receive(SUBSCRIBE, _left(deadline))
                    return event_from_body(
                        result_body(SUBSCRIBE, response, client.address), client.address
                    )
                except CallTimeout:
                    raise CallTimeout(client.address, SUBSCRIBE, self.timeout) from None
                except MytimerError as exc:
                    if not self._resubscriber.lost(exc):
                        raise
            return self._resubscribe(deadline)
        except CallTimeout:
            raise  # no event in time: the stream (or its reconnecting) goes on
        except BaseException:
            self.close()
            raise

    def _resubscribe(self, deadline: float | None) -> Gap:
        """Subscribe again until it works (the gap's marker) or a refusal ends it."""
        resubscriber = self._resubscriber
        while True:
            pause = resubscriber.pause()
            left = _left(deadline)
            if left is not None and left < pause:
                time.sleep(left)
                raise CallTimeout(self.address, SUBSCRIBE, self.timeout)
            time.sleep(pause)
            try:
                self._subscribe()
            except MytimerError as exc:
                if not resubscriber.retry(exc):
                    raise
                continue
            return resubscriber.resubscribed(self.address)

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
    iterator of :class:`Event` (and :class:`Gap` markers, when it reconnected)
    and an async context manager, subscribed at ``async with``, :meth:`open`
    or the first step. ``events`` holds the names the daemon acknowledged
    (once open)."""

    def __init__(
        self,
        client: AsyncClient,
        events: Sequence[str] | None,
        timeout: float | None,
        reconnect: bool = True,
    ) -> None:
        self._payload = subscribe_payload(events)
        self.timeout = check_timeout(timeout)
        self._client = client
        self._resubscriber = Resubscriber(reconnect)
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._channel: Channel[str] | None = None
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
        if self._writer is None and not self._closed:
            await self._subscribe()
        return self

    async def _subscribe(self) -> None:
        self._drop()
        client = self._client
        channel, reader, writer = await client._open_first()
        self.address, self._reader, self._writer = channel.address, reader, writer
        self._channel = channel
        try:
            channel.asked(SUBSCRIBE)
            writer.write(wire.encode_request(SUBSCRIBE, self._payload))
            response = await self._receive(client.timeout)
            answer = decode_body(result_body(SUBSCRIBE, response, channel.address), channel.address)
        except BaseException:
            self._drop()
            raise
        self.events = _acknowledged(answer)

    async def _receive(self, limit: float | None) -> wire.Response:
        """The next answer: the subscription's acknowledgement, then one per event."""
        reader, channel = self._reader, self._channel
        assert reader is not None and channel is not None
        while (response := channel.next_unasked()) is None:
            try:
                async with asyncio.timeout(limit):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                raise CallTimeout(self.address, SUBSCRIBE, limit) from None
            except OSError as exc:
                raise channel.read_error(exc) from None
            if not data:
                raise channel.read_error(None)
            for _, answer in channel.received(data):
                return answer  # the acknowledgement
        return response

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """The next event (or :class:`Gap`), waiting for it (at most ``timeout`` seconds,
        if one was given, reconnecting included)."""
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while self._resubscriber.began is None:
                try:
                    response = await self._receive(_left(deadline))
                    return event_from_body(
                        result_body(SUBSCRIBE, response, self.address), self.address
                    )
                except CallTimeout:
                    raise CallTimeout(self.address, SUBSCRIBE, self.timeout) from None
                except MytimerError as exc:
                    if not self._resubscriber.lost(exc):
                        raise
                    self._drop()
            return await self._resubscribe(deadline)
        except CallTimeout:
            raise  # no event in time: the stream (or its reconnecting) goes on
        except BaseException:
            await self.aclose()
            raise

    async def _resubscribe(self, deadline: float | None) -> Gap:
        """Subscribe again until it works (the gap's marker) or a refusal ends it."""
        resubscriber = self._resubscriber
        while True:
            pause = resubscriber.pause()
            left = _left(deadline)
            if left is not None and left < pause:
                await asyncio.sleep(left)
                raise CallTimeout(self.address, SUBSCRIBE, self.timeout)
            await asyncio.sleep(pause)
            try:
                await self._subscribe()
            except MytimerError as exc:
                if not resubscriber.retry(exc):
                    raise
                continue
            return resubscriber.resubscribed(self.address)

    def _drop(self) -> None:
        """Close the current connection, if any (the subscription itself stays open)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

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
