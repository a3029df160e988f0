#!/usr/bin/env python3
"""mytimerd benchmark harness (issues 6, 11, 12, 21). Not part of the test suite.

    .venv/bin/python bench/run.py [--quick] [--only SCENARIO,...] [--out bench/results]
                                  [--daemon-cmd CMD] [--library PATH]

Builds bench/'s C programs (make -C bench), then runs the scenarios (one module
each in scenarios/) against the floor server, the daemon and, for the reference
scenario, the threaded C reference server; prints a table with ratios and
PASS/FAIL against the issues' targets, and
writes the same figures to OUT/latest.json (plus OUT/latency.png and raw
latency files). See bench/README.md.

Only unix sockets and 127.0.0.1 are used. Every child runs in its own process
group and is killed on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.children import on_term, stop_all
from harness.common import BENCH, FLOOR
from harness.report import print_table
from harness.runner import BUDGET_S, REFERENCE_BUDGET_S, Runner
from harness.servers import Server, TLSServer
from harness.tlsfiles import TLSFiles
from scenarios import burst, cold_start, fanout, idle, latency, reference, throughput

# in the order they run
SCENARIOS = ("throughput", "reference", "latency", "burst", "fanout", "cold-start", "idle")


def tls_meta(run: Runner, tls: TLSFiles, ran: bool) -> dict[str, Any]:
    """What the TLS scenarios used: the version and cipher loadgen saw."""
    seen: dict[str, Any] = next(
        (r for k, r in run.raw.items() if k.startswith("daemon.tls.") and r.get("tls_version")),
        {},
    )
    return {
        "ran": ran,
        "key": TLSFiles.KEY,
        "mutual": tls.mutual,
        "version": seen.get("tls_version"),
        "cipher": seen.get("tls_cipher"),
    }


def compile_package() -> bool:
    """Byte-compile the daemon's package, as its Debian package's postinst
    does. With $PYTHONDONTWRITEBYTECODE set (as on CI machines) a source
    tree's bytecode is not written as it is imported: the daemons started
    with it compile every module changed since, and the first cold start
    compiles them (and writes them: systemd-socket-activate passes a clean
    environment), which would make it an outlier. False if it fails."""
    import mytimerd

    package = Path(mytimerd.__file__).parent
    print(f"byte-compiling {package} (python -m compileall) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)])
    if done.returncode != 0:
        print("bench: byte-compiling the daemon failed (see above)", file=sys.stderr)
    return done.returncode == 0


def bench(args: argparse.Namespace, selected: set[str]) -> int:
    """One run of the selected scenarios; the exit status."""
    mode = "quick" if args.quick else "full"
    budget = BUDGET_S[mode] + (REFERENCE_BUDGET_S[mode] if "reference" in selected else 0.0)
    run = Runner(args.quick, Path(args.out).resolve(), budget)
    run.out.mkdir(parents=True, exist_ok=True)
    run.workdir = Path(tempfile.mkdtemp(prefix="mytimerd-bench-"))
    atexit.register(shutil.rmtree, run.workdir, True)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n_idle = args.idle_conns
    if hard != resource.RLIM_INFINITY and n_idle + 200 > hard:
        n_idle = max(0, hard - 200)
        run.notes.append(f"RLIMIT_NOFILE hard limit {hard}: idle connections reduced to {n_idle}")

    print("building bench/ (make -C bench) ...", flush=True)
    if subprocess.run(["make", "-s", "-C", str(BENCH)]).returncode != 0:
        print("bench: building the C programs failed (see above)", file=sys.stderr)
        return 2

    daemon_cmd = (
        shlex.split(args.daemon_cmd) if args.daemon_cmd else [sys.executable, "-m", "mytimerd"]
    )
    if not args.daemon_cmd and not compile_package():
        return 2
    daemon_extra = shlex.split(args.daemon_args)
    floor = Server("floor", [str(FLOOR), "--lifetime", "900"], [], run.workdir)
    daemon = Server("daemon", daemon_cmd, daemon_extra, run.workdir)
    tls = TLSFiles(run.workdir / "tls", mutual=args.tls_mutual)
    daemon_tls: TLSServer | None = None
    servers = [floor]
    # The floor and the daemon serve every scenario but the reference one, which
    # starts its own servers.
    if selected - {"reference"} and not floor.start():
        print(f"floor server does not start: {floor.error}", file=sys.stderr)
        return 2
    daemon_ok = False
    if selected - {"reference"} and not args.floor_only:
        daemon_ok = daemon.start()
        if daemon_ok:
            servers.append(daemon)
        else:
            run.notes.append(f"daemon unavailable ({shlex.join(daemon_cmd)}): {daemon.error}")
            print(f"!! daemon unavailable, floor only: {daemon.error}", flush=True)
    if "throughput" in selected and daemon_ok and not args.no_tls:
        try:
            tls.make()
        except Exception as e:  # cryptography missing or broken: no TLS rows
            run.notes.append(f"TLS scenarios skipped: cannot make test certificates: {e!r}")
        else:
            daemon_tls = TLSServer("daemon-tls", daemon_cmd, daemon_extra, run.workdir, tls)
    elif args.no_tls:
        run.notes.append("TLS scenarios skipped (--no-tls)")
    tls_tried = daemon_tls is not None

    # Servers compared run side by side (the one not measured is idle) and each
    # scenario is measured on one and then at once on the other, so that the
    # noise of this small shared machine hits both figures of a ratio alike.
    print(f"scenarios ({mode}: {', '.join(s for s in SCENARIOS if s in selected)}) ...", flush=True)
    tls_ran = False
    if "throughput" in selected:
        tls_ran = throughput.measure(run, servers, daemon if daemon_ok else None, daemon_tls)
    ref_ran: dict[str, dict[str, Any]] = {}
    if "reference" in selected:
        if args.floor_only:
            run.notes.append("reference scenario skipped (--floor-only)")
        else:
            ref_ran = reference.measure(run, daemon_cmd, daemon_extra, args.library)
    if "latency" in selected:
        latency.measure(run, servers)
    fanout_elapsed = 0.0
    if daemon_ok:
        if "burst" in selected:
            burst.measure(run, daemon)
        if "fanout" in selected:
            fanout_elapsed = fanout.measure(run, daemon)
    for srv in servers:
        srv.stop()
    if "cold-start" in selected:
        cold_start.measure(run, daemon_cmd if daemon_ok else None)
    if "idle" in selected:
        idle.measure(run, servers, n_idle)
    if run.over_budget():
        run.notes.append(f"time budget of {run.budget:.0f}s exceeded: some scenarios skipped")
    stop_all()

    rows: list[dict[str, Any]] = []
    for t in throughput.TRANSPORTS:
        if "throughput" in selected:
            rows += throughput.rows(run, t, daemon_ok)
        if "latency" in selected:
            rows += latency.rows(run, t)
        if "burst" in selected:
            rows += burst.rows(run, t, daemon_ok)
    if "throughput" in selected:
        rows += throughput.tls_rows(run, tls_tried, daemon_ok)
    if "fanout" in selected:
        rows += fanout.rows(run, daemon_ok)
    if "cold-start" in selected:
        rows += cold_start.rows(run, daemon_ok)
    if "idle" in selected:
        rows += idle.rows(run, n_idle, daemon_ok)
    if "reference" in selected:
        rows += reference.rows(run, ref_ran)
    notes: list[str] = []
    for n in run.notes:
        n = n if len(n) <= 400 else n[:400] + " ..."
        if n not in notes:
            notes.append(n)
    result = {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mode": mode,
            "scenarios": [s for s in SCENARIOS if s in selected],
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "daemon_cmd": shlex.join(daemon_cmd),
            "daemon_args": shlex.join(daemon_extra),
            "daemon_available": daemon_ok,
            "closed_loop_s": run.dur,
            "closed_loop_rounds": run.rounds,
            "warmup_s": run.warm,
            "open_loop_s": run.lat_dur,
            "fanout_s": run.fo_dur,
            "fanout_subscribers": list(fanout.FANOUT_SUBS),
            "fanout_rate": fanout.FANOUT_RATE,
            "fanout_elapsed_s": fanout_elapsed,
            "idle_connections": n_idle,
            "elapsed_s": round(time.monotonic() - run.t0, 1),
            "loadavg_start": run.load0,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "server_starts": {
                "floor": floor.starts,
                "daemon": daemon.starts,
                "daemon_tls": daemon_tls.starts if daemon_tls is not None else 0,
            },
            "tls": tls_meta(run, tls, tls_ran),
            "reference": ref_ran,
        },
        "rows": rows,
        "targets": [r for r in rows if r.get("target")],
        "notes": notes,
        "raw": run.raw,
    }
    (run.out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    png = latency.plot(run, servers) if "latency" in selected else None
    print(f"\nwrote {run.out / 'latest.json'}" + (f" and {png}" if png else ""))
    fails = [r for r in rows if r.get("result") == "FAIL"]
    return 1 if (fails and args.strict) else 0


def main() -> int:
    """Parse the command line, run, and stop every child whatever happens."""
    ap = argparse.ArgumentParser(description="mytimerd benchmark harness (floor vs daemon)")
    ap.add_argument("--quick", action="store_true", help="shorter runs (about 1.5 minutes)")
    ap.add_argument(
        "--only",
        default="",
        metavar="SCENARIO[,SCENARIO...]",
        help=f"run only these scenarios, of: {', '.join(SCENARIOS)} (default: all)",
    )
    ap.add_argument(
        "--out", default=str(BENCH / "results"), help="results folder (default bench/results)"
    )
    ap.add_argument(
        "--daemon-cmd",
        default="",
        help="server command to benchmark instead of '<this python> -m mytimerd'; the harness "
        "appends --unix PATH --tcp 127.0.0.1 PORT and --daemon-args",
    )
    ap.add_argument(
        "--daemon-args",
        default="--max-connections 20000 --max-connections-per-peer 20000 --log-level warning",
        help="extra arguments appended to the daemon command (default: %(default)s)",
    )
    ap.add_argument(
        "--library",
        default=None,
        metavar="PATH",
        help="reference scenario: the library to measure (a build of native/, which the "
        "real-build-like variant runs with MY_TIMER_SUBMIT_MODE=handoff) instead of the "
        "one the daemon serves by default",
    )
    ap.add_argument("--floor-only", action="store_true", help="do not run the daemon")
    ap.add_argument(
        "--idle-conns", type=int, default=10000, help="idle connections (default 10000)"
    )
    ap.add_argument(
        "--tls-mutual",
        action="store_true",
        help="TLS scenarios with client certificates (daemon --tls-client-ca)",
    )
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS scenarios")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any target FAILs")
    args = ap.parse_args()
    if not 0 <= args.idle_conns <= 100000:
        ap.error("--idle-conns must be within 0..100000")
    selected = {s.strip() for s in args.only.split(",") if s.strip()} or set(SCENARIOS)
    unknown = selected - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {SCENARIOS}")
    if args.library is not None:
        lib = Path(args.library).resolve()
        if not lib.is_file():
            ap.error(f"--library: no such file: {lib}")
        args.library = str(lib)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    atexit.register(stop_all)
    try:
        return bench(args, selected)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping children", file=sys.stderr)
        return 130
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
