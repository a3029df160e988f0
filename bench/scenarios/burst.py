"""64 x echo(100 ms) at once (daemon only): 64 connections opened at the same
moment, each sending one echo with delayMs 100; the wall time from the first
connect to the last answer, median of the repetitions."""

from __future__ import annotations

import statistics
import time
from typing import Any

from harness.report import verdict
from harness.runner import Runner
from harness.servers import Server

from .throughput import TRANSPORTS

T_BURST_MS = 150.0  # issue 6


def measure(run: Runner, daemon: Server) -> None:
    """The burst on the daemon, unix then TCP (while the budget lasts)."""
    for t in TRANSPORTS:
        if not run.over_budget():
            burst(run, daemon, t)


def burst(run: Runner, srv: Server, transport: str) -> dict[str, Any]:
    """run.reps repetitions of the burst on one transport."""
    key = f"{srv.name}.{transport}.burst64_echo100"
    run.current = srv
    walls: list[float] = []
    errors = 0
    runs = []
    for i in range(run.reps):
        if not srv.ensure():
            errors = -1
            break
        r = run.loadgen(
            f"{key}.{i}",
            srv.target(transport),
            [
                "--conns",
                "64",
                "--count",
                "1",
                "--method",
                "echo",
                "--delay-ms",
                "100",
                "--timeout",
                "10",
            ],
            timeout=30,
        )
        runs.append(r)
        if r.get("errors", -1) != 0:
            errors += max(1, r.get("errors", 1))
        if r.get("wall_ms", -1) >= 0:
            walls.append(r["wall_ms"])
        time.sleep(0.2)
    res = {
        "wall_ms_runs": walls,
        "wall_ms_median": statistics.median(walls) if walls else None,
        "wall_ms_max": max(walls) if walls else None,
        "errors": errors,
    }
    run.raw[key] = res
    print(f"  {key:<40} wall ms {walls}  errors {errors}", flush=True)
    return res


def rows(run: Runner, t: str, daemon_ok: bool) -> list[dict[str, Any]]:
    """The burst's row of transport t."""
    b = run.raw.get(f"daemon.{t}.burst64_echo100")
    bv = b.get("wall_ms_median") if b and b.get("errors") == 0 else None
    return [
        {
            "scenario": "64 x echo(100 ms) at once",
            "transport": t,
            "unit": "ms (median)",
            "floor": None,
            "daemon": bv,
            "daemon_errors": (b or {}).get("errors"),
            "daemon_runs": (b or {}).get("wall_ms_runs"),
            "ratio": None,
            "target": f"<= {T_BURST_MS:.0f} ms",
            "threshold": T_BURST_MS,
            "result": verdict(None if bv is None else bv <= T_BURST_MS, daemon_ok),
        }
    ]
