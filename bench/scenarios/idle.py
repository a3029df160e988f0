"""Idle connections (unix): a fresh server holds N silent connections (10,000
by default); its RSS, and the p50 of a light probe load while they are held
against the p50 when they are not."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Any

from harness.children import spawn, stop
from harness.common import LOADGEN
from harness.procfs import fd_count, rss_kb
from harness.report import verdict
from harness.runner import Runner
from harness.servers import Server

# issue 6
T_IDLE_RSS_MB = 150.0
T_IDLE_P50_X = 2.0


def measure(run: Runner, servers: list[Server], n_idle: int) -> None:
    """Every server in turn (while the budget lasts); n_idle 0 skips the scenario."""
    if n_idle <= 0:
        run.notes.append("idle-connection scenario skipped")
        return
    for srv in servers:
        if not run.over_budget():
            idle(run, srv, n_idle)


def idle(run: Runner, srv: Server, n_idle: int) -> dict[str, Any]:
    """Fresh server; probe p50 idle, open n_idle silent connections (held by one
    loadgen), RSS, probe p50 twice while they are held, close them, probe again.
    p50 ratio = median(probes during) / median(probes before and after)."""
    key = f"{srv.name}.unix.idle{n_idle}"
    run.current = srv
    res: dict[str, Any] = {"idle": n_idle}
    if not srv.start():  # a fresh process, so earlier scenarios do not count
        res.update(errors=-1, failure=srv.error)
        run.raw[key] = res
        return res
    assert srv.proc is not None
    pid = srv.proc.pid
    time.sleep(0.3)
    res["rss_kb_before"] = rss_kb(pid)
    res["fds_before"] = fd_count(pid)
    probe = [
        "--conns", "4", "--rate", "1000", "--duration", str(run.idle_dur),
        "--warmup", "0.2", "--drain", "2",
    ]  # fmt: skip
    errors = 0

    def run_probe(name: str) -> float | None:
        nonlocal errors
        r = run.loadgen(f"{key}.{name}", srv.target("unix"), probe, timeout=run.idle_dur + 30)
        if r.get("errors", -1) != 0:
            errors += max(1, int(r.get("errors", 1)))
            return None
        return float(r["lat_us"]["p50"])

    def settle(fds_target: int) -> int:
        deadline = time.monotonic() + 3.0
        while fd_count(pid) > fds_target and time.monotonic() < deadline:
            time.sleep(0.05)
        return fd_count(pid)

    p_before = run_probe("probe_before")
    fds0 = settle(res["fds_before"])
    wait_s = 15.0 if run.quick else 30.0
    # the holder: opens the idle connections, reports, waits for "go", makes one call
    holder_cmd = [
        str(LOADGEN), *srv.target("unix"), "--idle", str(n_idle), "--wait-stdin",
        "--conns", "1", "--count", "1", "--timeout", "10",
    ]  # fmt: skip
    holder = spawn(
        holder_cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p_during: list[float | None] = []
    try:
        assert holder.stdin is not None and holder.stdout is not None
        first = holder.stdout.readline()  # loadgen bounds its own connect phase (30 s)
        ev = json.loads(first) if first.startswith("{") else {}
        res["idle_ready"] = ev
        # wait until the server accepted them (its fd count grew by that many) or its
        # fd count stopped growing for a second
        want = fds0 + int(ev.get("idle", 0))
        deadline = time.monotonic() + wait_s
        fds = fd_count(pid)
        last_change, last = time.monotonic(), fds
        while fds < want and time.monotonic() < deadline:
            time.sleep(0.1)
            fds = fd_count(pid)
            if fds != last:
                last_change, last = time.monotonic(), fds
            elif time.monotonic() - last_change > 1.0:
                break
        res["server_accepted"] = fds - fds0
        time.sleep(0.2)
        res["rss_kb_idle"] = rss_kb(pid)
        for i in range(2):
            p_during.append(run_probe(f"probe_during{i}"))
        res["rss_kb_after"] = rss_kb(pid) if srv.alive() else None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.stdin.close()
        holder.stdin = None
        out, err = holder.communicate(timeout=30)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        hres = json.loads(lines[-1]) if lines else {"errors": -1, "failure": err[-300:]}
    except (subprocess.TimeoutExpired, ValueError, OSError) as e:
        hres = {"errors": -1, "failure": f"idle holder: {e}"}
    finally:
        stop(holder, grace=1.0)
    res["holder"] = hres
    if hres.get("errors", -1) != 0:
        errors += max(1, int(hres.get("errors", 1)))
    errors += int(hres.get("idle_dropped", 0) or 0)
    errors += max(0, n_idle - int(hres.get("idle_connected", 0) or 0))
    settle(fds0)
    p_after = run_probe("probe_after")
    res["server_alive_after"] = srv.alive()
    res["p50_us_before_after"] = [p_before, p_after]
    res["p50_us_during"] = p_during
    idle_p = [x for x in (p_before, p_after) if x is not None]
    during_p = [x for x in p_during if x is not None]
    b50 = statistics.median(idle_p) if idle_p else None
    d50 = statistics.median(during_p) if during_p else None
    res["p50_idle_us"], res["p50_during_us"] = b50, d50
    res["p50_ratio"] = (d50 / b50) if b50 and d50 else None
    res["errors"] = errors
    run.raw[key] = res
    rss = res.get("rss_kb_idle") or 0
    print(
        f"  {key:<40} RSS {res['rss_kb_before'] / 1024:.1f} -> {rss / 1024:.1f} MB, "
        f"accepted {res.get('server_accepted')}, p50 idle {[p_before, p_after]} "
        f"during {p_during} us, errors {errors}",
        flush=True,
    )
    srv.stop()
    return res


def rows(run: Runner, n_idle: int, daemon_ok: bool) -> list[dict[str, Any]]:
    """RSS with the idle connections, and the probe's p50 ratio."""
    fi, di = run.raw.get(f"floor.unix.idle{n_idle}"), run.raw.get(f"daemon.unix.idle{n_idle}")

    def mb(r: dict[str, Any] | None) -> float | None:
        if not r or r.get("errors") != 0 or not r.get("rss_kb_idle"):
            return None
        return float(max(r["rss_kb_idle"], r.get("rss_kb_after") or 0)) / 1024.0

    def p50x(r: dict[str, Any] | None) -> float | None:
        return r.get("p50_ratio") if r and r.get("errors") == 0 else None

    fmb, dmb = mb(fi), mb(di)
    fx, dx = p50x(fi), p50x(di)
    return [
        {
            "scenario": f"{n_idle} idle conns: RSS",
            "transport": "unix",
            "unit": "MB",
            "floor": fmb,
            "daemon": dmb,
            "floor_errors": (fi or {}).get("errors"),
            "daemon_errors": (di or {}).get("errors"),
            "daemon_rss_mb_before": ((di or {}).get("rss_kb_before") or 0) / 1024.0 or None,
            "daemon_rss_kb_per_idle_conn": (
                (dmb * 1024.0 - di["rss_kb_before"]) / n_idle
                if dmb is not None and di and n_idle
                else None
            ),
            "ratio": None,
            "target": f"<= {T_IDLE_RSS_MB:.0f} MB",
            "threshold": T_IDLE_RSS_MB,
            "result": verdict(None if dmb is None else dmb <= T_IDLE_RSS_MB, daemon_ok),
        },
        {
            "scenario": f"{n_idle} idle conns: p50 during / idle p50",
            "transport": "unix",
            "unit": "x (1000 calls/s)",
            "floor": fx,
            "daemon": dx,
            "floor_errors": (fi or {}).get("errors"),
            "daemon_errors": (di or {}).get("errors"),
            "floor_p50_us": [(fi or {}).get("p50_idle_us"), (fi or {}).get("p50_during_us")],
            "daemon_p50_us": [(di or {}).get("p50_idle_us"), (di or {}).get("p50_during_us")],
            "ratio": None,
            "target": f"<= {T_IDLE_P50_X:.1f}x",
            "threshold": T_IDLE_P50_X,
            "result": verdict(None if dx is None else dx <= T_IDLE_P50_X, daemon_ok),
        },
    ]
