"""The daemon's one configuration object: every option, built by the command
line and handed to the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..protocol.address import Address
from ..protocol.limits import Limits

SubmitMode = Literal["auto", "thread", "direct"]
EventLoop = Literal["uvloop", "asyncio"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class Config:
    """Everything that shapes one run of mytimerd.

    ``library`` is the build to load (None: the bundled one); ``schema`` its
    interface description (None: the bundled one for its symbol generation);
    ``addresses`` are bound only when systemd hands over no sockets;
    ``watchdog`` is the interval at which WATCHDOG=1 is sent (half of
    systemd's WatchdogSec=), None when systemd asked for no watchdog;
    ``fd_limit`` is the process's descriptor limit (RLIMIT_NOFILE), None for
    no limit: connections are refused before it is reached.
    ``socket_mode``/``socket_group`` apply to unix sockets the daemon binds;
    ``allow_uids``/``allow_gids``, when either is set, admit on unix sockets
    only those peers (and root and the daemon's own user).
    ``tls_cert``/``tls_key`` turn on TLS on every TCP listener;
    ``tls_client_ca`` requires client certificates signed by it, and
    ``tls_allow`` admits only those naming one of these names.
    """

    name: str = "mytimerd"
    library: Path | None = None
    schema: Path | None = None
    submit: SubmitMode = "auto"
    event_loop: EventLoop = "uvloop"
    log_level: LogLevel = "info"
    addresses: tuple[Address, ...] = ()
    limits: Limits = field(default_factory=Limits)
    watchdog: float | None = None
    fd_limit: int | None = None
    socket_mode: int = 0o660
    socket_group: int | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_allow: frozenset[str] = frozenset()
