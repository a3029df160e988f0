"""The run's settings, time budget and results, and the load-generator runs
every scenario is made of (one loadgen process each; closed loops in rounds)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .children import spawn, stop
from .common import LOADGEN
from .procfs import tail
from .servers import Server

# The overall time budget, seconds, after which the scenarios not yet started
# are skipped (a safety net on a shared machine), and what the reference
# scenario adds to it when it runs.
BUDGET_S = {"quick": 135.0, "full": 480.0}
REFERENCE_BUDGET_S = {"quick": 35.0, "full": 180.0}


class Runner:
    """Settings of a quick or full run, its raw results (`raw`, keyed by
    scenario) and notes, and the loadgen runs that fill them."""

    def __init__(self, quick: bool, out: Path, budget: float) -> None:
        self.quick = quick
        self.out = out
        self.budget = budget
        self.raw: dict[str, Any] = {}
        self.notes: list[str] = []
        self.t0 = time.monotonic()
        self.load0 = [round(x, 2) for x in os.getloadavg()]
        self.current: Server | None = None  # the server the running scenario targets
        self.workdir = Path()  # the private temporary folder, set when the run starts
        # A full run's rounds and repetitions: on a shared 2-vCPU machine a
        # round or two of one run are often 15-30% off the others; a median
        # of 5 needs three slow ones to move, a median of 3 two.
        self.rounds = 2 if quick else 5
        if quick:
            self.dur, self.warm = 0.5, 0.2
            self.lat_dur, self.lat_warm = 1.5, 0.5
            self.idle_dur = 0.8
            self.reps = 2
            self.fo_dur, self.fo_warm = 0.8, 0.2
        else:
            self.dur, self.warm = 1.5, 0.3
            self.lat_dur, self.lat_warm = 4.0, 1.0
            self.idle_dur = 1.5
            self.reps = 5
            self.fo_dur, self.fo_warm = 2.5, 0.5

    def over_budget(self) -> bool:
        """True once the run has used up its time budget."""
        return time.monotonic() - self.t0 > self.budget

    def loadgen(
        self, key: str, target: list[str], args: list[str], timeout: float
    ) -> dict[str, Any]:
        """One loadgen run; its JSON result (or errors -1 and a failure) is stored
        as raw[key] and returned. A server that died meanwhile is noted."""
        cmd = [str(LOADGEN), *target, *args]
        p = spawn(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        res: dict[str, Any] = {}
        try:
            out, err = p.communicate(timeout=timeout)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not lines:
                raise RuntimeError(
                    f"loadgen printed nothing (rc={p.returncode}): {err.strip()[-500:]}"
                )
            res.update(json.loads(lines[-1]))
        except subprocess.TimeoutExpired:
            res = {"errors": -1, "failure": f"loadgen timed out after {timeout:.0f}s"}
        except (RuntimeError, ValueError) as e:
            res = {"errors": -1, "failure": str(e)}
        finally:
            stop(p, grace=1.0)
        res["cmd"] = shlex.join(cmd)
        if self.current is not None and self.current.proc is not None and not self.current.alive():
            rc = self.current.proc.returncode
            res["server_died"] = rc
            if rc == -signal.SIGBUS:
                self.notes.append(
                    f"{self.current.name} died of SIGBUS: typically a shared library it had "
                    "mapped (e.g. a .so rebuilt in place) was rewritten under it"
                )
            self.notes.append(
                f"{self.current.name} exited (rc {rc}) during {key}: {tail(self.current.log, 5)}"
            )
        self.raw[key] = res
        return res

    def closed_once(
        self,
        srv: Server,
        transport: str,
        conns: int,
        depth: int,
        method: str,
        delay: int,
        rnd: int,
        handshakes: bool = False,
    ) -> dict[str, Any]:
        """One round of a closed loop against one server (restarted if it died)."""
        key = f"{self.closed_key(srv, transport, conns, depth, method, handshakes)}.round{rnd}"
        self.current = srv
        if not srv.ensure():
            self.notes.append(f"{key}: server not running: {srv.error}")
            return {"errors": -1, "failure": srv.error}
        a = [
            "--conns",
            str(conns),
            "--depth",
            str(depth),
            "--duration",
            str(self.dur),
            "--warmup",
            str(self.warm),
            "--method",
            method,
            "--delay-ms",
            str(delay),
        ]
        if handshakes:
            a.append("--handshakes")
        r = self.loadgen(key, srv.target(transport), a, timeout=self.dur + self.warm + 30)
        del self.raw[key]  # kept in the aggregate below
        return r

    @staticmethod
    def closed_key(
        srv: Server, transport: str, conns: int, depth: int, method: str, handshakes: bool
    ) -> str:
        """The raw key of a closed loop, e.g. daemon.unix.version.c16.d1."""
        what = f"handshakes.c{conns}" if handshakes else f"{method}.c{conns}.d{depth}"
        return f"{srv.label}.{srv.transport(transport)}.{what}"

    def closed(
        self,
        servers: list[Server],
        transport: str,
        conns: int,
        depth: int,
        method: str = "version",
        delay: int = 0,
        handshakes: bool = False,
    ) -> None:
        """Closed loop, self.rounds rounds; in each round every server is measured
        in turn. Reported: the round with the median calls/s, and all rounds.
        handshakes: loadgen --handshakes (TLS), "calls" are handshake cycles."""
        runs: dict[str, list[dict[str, Any]]] = {srv.name: [] for srv in servers}
        for rnd in range(self.rounds):
            for srv in servers:
                if not self.over_budget():
                    r = self.closed_once(
                        srv, transport, conns, depth, method, delay, rnd, handshakes
                    )
                    runs[srv.name].append(r)
        for srv in servers:
            key = self.closed_key(srv, transport, conns, depth, method, handshakes)
            rs = runs[srv.name]
            if not rs:
                continue
            errors = sum(r["errors"] if r.get("errors", -1) >= 0 else 1 for r in rs)
            ordered = sorted(rs, key=lambda r: float(r.get("calls_per_s", 0.0)))
            agg = dict(ordered[(len(ordered) - 1) // 2])
            agg["errors"] = errors
            agg["rounds_calls_per_s"] = [r.get("calls_per_s") for r in rs]
            self.raw[key] = agg
            rounds = ", ".join(f"{r.get('calls_per_s', 0):,.0f}" for r in rs)
            unit = "handshakes/s" if handshakes else "calls/s"
            print(
                f"  {key:<48} {agg.get('calls_per_s', 0):>12,.0f} {unit} (rounds {rounds})"
                f"  errors {errors}",
                flush=True,
            )
            tls_errors = sorted({r["tls_error"] for r in rs if r.get("tls_error")})
            if tls_errors:
                self.notes.append(f"{key}: TLS error: {'; '.join(tls_errors)}")
