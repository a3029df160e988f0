"""Where a daemon listens: unix paths and TCP endpoints, shared by both ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from .record import Record

#: The system daemon's socket (the socket unit's ListenStream=).
SYSTEM_SOCKET: Final = Path("/run/mytimerd.sock")
#: The socket's file name under $XDG_RUNTIME_DIR for a per-user daemon.
USER_SOCKET_NAME: Final = "mytimerd.sock"
#: The original example's TCP port, used by mytimerd-tcp.socket.
DEFAULT_TCP_PORT: Final = 9099
#: Environment variable the client reads: unix:/path, tcp:host:port, tcp:[v6]:port,
#: tls:host:port, tls:[v6]:port.
ADDRESS_ENV: Final = "MYTIMER_ADDRESS"


class UnixAddress(Record):
    """A unix stream socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


class TcpAddress(Record):
    """A TCP endpoint; ``host`` is a name, an IPv4 or a bare IPv6 address.

    ``tls``: spoken over TLS (written ``tls:host:port``); plaintext otherwise.
    """

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'tcp'}:{host}:{self.port}"


Address = UnixAddress | TcpAddress


def parse_port(text: str) -> int:
    """A TCP port number 1..65535 from ``text``, or ValueError."""
    try:
        port = int(text, 10)
    except ValueError:
        raise ValueError(f"port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1..65535")
    return port


def parse_address(text: str) -> Address:
    """Parse ``unix:/path``, ``tcp:host:port``, ``tcp:[v6addr]:port``, or the same with ``tls:``.

    ``tls:`` is a TCP address spoken over TLS (``TcpAddress.tls``).
    """
    kind, sep, rest = text.partition(":")
    if sep and kind == "unix" and rest:
        return UnixAddress(rest)
    if sep and kind in ("tcp", "tls"):
        tls = kind == "tls"
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":") or not host:
                raise ValueError(f"bad address {text!r}: expected {kind}:[v6addr]:port")
            return TcpAddress(host, parse_port(tail[1:]), tls)
        host, colon, port = rest.rpartition(":")
        if colon and host and ":" not in host:
            return TcpAddress(host, parse_port(port), tls)
    raise ValueError(
        f"bad address {text!r}: expected unix:/path, tcp:host:port, tls:host:port "
        "or tcp:[v6addr]:port"
    )


def default_unix_path() -> Path:
    """The socket a hand-started daemon binds when given no address.

    Root gets the system socket; anyone else ``$XDG_RUNTIME_DIR/mytimerd.sock``
    (falling back to the system path when XDG_RUNTIME_DIR is unset).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() != 0 and runtime:
        return Path(runtime) / USER_SOCKET_NAME
    return SYSTEM_SOCKET


def default_client_paths() -> list[Path]:
    """Sockets a client tries, in order, when given no address.

    The daemon's default for this user first, then the system socket.
    """
    first = default_unix_path()
    return [first] if first == SYSTEM_SOCKET else [first, SYSTEM_SOCKET]
