"""The exceptions of the client: every failure of a call is a :class:`MytimerError`.

- :class:`LibraryError`: the library answered RET_ERR (its text is ``message``);
- :class:`DaemonCallError`: the daemon refused the call (``name`` is the
  ``mytimerd.<Name>`` error name without its prefix, see :mod:`mytimerd.protocol.errors`);
- :class:`TransportError`: no usable connection. :class:`ConnectError` (no
  address accepted the connection; :class:`TLSError`, one of them: TLS with
  the daemon failed), :class:`ConnectionLost` (the stream broke or the daemon
  closed it), :class:`BadResponse` (the peer broke the protocol) and
  :class:`CallTimeout` (no answer in time).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..protocol.address import Address
from ..protocol.errors import PREFIX


class MytimerError(Exception):
    """Base of every error this client raises."""

    def __reduce__(self) -> tuple[object, ...]:
        # Exception's own reduction calls __init__ with ``args`` alone, which the
        # subclasses' signatures do not take: copy and pickle the state instead.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[MytimerError], args: tuple[object, ...], state: dict[str, object]
) -> MytimerError:
    """A copy of an error from its class, its args and its attributes."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


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
    """No address accepted the connection; ``attempts`` lists (address, reason).

    ``errnos`` holds the ``errno`` of each attempt (None where there is none,
    e.g. a host name that does not resolve), e.g. ``errno.EACCES`` for a unix
    socket this user may not open.
    """

    def __init__(
        self,
        attempts: Sequence[tuple[Address, str]],
        errnos: Sequence[int | None] | None = None,
    ) -> None:
        first, reason = attempts[0]
        super().__init__(first, reason)
        self.attempts = list(attempts)
        self.errnos = list(errnos) if errnos is not None else [None] * len(self.attempts)

    def __str__(self) -> str:
        return "; ".join(f"cannot connect to {a}: {r}" for a, r in self.attempts)


class TLSError(ConnectError):
    """TLS with the daemon at ``address`` failed; ``reason`` says what failed.

    ``problem`` names it:

    - ``"untrusted"``: the daemon's certificate is not signed by a CA the
      client trusts (or has expired);
    - ``"name"``: the daemon's certificate does not name the host connected
      to (or ``server_hostname``);
    - ``"client-certificate"``: the daemon refused the client's certificate,
      or wants one and none was given; ``alert`` is the TLS alert it sent
      (``"certificate required"``, ``"unknown ca"``, ``"certificate expired"``,
      ``"bad certificate"``...);
    - ``"not-tls"``: the peer does not speak TLS (a plaintext port);
    - ``"handshake"``: anything else (``alert`` set if the daemon sent one).

    With TLS 1.3 the daemon checks the client's certificate after the client
    has finished its side of the handshake, so a refused certificate shows
    on the first read of the connection: the call fails with this error too.
    """

    def __init__(
        self, address: Address, reason: str, problem: str = "handshake", alert: str | None = None
    ) -> None:
        super().__init__([(address, reason)])
        self.problem = problem
        self.alert = alert

    def __str__(self) -> str:
        return f"TLS with {self.address} failed: {self.reason}"


class ConnectionLost(TransportError):
    """The connection broke, or the daemon closed it, before the answer came."""


class BadResponse(TransportError):
    """The peer sent something no mytimerd server sends (broken framing, bad CBOR)."""


class CallTimeout(TransportError):
    """The answer did not arrive within the call's timeout.

    The client stops using that connection (its late answer would hold up
    later calls); the next call uses a fresh one.
    """

    def __init__(self, address: Address | None, method: str, seconds: float | None) -> None:
        within = "in time" if seconds is None else f"within {seconds:g} s"
        super().__init__(address, f"no answer to {method!r} {within}")
        self.method = method
        self.seconds = seconds
