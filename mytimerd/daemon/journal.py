"""What operators read in the journal about refused work.

Every refused call or connection is logged with structured fields (ERROR,
METHOD, PEER) that ``journalctl`` can filter on, and the error's name in the
text too (so grep finds it), rate-limited per kind so a
flood costs little: the first of a kind is logged at once, then at most one
line per interval, and each line (or the periodic flush) says how many were
suppressed in between.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger("mytimerd")

#: Refusals of the same kind logged at most once per this many seconds.
INTERVAL: Final = 1.0
#: Refusals that point at an attack, an overload or a fault: warning; the
#: rest (a client's mistake) are info.
WARNING_KINDS: Final = frozenset(
    {
        "FrameTooLarge",
        "MethodNameTooLong",
        "Overloaded",
        "TooManyConnections",
        "PermissionDenied",
        "Timeout",
        "Internal",
        "TLSHandshake",
        "QuotaExceeded",
        "SlowSubscriber",
    }
)


class _Kind:
    """When a kind of refusal was last logged, and how many since were not."""

    # Not a dataclass: @dataclass compiles the methods it writes at every start (issue 21).
    def __init__(self, logged_at: float, suppressed: int = 0) -> None:
        self.logged_at = logged_at
        self.suppressed = suppressed


class RefusalLog:
    """Rate-limited, structured log lines for refusals. Its table is keyed by
    error name, so it is bounded by the error catalogue."""

    def __init__(self, clock: Callable[[], float], interval: float = INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._kinds: dict[str, _Kind] = {}

    def __call__(self, kind: str, peer: str, method: str, message: str, count: int = 1) -> None:
        """One refusal of ``kind`` (a daemon error name) to ``peer``, or
        ``count`` alike: one line for the first, the rest suppressed."""
        now = self._clock()
        state = self._kinds.get(kind)
        if state is not None and now - state.logged_at < self._interval:
            state.suppressed += count
            return
        suppressed = state.suppressed if state is not None else 0
        self._kinds[kind] = _Kind(now, count - 1)
        more = f" ({suppressed} more like it suppressed)" if suppressed else ""
        log.log(
            logging.WARNING if kind in WARNING_KINDS else logging.INFO,
            "refused %s from %s: %s: %s%s",
            method,
            peer,
            kind,
            message,
            more,
            extra={"ERROR": kind, "METHOD": method, "PEER": peer},
        )

    def flush(self) -> None:
        """Say how many were suppressed of kinds that have gone quiet."""
        now = self._clock()
        for kind, state in self._kinds.items():
            if state.suppressed and now - state.logged_at >= self._interval:
                log.log(
                    logging.WARNING if kind in WARNING_KINDS else logging.INFO,
                    "%d more refusals (%s) suppressed in the last %.0f s",
                    state.suppressed,
                    kind,
                    now - state.logged_at,
                    extra={"ERROR": kind},
                )
                state.suppressed = 0
                state.logged_at = now
