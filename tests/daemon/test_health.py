"""The liveness probes (mytimerd/daemon/health.py), in memory: a fake clock
and a submit function stand in for the event loop and the library.

The bound under test is MAX_PROBES: a library that never answers must not
grow the probe table, and the probe that decides the verdict (the oldest) must
survive the cap.
"""

from __future__ import annotations

from mytimerd.daemon.health import MAX_PROBES, Health

#: --probe-timeout for these tests (probes then go out at most every second).
PROBE_TIMEOUT = 2.0
#: How often the tests tick, and for how long: at one probe per second at
#: most, a window this long sends far more than MAX_PROBES probes when nothing
#: holds them back (test_the_window_sends_far_more_than_the_cap checks it).
TICK = 0.25
WINDOW = 10.0 * MAX_PROBES


class FakeLibrary:
    """A library that takes every probe and answers only when told to."""

    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, probe_id: int) -> bool:
        """Take probe ``probe_id`` (always accepted)."""
        self.submitted.append(probe_id)
        return True


def tick_for(health: Health, start: float, seconds: float) -> float:
    """Tick ``health`` every TICK from ``start`` for ``seconds``; the last time ticked."""
    steps = round(seconds / TICK)
    now = start
    for step in range(steps + 1):
        now = start + step * TICK
        health.tick(now)
    return now


def test_the_window_sends_far_more_than_the_cap() -> None:
    """The window is long enough to matter: with every probe answered at once,
    it sends well over MAX_PROBES probes (so the cap, not the window, is what
    holds the next test's library to MAX_PROBES)."""
    library = FakeLibrary()
    health = Health(PROBE_TIMEOUT, library.submit)
    steps = round(WINDOW / TICK)
    for step in range(steps + 1):
        now = step * TICK
        before = len(library.submitted)
        health.tick(now)
        for probe_id in library.submitted[before:]:
            health.answered(probe_id, now)
    assert len(library.submitted) >= 4 * MAX_PROBES, len(library.submitted)
    assert health.verdict(WINDOW, 0.0) == (True, "ok")


def test_a_library_that_never_answers_holds_at_most_max_probes() -> None:
    """Ticking for 10 x MAX_PROBES seconds against a library that never
    answers: exactly MAX_PROBES probes are sent and all stay outstanding, the
    first (oldest) among them, and the verdict is unhealthy, dated from the
    oldest probe. Once the library answers the newest, every probe is settled,
    probing resumes and the verdict is healthy again."""
    library = FakeLibrary()
    health = Health(PROBE_TIMEOUT, library.submit)
    start = 1000.0
    now = tick_for(health, start, WINDOW)

    outstanding = [probe_id for probe_id in library.submitted if health.owns(probe_id)]
    assert len(outstanding) == MAX_PROBES, (
        f"{len(outstanding)} probes outstanding at a library that never answers "
        f"(MAX_PROBES = {MAX_PROBES})"
    )
    assert health.owns(library.submitted[0]), "the oldest probe was dropped"
    # None was sent past the cap (and then forgotten): the table is the probes.
    assert len(library.submitted) == MAX_PROBES, len(library.submitted)
    assert len(set(library.submitted)) == MAX_PROBES  # every probe has its own id
    healthy, why = health.verdict(now, 0.0)
    assert not healthy
    # Dated from the first probe (sent at ``start``): the oldest was kept.
    assert "probe" in why and f"{now - start:.1f} s" in why, why

    # The library comes back: answering the newest settles every older probe.
    health.answered(library.submitted[-1], now)
    assert not any(health.owns(probe_id) for probe_id in library.submitted)
    assert health.last_answered == now
    assert health.verdict(now, 0.0) == (True, "ok")
    later = now + PROBE_TIMEOUT
    health.tick(later)
    assert len(library.submitted) == MAX_PROBES + 1  # probing resumed
    assert health.owns(library.submitted[-1])
    assert health.verdict(later, 0.0) == (True, "ok")
