"""Counters and latency samples behind ``mytimerd.stats``."""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import Any, Final

from .library import Status

#: Latency samples kept per method (the most recent ones).
SAMPLES: Final = 4096

OK: Final = "ok"
LIBRARY_ERROR: Final = "libraryErrors"
DAEMON_ERROR: Final = "daemonErrors"


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stats:
    """What the daemon has done since it started."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.connections_total = 0
        self.connections_refused = 0
        self.refused_at_fd_limit = 0
        self.tls_handshake_failures = 0
        #: Connections closed, by how (each counted once; see Connection.close_reason).
        self.closed: Counter[str] = Counter()
        self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.errors: Counter[str] = Counter()
        self.latency: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=SAMPLES))
        self.late_results = 0

    def connection_accepted(self, count: int = 1) -> None:
        """A connection (``count`` of them) was accepted (before any decision on it)."""
        self.connections_total += count

    def connection_refused(self, name: str, at_fd_limit: bool = False, count: int = 1) -> None:
        """A connection (``count`` of them) was refused with the daemon error ``name``."""
        self.connections_refused += count
        if at_fd_limit:
            self.refused_at_fd_limit += count
        self.errors[name] += count

    def handshake_failed(self) -> None:
        """A TLS handshake failed."""
        self.tls_handshake_failures += 1

    def connection_closed(self, reason: str, count: int = 1) -> None:
        """A connection (``count`` of them) is gone; ``reason`` says how it ended."""
        self.closed[reason] += count

    def late_result(self) -> None:
        """The library answered a call the daemon had already answered (Timeout)."""
        self.late_results += 1

    def record(self, method: str, outcome: str, seconds: float) -> None:
        """Count one answered call and its latency."""
        self.calls[method][outcome] += 1
        self.latency[method].append(seconds)

    def record_many(self, method: str, outcome: str, seconds: list[float]) -> None:
        """Count answered calls of one method and outcome, one latency each."""
        self.calls[method][outcome] += len(seconds)
        self.latency[method].extend(seconds)

    def record_error(self, method: str, name: str, seconds: float) -> None:
        """Count one call answered with the daemon error ``name``."""
        self.errors[name] += 1
        self.record(method, DAEMON_ERROR, seconds)

    def record_refusal(self, name: str) -> None:
        """Count a refusal with the daemon error ``name`` that answers no call."""
        self.errors[name] += 1

    def answered(self) -> int:
        """Calls answered so far, whatever the outcome."""
        return sum(sum(c.values()) for c in self.calls.values())

    def uptime(self) -> float:
        """Seconds since the daemon started."""
        return self._clock() - self.started

    def snapshot(
        self,
        connections: dict[str, Any],
        in_flight: int,
        library: Status,
        held: dict[str, int],
        events: dict[str, Any],
        stale_warnings: dict[str, int],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """The mytimerd.stats response; ``connections`` adds the live counts
        (open, handshaking) and ``extra`` the budgets and the loop."""
        latency = {}
        for method, samples in self.latency.items():
            ordered = sorted(samples)
            if ordered:
                latency[method] = {
                    "count": len(ordered),
                    "p50": _percentile(ordered, 0.50) * 1000,
                    "p90": _percentile(ordered, 0.90) * 1000,
                    "p99": _percentile(ordered, 0.99) * 1000,
                    "max": ordered[-1] * 1000,
                }
        return {
            "uptimeSeconds": self.uptime(),
            "connections": {
                **connections,
                "total": self.connections_total,
                "refused": self.connections_refused,
                "idleClosed": self.closed["idle"],
                "refusedAtFdLimit": self.refused_at_fd_limit,
                "tlsHandshakeFailures": self.tls_handshake_failures,
                "closed": dict(self.closed),
            },
            "inFlight": in_flight,
            "held": held,
            "events": events,
            "calls": {
                method: {k: counts[k] for k in (OK, LIBRARY_ERROR, DAEMON_ERROR)}
                for method, counts in self.calls.items()
            },
            "errors": dict(self.errors),
            "lateResults": self.late_results,
            "library": {
                "queued": library.queued,
                "submitted": library.submitted,
                "completed": library.completed,
                "staleWarnings": library.stale_warnings,
                "staleWarningsByMethod": stale_warnings,
                "events": library.events,
            },
            "latencyMs": latency,
            **extra,
        }
