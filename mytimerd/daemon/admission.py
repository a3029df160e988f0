"""Who may be served: the unix allow-lists, and the budgets of connections
and TLS handshakes, per daemon, per peer and by the descriptor limit.

A connection is counted from the moment it is accepted, a TLS connection
while its handshake is under way too, so handshakes count against
``--max-connections-per-peer``. Admission decides and keeps count; the
server records and logs what it decided.
"""

from __future__ import annotations

import functools
import math
import os
import pwd
from typing import Final

from ..protocol.errors import DaemonError
from ..protocol.limits import Limits
from .config import Config
from .connection import Connection
from .shares import Budget

_DEFAULT_PER_PEER: Final = Limits().max_connections_per_peer


def fd_reserve(fd_limit: int) -> int:
    """Descriptors kept back from connections: listeners, the library, the
    journal, and refused connections while their answer goes out."""
    return max(32, fd_limit // 16)


#: Refused connections that may linger at once, answered and half-closed
#: until their client has read the answer, in all and per origin; past
#: either, a refused connection is closed at once after its answer (a flood
#: of refused connections cannot hold descriptors).
LINGERING_REFUSALS: Final = 256
LINGERING_REFUSALS_PER_PEER: Final = 8


def permission_denied(uid: int) -> DaemonError:
    """The answer to a unix peer the allow-lists refuse."""
    return DaemonError(
        "PermissionDenied",
        f"uid {uid} may not use this socket (--allow-user/--allow-group); "
        f"ask the operator to allow your user or one of your groups",
    )


@functools.lru_cache(maxsize=256)
def _groups_of(uid: int, gid: int) -> tuple[int, ...]:
    """The groups of user ``uid`` (cached: a lookup may go through NSS)."""
    try:
        return tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        return (gid,)


class Admission:
    """Decides which connections are served and keeps count of them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        limits = config.limits
        #: The connections being served (admitted; handshakes under way are not).
        self.open: set[Connection] = set()
        # Connections counted against the budget (admitted or handshaking),
        # with the origin they were counted under.
        self._counted: dict[Connection, str] = {}
        self.connections = Budget(
            "connections open",
            limits.max_connections,
            limits.max_connections_per_peer,
            "--max-connections",
            "--max-connections-per-peer",
        )
        self.handshakes = Budget(
            "TLS handshakes under way",
            limits.max_tls_handshakes,
            limits.max_tls_handshakes_per_peer,
            "--max-tls-handshakes",
            "--max-tls-handshakes-per-peer",
        )
        self._fd_budget = (
            math.inf if config.fd_limit is None else config.fd_limit - fd_reserve(config.fd_limit)
        )
        # The descriptor limit is a budget too: by default no peer takes more
        # than half of it; a share the operator set is taken as it is.
        if self._fd_budget < math.inf and limits.max_connections_per_peer == _DEFAULT_PER_PEER:
            self.connections.share = int(
                min(self.connections.share, max(1, self._fd_budget // 2))
            )
        reserve = math.inf if config.fd_limit is None else fd_reserve(config.fd_limit) // 2
        self.lingering = Budget(
            "refused connections lingering",
            int(min(LINGERING_REFUSALS, reserve)),
            LINGERING_REFUSALS_PER_PEER,
            "(fixed)",
            "(fixed)",
        )
        self._lingering: set[Connection] = set()
        #: Whether the allow-lists restrict unix peers.
        self.restricted = bool(config.allow_uids or config.allow_gids)
        self._always_allowed = {0, os.getuid()}

    def admit(self, conn: Connection) -> tuple[DaemonError | None, bool]:
        """Serve ``conn`` (TLS: its handshake is done), or say why not; the
        second item is True when the descriptor limit is the reason."""
        err, at_fd_limit = self._refusal(conn)
        if err is not None:
            self.forget(conn)
            return err, at_fd_limit
        if conn not in self._counted:
            self._count(conn)
        self.open.add(conn)
        return None, False

    def begin_handshake(self, conn: Connection) -> str | None:
        """Count a TLS connection whose handshake starts, or say why it is
        closed at once (no answer is possible before TLS)."""
        verdict = self.handshakes.check(conn.origin)
        if verdict != "ok":
            return self.handshakes.describe_refusal(verdict, conn.origin)
        why, _ = self._connection_room(conn)
        if why is not None:
            return why
        self.handshakes.take(conn.origin)
        self._count(conn)
        return None

    def refuses(self, uid: int, gid: int) -> bool:
        """Whether the allow-lists refuse the unix peer (uid, gid)."""
        return self.restricted and not self._allowed(uid, gid)

    def lingering_full(self, origin: str) -> bool:
        """Whether no more refused connections of ``origin`` may linger."""
        return self.lingering.check(origin) != "ok"

    def may_linger(self, conn: Connection) -> bool:
        """Whether refused ``conn`` may linger until its client has read the
        answer (counted until it is gone), or must close at once."""
        if self.lingering.check(conn.origin) != "ok":
            return False
        self.lingering.take(conn.origin)
        self._lingering.add(conn)
        return True

    def end_handshake(self, conn: Connection) -> None:
        """A handshake ended, either way (a failed one's connection goes with
        :meth:`forget`)."""
        self.handshakes.give(conn.origin)

    def forget(self, conn: Connection) -> None:
        """Stop counting ``conn`` (idempotent: closing it also reports it gone)."""
        self.open.discard(conn)
        if conn in self._lingering:
            self._lingering.discard(conn)
            self.lingering.give(conn.origin)
        origin = self._counted.pop(conn, None)
        if origin is not None:
            self.connections.give(origin)

    def counted(self) -> list[Connection]:
        """Every connection counted: served, or with its TLS handshake under way."""
        return list(self._counted)

    def _count(self, conn: Connection) -> None:
        self._counted[conn] = conn.origin
        self.connections.take(conn.origin)

    def _refusal(self, conn: Connection) -> tuple[DaemonError | None, bool]:
        creds = conn.creds
        if creds is not None and self.refuses(*creds):
            return permission_denied(creds[0]), False
        names = conn.tls_names
        allow = self.config.tls_allow
        if names is not None and allow and allow.isdisjoint(names):
            shown = ", ".join(names) or "nothing"
            return DaemonError(
                "PermissionDenied",
                f"your certificate names {shown}; the daemon admits only "
                f"{', '.join(sorted(allow))} (--tls-allow)",
            ), False
        if conn in self._counted:  # counted when its handshake began
            return None, False
        why, at_fd_limit = self._connection_room(conn)
        if why is None:
            return None, False
        return DaemonError("TooManyConnections", why), at_fd_limit

    def _connection_room(self, conn: Connection) -> tuple[str | None, bool]:
        """Why ``conn`` cannot be counted (None: it can), and whether the
        descriptor limit is the reason."""
        budget = self.connections
        if budget.total + self.lingering.total >= self._fd_budget:
            return (
                f"the daemon is at its descriptor limit ({self.config.fd_limit} "
                f"descriptors, RLIMIT_NOFILE); retry later"
            ), True
        verdict = budget.check(conn.origin)
        if verdict == "ok":
            return None, False
        return budget.describe_refusal(verdict, conn.origin) + "; retry later", False

    def _allowed(self, uid: int, gid: int) -> bool:
        """Whether the unix peer (uid, gid) is on the allow-lists."""
        config = self.config
        if uid in self._always_allowed or uid in config.allow_uids or gid in config.allow_gids:
            return True
        return bool(config.allow_gids and config.allow_gids.intersection(_groups_of(uid, gid)))
