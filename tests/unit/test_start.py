"""The ``mytimerd`` command's entry point (mytimerd/start.py): the daemon's
modules load with the garbage collector off, and it is on again once the
daemon's main() returns or exits."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: the collections made while mytimerd.start.main()
# loads the daemon and exits (--version), whether the collector is on after,
# and a control: the collections made by the same imports with it on.
_PROBE = """
import gc, sys

def collections():
    return sum(s["collections"] for s in gc.get_stats())

if sys.argv[1] == "start":
    import mytimerd.start
    before = collections()
    sys.argv = ["mytimerd", "--version"]
    try:
        mytimerd.start.main()
    except SystemExit:
        pass
else:
    before = collections()
    import mytimerd.daemon.cli
after = collections()
print(after - before, gc.isenabled(), "mytimerd.daemon.cli" in sys.modules)
"""


def probe(how: str) -> tuple[int, bool, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, how], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    return int(out[-3]), out[-2] == "True", out[-1] == "True"


def test_the_daemon_loads_with_the_collector_off_and_turns_it_back_on() -> None:
    ran, enabled, loaded = probe("start")
    control, _, _ = probe("import")
    assert loaded
    assert enabled, "the collector is still off after main()"
    # at most the one pass the allocations made meanwhile set off once it is on
    assert ran <= 1, ran
    assert control >= 10, f"the control made {control} passes: the test shows nothing"
