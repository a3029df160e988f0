"""mytimerd against a threaded C reference server (issue 21).

The reference (bench/reference_server.c) is what a plain C server for the same
library looks like: the example's framing, one thread per connection,
TCP_NODELAY, no log line per call. It links the library the daemon serves, so
the ratio mytimerd / reference is the price (or the gain) of the daemon itself.
Version calls/s on 1 and 16 connections, unix and TCP, measured in the same
rounds on both servers, for two libraries:

- direct: the daemon's own library as it ships (MY_TIMER_SUBMIT_MODE unset:
  a call returns at once), served by the daemon as it serves it by default;
- real-build-like: the same library in native/'s handoff mode
  (MY_TIMER_SUBMIT_MODE=handoff: a call returns only once the library thread
  has taken it, callers take turns, as with the real Nim build), copied to the
  run's private folder so that the daemon serves it as it serves any
  ABI-compatible build given with --library (as it would the real one).

The issue's targets: >= 1.0x at 1 connection, >= 1.5x at 16.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness.calls import daemon_library
from harness.common import REFERENCE, ROOT
from harness.report import cps, per_round, verdict
from harness.runner import Runner
from harness.servers import Server

from .throughput import TRANSPORTS

VARIANTS = ("direct", "real-build-like")
CONNS = (1, 16)
TARGETS = {1: 1.0, 16: 1.5}  # mytimerd / reference, issue 21
SUBMIT_ENV = "MY_TIMER_SUBMIT_MODE"  # native/'s submit mode, read at create


def measure(
    run: Runner, daemon_cmd: list[str], daemon_extra: list[str], library: str | None
) -> dict[str, dict[str, Any]]:
    """Each variant in turn: its daemon and its reference side by side, every
    (transport, connections) pair in rounds; both stopped afterwards.

    library: the library to measure instead of the daemon's own (given to the
    daemon with --library; the direct variant also gets --submit direct, as
    the daemon serves its own library). Returns, per variant measured, how its
    servers were started (library, environment, daemon arguments)."""
    ran: dict[str, dict[str, Any]] = {}
    lib = library  # None: the daemon's own, asked of the direct variant's daemon
    for variant in VARIANTS:
        if run.over_budget():
            break
        served = lib
        if variant == "direct":
            env: dict[str, str | None] = {SUBMIT_ENV: None}
            args = [] if library is None else ["--library", library, "--submit", "direct"]
        else:
            if lib is None:
                run.notes.append(f"reference, {variant}: skipped, no library to run")
                continue
            copy = run.workdir / variant / Path(lib).name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy2(lib, copy)
            served = str(copy)
            env = {SUBMIT_ENV: "handoff"}
            args = ["--library", served]
        daemon = Server(f"mytimerd-{variant}", daemon_cmd, [*daemon_extra, *args], run.workdir, env)
        daemon.label = f"mytimerd.{variant}"
        if not daemon.start():
            run.notes.append(f"reference, {variant}: the daemon does not start: {daemon.error}")
            continue
        if served is None:  # the daemon's own library: ask it which one that is
            answer = daemon_library(daemon.unix)
            if answer is None:
                run.notes.append(
                    "reference: skipped, the daemon does not say which library it serves "
                    "(mytimerd.describe); give one with --library"
                )
                daemon.stop()
                return ran
            lib = served = str(ROOT / answer)  # relative to the daemon's working directory
        reference = Server(
            f"reference-{variant}",
            [str(REFERENCE), "--library", served, "--lifetime", "900"],
            [],
            run.workdir,
            env,
        )
        reference.label = f"reference.{variant}"
        if reference.start():
            ran[variant] = {"library": served, "env": env, "daemon_args": args}
            for t in TRANSPORTS:
                for conns in CONNS:
                    run.closed([reference, daemon], t, conns, 1)
        else:
            run.notes.append(
                f"reference, {variant}: the reference does not start: {reference.error}"
            )
        daemon.stop()
        reference.stop()
    return ran


def rows(run: Runner, ran: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, transport and connection count: reference and mytimerd
    calls/s (the floor and daemon columns) and their ratio against the target."""
    out: list[dict[str, Any]] = []
    for variant in VARIANTS:
        for t in TRANSPORTS:
            for conns in CONNS:
                ref = run.raw.get(f"reference.{variant}.{t}.version.c{conns}.d1")
                mtd = run.raw.get(f"mytimerd.{variant}.{t}.version.c{conns}.d1")
                rv, mv = cps(ref), cps(mtd)
                ratio = mv / rv if mv is not None and rv else None
                target = TARGETS[conns]
                result = verdict(None if ratio is None else ratio >= target, variant in ran)
                row: dict[str, Any] = {
                    "scenario": f"version, {conns} conn{'s' if conns > 1 else ''}: "
                    f"vs reference, {variant}",
                    "transport": t,
                    "unit": "calls/s",
                    "floor": rv,
                    "daemon": mv,
                    "floor_is": "the C reference server, same library, same rounds",
                    "floor_errors": (ref or {}).get("errors"),
                    "daemon_errors": (mtd or {}).get("errors"),
                    "ratio": ratio,
                    "target": f">= {target:.1f}x reference",
                    "threshold": target,
                    "result": result,
                    "library": (ran.get(variant) or {}).get("library"),
                }
                rounds = per_round(ref, mtd)
                if rounds is not None:
                    row["ratio_per_round"] = rounds
                out.append(row)
    return out
