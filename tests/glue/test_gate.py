"""glue/gate.c (the gate of a unix listener with allow-lists) under
AddressSanitizer+UBSan and ThreadSanitizer.

``gate_stress.c`` links the gate directly and drives it the way the daemon's
event loop does (one thread polls the gate's eventfd, takes, fills the
table) against client threads on a real unix listener. It is compiled with
``-Wall -Wextra -Werror`` once per sanitizer; every scenario runs in its own
process, and any sanitizer report, a non-zero exit or a missing PASS line
fails the test. What each scenario checks is listed at the top of the driver.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support import sanitizers
from tests.support.native import REPO_ROOT
from tests.support.sanitizers import C_WARNINGS, SANITIZE, clean_env, launcher

HERE: Path = Path(__file__).resolve().parent
DRIVER_SRC: Path = HERE / "gate_stress.c"
#: The gate under test; point MYTIMER_GLUE_DIR at a modified copy to check
#: that these tests catch a bug (mutation check) without touching glue/.
GLUE_DIR: Path = Path(os.environ.get("MYTIMER_GLUE_DIR", REPO_ROOT / "glue"))

VARIANTS = list(SANITIZE)
#: Per-process limit; a hang in the gate (a lost wake-up, a stop that never
#: returns) ends here.
RUN_TIMEOUT: float = 120.0
#: The longest mt_gate_take of the daemon's slice (64 peers) with the queue
#: and the table full, sanitizers included: it runs on the event loop. The
#: plain build measured 13-29 us, ASan 25-30 us, TSan 88-111 us.
TAKE_BOUND_US: int = 2000


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gate_stress + gate.c, built once per sanitizer."""
    out = tmp_path_factory.mktemp("gate-sanitizers")
    built = {}
    for variant in VARIANTS:
        exe = out / f"gate_stress_{variant}"
        cmd = [
            "gcc",
            *C_WARNINGS,
            *SANITIZE[variant],
            f"-I{GLUE_DIR}",
            str(DRIVER_SRC),
            str(GLUE_DIR / "gate.c"),
            "-o",
            str(exe),
            "-pthread",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"compile failed: {' '.join(cmd)}\n{proc.stderr}"
        built[variant] = exe
    return built


def run_scenario(variant: str, exe: Path, scenario: str) -> str:
    """Run one scenario; fail on a report, a non-zero exit or a missing PASS."""
    env = clean_env()
    env["ASAN_OPTIONS"] = "halt_on_error=1:detect_leaks=1:abort_on_error=0:exitcode=66"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=66"
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66:second_deadlock_stack=1"
    cmd = [*launcher(variant), str(exe), scenario]
    return sanitizers.run_scenario(cmd, env, RUN_TIMEOUT, scenario)


@pytest.mark.parametrize(
    "scenario", ["refuse", "handover", "lease", "table", "emfile", "stop", "flood"]
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gate(variant: str, scenario: str, driver: dict[str, Path]) -> None:
    """One scenario of the driver (see the top of gate_stress.c)."""
    run_scenario(variant, driver[variant], scenario)


@pytest.mark.parametrize("variant", VARIANTS)
def test_take_is_short(variant: str, driver: dict[str, Path]) -> None:
    """The event loop's share of the gate: one take of 64 peers, with 1,024
    waiting and a full table to collect counts from, is far below anything
    a loop would notice."""
    out = run_scenario(variant, driver[variant], "stall")
    found = re.search(r"take_us_max=(\d+)", out)
    assert found, out
    assert int(found.group(1)) <= TAKE_BOUND_US, out


@pytest.mark.parametrize("variant", VARIANTS)
def test_peers_of_other_users(variant: str, driver: dict[str, Path]) -> None:
    """Client threads with other credentials (root only): the table refuses
    by (uid, gid), hands back the others with theirs, and adds nothing when
    every entry has a count waiting."""
    require(os.geteuid() == 0, "client threads take other uids: needs root")
    run_scenario(variant, driver[variant], "creds")
