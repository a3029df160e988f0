"""How long the event loop stalls, and what ran meanwhile.

Two measures feed one figure: how late the periodic tick fires (it catches
any stall, whatever ran), and how long the daemon's own long callbacks take
(they name what ran: requests decoded, library results, the event fan-out).
Stats report the longest stall of the last minute; the journal warns, at
most once per :data:`WARN_INTERVAL`, when one passes ``--loop-stall-warning``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Final

log = logging.getLogger("mytimerd")

#: The window stats report on, and its bucket size.
WINDOW: Final = 60.0
BUCKET: Final = 10.0
#: Stall warnings at most this often (seconds); the next says how many were not logged.
WARN_INTERVAL: Final = 10.0
#: What a late tick is blamed on when no callback of ours took that long.
UNNAMED: Final = "the event loop itself (accepting connections, socket I/O)"


class LoopLag:
    """The longest stalls of the last minute, per 10-second bucket."""

    def __init__(self, clock: Callable[[], float], warn_after: float) -> None:
        self._clock = clock
        self._warn_after = warn_after
        # (bucket start, longest stall in it, what ran), oldest first.
        self._buckets: deque[tuple[float, float, str]] = deque()
        self._last_warning = -WARN_INTERVAL
        self._unwarned = 0
        # The longest named callback since the last tick (it explains a late tick).
        self._named: tuple[float, str] = (0.0, UNNAMED)

    def note(self, seconds: float, what: str) -> None:
        """One of the daemon's callbacks ran ``seconds``."""
        if seconds > self._named[0]:
            self._named = (seconds, what)
        self._record(seconds, what)

    def tick(self, late: float) -> None:
        """The periodic tick fired ``late`` seconds after it was due."""
        named, what = self._named
        self._named = (0.0, UNNAMED)
        if late > named:
            self._record(late, what if named >= late / 2 else UNNAMED)

    def longest(self) -> tuple[float, str]:
        """(seconds, what ran) of the longest stall in the last minute."""
        now = self._clock()
        best = (0.0, "")
        for start, seconds, what in self._buckets:
            if now - start < WINDOW and seconds > best[0]:
                best = (seconds, what)
        return best

    def _record(self, seconds: float, what: str) -> None:
        now = self._clock()
        buckets = self._buckets
        if not buckets or now - buckets[-1][0] >= BUCKET:
            buckets.append((now, seconds, what))
            while now - buckets[0][0] >= WINDOW:
                buckets.popleft()
        elif seconds > buckets[-1][1]:
            buckets[-1] = (buckets[-1][0], seconds, what)
        if seconds > self._warn_after:
            self._warn(now, seconds, what)

    def _warn(self, now: float, seconds: float, what: str) -> None:
        if now - self._last_warning < WARN_INTERVAL:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more stalls not logged)" if self._unwarned else ""
        self._last_warning = now
        self._unwarned = 0
        log.warning(
            "the event loop stalled %.0f ms (--loop-stall-warning %.0f ms); it ran: %s%s",
            seconds * 1000,
            self._warn_after * 1000,
            what,
            more,
            extra={"LOOP_STALL_MS": round(seconds * 1000), "LOOP_STALL_WHAT": what},
        )
