"""The connection core both clients share: protocol state, kept apart from I/O.

:class:`~.blocking.Client` and :class:`~.aio.AsyncClient` differ only in how
they wait (a blocking socket, an event loop); what a connection's bytes and
events *mean* is decided here, once, with no I/O at all (as h11 keeps HTTP's
state apart from sockets): the clients read and write, feed what happened in,
and act on what comes back.

- :class:`Dialer`: which address to connect to next (fail-over: the clients
  take several addresses), what every failed attempt was (one
  :class:`~.errors.ConnectError` listing them), and how often a request that
  never left may be sent again (:meth:`Dialer.not_sent`).
- :class:`Channel`: one connection's state: the requests sent and still
  waiting for their answer (in order: answers carry no id), answers that came
  before any request, whether the connection is broken (and why) or retired
  (a call gave up on it, so its late answer would hold up every later one).
- :func:`read_failure`: what a failed read means, as the TransportError the
  waiting calls fail with; :func:`handshake`: what a failed handshake means.
- :class:`NotSent`: the signal that not one byte of a request left, and
  :func:`not_started`: the daemon's word that it did not start a request
  (ShuttingDown); the only two cases in which a request is sent again.
"""

from __future__ import annotations

import collections
import contextlib
import ssl
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from ..protocol import wire
from ..protocol.address import Address, TcpAddress
from ..protocol.errors import PREFIX
from .common import MAX_RESPONSE, os_reason
from .errors import BadResponse, ConnectError, ConnectionLost, TransportError
from .tls import handshake_timeout, is_closed, tls_failure

T = TypeVar("T")

#: Why a connection ended when the daemon closed it.
CLOSED_BY_DAEMON = "the daemon closed the connection"


class NotSent(Exception):
    """Not one byte of the request reached the kernel: the daemon cannot have seen it.

    ``reason`` says why sending failed (for the ConnectionLost of a request
    that may not be sent again).
    """

    def __init__(self, reason: str = "sending failed: the connection is closed") -> None:
        super().__init__(reason)
        self.reason = reason


def not_started(response: wire.Response) -> bool:
    """Whether ``response`` is the daemon's ``ShuttingDown``: it is stopping
    and did not start the request, so sending it again cannot run it twice."""
    return response.ret == wire.RET_ERR and response.body.startswith(_NOT_STARTED)


_NOT_STARTED = f"{PREFIX}ShuttingDown: ".encode()


class Dialer:
    """The addresses of a client, in the order to try them, and what trying them gave.

    A client connects to the first address that accepts, starting with the
    one that last worked (so a client that failed over stays where it
    landed). A request that never left makes the client move on: the next
    connection starts at the following address. Each connection attempt is a
    :class:`Round`.
    """

    def __init__(self, addresses: Sequence[Address]) -> None:
        if not addresses:
            raise ValueError("no address to connect to")
        self.addresses = list(addresses)
        self._first = 0

    def round(self) -> Round:
        """A connection attempt: every address once, the preferred one first."""
        n = len(self.addresses)
        return Round(self, [self.addresses[(self._first + i) % n] for i in range(n)])

    def connected(self, address: Address) -> None:
        """``address`` accepted: try it first next time."""
        self._first = self.addresses.index(address)

    def move_on(self, address: Address) -> None:
        """A request never left the connection to ``address``: start at the next one."""
        self._first = (self.addresses.index(address) + 1) % len(self.addresses)

    def may_resend(self, sends: int) -> bool:
        """Whether a request sent ``sends`` times may go out once more (once
        per address: a daemon that refuses everything is reported, not looped on)."""
        return sends <= len(self.addresses)

    def not_sent(self, address: Address, sends: int, exc: NotSent) -> None:
        """A request sent ``sends`` times never left the connection to ``address``.

        Returns if it may go out once more, on a fresh connection that starts
        at the next address; else raises its ConnectionLost. Once more per
        address: a client with one address sends it again once, so a daemon
        that closes every connection at once is reported, not looped on.
        """
        if not self.may_resend(sends):
            raise ConnectionLost(address, exc.reason) from None
        self.move_on(address)


class Round:
    """One connection attempt over a :class:`Dialer`'s addresses: iterate, and
    report each failure with :meth:`failed`; :meth:`error` lists them all."""

    def __init__(self, dialer: Dialer, order: list[Address]) -> None:
        self._dialer = dialer
        self._order = order
        self._attempts: list[tuple[Address, str]] = []
        self._errnos: list[int | None] = []

    def __iter__(self) -> Iterator[Address]:
        return iter(self._order)

    def failed(self, address: Address, exc: OSError | UnicodeError) -> None:
        """Connecting to ``address`` failed with ``exc``; the next address is tried.

        (A :class:`~.errors.TLSError` is not reported here: it says what is
        wrong with the TLS setup, which the next address would not fix.)
        """
        self._attempts.append((address, os_reason(exc)))
        self._errnos.append(getattr(exc, "errno", None))

    def connected(self, address: Address) -> Address:
        """``address`` accepted; returns it."""
        self._dialer.connected(address)
        return address

    def error(self) -> ConnectError:
        """The ConnectError of a round in which no address accepted."""
        return ConnectError(self._attempts, self._errnos)


class Channel(Generic[T]):
    """The protocol state of one connection, whose callers are ``T`` (futures, tokens).

    The client sends a request after :meth:`asked` (which may answer it at
    once from an answer that came unasked), feeds what it reads to
    :meth:`received` (the answers, matched to their callers in order) and
    reports the end of the stream with :meth:`end` (the callers still
    waiting, to fail). The connection then is ``broken``; once a call gave up
    on it, it is ``retired``: it takes no new calls.
    """

    def __init__(self, address: Address, tls_name: str | None = None) -> None:
        self.address = address
        #: The name the daemon's certificate was checked against; None: plaintext.
        self.tls_name = tls_name
        self._parser = wire.ResponseParser(MAX_RESPONSE)
        #: The callers whose request was sent, oldest first: the next answer is the first's.
        self.waiting: collections.deque[T] = collections.deque()
        # Answers that came before any request (a daemon refusing the connection,
        # e.g. TooManyConnections): they answer the next calls.
        self._early: collections.deque[wire.Response] = collections.deque()
        #: Why the connection ended (None while it is open).
        self.broken: TransportError | None = None
        #: Set once a call gave up on this connection: it takes no new calls.
        self.retired = False

    @property
    def usable(self) -> bool:
        """Whether a new call may use this connection (a broken one still has its early answers)."""
        return not self.retired and (self.broken is None or bool(self._early))

    @property
    def idle(self) -> bool:
        """Nothing is owed either way: no call waits, no answer waits for a call."""
        return not self.waiting and not self._early

    def asked(self, caller: T) -> wire.Response | None:
        """``caller`` is about to send its request: an answer that came unasked, which
        is its answer (the request then need not go out), or None: ``caller`` now
        waits for the next answer. Raises ``broken``'s error on a broken connection."""
        if self._early:
            return self._early.popleft()
        if self.broken is not None:
            raise self.broken
        self.waiting.append(caller)
        return None

    def unsent(self, caller: T) -> None:
        """``caller``'s request did not go out after all (:class:`NotSent`)."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(caller)

    def received(self, data: bytes) -> list[tuple[T, wire.Response]]:
        """``data`` was read: the answers it completes, each with the caller it answers.

        An answer nobody waits for is kept for the next call. BadResponse if
        the peer broke the framing (the connection is then of no more use).
        """
        try:
            responses = self._parser.feed(data)
        except wire.ProtocolError as exc:
            raise BadResponse(self.address, str(exc)) from None
        out = []
        for response in responses:
            if self.waiting:
                out.append((self.waiting.popleft(), response))
            else:
                self._early.append(response)
        return out

    def next_unasked(self) -> wire.Response | None:
        """An answer that came with no call waiting (an event stream's), if any."""
        return self._early.popleft() if self._early else None

    def read_error(self, exc: OSError | None) -> TransportError:
        """What a read that ended means: ``exc``, or None at end of stream.

        See :func:`read_failure`.
        """
        return read_failure(self.address, self.tls_name, exc)

    def end(self, error: TransportError) -> list[T]:
        """The connection ended with ``error`` (the first reason is kept): the
        callers still waiting, who fail with it."""
        if self.broken is None:
            self.broken = error
        waiting = list(self.waiting)
        self.waiting.clear()
        return waiting

    def retire(self) -> None:
        """A call gave up on this connection: it takes no new calls."""
        self.retired = True


def read_failure(address: Address, tls_name: str | None, exc: OSError | None) -> TransportError:
    """What a read that ended means: ``exc`` (None: end of stream) as a TransportError.

    A TLS error other than the peer's close is a :class:`~.errors.TLSError`:
    the daemon refused the client certificate (TLS 1.3 says so after the
    client's side of the handshake), or broke TLS.
    """
    if exc is None or is_closed(exc):
        return ConnectionLost(address, CLOSED_BY_DAEMON)
    if isinstance(exc, ssl.SSLError) and isinstance(address, TcpAddress):
        return tls_failure(address, exc, tls_name or address.host)
    return ConnectionLost(address, f"receiving failed: {os_reason(exc)}")


@contextlib.contextmanager
def handshake(address: TcpAddress, server_hostname: str) -> Iterator[None]:
    """Around a TLS handshake with ``address`` checked against ``server_hostname``
    (blocking or awaited): a failure is the TLSError that says what failed, a
    handshake that outlasts the connect timeout one that says so."""
    try:
        yield
    except (ssl.SSLError, ssl.CertificateError) as exc:
        raise tls_failure(address, exc, server_hostname) from None
    except TimeoutError:
        raise handshake_timeout(address) from None
