"""Event fan-out (issue 11), daemon only, unix: S subscriber connections
subscribe to on_echo_fired while driver connections make echo calls (each
fires one event); events fired and delivered per second, and the delivery
latency, at 1, 10 and 100 subscribers."""

from __future__ import annotations

import time
from typing import Any

from harness.calls import daemon_cut_off
from harness.procfs import cpu_seconds
from harness.report import good, verdict
from harness.runner import Runner
from harness.servers import Server

# subscriber counts; every subscriber gets every event, none cut off
FANOUT_SUBS = (1, 10, 100)
FANOUT_RATE = 500  # events/s offered in the latency run (100 subs: 50,000 deliveries/s)
FANOUT_DRIVER = ("4", "4")  # driver connections, depth each, in the throughput run


def measure(run: Runner, daemon: Server) -> float:
    """Every subscriber count in turn (while the budget lasts); returns the
    seconds it took."""
    t0 = time.monotonic()
    for subs in FANOUT_SUBS:
        if not run.over_budget():
            fanout(run, daemon, subs)
    return round(time.monotonic() - t0, 1)


def fanout(run: Runner, srv: Server, subs: int) -> None:
    """Event fan-out (issue 11): `subs` connections subscribe to on_echo_fired on the
    unix socket while driver connections make echo calls (each fires one event).
    Two loadgen runs: a closed loop (4 connections x depth 4: as fast as the daemon
    goes) for events fired/delivered per second, then an open loop at FANOUT_RATE
    calls/s for the delivery latency. Errors include subscribers cut off or lost
    and every event a subscriber missed."""
    for kind in ("closed", "rate"):
        key = f"{srv.name}.unix.fanout{subs}" + (f".rate{FANOUT_RATE}" if kind == "rate" else "")
        run.current = srv
        if not srv.ensure():
            run.raw[key] = {"errors": -1, "failure": srv.error}
            continue
        drive = (
            ["--conns", FANOUT_DRIVER[0], "--depth", FANOUT_DRIVER[1]]
            if kind == "closed"
            else ["--conns", "4", "--rate", str(FANOUT_RATE)]
        )
        a = [
            "--fanout", str(subs), *drive, "--duration", str(run.fo_dur),
            "--warmup", str(run.fo_warm), "--drain", "5", "--timeout", "10",
        ]  # fmt: skip
        assert srv.proc is not None
        pid = srv.proc.pid
        cut0 = daemon_cut_off(srv.unix)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        r = run.loadgen(key, srv.target("unix"), a, timeout=run.fo_dur + run.fo_warm + 40)
        wall = time.monotonic() - t0
        if srv.alive():
            r["daemon_cpu_s"] = round(cpu_seconds(pid) - cpu0, 3)
            r["daemon_cpu_share"] = round(r["daemon_cpu_s"] / wall, 3) if wall else None
        r["loadgen_cpu_share"] = round(r.get("cpu_s", 0) / wall, 3) if wall else None
        # the daemon's own count (a subscriber that does not read never sees the
        # SlowSubscriber frame, the loadgen sees it lost): counted as errors too
        cut1 = daemon_cut_off(srv.unix) if srv.alive() else None
        r["daemon_cut_off"] = cut1 - cut0 if cut0 is not None and cut1 is not None else None
        if r["daemon_cut_off"] and r.get("errors", -1) >= 0:
            r["errors"] += r["daemon_cut_off"]
        lat = r.get("lat_us", {})
        print(
            f"  {key:<40} fired {r.get('events_fired_per_s', 0):>9,.0f}/s  delivered "
            f"{r.get('events_delivered_per_s', 0):>9,.0f}/s  p50 {lat.get('p50', -1):.0f} "
            f"p99 {lat.get('p99', -1):.0f} us  missed {r.get('events_missed')}  cut off "
            f"{r.get('daemon_cut_off')}  lost {r.get('subs_lost')}  CPU daemon "
            f"{r.get('daemon_cpu_share') or 0:.0%} "
            f"loadgen {r.get('loadgen_cpu_share') or 0:.0%}"
            f"  errors {r.get('errors')}",
            flush=True,
        )
        if r.get("errors", -1) != 0:
            run.notes.append(
                f"{key}: errors {r.get('errors')}: cut off {r.get('daemon_cut_off')} (daemon) "
                f"/ {r.get('cut_off')} (SlowSubscriber seen), subscribers "
                f"lost {r.get('subs_lost')} / unacknowledged {r.get('subs_unacked')}, events "
                f"missed {r.get('events_missed')}, bad {r.get('events_bad')}, mismatches "
                f"{r.get('mismatches')}{', ' + r['failure'] if r.get('failure') else ''}"
            )


def rows(run: Runner, daemon_ok: bool) -> list[dict[str, Any]]:
    """Per subscriber count: events fired, events delivered (the target: every
    event to every subscriber, none cut off, in both runs), delivery p50, p99.
    No floor: it has no events."""
    raw = run.raw
    out: list[dict[str, Any]] = []
    for subs in FANOUT_SUBS:
        fo = raw.get(f"daemon.unix.fanout{subs}")
        fr = raw.get(f"daemon.unix.fanout{subs}.rate{FANOUT_RATE}")
        name = f"event fan-out, {subs} sub{'s' if subs > 1 else ''}"
        errs = [(r or {}).get("errors") for r in (fo, fr)]
        err_sum = (
            sum(e if e >= 0 else 1 for e in errs if e is not None) if None not in errs else None
        )
        out.append(
            {
                "scenario": f"{name}: events fired",
                "transport": "unix",
                "unit": "events/s",
                "floor": None,
                "daemon": fo.get("events_fired_per_s") if good(fo) else None,  # type: ignore[union-attr]
                "daemon_errors": (fo or {}).get("errors"),
                "driver": f"{FANOUT_DRIVER[0]} conns x depth {FANOUT_DRIVER[1]}, closed loop",
                "ratio": None,
            }
        )
        out.append(
            {
                "scenario": f"{name}: events delivered",
                "transport": "unix",
                "unit": "events/s",
                "floor": None,
                "daemon": fo.get("events_delivered_per_s") if good(fo) else None,  # type: ignore[union-attr]
                "daemon_errors": err_sum,
                "cut_off": [(r or {}).get("daemon_cut_off") for r in (fo, fr)],
                "events_missed": [(r or {}).get("events_missed") for r in (fo, fr)],
                "subs_lost": [(r or {}).get("subs_lost") for r in (fo, fr)],
                "ratio": None,
                "target": "every event to every sub, 0 cut off",
                "threshold": 0,
                "result": verdict(
                    None if fo is None or fr is None else good(fo) and good(fr), daemon_ok
                ),
            }
        )
        for q in ("p50", "p99"):
            out.append(
                {
                    "scenario": f"{name}: delivery {q} @ {FANOUT_RATE}/s",
                    "transport": "unix",
                    "unit": "us",
                    "floor": None,
                    "daemon": fr["lat_us"][q] if good(fr) else None,  # type: ignore[index]
                    "daemon_errors": (fr or {}).get("errors"),
                    "ratio": None,
                }
            )
    return out
