"""Running the C libraries' sanitizer builds (ASan+UBSan, TSan) from tests.

Shared by tests/native and tests/echo: their stress drivers, and their pytest
modules rerun in a python subprocess with the sanitizer runtime preloaded.
A run passes only with exit status 0 and no sanitizer report in its output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPORT_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "ERROR: ThreadSanitizer",
    "UndefinedBehaviorSanitizer",
    "SUMMARY: ",
)

#: How the C test drivers of tests/glue are compiled: warnings as errors...
C_WARNINGS: tuple[str, ...] = ("-Wall", "-Wextra", "-Werror", "-g", "-O1")
#: ... and each sanitizer variant's flags (the same as native/Makefile's).
SANITIZE: dict[str, tuple[str, ...]] = {
    "asan": (
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ),
    "tsan": ("-fsanitize=thread", "-fno-omit-frame-pointer"),
}

# Settings a run must not inherit: the libraries' own (read at create) and
# the sanitizers' (each run sets its own).
_INHERITED_NOT = ("ECHO_", "MY_TIMER_", "LD_PRELOAD", "ASAN_", "TSAN_", "UBSAN_", "LSAN_")


def launcher(variant: str) -> list[str]:
    """TSan needs its fixed memory layout: on kernels with high mmap ASLR
    entropy it dies with "unexpected memory mapping", so run it without ASLR."""
    if variant == "tsan":
        setarch = shutil.which("setarch")
        assert setarch, "setarch (util-linux) is needed to run TSan"
        return [setarch, os.uname().machine, "-R"]
    return []


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_NOT)}


def run_checked(
    variant: str, cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``cmd`` under ``variant``'s launcher; fails on a non-zero exit or
    any sanitizer report. Returns the finished process for further checks."""
    proc = subprocess.run(
        [*launcher(variant), *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    reports = [m for m in REPORT_MARKERS if m in output]
    assert proc.returncode == 0 and not reports, f"{variant} run failed:\n{output[-6000:]}"
    return proc


def run_scenario(
    cmd: list[str], env: dict[str, str], timeout: float, scenario: str
) -> str:
    """Run a C test driver's ``scenario`` (``cmd``, its launcher included);
    fail on a hang, a sanitizer report, a non-zero exit or a missing
    "PASS scenario" line. Returns its stdout."""
    import pytest  # late: this module also serves scripts run without pytest

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} hung for {timeout:g} s:\n{exc.stdout!r}\n{exc.stderr!r}")
    output = proc.stdout + proc.stderr
    reports = [m for m in REPORT_MARKERS if m in output]
    assert proc.returncode == 0 and not reports, (
        f"{' '.join(cmd)} exited {proc.returncode}, reports {reports}:\n{output[-8000:]}"
    )
    assert f"PASS {scenario}" in proc.stdout, output[-4000:]
    return proc.stdout


def run_stress(variant: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """A C stress driver linked against a sanitizer build: leaks are reported
    too, and the first report ends it."""
    env = clean_env()
    env["ASAN_OPTIONS"] = "halt_on_error=1:detect_leaks=1:abort_on_error=0:exitcode=66"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=66"
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66:second_deadlock_stack=1"
    return run_checked(variant, cmd, env, timeout)


def run_pytest(
    variant: str,
    env_prefix: str,
    args: list[str],
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """pytest ``args`` (-q -x) in a python subprocess with ``variant``'s runtime
    preloaded; the test modules load the sanitizer builds because
    ``<env_prefix>_NATIVE_VARIANT`` says so, and stretch their timing bounds
    by ``<env_prefix>_TIMING_SLACK``."""
    runtime = subprocess.run(
        ["gcc", f"-print-file-name=lib{variant}.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(runtime).is_file(), f"sanitizer runtime not found: {runtime}"
    env = clean_env()
    env[f"{env_prefix}_NATIVE_VARIANT"] = variant
    env[f"{env_prefix}_TIMING_SLACK"] = "3"
    env["LD_PRELOAD"] = runtime
    # python itself is not instrumented: its allocations are not our leaks
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:exitcode=66"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=66"
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    return run_checked(variant, cmd, env, timeout, cwd)
