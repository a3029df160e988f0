"""Latency at a fixed load: an open loop of 5,000 calls/s over 16 connections,
latency measured from each call's scheduled send time; p50 and p99 of the
floor and the daemon, and their CDF and tail plotted in latency.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.report import good
from harness.runner import Runner
from harness.servers import Server

from .throughput import TRANSPORTS


def measure(run: Runner, servers: list[Server]) -> None:
    """The open loop on every server, unix then TCP (while the budget lasts)."""
    for t in TRANSPORTS:
        for srv in servers:
            if not run.over_budget():
                open_loop(run, srv, t)


def open_loop(
    run: Runner, srv: Server, transport: str, rate: float = 5000, conns: int = 16
) -> dict[str, Any]:
    """One open-loop run; every latency goes to OUT/lat_<server>_<transport>_<rate>.txt."""
    key = f"{srv.name}.{transport}.open{int(rate)}"
    run.current = srv
    if not srv.ensure():
        fail: dict[str, Any] = {"errors": -1, "failure": srv.error}
        run.raw[key] = fail
        return fail
    latfile = run.out / f"lat_{srv.name}_{transport}_{int(rate)}.txt"
    a = [
        "--conns",
        str(conns),
        "--rate",
        str(rate),
        "--duration",
        str(run.lat_dur),
        "--warmup",
        str(run.lat_warm),
        "--drain",
        "2",
        "--latency-out",
        str(latfile),
    ]
    r = run.loadgen(key, srv.target(transport), a, timeout=run.lat_dur + run.lat_warm + 30)
    r["latency_file"] = str(latfile)
    lat = r.get("lat_us", {})
    print(
        f"  {key:<40} p50 {lat.get('p50', -1):>9.1f} us  p99 {lat.get('p99', -1):>9.1f} us"
        f"  errors {r.get('errors')}",
        flush=True,
    )
    return r


def rows(run: Runner, t: str) -> list[dict[str, Any]]:
    """p50 and p99 of transport t (no target)."""
    fo = run.raw.get(f"floor.{t}.open5000")
    do = run.raw.get(f"daemon.{t}.open5000")
    out: list[dict[str, Any]] = []
    for q in ("p50", "p99"):
        fv = fo["lat_us"][q] if good(fo) else None  # type: ignore[index]
        dv = do["lat_us"][q] if good(do) else None  # type: ignore[index]
        out.append(
            {
                "scenario": f"latency {q} @ 5000 calls/s",
                "transport": t,
                "unit": "us",
                "floor": fv,
                "daemon": dv,
                "floor_errors": (fo or {}).get("errors"),
                "daemon_errors": (do or {}).get("errors"),
                "ratio": dv / fv if dv is not None and fv else None,
            }
        )
    return out


def plot(run: Runner, servers: list[Server]) -> Path | None:
    """latency.png: CDF and tail of the open-loop latencies (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        run.notes.append(
            "matplotlib not installed (pip install -r bench/requirements.txt): no plot"
        )
        print("note: matplotlib not installed: no plot (pip install -r bench/requirements.txt)")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"floor": "tab:blue", "daemon": "tab:red"}
    drawn = 0
    for srv in servers:
        for t, ls in (("unix", "-"), ("tcp", "--")):
            path = run.out / f"lat_{srv.name}_{t}_5000.txt"
            r = run.raw.get(f"{srv.name}.{t}.open5000")
            if not path.exists() or not r or "lat_us" not in r:
                continue
            vals = sorted(float(x) for x in path.read_text().split())
            if not vals:
                continue
            n = len(vals)
            ys = [(i + 1) / n for i in range(n)]
            lat = r["lat_us"]
            label = f"{srv.name} {t} (p50 {lat['p50']:.0f}, p99 {lat['p99']:.0f} us)"
            ax1.plot(vals, ys, ls, color=styles[srv.name], label=label)
            ax2.plot(
                vals,
                [max(1.0 - y, 0.5 / n) for y in ys],
                ls,
                color=styles[srv.name],
                label=label,
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax1.set_xscale("log")
    ax1.set_xlabel("latency (us, from scheduled send time)")
    ax1.set_ylabel("fraction of calls <= latency")
    ax1.set_title("CDF, open loop 5,000 calls/s, 16 conns")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("latency (us)")
    ax2.set_ylabel("fraction of calls slower (tail)")
    ax2.set_title("tail (1 - CDF)")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        f"mytimerd vs floor, {run.raw and time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    fig.tight_layout()
    png = run.out / "latency.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
