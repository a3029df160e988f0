"""The blocking client, :class:`Client`: one socket, one call at a time.

Answers on a connection come back in request order and carry no request id.
A call that gives up before its answer (:class:`~.errors.CallTimeout`, or an
exception such as KeyboardInterrupt while it waits) therefore closes its
connection: the late answer would otherwise delay the next call's answer, which
the daemon sends only after it. The next call opens a fresh connection; the
abandoned call still runs to its end in the daemon, and its answer is discarded.

A request that never left is sent again on a fresh connection: when the
daemon closed the connection while it was idle (it restarted, or its idle
timeout passed), or when sending failed before the kernel took one byte of the
request (then on the next address, once per address: see
:class:`~.core.Dialer`). A request that may have reached the daemon is never
sent again.

The protocol state (what was sent, what answers it, when a request may go
again) is :mod:`.core`'s, shared with the AsyncClient; this module does the I/O.
"""

from __future__ import annotations

import copy
import itertools
import socket
import ssl
import time
from collections.abc import Sequence
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
    os_reason,
    result_body,
    unix_connect,
)
from .core import Channel, NotSent, handshake, not_started
from .errors import BadResponse, CallTimeout, ConnectError, ConnectionLost
from .events import Subscription
from .methods import TypedMethods, description_of, needs_description


def _open_socket(
    address: Address, timeout: float | None, tls: tuple[ssl.SSLContext, str] | None
) -> socket.socket:
    """A connected socket (TLS: handshake done, or a TLSError that says what failed)."""
    if isinstance(address, TcpAddress):
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        try:
            # Requests are small and latency-bound: do not let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                context, name = tls
                with handshake(address, name):
                    return context.wrap_socket(sock, server_hostname=name)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        for pause in unix_connect(sock, address.path, timeout):
            time.sleep(pause)
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


class Client(TypedMethods):
    """A blocking client on one connection.

    ``address``: an Address, ``unix:/path`` / ``tcp:host:port`` /
    ``tls:host:port`` text, several of them (a list, or text separated by
    commas) to fail over between, or None for :func:`resolve_addresses`'
    defaults (``$MYTIMER_ADDRESS``, then the default sockets in order). The
    client connects to the first that accepts, starting with the one that
    last worked. ``timeout``
    bounds each call and ``connect_timeout`` each connection attempt (the TLS
    handshake included), in seconds; None or 0 means no limit (as
    ``mytimerctl --timeout 0``), a negative value is a ValueError.

    TLS: a ``tls:`` address is spoken over TLS with ``ssl`` (an
    :class:`ssl.SSLContext`; by default :func:`ssl.create_default_context`,
    the system's CA store), checking that the daemon's certificate names
    ``server_hostname`` (by default the address's host). ``ssl=`` or
    ``server_hostname=`` with a ``tcp:`` address turns TLS on as well; with a
    unix socket they are a ValueError. A failed handshake, or the daemon's
    refusal of the client certificate, raises :class:`~.errors.TLSError`.

    A call that raises :class:`~.errors.CallTimeout` closes the connection
    (its late answer would hold up the next one); the next call reconnects.
    A request that never left (see the module doc) is sent again on a fresh
    connection, at the next address; one that may have reached a daemon never is.
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
        self._sock: socket.socket | None = None
        # The open connection's protocol state; its callers are the calls themselves.
        self._channel: Channel[object] | None = None

    def subscribe(
        self,
        events: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        reconnect: bool = True,
    ) -> Subscription:
        """Subscribe to the library's ``events`` (None or empty: every event) on a connection
        of its own; iterate over the result for the events (:class:`~.events.Event`).

        Subscribed when this returns (events fired from then on are delivered),
        or raises: :class:`~.errors.DaemonCallError` ``InvalidParameter`` for
        an event the library does not have, as any call does otherwise (the
        client's ``timeout`` bounds the subscription's answer). The client's
        own calls go on working on their connection.

        ``timeout`` bounds each wait for the next event: None (the default)
        or 0 waits as long as it takes; past it the iteration raises
        :class:`~.errors.CallTimeout` and the subscription stays usable.

        ``reconnect`` (the default): when the connection ends (the daemon
        restarted, or stopped: ``ShuttingDown``) the subscription connects and
        subscribes again, with a growing pause between attempts (fail-over
        included: any of the client's addresses), and the stream yields a
        :class:`~.events.Gap` saying when the gap began and ended (events
        fired in it are not delivered). It does not after ``SlowSubscriber``
        or a refusal of the subscription: those end it with their
        DaemonCallError. ``reconnect=False``: iterating ends with an exception
        only: the daemon's DaemonCallError, or ConnectionLost when the
        daemon closes the connection.

        Use it as a context manager (or call ``close()``) to close its
        connection; a ``for`` loop left by ``break`` closes it once the
        iterator is garbage (at once, in CPython).
        """
        return Subscription(self._twin(), events, timeout, reconnect)

    def _twin(self) -> Client:
        """An unconnected client with this one's settings (for a subscription's connection)."""
        twin = copy.copy(self)
        twin._sock = None
        twin._channel = None
        twin.address = None
        return twin

    def _read(self, left: float | None) -> list[tuple[object, wire.Response]]:
        """Read once from the open connection (within ``left`` seconds): the answers completed.

        TimeoutError if nothing came in time (the connection is kept); else
        the TransportError that ended the connection, which is then closed.
        """
        sock, channel = self._sock, self._channel
        assert sock is not None and channel is not None
        try:
            sock.settimeout(left)
            data = sock.recv(READ_SIZE)
            if data:
                return channel.received(data)
            error = channel.read_error(None)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            raise TimeoutError from None
        except OSError as exc:
            error = channel.read_error(exc)
        except BadResponse as exc:
            error = exc
        self.close()
        raise error

    def _receive(self, method: str, limit: float | None) -> wire.Response:
        """The next response on the open connection, sent unasked (an event stream's).

        CallTimeout if none comes within ``limit`` seconds (the connection is
        kept: no answer is owed); ConnectionLost when the daemon closed it.
        """
        channel = self._channel
        if channel is None:
            raise ConnectionLost(self.address, "the subscription is closed")
        deadline = None if limit is None else time.monotonic() + limit
        while (response := channel.next_unasked()) is None:
            try:
                self._read(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise CallTimeout(self.address, method, limit) from None
        return response

    def connect(self) -> None:
        """Connect to the first address that accepts (the one that last worked first),
        unless connected already; ConnectError lists every address tried."""
        if self._sock is not None:
            return
        attempts = self.dialer.round()
        for address in attempts:
            tls = self.tls_for(address)
            try:
                sock = _open_socket(address, self.connect_timeout, tls)
            except (OSError, UnicodeError) as exc:
                attempts.failed(address, exc)
                continue
            self._sock = sock
            self.address = attempts.connected(address)
            self._channel = Channel(address, tls[1] if tls else None)
            return
        raise attempts.error()

    def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        self._channel = None
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

    def _closed_while_idle(self) -> bool:
        """Whether the daemon closed (or reset) the open connection while no call was on it.

        Asked before a call reuses the connection: the kernel already holds
        the daemon's end of stream (or its reset), so the request would only
        meet a broken pipe. Data waiting instead (an answer sent before any
        request, by a daemon refusing the connection) keeps the connection:
        that answer is the next call's.
        """
        sock, channel = self._sock, self._channel
        if sock is None or channel is None or not channel.idle:
            return False
        if isinstance(sock, ssl.SSLSocket):
            return self._tls_closed_while_idle()
        try:
            sock.settimeout(0)
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False  # nothing to read: open and idle
        except OSError:
            return True

    def _tls_closed_while_idle(self) -> bool:
        """:meth:`_closed_while_idle` over TLS, which cannot peek: what is read is kept.

        Records that carry no data (TLS 1.3 session tickets) are taken in
        here; an answer is kept for the next call; the daemon's alert (it
        refused the client certificate after the handshake) is its TLSError.
        """
        try:
            self._read(0)
        except TimeoutError:
            return False  # nothing to read: open and idle
        except ConnectionLost:
            return True
        return False

    def _exchange(self, method: str | bytes, payload: bytes, timeout: Timeout) -> wire.Response:
        frame = wire.encode_request(method, payload)
        limit = call_limit(self.timeout, timeout)
        deadline = None if limit is None else time.monotonic() + limit
        if self._closed_while_idle():
            self.close()  # the daemon restarted or left it idle too long: a fresh one, unused
        for sends in itertools.count(1):
            try:
                response = self._exchange_once(method, frame, limit, deadline)
            except NotSent as exc:
                # Not one byte reached the kernel, so the daemon cannot have seen the
                # request: sending it again cannot make it run twice.
                assert self.address is not None
                self.dialer.not_sent(self.address, sends, exc)
                continue
            if not (not_started(response) and self.dialer.may_resend(sends)):
                return response
            # The daemon is stopping and did not start it: another daemon (or
            # the next instance on the same socket) may, on a fresh connection.
            address = self.address
            assert address is not None
            self.close()
            self.dialer.move_on(address)
            try:
                self.connect()
            except ConnectError:
                return response  # nowhere else to send it: the daemon's answer stands
        raise AssertionError("not reached")  # pragma: no cover

    def _exchange_once(
        self, method: str | bytes, frame: bytes, limit: float | None, deadline: float | None
    ) -> wire.Response:
        """Send ``frame`` and read its answer; NotSent when none of it left."""
        self.connect()
        sock, channel = self._sock, self._channel
        assert sock is not None and channel is not None

        def expired() -> CallTimeout:
            return CallTimeout(self.address, method_text(method), limit)

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise expired()
            return left

        call = object()
        # An answer sent before any request (a daemon refusing the connection) answers it.
        early = channel.asked(call)
        if early is not None:
            return early
        sent = 0
        received = False
        send_error: str | None = None
        try:
            try:
                view = memoryview(frame)
                while sent < len(frame):
                    sock.settimeout(remaining())
                    sent += sock.send(view[sent:])
            except TimeoutError:
                # Part of the frame may be on the wire: the stream cannot be resynchronised.
                raise expired() from None
            except OSError as exc:
                # The daemon may have answered and closed (e.g. TooManyConnections):
                # its answer can still be read, and says more than EPIPE.
                send_error = f"sending failed: {os_reason(exc)}"
            while True:
                try:
                    answers = self._read(remaining())
                except TimeoutError:
                    raise expired() from None
                except ConnectionLost:
                    if send_error is None:
                        raise
                    if sent == 0 and not received:
                        raise NotSent(send_error) from None
                    raise ConnectionLost(self.address, send_error) from None
                received = True
                # The first answer is this call's: one call at a time, and any
                # abandoned call took its connection with it.
                for _, response in answers:
                    return response
        except BaseException:
            # Whatever stopped this call (a timeout, a broken stream, Ctrl-C), the
            # stream is out of step: part of the request may be out, or all of it
            # with its answer still to come, ahead of the answer to any later
            # request (the daemon answers in order). Keeping the connection would
            # make the next call wait for that late answer, so drop it.
            self.close()
            raise

    def call_raw(
        self, method: str | bytes, payload: bytes, *, timeout: Timeout = CLIENT_TIMEOUT
    ) -> bytes:
        """Send ``payload`` (CBOR bytes) to ``method``; return the RET_OK body bytes.

        ``timeout``: seconds for this call, None or 0 for no limit; left out,
        the client's ``timeout`` applies.
        """
        return result_body(method, self._exchange(method, payload, timeout), self.address)

    def call(
        self, method: str, request: object = NO_REQUEST, *, timeout: Timeout = CLIENT_TIMEOUT
    ) -> Any:
        """Call ``method`` with ``request`` (CBOR-encodable; default ``{}``); decode the answer.

        ``timeout`` as for :meth:`call_raw`. A method no bundled libmy_timer
        table has (another served library's) is checked against the daemon's
        ``mytimerd.describe`` first (fetched once per client): see
        :mod:`.described`.
        """
        if needs_description(method) and self._described is None:
            self._described = description_of(lambda: self.describe())
        if needs_description(method) and self._described:
            self._described.check(method, {} if request is NO_REQUEST else request)
        payload = encode_payload(request)
        return decode_body(self.call_raw(method, payload, timeout=timeout), self.address)
