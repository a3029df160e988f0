"""The blocking client, :class:`Client`: one socket, one call at a time.

Answers on a connection come back in request order and carry no request id.
A call that gives up before its answer (:class:`~.errors.CallTimeout`, or an
exception such as KeyboardInterrupt while it waits) therefore closes its
connection: the late answer would otherwise delay the next call's answer, which
the daemon sends only after it. The next call opens a fresh connection; the
abandoned call still runs to its end in the daemon, and its answer is discarded.

A request that never left is sent again, once, on a fresh connection: when the
daemon closed the connection while it was idle (it restarted, or its idle
timeout passed), or when sending failed before the kernel took one byte of the
request. A request that may have reached the daemon is never sent again.
"""

from __future__ import annotations

import collections
import copy
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
from .errors import BadResponse, CallTimeout, ConnectError, ConnectionLost, TLSError
from .events import Subscription
from .methods import TypedMethods
from .tls import handshake_timeout, is_closed, tls_failure


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
                try:
                    return context.wrap_socket(sock, server_hostname=name)
                except (ssl.SSLError, ssl.CertificateError) as exc:
                    raise tls_failure(address, exc, name) from None
                except TimeoutError:
                    raise handshake_timeout(address) from None
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


class _NotSent(Exception):
    """Sending failed before the kernel took one byte of the request: the daemon cannot have it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Client(TypedMethods):
    """A blocking client on one connection.

    ``address``: an Address, ``unix:/path`` / ``tcp:host:port`` /
    ``tls:host:port`` text, or None for :func:`resolve_addresses`' defaults
    (``$MYTIMER_ADDRESS``, then the default sockets in order). ``timeout``
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
    A request that never left (see the module doc) is sent again, once, on a
    fresh connection.
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
        self._sock: socket.socket | None = None
        self._parser = wire.ResponseParser(MAX_RESPONSE)
        self._ready: collections.deque[wire.Response] = collections.deque()

    def subscribe(
        self, events: Sequence[str] | None = None, *, timeout: float | None = None
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
        Iterating ends with an exception only: the daemon's
        ``SlowSubscriber`` (or ``ShuttingDown``) as a DaemonCallError,
        ConnectionLost when the daemon closes the connection. Use it as a
        context manager (or call ``close()``) to close its connection; a
        ``for`` loop left by ``break`` closes it once the iterator is
        garbage (at once, in CPython).
        """
        return Subscription(self._twin(), events, timeout)

    def _twin(self) -> Client:
        """An unconnected client with this one's settings (for a subscription's connection)."""
        twin = copy.copy(self)
        twin._sock = None
        twin._parser = wire.ResponseParser(MAX_RESPONSE)
        twin._ready = collections.deque()
        twin.address = None
        return twin

    def _receive(self, method: str, limit: float | None) -> wire.Response:
        """The next response on the open connection, sent unasked (an event stream's).

        CallTimeout if none comes within ``limit`` seconds (the connection is
        kept: no answer is owed); ConnectionLost when the daemon closed it.
        """
        sock = self._sock
        if sock is None:
            raise ConnectionLost(self.address, "the subscription is closed")
        deadline = None if limit is None else time.monotonic() + limit
        while not self._ready:
            try:
                sock.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                raise CallTimeout(self.address, method, limit) from None
            except ssl.SSLError as exc:
                if not is_closed(exc):
                    raise self._tls_lost(exc) from None
                data = b""
            except OSError as exc:
                raise self._lost(f"receiving failed: {os_reason(exc)}") from None
            if not data:
                raise self._lost("the daemon closed the connection")
            try:
                self._ready.extend(self._parser.feed(data))
            except wire.ProtocolError as exc:
                self.close()
                raise BadResponse(self.address, str(exc)) from None
        return self._ready.popleft()

    def connect(self) -> None:
        """Connect to the first address that accepts, unless connected already."""
        if self._sock is not None:
            return
        attempts: list[tuple[Address, str]] = []
        errnos: list[int | None] = []
        for address in self.addresses:
            try:
                self._sock = _open_socket(address, self.connect_timeout, self.tls_for(address))
            except TLSError:
                raise  # it says what failed; the next address would not fix the setup
            except (OSError, UnicodeError) as exc:
                attempts.append((address, os_reason(exc)))
                errnos.append(getattr(exc, "errno", None))
                continue
            self.address = address
            self._parser = wire.ResponseParser(MAX_RESPONSE)
            self._ready.clear()
            return
        raise ConnectError(attempts, errnos)

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

    def _closed_while_idle(self) -> bool:
        """Whether the daemon closed (or reset) the open connection while no call was on it.

        Asked before a call reuses the connection: the kernel already holds
        the daemon's end of stream (or its reset), so the request would only
        meet a broken pipe. Data waiting instead (an answer sent before any
        request, by a daemon refusing the connection) keeps the connection:
        that answer is the next call's.
        """
        sock = self._sock
        if sock is None or self._ready:
            return False
        if isinstance(sock, ssl.SSLSocket):
            return self._tls_closed_while_idle(sock)
        try:
            sock.settimeout(0)
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False  # nothing to read: open and idle
        except OSError:
            return True

    def _tls_closed_while_idle(self, sock: ssl.SSLSocket) -> bool:
        """:meth:`_closed_while_idle` over TLS, which cannot peek: what is read is kept.

        Records that carry no data (TLS 1.3 session tickets) are taken in
        here; an answer is kept for the next call; the daemon's alert (it
        refused the client certificate after the handshake) is its TLSError.
        """
        try:
            sock.settimeout(0)
            data = sock.recv(READ_SIZE)
        except ssl.SSLWantReadError:
            return False  # nothing to read: open and idle
        except ssl.SSLError as exc:
            if is_closed(exc):
                return True
            raise self._tls_lost(exc) from None
        except OSError:
            return True
        if not data:
            return True
        try:
            self._ready.extend(self._parser.feed(data))
        except wire.ProtocolError as exc:
            self.close()
            raise BadResponse(self.address, str(exc)) from None
        return False

    def _tls_lost(self, exc: ssl.SSLError) -> TLSError:
        """Close the connection; the TLSError of what the daemon's TLS layer said."""
        self.close()
        address = self.address
        assert isinstance(address, TcpAddress)
        tls = self.tls_for(address)
        return tls_failure(address, exc, tls[1] if tls else address.host)

    def _exchange(self, method: str | bytes, payload: bytes, timeout: Timeout) -> wire.Response:
        frame = wire.encode_request(method, payload)
        limit = call_limit(self.timeout, timeout)
        deadline = None if limit is None else time.monotonic() + limit
        if self._closed_while_idle():
            self.close()  # the daemon restarted or left it idle too long: a fresh one, unused
        try:
            return self._exchange_once(method, frame, limit, deadline)
        except _NotSent:
            # Not one byte reached the kernel, so the daemon cannot have seen the
            # request: sending it again cannot make it run twice. Once only, so a
            # daemon that closes every connection at once is reported, not looped on.
            return self._exchange_once(method, frame, limit, deadline, retry=False)

    def _exchange_once(
        self,
        method: str | bytes,
        frame: bytes,
        limit: float | None,
        deadline: float | None,
        *,
        retry: bool = True,
    ) -> wire.Response:
        """Send ``frame`` and read its answer; _NotSent (if ``retry``) when none of it left."""
        self.connect()
        sock = self._sock
        assert sock is not None

        def expired() -> CallTimeout:
            return CallTimeout(self.address, method_text(method), limit)

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise expired()
            return left

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
            while not self._ready:
                try:
                    sock.settimeout(remaining())
                    data = sock.recv(READ_SIZE)
                except TimeoutError:
                    raise expired() from None
                except ssl.SSLError as exc:
                    if not is_closed(exc):
                        # The daemon refused the client certificate (TLS 1.3 says so
                        # after the client's side of the handshake), or broke TLS.
                        raise self._tls_lost(exc) from None
                    data = b""
                    reason = send_error or "the daemon closed the connection"
                except OSError as exc:
                    data = b""
                    reason = send_error or f"receiving failed: {os_reason(exc)}"
                else:
                    reason = send_error or "the daemon closed the connection"
                if not data:
                    if retry and sent == 0 and not received and send_error is not None:
                        raise _NotSent(send_error)
                    raise self._lost(reason)
                received = True
                try:
                    self._ready.extend(self._parser.feed(data))
                except wire.ProtocolError as exc:
                    raise BadResponse(self.address, str(exc)) from None
        except BaseException:
            # Whatever stopped this call (a timeout, a broken stream, Ctrl-C), the
            # stream is out of step: part of the request may be out, or all of it
            # with its answer still to come, ahead of the answer to any later
            # request (the daemon answers in order). Keeping the connection would
            # make the next call wait for that late answer, so drop it.
            self.close()
            raise
        # The first answer read is this call's: one call at a time, and any
        # abandoned call took its connection with it. (An answer sent before any
        # request, by a daemon refusing the connection, answers the first call.)
        return self._ready.popleft()

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

        ``timeout`` as for :meth:`call_raw`.
        """
        payload = encode_payload(request)
        return decode_body(self.call_raw(method, payload, timeout=timeout), self.address)
