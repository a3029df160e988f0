"""Closed-loop throughput (issues 6 and 12): version calls on 1 and 16
connections and 32 pipelined on one, echo(0) on 16 connections, measured on
the floor and the daemon (and, over TCP, the daemon over TLS) in the same
rounds; then TLS handshakes per second against the TLS daemon."""

from __future__ import annotations

from typing import Any

from harness.report import cps, good, per_round, verdict
from harness.runner import Runner
from harness.servers import Server, TLSServer

TRANSPORTS = ("unix", "tcp")

# issue-6 targets
T_RATIO_1CONN = 0.30
T_RATIO_16CONN = 0.30
T_RATIO_PIPE = 1.0
# issue 12: TLS throughput vs the daemon's own plaintext TCP in the same run
T_RATIO_TLS = 0.50
# issue 21: version on 16 unix connections against the floor
T_RATIO_16CONN_UNIX_21 = 0.50


def measure(
    run: Runner, servers: list[Server], daemon: Server | None, daemon_tls: TLSServer | None
) -> bool:
    """servers: the floor and (if it runs) the daemon; daemon: the daemon or None;
    daemon_tls: the TLS daemon (not started yet) or None. The TLS daemon runs for
    the TCP rows and the handshake scenario, then stops. Returns whether it ran."""
    for t in TRANSPORTS:
        with_tls = list(servers)
        if t == "tcp" and daemon_tls is not None:
            if daemon_tls.start():
                with_tls.append(daemon_tls)
            else:
                run.notes.append(f"TLS daemon unavailable: {daemon_tls.error}")
                print(f"!! TLS daemon unavailable: {daemon_tls.error}", flush=True)
                daemon_tls = None
        for conns, depth in ((1, 1), (16, 1), (1, 32)):
            run.closed(with_tls if depth == 1 else servers, t, conns, depth)
        if daemon is not None:
            run.closed([daemon], t, 16, 1, method="echo", delay=0)
    if daemon_tls is None:
        return False
    for conns in (1, 4):
        run.closed([daemon_tls], "tcp", conns, 1, handshakes=True)
    daemon_tls.stop()
    return True


def rows(run: Runner, t: str, daemon_ok: bool) -> list[dict[str, Any]]:
    """The rows of transport t: version 1 conn, 16 conns, depth 32; echo(0)."""
    raw = run.raw
    out: list[dict[str, Any]] = []
    f1 = raw.get(f"floor.{t}.version.c1.d1")
    f16 = raw.get(f"floor.{t}.version.c16.d1")
    fp = raw.get(f"floor.{t}.version.c1.d32")
    d1 = raw.get(f"daemon.{t}.version.c1.d1")
    d16 = raw.get(f"daemon.{t}.version.c16.d1")
    dp = raw.get(f"daemon.{t}.version.c1.d32")
    de = raw.get(f"daemon.{t}.echo.c16.d1")

    def thr_row(name: str, fr: Any, dr: Any, base: Any, target: float | None, tdesc: str) -> None:
        fv, dv, bv = cps(fr), cps(dr), cps(base)
        ratio = dv / bv if dv is not None and bv else None
        row: dict[str, Any] = {
            "scenario": name,
            "transport": t,
            "unit": "calls/s",
            "floor": fv,
            "daemon": dv,
            "floor_errors": (fr or {}).get("errors"),
            "daemon_errors": (dr or {}).get("errors"),
            "ratio": ratio,
        }
        if target is not None:
            row["target"] = tdesc
            row["threshold"] = target
            row["result"] = verdict(None if ratio is None else ratio >= target, daemon_ok)
        if base is not None:
            rounds = per_round(base, dr)
            if rounds is not None:
                row["ratio_per_round"] = rounds
        out.append(row)

    thr_row("version, 1 conn", f1, d1, f1, T_RATIO_1CONN, f">= {T_RATIO_1CONN:.2f}x floor")
    thr_row("version, 16 conns", f16, d16, f16, T_RATIO_16CONN, f">= {T_RATIO_16CONN:.2f}x floor")
    thr_row(
        "version, depth 32, 1 conn",
        fp,
        dp,
        f1,
        T_RATIO_PIPE,
        f">= {T_RATIO_PIPE:.1f}x floor 1 conn",
    )
    dpv, fpv = cps(dp), cps(fp)
    out[-1]["ratio_to_floor_pipelined"] = dpv / fpv if dpv is not None and fpv else None
    thr_row("echo(0), 16 conns", None, de, None, None, "")
    if t == "unix":  # issue 21's target, on the same figures as the 16-connection row
        row = dict(next(r for r in out if r["scenario"] == "version, 16 conns"))
        ratio = row["ratio"]
        row.update(
            scenario="version, 16 conns (issue 21)",
            target=f">= {T_RATIO_16CONN_UNIX_21:.2f}x floor",
            threshold=T_RATIO_16CONN_UNIX_21,
            result=verdict(None if ratio is None else ratio >= T_RATIO_16CONN_UNIX_21, daemon_ok),
        )
        out.append(row)
    return out


def tls_rows(run: Runner, tls_tried: bool, daemon_ok: bool) -> list[dict[str, Any]]:
    """The daemon over TLS against the daemon over plaintext TCP, same rounds
    (the floor column holds the plaintext figure, the ratio's base); then the
    handshake rates. tls_tried: the TLS daemon was set up (else its target SKIPs:
    --no-tls, no certificates, no daemon)."""
    raw = run.raw
    out: list[dict[str, Any]] = []
    for name, conns in (("version, 1 conn", 1), ("version, 16 conns", 16)):
        plain = raw.get(f"daemon.tcp.version.c{conns}.d1")
        sec = raw.get(f"daemon.tls.version.c{conns}.d1")
        pv, sv = cps(plain), cps(sec)
        ratio = sv / pv if sv is not None and pv else None
        trow: dict[str, Any] = {
            "scenario": name,
            "transport": "tls",
            "unit": "calls/s",
            "floor": pv,
            "daemon": sv,
            "floor_is": "daemon over plaintext TCP (same rounds)",
            "floor_errors": (plain or {}).get("errors"),
            "daemon_errors": (sec or {}).get("errors"),
            "ratio": ratio,
            "target": f">= {T_RATIO_TLS:.2f}x daemon TCP",
            "threshold": T_RATIO_TLS,
            # a TLS daemon that does not start or fails its calls is a FAIL
            "result": "SKIP"
            if not tls_tried
            else verdict(None if ratio is None else ratio >= T_RATIO_TLS, daemon_ok),
        }
        rounds = per_round(plain, sec)
        if rounds is not None:
            trow["ratio_per_round"] = rounds
        out.append(trow)
    for conns in (1, 4):
        h = raw.get(f"daemon.tls.handshakes.c{conns}")
        out.append(
            {
                "scenario": f"TLS handshakes, {conns} client{'s' if conns > 1 else ''}",
                "transport": "tls",
                "unit": "handshakes/s",
                "floor": None,
                "daemon": h.get("calls_per_s") if good(h) else None,  # type: ignore[union-attr]
                "daemon_errors": (h or {}).get("errors"),
                "daemon_rounds": (h or {}).get("rounds_calls_per_s"),
                "ratio": None,
            }
        )
    return out
