"""TLS for the clients: what a failed handshake means, and whether a port speaks TLS.

The daemon serves TLS on TCP listeners started with ``--tls-cert``; a
client speaks it to a ``tls:host:port`` address (:class:`TcpAddress` with
``tls``), with the :class:`ssl.SSLContext` it is given or, by default,
:func:`ssl.create_default_context` (the system's CA store), checking that
the daemon's certificate names ``server_hostname`` (by default the host).

:func:`tls_failure` turns what the ssl module raises into a
:class:`~.errors.TLSError` that says what failed: the daemon's certificate
is not trusted or does not name the host, the daemon refused the client's
certificate (its TLS alert: certificate required, unknown ca, certificate
expired, bad certificate), or the peer does not speak TLS at all.
"""

from __future__ import annotations

import socket
import ssl
from typing import Final

from ..protocol.address import TcpAddress
from .errors import TLSError

#: OpenSSL's verification codes for a certificate that does not name the peer.
_NAME_MISMATCH: Final = frozenset({62, 63, 64})  # hostname, email, IP address mismatch

#: TLS alerts by which a daemon refuses the client's certificate, and what they mean.
_CLIENT_ALERTS: Final = {
    "certificate required": "it requires a client certificate and none was given",
    "unknown ca": "the client certificate is not issued by a CA the daemon trusts",
    "certificate expired": "the client certificate has expired",
    "bad certificate": "the client certificate is not acceptable",
    "unsupported certificate": "the client certificate is not of a kind the daemon accepts",
    "certificate revoked": "the client certificate is revoked",
    "certificate unknown": "the client certificate is not acceptable",
    "access denied": "the client certificate is not allowed",
}

#: OpenSSL's reasons when what came back is not a TLS record: a plaintext peer.
_NOT_TLS: Final = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "RECORD_LENGTH_MISMATCH",
        "UNEXPECTED_RECORD",
    }
)


def check_context(context: object) -> ssl.SSLContext | None:
    """``context`` if it is an SSLContext or None, else TypeError."""
    if context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext or None, not {context!r}")
    return context


def alert_of(exc: ssl.SSLError) -> str | None:
    """The TLS alert the peer sent, as OpenSSL names it in words (``unknown ca``), or None."""
    reason = (exc.reason or "").upper()
    head, sep, alert = reason.partition("ALERT_")
    if not sep or not head.endswith("_"):
        return None
    return alert.lower().replace("_", " ")


def is_closed(exc: BaseException) -> bool:
    """Whether an ssl error only says the peer closed the stream (cleanly or not)."""
    return isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError)


def tls_failure(
    address: TcpAddress, exc: ssl.SSLError | ssl.CertificateError, server_hostname: str
) -> TLSError:
    """What a failed handshake (or the daemon's alert after it) means, as a TLSError."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        if exc.verify_code in _NAME_MISMATCH:
            return TLSError(
                address,
                f"the daemon's certificate does not name {server_hostname!r} ({message})",
                "name",
            )
        return TLSError(
            address, f"the daemon's certificate is not trusted ({message})", "untrusted"
        )
    if isinstance(exc, ssl.CertificateError) and not isinstance(exc, ssl.SSLError):
        return TLSError(address, f"the daemon's certificate: {exc}", "name")
    alert = alert_of(exc)
    if alert is not None:
        meaning = _CLIENT_ALERTS.get(alert)
        if meaning is not None:
            return TLSError(
                address,
                f"the daemon refused the client certificate: {meaning} (TLS alert: {alert})",
                "client-certificate",
                alert,
            )
        return TLSError(
            address, f"the daemon ended the handshake (TLS alert: {alert})", "handshake", alert
        )
    reason = exc.reason or ""
    if reason.upper() in _NOT_TLS:
        words = reason.lower().replace("_", " ")
        return TLSError(
            address, f"the peer does not speak TLS ({words}): is it a plaintext port?", "not-tls"
        )
    if is_closed(exc):
        return TLSError(address, "the peer closed the connection during the TLS handshake")
    return TLSError(address, f"the TLS handshake failed: {reason or exc}")


def handshake_timeout(address: TcpAddress) -> TLSError:
    """The TLSError of a handshake that did not finish within the connect timeout."""
    return TLSError(address, "the TLS handshake did not finish in time (the connect timeout)")


def speaks_tls(address: TcpAddress, timeout: float | None) -> bool:
    """Whether the server at ``address`` answers a TLS handshake.

    Certificates are not checked: this only tells a TLS port from a plaintext
    one (e.g. to explain why a plaintext client was hung up on). A daemon
    that refuses the probe's missing client certificate with a TLS alert
    speaks TLS too. The daemon counts the probe as a failed handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((address.host, address.port), timeout=timeout) as raw,
            context.wrap_socket(raw),
        ):
            return True  # the peer answered with a TLS server's handshake
    except ssl.SSLError as exc:
        return alert_of(exc) is not None
    except (OSError, UnicodeError):
        return False
