"""Python client for mytimerd: a blocking :class:`Client` and a pipelining :class:`AsyncClient`.

Both speak the framing of :mod:`mytimerd.protocol.wire` over a unix or TCP
stream (or TCP over TLS: a ``tls:host:port`` address, ``ssl=``), send
requests as CBOR (cbor2) and decode RET_OK bodies as CBOR. Every failure is
a :class:`MytimerError` (see :mod:`.errors`; a failed TLS handshake is a
:class:`TLSError`).

Example::

    with Client("unix:/run/mytimerd.sock", timeout=5) as client:
        print(client.version())
        print(client.echo("hello", delay_ms=10)["echoed"])

    async with AsyncClient() as client:
        results = await asyncio.gather(*(client.echo(str(i)) for i in range(100)))

    with Client() as client:
        for event in client.subscribe(["on_echo_fired"]):  # a connection of its own
            print(event.name, event.payload)

Responses on a connection answer requests in order, so the late answer of a
call that timed out (or was cancelled) would hold up every later call: the
client leaves that connection and the next call opens a fresh one (calls
already waiting on it still get their answers). Both clients connect on first
use and reconnect on the next call after the connection was lost. Given
several addresses (``Client(["tcp:a:9099", "tcp:b:9099"])``, or
``MYTIMER_ADDRESS=tcp:a:9099,tcp:b:9099``) they fail over: to the next address
when one refuses the connection, or when a request never left (not one byte
reached the kernel). A call that may have reached a daemon is never sent again.
Neither client is thread-safe: use one per thread (or one AsyncClient per loop).

Modules: :mod:`.errors` (exceptions), :mod:`.common` (addresses, payloads,
answers), :mod:`.core` (the connection state both clients share, without
I/O), :mod:`.methods` (typed methods, requests and answers, shared by both
clients, their requests built from the method table), :mod:`.events` (event
subscriptions), :mod:`.tls` (what a failed TLS handshake means), :mod:`.blocking`
(Client), :mod:`.aio` (AsyncClient); the command line client is :mod:`.ctl`.
"""

from __future__ import annotations

from .aio import AsyncClient
from .blocking import Client
from .common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_RESPONSE,
    NO_REQUEST,
    Addresses,
    decode_body,
    encode_payload,
    parse_addresses,
    resolve_addresses,
)
from .errors import (
    BadResponse,
    CallError,
    CallTimeout,
    ConnectError,
    ConnectionLost,
    DaemonCallError,
    LibraryError,
    MytimerError,
    TLSError,
    TransportError,
)
from .events import AsyncSubscription, Event, Gap, Subscription
from .methods import (
    ComplexResult,
    EchoResult,
    ScheduleResult,
    complex_request,
    echo_request,
    schedule_request,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_RESPONSE",
    "NO_REQUEST",
    "Addresses",
    "AsyncClient",
    "AsyncSubscription",
    "BadResponse",
    "CallError",
    "CallTimeout",
    "Client",
    "ComplexResult",
    "ConnectError",
    "ConnectionLost",
    "DaemonCallError",
    "EchoResult",
    "Event",
    "Gap",
    "LibraryError",
    "MytimerError",
    "ScheduleResult",
    "Subscription",
    "TLSError",
    "TransportError",
    "complex_request",
    "decode_body",
    "echo_request",
    "encode_payload",
    "parse_addresses",
    "resolve_addresses",
    "schedule_request",
]
