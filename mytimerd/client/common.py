"""What both clients share around the I/O: defaults, timeouts, addresses, payloads and answers.

What a timeout means (:func:`check_timeout`, :data:`CLIENT_TIMEOUT`), which
addresses to try (:func:`resolve_addresses`), the CBOR payload of a request
(:func:`encode_payload`), what an answer means: its RET_OK body decoded
(:func:`decode_body`) or the error it carries (:func:`result_body`), and how
to connect to a unix socket whose listen queue is full (:func:`unix_connect`).
"""

from __future__ import annotations

import enum
import errno
import io
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final, Literal

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
from ..protocol.errors import parse_error_body
from .errors import BadResponse, DaemonCallError, LibraryError

#: Seconds a call waits for its answer unless told otherwise.
DEFAULT_TIMEOUT: Final = 30.0
#: Seconds a connection attempt may take (per address tried).
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: Seconds between connect() attempts on a unix socket whose listen queue is
#: full: the first pause, doubled after each attempt up to the longest.
CONNECT_RETRY_FIRST: Final = 0.001
CONNECT_RETRY_LONGEST: Final = 0.05


class _ClientTimeout(enum.Enum):
    """The type of :data:`CLIENT_TIMEOUT` (an enum, so that it can be typed as a Literal)."""

    CLIENT_TIMEOUT = "CLIENT_TIMEOUT"

    def __repr__(self) -> str:  # as help() shows the default of ``timeout=``
        return self.value


#: The default of a call's ``timeout=``: the client's own ``timeout``.
CLIENT_TIMEOUT: Final = _ClientTimeout.CLIENT_TIMEOUT

#: What a call's ``timeout=`` takes: seconds, None or 0 for no limit, or CLIENT_TIMEOUT.
Timeout = float | None | Literal[_ClientTimeout.CLIENT_TIMEOUT]


def check_timeout(seconds: float | None, name: str = "timeout") -> float | None:
    """``seconds`` as a limit: a positive number of seconds, or None for no limit.

    None and 0 both mean no limit, in both clients as in ``mytimerctl
    --timeout 0`` (where None cannot be written); 0 never means "give up at
    once". A negative, NaN or infinite value is a ValueError naming ``name``.
    """
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, not {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"{name} must be a finite number of seconds >= 0 (0: no limit), not {seconds!r}"
        )
    return float(seconds) or None


def call_limit(client_timeout: float | None, timeout: Timeout) -> float | None:
    """The limit of one call: its own ``timeout=``, or the client's for CLIENT_TIMEOUT."""
    if timeout is CLIENT_TIMEOUT:
        return client_timeout
    return check_timeout(timeout)


#: Largest response body accepted: daemon answers are small, and a broken or
#: hostile peer must not make the client buffer gigabytes.
MAX_RESPONSE: Final = 64 << 20

#: Bytes asked of the stream per read.
READ_SIZE: Final = 65536


class _NoRequest:
    """The default request of ``call``: an empty map (None would send CBOR null)."""

    def __repr__(self) -> str:
        return "{}"


NO_REQUEST: Final = _NoRequest()


def encode_payload(request: object) -> bytes:
    """The CBOR payload for ``request`` (``NO_REQUEST``: an empty map)."""
    return b"\xa0" if request is NO_REQUEST else cbor2.dumps(request)


#: Where a list of addresses in one text is split: at a comma before the next scheme
#: (a unix path may hold commas of its own).
_ADDRESS_SEPARATOR: Final = re.compile(r",(?=\s*(?:unix|tcp|tls):)")

#: What the clients take as their address: one address, or several to fail over between.
Addresses = Address | str | Sequence[Address | str] | None


def parse_addresses(text: str) -> list[Address]:
    """The addresses of a comma-separated list (``tcp:a:9099,tcp:b:9099``); ValueError if
    one is malformed."""
    return [parse_address(part.strip()) for part in _ADDRESS_SEPARATOR.split(text)]


def resolve_addresses(address: Addresses = None) -> list[Address]:
    """The addresses to try, in order (the clients fail over from one to the next).

    An explicit ``address`` wins: an Address, its ``unix:``/``tcp:``/``tls:``
    text, a comma-separated list of those, or a sequence of either; then
    ``$MYTIMER_ADDRESS`` (one address or a comma-separated list); then the
    daemon's default unix sockets. Raises ValueError for malformed text or an
    empty sequence.
    """
    if isinstance(address, str):
        return parse_addresses(address)
    if isinstance(address, UnixAddress | TcpAddress):
        return [address]
    if address is not None:
        found = [a for item in address for a in resolve_addresses(item)]
        if not found:
            raise ValueError("no address given (an empty list)")
        return found
    env = os.environ.get(ADDRESS_ENV)
    if env:
        try:
            return parse_addresses(env)
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


def method_text(method: str | bytes) -> str:
    """``method`` as text for error messages (undecodable bytes escaped)."""
    return method if isinstance(method, str) else method.decode("utf-8", "backslashreplace")


def result_body(method: str | bytes, response: wire.Response, address: Address | None) -> bytes:
    """The RET_OK body of ``response``, or the error it carries."""
    if response.ret == wire.RET_OK:
        return response.body
    name = method_text(method)
    if response.ret == wire.RET_ERR:
        error, message = parse_error_body(response.body)
        if error is None:
            raise LibraryError(name, message)
        raise DaemonCallError(name, error, message)
    raise BadResponse(address, f"unknown result code {response.ret} in the answer to {name!r}")


def os_reason(exc: OSError | UnicodeError) -> str:
    """A short human reason for a socket error (timeouts carry no text).

    A UnicodeError comes from a host name the resolver cannot encode (IDNA:
    an empty label, as in ``a..b``, or one too long).
    """
    if isinstance(exc, UnicodeError):
        return f"cannot resolve host: not a valid host name ({exc})"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    return exc.strerror or str(exc) or type(exc).__name__


def unix_connect(sock: socket.socket, path: str, timeout: float | None) -> Iterator[float]:
    """Connect the non-blocking unix ``sock`` to ``path``, trying again while its queue is full.

    A generator of the pauses between attempts, for each client to wait in
    its own way (``time.sleep``, ``asyncio.sleep``); it returns once
    connected. A non-blocking connect() to a unix socket does not wait for
    room in the listen queue as TCP's does: it fails at once with EAGAIN,
    the queue being full of connections the daemon has not accepted yet (a
    burst of clients, or a connect flood, even from a peer it will refuse).
    Such a connect is tried again after 1 ms, doubled up to 50 ms, until
    ``timeout`` seconds (None: no limit) have passed; then the EAGAIN is
    raised, saying so. Any other failure (no such socket, refused, denied)
    is raised at once.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = CONNECT_RETRY_FIRST
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError as exc:
            if exc.errno != errno.EAGAIN:
                raise
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise BlockingIOError(
                errno.EAGAIN,
                f"its listen queue stayed full for {timeout:g} s (EAGAIN): the daemon "
                "accepts no connection (it is overloaded, or flooded with connections)",
            )
        yield pause if left is None else min(pause, left)
        pause = min(2 * pause, CONNECT_RETRY_LONGEST)
