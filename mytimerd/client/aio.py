"""The asyncio client, :class:`AsyncClient`: many calls pipelined on one stream.

Answers on a connection come back in request order, so a call that gives up
before its answer (:class:`~.errors.CallTimeout`, or cancelled) leaves a late
answer that every later call on that stream would wait behind. Such a call
retires its connection: later calls open a fresh one, calls already sent on the
old one still get their answers, and the old one closes once none waits.

A request that never left is sent on a fresh connection instead, once: when
the daemon closed the connection while no call was on it (it restarted, or its
idle timeout passed), or when the transport failed before the kernel took one
byte of the request. A request that may have reached the daemon is never sent
again.

An AsyncClient belongs to the event loop it is first used in (its connection
and reader task live there); using it from another loop while it holds a
connection is a RuntimeError, raised at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import ssl
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from ..protocol import wire
from ..protocol.address import Address, TcpAddress
from .common import (
    CLIENT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_RESPONSE,
    NO_REQUEST,
    READ_SIZE,
    Timeout,
    call_limit,
    decode_body,
    encode_payload,
    method_text,
    os_reason,
    result_body,
    unix_connect,
)
from .errors import (
    BadResponse,
    CallTimeout,
    ConnectError,
    ConnectionLost,
    TLSError,
    TransportError,
)
from .events import AsyncSubscription
from .methods import TypedMethods
from .tls import handshake_timeout, is_closed, tls_failure


async def _open_stream(
    address: Address, timeout: float | None, tls: tuple[ssl.SSLContext, str] | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connected stream (TLS: handshake done, or a TLSError that says what failed)."""
    if not isinstance(address, TcpAddress):
        return await _open_unix(address.path, timeout)
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    async with asyncio.timeout_at(deadline):
        reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            context, name = tls
            try:
                async with asyncio.timeout_at(deadline):
                    await writer.start_tls(context, server_hostname=name)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise tls_failure(address, exc, name) from None
            except TimeoutError:
                raise handshake_timeout(address) from None
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _open_unix(
    path: str, timeout: float | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream connected to the unix socket ``path`` (see :func:`~.common.unix_connect`).

    The socket is connected here, not by the event loop: on EAGAIN (the
    listen queue is full) asyncio's own connect waits for the socket to turn
    writable as if the connect were in progress, which an unconnected unix
    socket at once is, and then reports a connection that is not there;
    uvloop fails at once. Neither waits for room in the queue.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        for pause in unix_connect(sock, path, timeout):
            await asyncio.sleep(pause)
        return await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


class _NotSent(Exception):
    """The transport failed before the kernel took one byte of the request."""


class _Connection:
    """One open stream: the FIFO of calls waiting for an answer and its reader task."""

    def __init__(
        self,
        address: Address,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls_name: str | None = None,
    ) -> None:
        self.address = address
        self.writer = writer
        # The name the daemon's certificate was checked against; None: plaintext.
        self.tls_name = tls_name
        self.pending: collections.deque[asyncio.Future[wire.Response]] = collections.deque()
        # Answers that came before any request (a daemon refusing the connection,
        # e.g. TooManyConnections): they answer the next calls, as on a blocking socket.
        self.early: collections.deque[wire.Response] = collections.deque()
        self.broken: TransportError | None = None
        # Set once a call gave up on this stream: it takes no new calls and
        # closes as soon as no call waits for an answer on it.
        self.retired = False
        # Resolved by the reader after its next read (see catch_up).
        self._progress: asyncio.Future[None] | None = None
        self.reader_task = asyncio.create_task(self._read(reader))

    @property
    def usable(self) -> bool:
        return not self.retired and (self.broken is None or bool(self.early))

    def retire(self) -> None:
        """Take no new calls; close once no call still waits for its answer here."""
        self.retired = True
        if self._close_if_idle():
            self.reader_task.cancel()

    def _close_if_idle(self) -> bool:
        """Close a retired stream that no call waits on; True if it did."""
        if not self.retired or self.broken is not None:
            return False
        if any(not future.done() for future in self.pending):
            return False
        self._fail(ConnectionLost, "the client left the connection after a call gave up")
        return True

    async def catch_up(self) -> None:
        """Before a call on an idle connection, let the reader take in what the kernel holds.

        A daemon that closed the connection while no call was on it left its
        end of stream in the kernel; until the reader task has run, the
        connection looks open and a request written to it would be lost with
        it. Waiting for the reader's next read (prompt: the socket is readable)
        marks such a connection broken, so the call goes to a fresh one.
        """
        if self.pending or self.early or self.broken is not None or self.reader_task.done():
            return
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN)
        if not poll.poll(0):
            return
        self._progress = progress = asyncio.get_running_loop().create_future()
        if self.tls_name is None:
            await asyncio.wait((progress, self.reader_task), return_when=asyncio.FIRST_COMPLETED)
            return
        # Over TLS what the kernel holds may be records without data (TLS 1.3
        # session tickets), after which the reader reads on, with no progress:
        # wait until it has progressed, or has taken in what the kernel held.
        for _ in range(100):
            done, _pending = await asyncio.wait(
                (progress, self.reader_task), timeout=0.005, return_when=asyncio.FIRST_COMPLETED
            )
            if done or not poll.poll(0):
                break
        if self._progress is progress:
            self._progress = None

    def submit(self, frame: bytes) -> asyncio.Future[wire.Response]:
        """Queue ``frame``; the future resolves to its answer.

        _NotSent if the transport failed before the kernel took a byte of it.
        """
        future: asyncio.Future[wire.Response] = asyncio.get_running_loop().create_future()
        if self.early:
            future.set_result(self.early.popleft())
            return future
        if self.broken is not None:
            if isinstance(self.broken, TLSError):
                raise self._tls_error()
            raise ConnectionLost(self.address, self.broken.reason)
        # Writing and queueing with no await in between keeps the FIFO in
        # the order the frames go out, however many tasks call at once.
        transport = self.writer.transport
        # write() hands the frame to the kernel at once unless earlier frames wait
        # in its buffer, and only that immediate send can close the transport
        # before write() returns (EPIPE, ECONNRESET); a transport already closing
        # (an earlier write failed in this loop iteration) drops the frame.
        # Either way not one byte of it left.
        if not transport.is_closing():
            self.writer.write(frame)
            if not transport.is_closing():
                self.pending.append(future)
                return future
        self._fail(ConnectionLost, "sending failed: the connection is closed")
        raise _NotSent

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = wire.ResponseParser(MAX_RESPONSE)
        try:
            while True:
                data = await reader.read(READ_SIZE)
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
                if self._progress is not None:
                    self._progress.set_result(None)
                    self._progress = None
                if self._close_if_idle():
                    return
        except wire.ProtocolError as exc:
            self._fail(BadResponse, str(exc))
        except ssl.SSLError as exc:
            if is_closed(exc):
                self._fail(ConnectionLost, "the daemon closed the connection")
            else:
                # The daemon refused the client certificate (TLS 1.3 says so after
                # the client's side of the handshake), or broke TLS.
                self._tls_exc = exc
                self._break(self._tls_error)
        except OSError as exc:
            self._fail(ConnectionLost, f"receiving failed: {os_reason(exc)}")

    def _tls_error(self) -> TransportError:
        assert isinstance(self.address, TcpAddress) and self.tls_name is not None
        return tls_failure(self.address, self._tls_exc, self.tls_name)

    def _fail(self, kind: type[TransportError], reason: str) -> None:
        self._break(lambda: kind(self.address, reason))

    def _break(self, error: Callable[[], TransportError]) -> None:
        """Mark the stream broken and close it; each call waiting on it fails with ``error()``."""
        self.broken = error()
        self.writer.close()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error())

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


class AsyncClient(TypedMethods):
    """An asyncio client on one connection, able to pipeline many calls.

    Concurrent calls (e.g. through ``asyncio.gather``) are written at once on
    the same connection; a reader task hands each answer to the oldest waiting
    call. Arguments are those of :class:`Client` (None or 0: no limit; TLS
    with a ``tls:`` address, ``ssl=`` and ``server_hostname=``).

    The client belongs to the event loop it is first used in. Once closed
    (``async with`` closes it) it may be used in another loop; used from
    another loop while it holds a connection, it raises RuntimeError at once.
    """

    def __init__(
        self,
        address: Address | str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        ssl: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        super().__init__(
            address,
            timeout=timeout,
            connect_timeout=connect_timeout,
            ssl=ssl,
            server_hostname=server_hostname,
        )
        self._conn: _Connection | None = None
        # Connections retired by a call that gave up, until their last call is answered.
        self._retired: set[_Connection] = set()
        self._connecting = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _enter_loop(self) -> None:
        """Bind the client to the running loop, or fail if another loop owns its connection.

        A connection and its reader task live in one loop: from another loop
        its answers would never come (the call would hang until its timeout,
        and then report a misleading CallTimeout).
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._conn is not None or self._retired:
            raise RuntimeError(
                "this AsyncClient belongs to another event loop (each asyncio.run() "
                "starts a new one); create one client per loop, or close it in its "
                "own loop before using it in another"
            )
        self._loop = loop
        self._connecting = asyncio.Lock()  # a lock also belongs to the loop it first waits in

    async def connect(self) -> None:
        """Connect to the first address that accepts, unless connected already."""
        self._enter_loop()
        await self._connection()

    async def _connection(self) -> _Connection:
        # The lock keeps concurrent first calls from opening several connections.
        async with self._connecting:
            if self._conn is not None and self._conn.usable:
                await self._conn.catch_up()
            if self._conn is not None and self._conn.usable:
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            address, reader, writer, tls_name = await self._open_first()
            self.address = address
            self._conn = _Connection(address, reader, writer, tls_name)
            return self._conn

    async def _open_first(
        self,
    ) -> tuple[Address, asyncio.StreamReader, asyncio.StreamWriter, str | None]:
        """A stream to the first address that accepts, and the TLS name checked (None:
        plaintext); ConnectError listing every attempt."""
        attempts: list[tuple[Address, str]] = []
        errnos: list[int | None] = []
        for address in self.addresses:
            tls = self.tls_for(address)
            try:
                reader, writer = await _open_stream(address, self.connect_timeout, tls)
            except TLSError:
                raise  # it says what failed; the next address would not fix the setup
            except (OSError, UnicodeError) as exc:
                attempts.append((address, os_reason(exc)))
                errnos.append(getattr(exc, "errno", None))
                continue
            return address, reader, writer, tls[1] if tls else None
        raise ConnectError(attempts, errnos)

    def subscribe(
        self, events: Sequence[str] | None = None, *, timeout: float | None = None
    ) -> AsyncSubscription:
        """Subscribe to the library's ``events`` (None or empty: every event) on a connection
        of its own: ``async for event in client.subscribe(...)``.

        As :meth:`Client.subscribe <.blocking.Client.subscribe>`, except when it
        subscribes: at ``async with`` (``async with client.subscribe() as
        events: async for event in events``), at ``await subscription.open()``,
        or else at the first ``async for`` step. Events fired before then are
        not delivered, so open it before causing the events you wait for.
        ``async with`` (or ``await subscription.aclose()``) closes its
        connection; an ``async for`` left by ``break`` closes it once the
        subscription is garbage.
        """
        return AsyncSubscription(self, events, timeout)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionLost."""
        if self._conn is None and not self._retired:
            return
        self._enter_loop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
        while self._retired:
            await self._retired.pop().close()

    def _retire(self, conn: _Connection) -> None:
        """A call on ``conn`` gave up: send no more calls there (see the module doc)."""
        if self._conn is conn:
            self._conn = None
        conn.retire()
        if not conn.reader_task.done() and conn not in self._retired:
            self._retired.add(conn)
            # The reader task ends when the stream closes, however it closes.
            conn.reader_task.add_done_callback(lambda _: self._retired.discard(conn))

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

    async def _submit(self, frame: bytes) -> tuple[_Connection, asyncio.Future[wire.Response]]:
        """Write ``frame`` on the connection; once more on a fresh one if none of it left."""
        conn = await self._connection()
        try:
            return conn, conn.submit(frame)
        except _NotSent:
            # Not one byte reached the kernel, so the daemon cannot have seen the
            # request: sending it again cannot make it run twice. Once only.
            pass
        conn = await self._connection()
        try:
            return conn, conn.submit(frame)
        except _NotSent:
            raise ConnectionLost(conn.address, "sending failed: the connection is closed") from None

    async def call_raw(
        self, method: str | bytes, payload: bytes, *, timeout: Timeout = CLIENT_TIMEOUT
    ) -> bytes:
        """Send ``payload`` (CBOR bytes) to ``method``; return the RET_OK body bytes.

        ``timeout``: seconds for this call, None or 0 for no limit; left out,
        the client's ``timeout`` applies.
        """
        self._enter_loop()
        frame = wire.encode_request(method, payload)
        limit = call_limit(self.timeout, timeout)
        conn, future = await self._submit(frame)
        try:
            async with asyncio.timeout(limit):
                # On a broken stream the reader task fails the future with the reason.
                with contextlib.suppress(ConnectionError):
                    await conn.writer.drain()
                response = await future
        except TimeoutError:
            # Cancelled, the future keeps its place in the FIFO: the reader drops its answer.
            future.cancel()
            self._retire(conn)
            raise CallTimeout(conn.address, method_text(method), limit) from None
        except asyncio.CancelledError:
            future.cancel()
            self._retire(conn)
            raise
        return result_body(method, response, conn.address)

    async def call(
        self, method: str, request: object = NO_REQUEST, *, timeout: Timeout = CLIENT_TIMEOUT
    ) -> Any:
        """Call ``method`` with ``request`` (CBOR-encodable; default ``{}``); decode the answer.

        ``timeout`` as for :meth:`call_raw`.
        """
        payload = encode_payload(request)
        body = await self.call_raw(method, payload, timeout=timeout)
        return decode_body(body, self.address)
