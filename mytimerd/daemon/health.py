"""Whether the library is alive: liveness probes and the verdict on them.

A probe is a call of the probe method (``version``, or what
``--probe-method`` names) with ``{}`` and an id from the top of the id space (call
ids count up from 1, so the two never meet). The library is healthy while it
answers probes within ``--probe-timeout`` and no call blocks its caller for
longer than that.
"""

from __future__ import annotations

from collections.abc import Callable

#: At most this many probes are outstanding: past it no new probe is sent
#: (the oldest, which decides the verdict, is kept), so a library that never
#: answers cannot grow the table.
MAX_PROBES = 16


class Health:
    """Probe bookkeeping and the health verdict; time comes from the caller."""

    def __init__(self, probe_timeout: float, submit: Callable[[int], bool]) -> None:
        """``submit(probe_id)`` starts one probe call; False if it could not."""
        self.probe_timeout = probe_timeout
        self._submit = submit
        self._interval = min(1.0, probe_timeout / 2)
        # Probe id -> when it was sent, oldest first.
        self._sent: dict[int, float] = {}
        self._next_id = (1 << 64) - 1
        self.last_answered: float | None = None

    def owns(self, call_id: int) -> bool:
        """Whether ``call_id`` is an outstanding probe."""
        return call_id in self._sent

    def tick(self, now: float) -> None:
        """Send a probe if the last one is older than the probe interval."""
        newest = next(reversed(self._sent.values()), None)
        if newest is not None and now - newest < self._interval:
            return
        if len(self._sent) >= MAX_PROBES:
            return
        probe_id = self._next_id
        self._next_id -= 1
        if self._submit(probe_id):
            self._sent[probe_id] = now

    def answered(self, probe_id: int, now: float) -> None:
        """A probe came back: it and every older probe are settled."""
        sent = self._sent.pop(probe_id)
        self.last_answered = now
        for old in [k for k, t in self._sent.items() if t <= sent]:
            del self._sent[old]

    def verdict(self, now: float, in_call_seconds: float) -> tuple[bool, str]:
        """(healthy, why) given how long the current library call has run."""
        limit = self.probe_timeout
        if in_call_seconds > limit:
            return False, f"a library call has been blocking for {in_call_seconds:.1f} s"
        oldest = next(iter(self._sent.values()), None)
        if oldest is not None and now - oldest > limit:
            return False, f"the library has not answered a liveness probe for {now - oldest:.1f} s"
        return True, "ok"
