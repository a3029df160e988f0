"""The asyncio client, :class:`AsyncClient`: many calls pipelined on one stream.

Answers on a connection come back in request order, so a call that gives up
before its answer (:class:`~.errors.CallTimeout`, or cancelled) leaves a late
answer that every later call on that stream would wait behind. Such a call
retires its connection: later calls open a fresh one, calls already sent on the
old one still get their answers, and the old one closes once none waits.

A request that never left is sent on a fresh connection instead: when the
daemon closed the connection while no call was on it (it restarted, or its
idle timeout passed), or when the transport failed before the kernel took one
byte of the request (then at the next address, once per address: see
:class:`~.core.Dialer`). A request that may have reached the daemon is never
sent again.

The protocol state (the FIFO of calls waiting, answers that came unasked,
broken and retired connections, when a request may go again) is
:mod:`.core`'s, shared with the blocking Client; this module does the I/O.

An AsyncClient belongs to the event loop it is first used in (its connection
and reader task live there); using it from another loop while it holds a
connection is a RuntimeError, raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import select
import socket
import ssl
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, Self

from ..protocol import wire
from ..protocol.address import Address, TcpAddress
from .common import (
    CLIENT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    NO_REQUEST,
    READ_SIZE,
    Addresses,
    Timeout,
    call_limit,
    decode_body,
    encode_payload,
    method_text,
    result_body,
    unix_connect,
)
from .core import Channel, NotSent, handshake, not_started
from .errors import (
    BadResponse,
    CallError,
    CallTimeout,
    ConnectError,
    ConnectionLost,
    TransportError,
)
from .events import AsyncSubscription
from .methods import TypedMethods, description_of, needs_description


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
            with handshake(address, name):
                async with asyncio.timeout_at(deadline):
                    await writer.start_tls(context, server_hostname=name)
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


class _Connection:
    """One open stream: its protocol state (the FIFO of calls waiting for an answer)
    and its reader task."""

    def __init__(
        self,
        channel: Channel[asyncio.Future[wire.Response]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.channel = channel
        self.address = channel.address
        self.writer = writer
        # Resolved by the reader after its next read (see catch_up).
        self._progress: asyncio.Future[None] | None = None
        self.reader_task = asyncio.create_task(self._read(reader))

    def retire(self) -> None:
        """Take no new calls; close once no call still waits for its answer here."""
        self.channel.retire()
        if self._close_if_idle():
            self.reader_task.cancel()

    def _close_if_idle(self) -> bool:
        """Close a retired stream that no call waits on; True if it did."""
        channel = self.channel
        if not channel.retired or channel.broken is not None:
            return False
        if any(not future.done() for future in channel.waiting):
            return False
        self._end(
            ConnectionLost(self.address, "the client left the connection after a call gave up")
        )
        return True

    async def catch_up(self) -> None:
        """Before a call on an idle connection, let the reader take in what the kernel holds.

        A daemon that closed the connection while no call was on it left its
        end of stream in the kernel; until the reader task has run, the
        connection looks open and a request written to it would be lost with
        it. Waiting for the reader's next read (prompt: the socket is readable)
        marks such a connection broken, so the call goes to a fresh one.
        """
        channel = self.channel
        if not channel.idle or channel.broken is not None or self.reader_task.done():
            return
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN)
        if not poll.poll(0):
            return
        self._progress = progress = asyncio.get_running_loop().create_future()
        if channel.tls_name is None:
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

        NotSent if the transport failed before the kernel took a byte of it.
        """
        future: asyncio.Future[wire.Response] = asyncio.get_running_loop().create_future()
        early = self.channel.asked(future)
        if early is not None:
            future.set_result(early)
            return future
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
                return future
        self.channel.unsent(future)
        self._end(ConnectionLost(self.address, "sending failed: the connection is closed"))
        raise NotSent

    async def _read(self, reader: asyncio.StreamReader) -> None:
        channel = self.channel
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    error = channel.read_error(None)
                    break
                for future, response in channel.received(data):
                    # A timed-out or cancelled call's answer is dropped here.
                    if not future.done():
                        future.set_result(response)
                if self._progress is not None:
                    self._progress.set_result(None)
                    self._progress = None
                if self._close_if_idle():
                    return
        except BadResponse as exc:
            error = exc
        except OSError as exc:
            error = channel.read_error(exc)
        self._end(error)

    def _end(self, error: TransportError) -> None:
        """Mark the stream broken and close it; each call waiting on it fails with ``error``."""
        for future in self.channel.end(error):
            if not future.done():
                future.set_exception(copy.copy(error))  # one exception object per call
        self.writer.close()

    async def close(self) -> None:
        """Stop reading, fail what still waits and close the stream."""
        self.reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader_task
        self._end(ConnectionLost(self.address, "the client closed the connection"))
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
        address: Addresses = None,
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
            if self._conn is not None and self._conn.channel.usable:
                await self._conn.catch_up()
            if self._conn is not None and self._conn.channel.usable:
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            channel, reader, writer = await self._open_first()
            self.address = channel.address
            self._conn = _Connection(channel, reader, writer)
            return self._conn

    async def _open_first(
        self,
    ) -> tuple[Channel[Any], asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to the first address that accepts (the one that last worked first),
        with its protocol state; ConnectError listing every attempt."""
        attempts = self.dialer.round()
        for address in attempts:
            tls = self.tls_for(address)
            try:
                reader, writer = await _open_stream(address, self.connect_timeout, tls)
            except (OSError, UnicodeError) as exc:
                attempts.failed(address, exc)
                continue
            attempts.connected(address)
            return Channel(address, tls[1] if tls else None), reader, writer
        raise attempts.error()

    def subscribe(
        self,
        events: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        reconnect: bool = True,
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
        subscription is garbage. ``reconnect`` as for Client.subscribe: a
        :class:`~.events.Gap` in the stream says when it reconnected.
        """
        return AsyncSubscription(self, events, timeout, reconnect)

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
        """Write ``frame`` on the connection; again on a fresh one while none of it left."""
        for sends in itertools.count(1):
            conn = await self._connection()
            try:
                return conn, conn.submit(frame)
            except NotSent as exc:
                # Not one byte reached the kernel, so the daemon cannot have seen the
                # request: sending it again cannot make it run twice.
                self.dialer.not_sent(conn.address, sends, exc)
        raise AssertionError("not reached")  # pragma: no cover

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
        stopping: tuple[wire.Response, Address] | None = None
        for sends in itertools.count(1):
            try:
                conn, future = await self._submit(frame)
            except ConnectError:
                if stopping is None:
                    raise
                return result_body(method, *stopping)  # nowhere else: its answer stands
            try:
                async with asyncio.timeout(limit):
                    # On a broken stream the reader task fails the future with the reason.
                    with contextlib.suppress(ConnectionError):
                        await conn.writer.drain()
                    response = await future
            except TimeoutError:
                # Cancelled, the future keeps its place in the FIFO: the reader drops
                # its answer.
                future.cancel()
                self._retire(conn)
                raise CallTimeout(conn.address, method_text(method), limit) from None
            except asyncio.CancelledError:
                future.cancel()
                self._retire(conn)
                raise
            if not (not_started(response) and self.dialer.may_resend(sends)):
                return result_body(method, response, conn.address)
            # The daemon is stopping and did not start it: another daemon (or
            # the next instance on the same socket) may, on a fresh connection.
            stopping = (response, conn.address)
            self._retire(conn)
            self.dialer.move_on(conn.address)
        raise AssertionError("not reached")  # pragma: no cover

    async def call(
        self, method: str, request: object = NO_REQUEST, *, timeout: Timeout = CLIENT_TIMEOUT
    ) -> Any:
        """Call ``method`` with ``request`` (CBOR-encodable; default ``{}``); decode the answer.

        ``timeout`` as for :meth:`call_raw`; a method of another served
        library is checked against describe first, as by :meth:`Client.call
        <.blocking.Client.call>`.
        """
        if needs_description(method) and self._described is None:
            answer = await _answer_or_none(self.describe())
            self._described = description_of(lambda: answer)
        if needs_description(method) and self._described:
            self._described.check(method, {} if request is NO_REQUEST else request)
        payload = encode_payload(request)
        body = await self.call_raw(method, payload, timeout=timeout)
        return decode_body(body, self.address)


async def _answer_or_none(describe: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
    """The describe answer, or None from a peer that has none (see description_of)."""
    try:
        return await describe
    except (CallError, BadResponse):
        return None
