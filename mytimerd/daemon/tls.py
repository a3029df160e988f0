"""TLS on TCP listeners: the server context, and who a client certificate
names (for ``--tls-allow``).

Unix listeners stay plain: their peers are checked by SO_PEERCRED instead.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any

from .config import Config


class TLSConfigError(Exception):
    """The certificate, key or CA cannot be used; ``str()`` says which and why."""


def server_context(config: Config) -> ssl.SSLContext | None:
    """The context every TCP listener serves with, or None for plaintext.

    TLS 1.2 and newer. With ``tls_client_ca``, a client certificate signed
    by that CA is required (mutual TLS).
    """
    if config.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load the certificate {config.tls_cert} with the key {config.tls_key}: "
            f"{_reason(exc)}"
        ) from None
    if config.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=config.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"cannot load the client CA {config.tls_client_ca}: {_reason(exc)}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def certificate_names(cert: dict[str, Any] | None) -> list[str]:
    """The subject's common names, then its DNS subjectAltNames."""
    if not cert:
        return []
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return names


def handshake_failure(exc: BaseException) -> str:
    """A short reason for a failed handshake, for the journal."""
    if isinstance(exc, ssl.SSLError):
        return _reason(exc)
    return str(exc)


def is_loopback(host: str) -> bool:
    """Whether a listener's host address is a loopback address."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
