"""Where the glue's submitter thread runs (glue.c, ``place``).

A library whose call returns only once its thread has taken the request
(the real nim-ffi build; the bundled library with MY_TIMER_SUBMIT_MODE=
handoff) makes every call a round trip between the submitter and that
thread, cheapest when both are on one CPU: the submitter then follows the
CPU the library calls back on. A library whose call returns at once runs
beside the submitter, so the submitter keeps every CPU the process may use.

Each case runs in a fresh interpreter: the submit mode is read from the
environment when the library's context is made, and the submitter thread
found by its name (``mt-submit``) is then the only one. On a machine
with one CPU both cases look alike; CI's machines have two."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import json, os, select, time
from mytimerd.daemon.host import BUNDLED_LIBRARY, LibraryHost
from mytimerd.protocol import interfaces
host = LibraryHost(BUNDLED_LIBRARY)
host.start(interfaces.bundled(host.generation), {"config": {"name": "place"}}, direct=False)
answers = 0
for call_id in range(1, 201):  # one at a time, as a client calling back to back
    assert host.submit("version", call_id, b"\\xa0")
    deadline = time.monotonic() + 5
    while not (got := host.results()):
        assert time.monotonic() < deadline, "no answer"
        select.select([host.fd], [], [], 0.05)
    answers += len(got)
tids = [t for t in os.listdir("/proc/self/task")
        if open(f"/proc/self/task/{t}/comm").read().strip() == "mt-submit"]
assert len(tids) == 1, tids
print(json.dumps({
    "submitter": sorted(os.sched_getaffinity(int(tids[0]))),
    "process": sorted(os.sched_getaffinity(0)),
    "answers": answers,
}))
host.shutdown(5)
"""


def probe(mode: str) -> dict[str, list[int] | int]:
    """The submitter's CPUs and the process's after 200 calls, the bundled
    library in ``mode`` served through the submitter."""
    env = {**os.environ, "MY_TIMER_SUBMIT_MODE": mode}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[int] | int] = json.loads(proc.stdout)
    assert result["answers"] == 200
    return result


def test_a_library_that_hands_over_each_call_has_the_submitter_on_its_cpu() -> None:
    """Handoff (the real build's timing): the submitter is pinned to one
    CPU, one the process may use (the library's thread's, as it calls back)."""
    seen = probe("handoff")
    submitter, allowed = seen["submitter"], seen["process"]
    assert isinstance(submitter, list) and isinstance(allowed, list)
    print(f"submitter on {submitter} of {allowed}")
    assert len(submitter) == 1 and set(submitter) <= set(allowed), seen


def test_a_library_whose_calls_return_at_once_leaves_the_submitter_free() -> None:
    """Async: calls return in well under MT_HANDOFF_NS; the submitter keeps
    every CPU the process may use, so it works beside the library's thread."""
    seen = probe("async")
    assert seen["submitter"] == seen["process"], seen
