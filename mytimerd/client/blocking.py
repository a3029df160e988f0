"""The blocking client, :class:`Client`: one socket, one call at a time.

Answers on a connection come back in request order and carry no request id.
A call that gives up before its answer (:class:`~.errors.CallTimeout`, or an
exception such as KeyboardInterrupt while it waits) therefore closes its
connection: the late answer would otherwise delay the next call's answer, which
the daemon sends only after it. The next call opens a fresh connection; the
abandoned call still runs to its end in the daemon, and its answer is discarded.
"""

from __future__ import annotations

import collections
import socket
import time
from types import TracebackType
from typing import Any, Self

from ..protocol import wire
from ..protocol.address import Address, TcpAddress
from .common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_RESPONSE,
    NO_REQUEST,
    READ_SIZE,
    decode_body,
    encode_payload,
    method_text,
    os_reason,
    result_body,
)
from .errors import BadResponse, CallTimeout, ConnectError, ConnectionLost
from .methods import TypedMethods


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


class Client(TypedMethods):
    """A blocking client on one connection.

    ``address``: an Address, ``unix:/path`` / ``tcp:host:port`` text, or None
    for :func:`resolve_addresses`' defaults (``$MYTIMER_ADDRESS``, then the
    default sockets in order). ``timeout`` bounds each call (None: wait
    forever); ``connect_timeout`` bounds each connection attempt.

    A call that raises :class:`~.errors.CallTimeout` closes the connection
    (its late answer would hold up the next one); the next call reconnects.
    """

    def __init__(
        self,
        address: Address | str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(address, timeout=timeout, connect_timeout=connect_timeout)
        self._sock: socket.socket | None = None
        self._parser = wire.ResponseParser(MAX_RESPONSE)
        self._ready: collections.deque[wire.Response] = collections.deque()

    def connect(self) -> None:
        """Connect to the first address that accepts, unless connected already."""
        if self._sock is not None:
            return
        attempts: list[tuple[Address, str]] = []
        for address in self.addresses:
            try:
                self._sock = _open_socket(address, self.connect_timeout)
            except OSError as exc:
                attempts.append((address, os_reason(exc)))
                continue
            self.address = address
            self._parser = wire.ResponseParser(MAX_RESPONSE)
            self._ready.clear()
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
            return CallTimeout(self.address, method_text(method), limit)

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise expired()
            return left

        send_error: str | None = None
        try:
            try:
                sock.settimeout(remaining())
                sock.sendall(frame)
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
                except OSError as exc:
                    raise self._lost(send_error or f"receiving failed: {os_reason(exc)}") from None
                if not data:
                    raise self._lost(send_error or "the daemon closed the connection")
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
        self, method: str | bytes, payload: bytes, *, timeout: float | None = None
    ) -> bytes:
        """Send ``payload`` (CBOR bytes) to ``method``; return the RET_OK body bytes.

        ``timeout`` overrides the client's for this call.
        """
        return result_body(method, self._exchange(method, payload, timeout), self.address)

    def call(
        self, method: str, request: object = NO_REQUEST, *, timeout: float | None = None
    ) -> Any:
        """Call ``method`` with ``request`` (CBOR-encodable; default ``{}``); decode the answer."""
        payload = encode_payload(request)
        return decode_body(self.call_raw(method, payload, timeout=timeout), self.address)
