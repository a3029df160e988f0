"""libecho under ASan+UBSan and TSan, both generations: the C stress driver
(every vector, then concurrently, lifecycle, re-entrancy, garbage) and the
pytest suite of this directory rerun against the sanitizer builds. Any
sanitizer report, crash, leak or failed check fails; so does a skipped test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.native import build_native

from .conftest import GENERATIONS, build_echo, load_vectors, stress_path, write_vector_file

REPORT_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "ERROR: ThreadSanitizer",
    "UndefinedBehaviorSanitizer",
    "SUMMARY: ",
)


def launcher(variant: str) -> list[str]:
    """TSan needs its fixed memory layout: on kernels with high mmap ASLR
    entropy it dies with "unexpected memory mapping", so run it without ASLR."""
    if variant == "tsan":
        setarch = shutil.which("setarch")
        assert setarch, "setarch (util-linux) is needed to run TSan"
        return [setarch, os.uname().machine, "-R"]
    return []


def clean_env() -> dict[str, str]:
    prefixes = ("ECHO_", "MY_TIMER_", "LD_PRELOAD", "ASAN_", "TSAN_", "UBSAN_", "LSAN_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_stress_driver(variant: str, generation: str, tmp_path: Path) -> None:
    build_echo(generation, variant)
    vectors = tmp_path / "vectors.txt"
    count = write_vector_file(generation, vectors)
    env = clean_env()
    env["ASAN_OPTIONS"] = "halt_on_error=1:detect_leaks=1:abort_on_error=0:exitcode=66"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=66"
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66:second_deadlock_stack=1"
    iterations = "20000" if variant == "asan" else "8000"
    proc = subprocess.run(
        [*launcher(variant), str(stress_path(generation, variant)), str(vectors), iterations],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    reports = [m for m in REPORT_MARKERS if m in output]
    assert proc.returncode == 0 and not reports, f"{variant} stress failed:\n{output[-6000:]}"
    assert f"vectors: {count}/{count} passed" in proc.stdout
    assert "all scenarios passed" in proc.stdout


@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_pytest_suite_under_sanitizer(variant: str) -> None:
    """tests/echo (but this file) against the sanitizer builds, loaded into a
    python subprocess with the sanitizer runtime preloaded."""
    for generation in GENERATIONS:
        build_echo(generation, variant)
    build_native(variant)  # libmy_timer, for the side-by-side test
    runtime = subprocess.run(
        ["gcc", f"-print-file-name=lib{variant}.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(runtime).is_file(), f"sanitizer runtime not found: {runtime}"
    env = clean_env()
    env["ECHO_NATIVE_VARIANT"] = variant
    env["ECHO_TIMING_SLACK"] = "3"
    env["LD_PRELOAD"] = runtime
    # python itself is not instrumented: its allocations are not our leaks
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:exitcode=66"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=66"
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66"
    here = Path(__file__).resolve().parent
    proc = subprocess.run(
        [
            *launcher(variant),
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-rA",
            "-p",
            "no:cacheprovider",
            str(here / "test_vectors.py"),
            str(here / "test_abi.py"),
            str(here / "test_hostile.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=here.parents[1],
        timeout=400,
    )
    output = proc.stdout + proc.stderr
    reports = [m for m in REPORT_MARKERS if m in output]
    assert proc.returncode == 0 and not reports, f"{variant} pytest run failed:\n{output[-6000:]}"
    summary = re.search(r"^(\d+) passed(.*) in ", proc.stdout, re.M)
    assert summary, output[-3000:]
    assert "skipped" not in summary.group(2), summary.group(0)
    vectors = sum(len(load_vectors(g)["calls"]) for g in GENERATIONS)
    replayed = re.findall(r"^PASSED \S+::test_call_vector\[", proc.stdout, re.M)
    assert len(replayed) == vectors, f"{len(replayed)} of {vectors} vectors passed"
