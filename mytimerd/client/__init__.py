"""Python client for mytimerd: a blocking :class:`Client` and a pipelining :class:`AsyncClient`.

Both speak the framing of :mod:`mytimerd.wire` over a unix or TCP stream, send
requests as CBOR (cbor2) and decode RET_OK bodies as CBOR. Every failure is a
:class:`MytimerError`:

- :class:`LibraryError`: the library answered RET_ERR (its text is ``message``);
- :class:`DaemonCallError`: the daemon refused the call (``name`` is the
  ``mytimerd.<Name>`` error name without its prefix, see :mod:`mytimerd.errors`);
- :class:`TransportError`: no usable connection. :class:`ConnectError` (no
  address accepted the connection), :class:`ConnectionLost` (the stream broke
  or the daemon closed it), :class:`BadResponse` (the peer broke the protocol)
  and :class:`CallTimeout` (no answer in time).

Example::

    with Client("unix:/run/mytimerd.sock", timeout=5) as client:
        print(client.version())
        print(client.echo("hello", delay_ms=10)["echoed"])

    async with AsyncClient() as client:
        results = await asyncio.gather(*(client.echo(str(i)) for i in range(100)))

Responses on a connection answer requests in order, so a call that timed out
leaves its place in the queue: its late answer is read and dropped, and the
connection stays usable. Both clients connect on first use and reconnect on the
next call after the connection was lost; a call is never retried on its own.
Neither client is thread-safe: use one per thread (or one AsyncClient per loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import socket
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypedDict, cast

import cbor2

from ..protocol import wire
from ..protocol.address import (
    ADDRESS_ENV,
    Address,
    TcpAddress,
    UnixAddress,
    default_client_paths,
    parse_address,
)
from ..protocol.errors import PREFIX, parse_error_body

#: Seconds a call waits for its answer unless told otherwise.
DEFAULT_TIMEOUT: Final = 30.0
#: Seconds a connection attempt may take (per address tried).
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

#: Largest response body accepted: daemon answers are small, and a broken or
#: hostile peer must not make the client buffer gigabytes.
MAX_RESPONSE: Final = 64 << 20

_READ_SIZE: Final = 65536


class _NoRequest:
    """The default request of ``call``: an empty map (None would send CBOR null)."""

    def __repr__(self) -> str:
        return "{}"


NO_REQUEST: Final = _NoRequest()


def encode_payload(request: object) -> bytes:
    """The CBOR payload for ``request`` (``NO_REQUEST``: an empty map)."""
    return b"\xa0" if request is NO_REQUEST else cbor2.dumps(request)


# --- errors -----------------------------------------------------------------


class MytimerError(Exception):
    """Base of every error this client raises."""


class CallError(MytimerError):
    """The call reached the daemon and was answered RET_ERR."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(message)
        self.method = method
        self.message = message


class LibraryError(CallError):
    """The library refused the call; ``message`` is its text, verbatim."""


class DaemonCallError(CallError):
    """The daemon refused the call with ``mytimerd.<name>: <message>``."""

    def __init__(self, method: str, name: str, message: str) -> None:
        super().__init__(method, message)
        self.name = name

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}: {self.message}"


class TransportError(MytimerError):
    """No usable connection to the daemon at ``address``."""

    def __init__(self, address: Address | None, reason: str) -> None:
        super().__init__(f"{address}: {reason}" if address is not None else reason)
        self.address = address
        self.reason = reason


class ConnectError(TransportError):
    """No address accepted the connection; ``attempts`` lists (address, reason)."""

    def __init__(self, attempts: Sequence[tuple[Address, str]]) -> None:
        first, reason = attempts[0]
        super().__init__(first, reason)
        self.attempts = list(attempts)

    def __str__(self) -> str:
        return "; ".join(f"cannot connect to {a}: {r}" for a, r in self.attempts)


class ConnectionLost(TransportError):
    """The connection broke, or the daemon closed it, before the answer came."""


class BadResponse(TransportError):
    """The peer sent something no mytimerd server sends (broken framing, bad CBOR)."""


class CallTimeout(TransportError):
    """The answer did not arrive within the call's timeout."""

    def __init__(self, address: Address | None, method: str, seconds: float | None) -> None:
        within = "in time" if seconds is None else f"within {seconds:g} s"
        super().__init__(address, f"no answer to {method!r} {within}")
        self.method = method
        self.seconds = seconds


# --- response types ---------------------------------------------------------


class EchoResult(TypedDict):
    """The answer of ``echo``."""

    echoed: str
    timerName: str


class ComplexResult(TypedDict):
    """The answer of ``complex``."""

    summary: str
    itemCount: int
    hasNote: bool


class ScheduleResult(TypedDict):
    """The answer of ``schedule``."""

    jobId: str
    willRunCount: int
    firstRunAtMs: int
    effectiveBackoffMs: int


# --- requests -----------------------------------------------------------------


def _present(**values: object) -> dict[str, object]:
    """The keys whose value is not None: left-out keys take the library's defaults."""
    return {key: value for key, value in values.items() if value is not None}


def echo_request(message: str, delay_ms: int | None = None) -> dict[str, object]:
    """The request map of ``echo``."""
    return {"req": _present(message=message, delayMs=delay_ms)}


def complex_request(
    messages: Sequence[str | Mapping[str, object]] | None = None,
    tags: Sequence[str] | None = None,
    note: str | None = None,
    retries: int | None = None,
) -> dict[str, object]:
    """The request map of ``complex``; a message given as text becomes ``{"message": text}``."""
    items = (
        None
        if messages is None
        else [{"message": m} if isinstance(m, str) else dict(m) for m in messages]
    )
    tag_list = None if tags is None else list(tags)
    return {"req": _present(messages=items, tags=tag_list, note=note, retries=retries)}


def schedule_request(
    job: str | None = None,
    *,
    payload: Sequence[str] | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    backoff_ms: int | None = None,
    retry_on: Sequence[str] | None = None,
    start_at_ms: int | None = None,
    interval_ms: int | None = None,
    jitter: int | None = None,
) -> dict[str, object]:
    """The request map of ``schedule``; sub-maps with no value given are left out."""
    parts = {
        "job": _present(
            name=job, payload=None if payload is None else list(payload), priority=priority
        ),
        "retry": _present(
            maxAttempts=max_attempts,
            backoffMs=backoff_ms,
            retryOn=None if retry_on is None else list(retry_on),
        ),
        "schedule": _present(startAtMs=start_at_ms, intervalMs=interval_ms, jitter=jitter),
    }
    return {key: value for key, value in parts.items() if value}


# --- addresses and decoding ---------------------------------------------------


def resolve_addresses(address: Address | str | None = None) -> list[Address]:
    """The addresses to try, in order.

    An explicit ``address`` (an Address or its ``unix:``/``tcp:`` text) wins;
    then ``$MYTIMER_ADDRESS``; then the daemon's default unix sockets. Raises
    ValueError for malformed text.
    """
    if isinstance(address, str):
        return [parse_address(address)]
    if address is not None:
        return [address]
    env = os.environ.get(ADDRESS_ENV)
    if env:
        try:
            return [parse_address(env)]
        except ValueError as exc:
            raise ValueError(f"${ADDRESS_ENV}: {exc}") from None
    return [UnixAddress(str(path)) for path in default_client_paths()]


def decode_body(body: bytes, address: Address | None = None) -> Any:
    """The one CBOR item of a RET_OK ``body``, or BadResponse."""
    stream = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise BadResponse(address, f"response is not valid CBOR: {exc}") from None
    if stream.tell() != len(body):
        raise BadResponse(address, f"{len(body) - stream.tell()} bytes after the response item")
    return value


def _method_text(method: str | bytes) -> str:
    return method if isinstance(method, str) else method.decode("utf-8", "backslashreplace")


def _result_body(method: str | bytes, response: wire.Response, address: Address | None) -> bytes:
    """The RET_OK body of ``response``, or the error it carries."""
    if response.ret == wire.RET_OK:
        return response.body
    name = _method_text(method)
    if response.ret == wire.RET_ERR:
        error, message = parse_error_body(response.body)
        if error is None:
            raise LibraryError(name, message)
        raise DaemonCallError(name, error, message)
    raise BadResponse(address, f"unknown result code {response.ret} in the answer to {name!r}")


def _reason(exc: OSError) -> str:
    """A short human reason for a socket error (timeouts carry no text)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    return exc.strerror or str(exc) or type(exc).__name__


# --- blocking client --------------------------------------------------------


def _open_socket(address: Address, timeout: float | None) -> socket.socket:
    if isinstance(address, TcpAddress):
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        # Requests are small and latency-bound: do not let Nagle hold them back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address.path)
    except BaseException:
        sock.close()
        raise
    return sock


class Client:
    """A blocking client on one connection.

    ``address``: an Address, ``unix:/path`` / ``tcp:host:port`` text, or None
    for :func:`resolve_addresses`' defaults (``$MYTIMER_ADDRESS``, then the
    default sockets in order). ``timeout`` bounds each call (None: wait
    forever); ``connect_timeout`` bounds each connection attempt.
    """

    def __init__(
        self,
        address: Address | str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.addresses = resolve_addresses(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: The address connected to, once connected.
        self.address: Address | None = None
        self._sock: socket.socket | None = None
        self._parser = wire.ResponseParser(MAX_RESPONSE)
        self._ready: collections.deque[wire.Response] = collections.deque()
        # Responses owed on this connection, including those of timed-out calls,
        # which must be read and dropped before the next call's own answer.
        self._owed = 0

    def connect(self) -> None:
        """Connect to the first address that accepts, unless connected already."""
        if self._sock is not None:
            return
        attempts: list[tuple[Address, str]] = []
        for address in self.addresses:
            try:
                self._sock = _open_socket(address, self.connect_timeout)
            except OSError as exc:
                attempts.append((address, _reason(exc)))
                continue
            self.address = address
            self._parser = wire.ResponseParser(MAX_RESPONSE)
            self._ready.clear()
            self._owed = 0
            return
        raise ConnectError(attempts)

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _lost(self, reason: str) -> ConnectionLost:
        self.close()
        return ConnectionLost(self.address, reason)

    def _exchange(
        self, method: str | bytes, payload: bytes, timeout: float | None
    ) -> wire.Response:
        frame = wire.encode_request(method, payload)
        self.connect()
        sock = self._sock
        assert sock is not None
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit

        def expired() -> CallTimeout:
            return CallTimeout(self.address, _method_text(method), limit)

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise expired()
            return left

        send_error: str | None = None
        try:
            sock.settimeout(remaining())
            sock.sendall(frame)
        except TimeoutError:
            # Part of the frame may be on the wire: the stream cannot be resynchronised.
            self.close()
            raise expired() from None
        except OSError as exc:
            # The daemon may have answered and closed (e.g. TooManyConnections):
            # its answer can still be read, and says more than EPIPE.
            send_error = f"sending failed: {_reason(exc)}"
        self._owed += 1
        while True:
            while self._ready:
                response = self._ready.popleft()
                self._owed -= 1
                if self._owed == 0:
                    return response
            try:
                sock.settimeout(remaining())
                data = sock.recv(_READ_SIZE)
            except TimeoutError:
                raise expired() from None
            except OSError as exc:
                raise self._lost(send_error or f"receiving failed: {_reason(exc)}") from None
            if not data:
                raise self._lost(send_error or "the daemon closed the connection")
            try:
                self._ready.extend(self._parser.feed(data))
            except wire.ProtocolError as exc:
                self.close()
                raise BadResponse(self.address, str(exc)) from None

    def call_raw(
        self, method: str | bytes, payload: bytes, *, timeout: float | None = None
    ) -> bytes:
        """Send ``payload`` (CBOR bytes) to ``method``; return the RET_OK body bytes.

        ``timeout`` overrides the client's for this call.
        """
        return _result_body(method, self._exchange(method, payload, timeout), self.address)

    def call(
        self, method: str, request: object = NO_REQUEST, *, timeout: float | None = None
    ) -> Any:
        """Call ``method`` with ``request`` (CBOR-encodable; default ``{}``); decode the answer."""
        payload = encode_payload(request)
        return decode_body(self.call_raw(method, payload, timeout=timeout), self.address)

    def version(self) -> str:
        """The library's version string (``nim-timer v0.1.0``)."""
        return cast(str, self.call("version"))

    def echo(self, message: str, delay_ms: int = 0) -> EchoResult:
        """Echo ``message`` back after ``delay_ms`` milliseconds."""
        return cast(EchoResult, self.call("echo", echo_request(message, delay_ms)))

    def complex(
        self,
        messages: Sequence[str | Mapping[str, object]] | None = None,
        tags: Sequence[str] | None = None,
        note: str | None = None,
        retries: int | None = None,
    ) -> ComplexResult:
        """Summarise ``messages`` (texts or EchoRequest maps), ``tags`` and the optional values.

        Arguments left None are left out of the request (library defaults).
        """
        request = complex_request(messages, tags, note, retries)
        return cast(ComplexResult, self.call("complex", request))

    def schedule(
        self,
        job: str | None = None,
        *,
        payload: Sequence[str] | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        backoff_ms: int | None = None,
        retry_on: Sequence[str] | None = None,
        start_at_ms: int | None = None,
        interval_ms: int | None = None,
        jitter: int | None = None,
    ) -> ScheduleResult:
        """Plan job ``job``; arguments left None are left out (library defaults)."""
        request = schedule_request(
            job,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            backoff_ms=backoff_ms,
            retry_on=retry_on,
            start_at_ms=start_at_ms,
            interval_ms=interval_ms,
            jitter=jitter,
        )
        return cast(ScheduleResult, self.call("schedule", request))

    def describe(self) -> dict[str, Any]:
        """``mytimerd.describe``: versions, timer name, methods, limits, error names."""
        return cast(dict[str, Any], self.call("mytimerd.describe"))

    def ping(self) -> dict[str, Any]:
        """``mytimerd.ping``: whether the library answers its liveness probe."""
        return cast(dict[str, Any], self.call("mytimerd.ping"))

    def stats(self) -> dict[str, Any]:
        """``mytimerd.stats``: uptime, connections, calls, errors and latencies."""
        return cast(dict[str, Any], self.call("mytimerd.stats"))


# --- asyncio client -----------------------------------------------------------


async def _open_stream(
    address: Address, timeout: float | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout):
        if isinstance(address, TcpAddress):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return reader, writer
        return await asyncio.open_unix_connection(address.path)


class _Connection:
    """One open stream: the FIFO of calls waiting for an answer and its reader task."""

    def __init__(
        self, address: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.address = address
        self.writer = writer
        self.pending: collections.deque[asyncio.Future[wire.Response]] = collections.deque()
        # Answers that came before any request (a daemon refusing the connection,
        # e.g. TooManyConnections): they answer the next calls, as on a blocking socket.
        self.early: collections.deque[wire.Response] = collections.deque()
        self.broken: TransportError | None = None
        self.reader_task = asyncio.create_task(self._read(reader))

    @property
    def usable(self) -> bool:
        return self.broken is None or bool(self.early)

    def submit(self, frame: bytes) -> asyncio.Future[wire.Response]:
        """Queue ``frame``; the future resolves to its answer."""
        future: asyncio.Future[wire.Response] = asyncio.get_running_loop().create_future()
        if self.early:
            future.set_result(self.early.popleft())
        elif self.broken is not None:
            raise ConnectionLost(self.address, self.broken.reason)
        else:
            # Writing and queueing with no await in between keeps the FIFO in
            # the order the frames go out, however many tasks call at once.
            self.writer.write(frame)
            self.pending.append(future)
        return future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = wire.ResponseParser(MAX_RESPONSE)
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    self._fail(ConnectionLost, "the daemon closed the connection")
                    return
                for response in parser.feed(data):
                    if not self.pending:
                        self.early.append(response)
                        continue
                    future = self.pending.popleft()
                    # A timed-out or cancelled call's answer is dropped here.
                    if not future.done():
                        future.set_result(response)
        except wire.ProtocolError as exc:
            self._fail(BadResponse, str(exc))
        except OSError as exc:
            self._fail(ConnectionLost, f"receiving failed: {_reason(exc)}")

    def _fail(self, kind: type[TransportError], reason: str) -> None:
        self.broken = kind(self.address, reason)
        self.writer.close()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(kind(self.address, reason))

    async def close(self) -> None:
        """Stop reading, fail what still waits and close the stream."""
        self.reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader_task
        if self.broken is None:
            self._fail(ConnectionLost, "the client closed the connection")
        # The peer may already have reset the stream; it is closed either way.
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class AsyncClient:
    """An asyncio client on one connection, able to pipeline many calls.

    Concurrent calls (e.g. through ``asyncio.gather``) are written at once on
    the same connection; a reader task hands each answer to the oldest waiting
    call. Arguments are those of :class:`Client`.
    """

    def __init__(
        self,
        address: Address | str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.addresses = resolve_addresses(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: The address connected to, once connected.
        self.address: Address | None = None
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def connect(self) -> None:
        """Connect to the first address that accepts, unless connected already."""
        await self._connection()

    async def _connection(self) -> _Connection:
        # The lock keeps concurrent first calls from opening several connections.
        async with self._connecting:
            if self._conn is not None and self._conn.usable:
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            attempts: list[tuple[Address, str]] = []
            for address in self.addresses:
                try:
                    reader, writer = await _open_stream(address, self.connect_timeout)
                except OSError as exc:
                    attempts.append((address, _reason(exc)))
                    continue
                self.address = address
                self._conn = _Connection(address, reader, writer)
                return self._conn
            raise ConnectError(attempts)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionLost."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call_raw(
        self, method: str | bytes, payload: bytes, *, timeout: float | None = None
    ) -> bytes:
        """Send ``payload`` (CBOR bytes) to ``method``; return the RET_OK body bytes.

        ``timeout`` overrides the client's for this call.
        """
        frame = wire.encode_request(method, payload)
        conn = await self._connection()
        limit = self.timeout if timeout is None else timeout
        future = conn.submit(frame)
        try:
            async with asyncio.timeout(limit):
                # On a broken stream the reader task fails the future with the reason.
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()
                response = await future
        except TimeoutError:
            # Cancelled, the future keeps its place in the FIFO: the reader drops its answer.
            future.cancel()
            raise CallTimeout(conn.address, _method_text(method), limit) from None
        return _result_body(method, response, conn.address)

    async def call(
        self, method: str, request: object = NO_REQUEST, *, timeout: float | None = None
    ) -> Any:
        """Call ``method`` with ``request`` (CBOR-encodable; default ``{}``); decode the answer."""
        payload = encode_payload(request)
        body = await self.call_raw(method, payload, timeout=timeout)
        return decode_body(body, self.address)

    async def version(self) -> str:
        """The library's version string (``nim-timer v0.1.0``)."""
        return cast(str, await self.call("version"))

    async def echo(self, message: str, delay_ms: int = 0) -> EchoResult:
        """Echo ``message`` back after ``delay_ms`` milliseconds."""
        return cast(EchoResult, await self.call("echo", echo_request(message, delay_ms)))

    async def complex(
        self,
        messages: Sequence[str | Mapping[str, object]] | None = None,
        tags: Sequence[str] | None = None,
        note: str | None = None,
        retries: int | None = None,
    ) -> ComplexResult:
        """Summarise ``messages`` (texts or EchoRequest maps), ``tags`` and the optional values.

        Arguments left None are left out of the request (library defaults).
        """
        request = complex_request(messages, tags, note, retries)
        return cast(ComplexResult, await self.call("complex", request))

    async def schedule(
        self,
        job: str | None = None,
        *,
        payload: Sequence[str] | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        backoff_ms: int | None = None,
        retry_on: Sequence[str] | None = None,
        start_at_ms: int | None = None,
        interval_ms: int | None = None,
        jitter: int | None = None,
    ) -> ScheduleResult:
        """Plan job ``job``; arguments left None are left out (library defaults)."""
        request = schedule_request(
            job,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            backoff_ms=backoff_ms,
            retry_on=retry_on,
            start_at_ms=start_at_ms,
            interval_ms=interval_ms,
            jitter=jitter,
        )
        return cast(ScheduleResult, await self.call("schedule", request))

    async def describe(self) -> dict[str, Any]:
        """``mytimerd.describe``: versions, timer name, methods, limits, error names."""
        return cast(dict[str, Any], await self.call("mytimerd.describe"))

    async def ping(self) -> dict[str, Any]:
        """``mytimerd.ping``: whether the library answers its liveness probe."""
        return cast(dict[str, Any], await self.call("mytimerd.ping"))

    async def stats(self) -> dict[str, Any]:
        """``mytimerd.stats``: uptime, connections, calls, errors and latencies."""
        return cast(dict[str, Any], await self.call("mytimerd.stats"))
