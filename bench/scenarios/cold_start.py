"""Cold start under socket activation (unix): systemd-socket-activate binds the
socket with nothing behind it; the time from the first connect to the first
(version) answer is exec + start-up + first call. The floor's figure shows what
exec alone costs."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from typing import Any

from harness.children import spawn, stop
from harness.common import FLOOR
from harness.procfs import tail
from harness.report import verdict
from harness.runner import Runner

T_COLD_MS = 150.0  # issue 6
T_COLD_MS_21 = 100.0  # issue 21

# systemd-socket-activate hands its command a clean environment: these are
# passed on (-E), as what a Python daemon (or an A/B build) may depend on
PASS_ENV = {
    "PATH",
    "HOME",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "LANG",
    "LC_ALL",
}
PASS_ENV_PREFIXES = ("MYTIMERD", "MY_TIMER", "LIBMY_TIMER")


def measure(run: Runner, daemon_cmd: list[str] | None) -> None:
    """The floor's cold start, then the daemon's (daemon_cmd None: floor only),
    while the budget lasts. Servers already running should be stopped first."""
    if not run.over_budget():
        cold_start(run, "floor", [str(FLOOR), "--lifetime", "60"])
    if daemon_cmd is not None and not run.over_budget():
        cold_start(run, "daemon", [*daemon_cmd, "--log-level", "warning"])


def cold_start(run: Runner, name: str, cmd: list[str]) -> dict[str, Any]:
    """run.reps cold starts of cmd; the median time to the first answer."""
    key = f"{name}.cold_start"
    run.current = None
    walls: list[float] = []
    spawn_ms: list[float] = []
    errors = 0
    failure = ""
    ssa = shutil.which("systemd-socket-activate")
    if not ssa:
        res = {"errors": -1, "failure": "systemd-socket-activate not installed"}
        run.raw[key] = res
        return res
    for i in range(run.reps):
        path = run.workdir / f"cold-{name}-{i}.sock"
        log = run.workdir / f"cold-{name}-{i}.log"
        env_args: list[str] = []
        for var in sorted(os.environ):
            if var in PASS_ENV or var.startswith(PASS_ENV_PREFIXES):
                env_args += ["-E", var]
        with open(log, "wb") as logf:
            p = spawn(
                [ssa, "-l", str(path), *env_args, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
            )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "Listening on" not in tail(log, 5):
                if p.poll() is not None:
                    break
                time.sleep(0.005)
            if "Listening on" not in tail(log, 5):
                failure = f"systemd-socket-activate did not listen: {tail(log)}"
                errors += 1
                continue
            time.sleep(0.05)  # nothing is running behind the socket yet
            t_go = time.monotonic()
            r = run.loadgen(
                f"{key}.{i}",
                ["--unix", str(path)],
                ["--conns", "1", "--count", "1", "--timeout", "15"],
                timeout=30,
            )
            if r.get("errors", -1) != 0 or r.get("wall_ms", -1) < 0:
                errors += 1
                failure = r.get("failure", "") or f"no valid answer: {tail(log)}"
            else:
                walls.append(r["wall_ms"])
                spawn_ms.append((time.monotonic() - t_go) * 1000)
        finally:
            stop(p)
    res = {
        "wall_ms_runs": walls,
        "wall_ms_median": statistics.median(walls) if walls else None,
        "outer_ms_runs": [round(x, 1) for x in spawn_ms],
        "errors": errors,
    }
    if failure:
        res["failure"] = failure
    run.raw[key] = res
    print(f"  {key:<40} first connect -> first answer ms {walls}  errors {errors}", flush=True)
    return res


def rows(run: Runner, daemon_ok: bool) -> list[dict[str, Any]]:
    """The cold-start rows, one per target (issue 6's and issue 21's): the
    same figures, the daemon against each limit; ratio to the floor."""
    fc, dc = run.raw.get("floor.cold_start"), run.raw.get("daemon.cold_start")
    fcv = fc.get("wall_ms_median") if fc and fc.get("errors") == 0 else None
    dcv = dc.get("wall_ms_median") if dc and dc.get("errors") == 0 else None
    row: dict[str, Any] = {
        "transport": "unix",
        "unit": "ms (median)",
        "floor": fcv,
        "daemon": dcv,
        "floor_errors": (fc or {}).get("errors"),
        "daemon_errors": (dc or {}).get("errors"),
        "daemon_runs": (dc or {}).get("wall_ms_runs"),
        "ratio": dcv / fcv if dcv is not None and fcv else None,
    }

    def against(scenario: str, limit: float) -> dict[str, Any]:
        return {
            **row,
            "scenario": scenario,
            "target": f"<= {limit:.0f} ms",
            "threshold": limit,
            "result": verdict(None if dcv is None else dcv <= limit, daemon_ok),
        }

    return [
        against("cold start (socket activation)", T_COLD_MS),
        against("cold start (issue 21)", T_COLD_MS_21),
    ]
