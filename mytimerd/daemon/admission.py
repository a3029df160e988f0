"""Who may be served: the unix allow-lists, and the limits on connections
per daemon, per peer and by the descriptor limit.

Every refusal is counted in stats and named by a daemon error; refusals that
point at an attack or a misconfiguration are logged, rate-limited.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pwd

from ..protocol.errors import DaemonError
from .config import Config
from .connection import Connection
from .journal import RefusalLog
from .stats import Stats
from .tls import handshake_failure

log = logging.getLogger("mytimerd")


def fd_reserve(fd_limit: int) -> int:
    """Descriptors kept back from connections: listeners, the library, the
    journal, and refused connections while their answer goes out."""
    return max(32, fd_limit // 16)


@functools.lru_cache(maxsize=256)
def _groups_of(uid: int, gid: int) -> tuple[int, ...]:
    """The groups of user ``uid`` (cached: a lookup may go through NSS)."""
    try:
        return tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        return (gid,)


class Admission:
    """Decides which connections are served and keeps count of them."""

    def __init__(self, config: Config, stats: Stats, refusals: RefusalLog) -> None:
        self.config = config
        self.limits = config.limits
        self.stats = stats
        self._refusals = refusals
        #: The connections being served.
        self.open: set[Connection] = set()
        # Open connections per peer (uid on unix, address on TCP); no entry at 0.
        self._per_peer: dict[str, int] = {}
        # Refused connections still lingering: they hold descriptors too.
        self._refused: set[Connection] = set()
        self._fd_budget = (
            math.inf if config.fd_limit is None else config.fd_limit - fd_reserve(config.fd_limit)
        )
        #: TLS handshakes under way: they hold descriptors too.
        self.handshaking = 0
        self._restricted = bool(config.allow_uids or config.allow_gids)
        self._always_allowed = {0, os.getuid()}

    def admit(self, conn: Connection) -> DaemonError | None:
        """Count ``conn`` as served, or say why it is refused."""
        self.stats.connections_total += 1
        err = self._refusal(conn)
        if err is None:
            self.open.add(conn)
            self._per_peer[conn.peer] = self._per_peer.get(conn.peer, 0) + 1
            return None
        self.stats.connections_refused += 1
        self.stats.record_refusal(err.name)
        self._refused.add(conn)  # it holds a descriptor until its answer is out
        self._refusals(err.name, conn.peer, "(connection)", err.message)
        return err

    def begin_handshake(self, conn: Connection) -> bool:
        """Count a TLS handshake, or refuse it (no answer is possible before
        TLS) when the connection or descriptor limits leave no room."""
        busy = len(self.open) + self.handshaking
        if busy >= self.limits.max_connections or busy + len(self._refused) >= self._fd_budget:
            self.stats.connections_total += 1
            self.stats.connections_refused += 1
            return False
        self.handshaking += 1
        return True

    def end_handshake(self, conn: Connection, exc: BaseException | None) -> None:
        """A handshake ended; a failure is counted and logged, rate-limited."""
        self.handshaking -= 1
        if exc is None:
            return
        self.stats.connections_total += 1
        self.stats.tls_handshake_failures += 1
        self._refusals(
            "TLSHandshake",
            conn.peer,
            "(connection)",
            f"TLS handshake failed: {handshake_failure(exc)}",
        )

    def drop(self, conn: Connection) -> None:
        """Stop counting ``conn`` (idempotent: closing it also reports it gone)."""
        self._refused.discard(conn)
        if conn not in self.open:
            return
        self.open.discard(conn)
        left = self._per_peer[conn.peer] - 1
        if left:
            self._per_peer[conn.peer] = left
        else:
            del self._per_peer[conn.peer]

    def _refusal(self, conn: Connection) -> DaemonError | None:
        limits = self.limits
        peer = conn.peer
        creds = conn.creds
        if creds is not None and self._restricted and not self._allowed(*creds):
            return DaemonError(
                "PermissionDenied",
                f"uid {creds[0]} may not use this socket (--allow-user/--allow-group); "
                f"ask the operator to allow your user or one of your groups",
            )
        names = conn.tls_names
        allow = self.config.tls_allow
        if names is not None and allow and allow.isdisjoint(names):
            shown = ", ".join(names) or "nothing"
            return DaemonError(
                "PermissionDenied",
                f"your certificate names {shown}; the daemon admits only "
                f"{', '.join(sorted(allow))} (--tls-allow)",
            )
        open_now = len(self.open)
        if open_now >= limits.max_connections:
            why = (
                f"{open_now} connections are open, the limit "
                f"(--max-connections) is {limits.max_connections}; retry later"
            )
        elif open_now + len(self._refused) + self.handshaking >= self._fd_budget:
            self.stats.refused_at_fd_limit += 1
            why = (
                f"the daemon is at its descriptor limit ({self.config.fd_limit} "
                f"descriptors, RLIMIT_NOFILE); retry later"
            )
        elif self._per_peer.get(peer, 0) >= limits.max_connections_per_peer:
            why = (
                f"{peer} already has {limits.max_connections_per_peer} connections open "
                f"(--max-connections-per-peer); close some or retry later"
            )
        else:
            return None
        return DaemonError("TooManyConnections", why)

    def _allowed(self, uid: int, gid: int) -> bool:
        """Whether the unix peer (uid, gid) is on the allow-lists."""
        config = self.config
        if uid in self._always_allowed or uid in config.allow_uids or gid in config.allow_gids:
            return True
        return bool(config.allow_gids and config.allow_gids.intersection(_groups_of(uid, gid)))
