"""Single calls the harness makes itself: readiness checks (a version call,
plain or over TLS) and questions to a daemon (`mytimerd.stats`,
`mytimerd.describe`)."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from .common import LOOPBACK, VERSION_REQ, VERSION_RESP
from .tlsfiles import TLSFiles


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _read_version(s: socket.socket, timeout: float) -> bool:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(VERSION_RESP) and time.monotonic() < deadline:
        chunk = s.recv(len(VERSION_RESP) - len(got))
        if not chunk:
            break
        got += chunk
    return got == VERSION_RESP


def version_call(family: int, addr: Any, timeout: float = 1.0) -> bool:
    """A version call on a new connection: True if it got the spec's answer."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(addr)
            s.sendall(VERSION_REQ)
            return _read_version(s, timeout)
    except OSError:
        return False


def tls_version_call(port: int, tls: TLSFiles, timeout: float = 1.0) -> bool:
    """A version call over TLS (the readiness check of the TLS daemon)."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        if tls.mutual:
            ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with (
            socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=LOOPBACK) as s,
        ):
            s.sendall(VERSION_REQ)
            return _read_version(s, timeout)
    except (OSError, ssl.SSLError):
        return False


def daemon_call(path: str, method: str, timeout: float = 2.0) -> Any:
    """A daemon method without parameters, on the unix socket at path: its
    decoded RET_OK answer, or None if it cannot be had (no such method, cbor2
    missing, RET_ERR, no answer)."""
    try:
        import cbor2

        m = method.encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(len(m).to_bytes(4, "big") + m + (1).to_bytes(4, "big") + b"\xa0")
            got = b""
            while len(got) < 8 or len(got) < 8 + int.from_bytes(got[4:8], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                got += chunk
        if got[:4] != b"\0\0\0\0":
            return None
        return cbor2.loads(got[8 : 8 + int.from_bytes(got[4:8], "big")])
    except Exception:  # whatever the reason, the answer is just not there
        return None


def daemon_cut_off(path: str) -> int | None:
    """The daemon's own count of subscribers cut off (mytimerd.stats events.cutOff),
    or None if it cannot be had."""
    try:
        return int(daemon_call(path, "mytimerd.stats")["events"]["cutOff"])
    except (TypeError, KeyError, ValueError):
        return None


def daemon_library(path: str) -> str | None:
    """The path of the library the daemon serves (mytimerd.describe), or None."""
    try:
        lib = daemon_call(path, "mytimerd.describe")["library"]["path"]
    except (TypeError, KeyError):
        return None
    return lib if isinstance(lib, str) else None
