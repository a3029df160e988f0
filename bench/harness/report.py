"""The table: row helpers shared by the scenarios' rows() and the printout.

A row is a dict: scenario, transport, unit, floor, daemon (figures), their
errors, ratio, and for a target: target (text), threshold and result (PASS,
FAIL, SKIP)."""

from __future__ import annotations

from typing import Any


def good(r: dict[str, Any] | None) -> bool:
    """A measurement that exists and saw no error."""
    return bool(r) and r.get("errors", -1) == 0  # type: ignore[union-attr]


def cps(r: dict[str, Any] | None) -> float | None:
    """calls/s of a good measurement, else None."""
    return r.get("calls_per_s") if good(r) else None  # type: ignore[union-attr]


def verdict(ok: bool | None, daemon_ok: bool) -> str:
    """PASS/FAIL; a figure that is missing FAILs, or SKIPs when the daemon never ran."""
    if ok is None:
        return "SKIP" if not daemon_ok else "FAIL"
    return "PASS" if ok else "FAIL"


def per_round(
    base: dict[str, Any] | None, measured: dict[str, Any] | None
) -> list[float | None] | None:
    """measured / base round by round (rounds run in turn), when both are good."""
    bl = (base or {}).get("rounds_calls_per_s") or []
    ml = (measured or {}).get("rounds_calls_per_s") or []
    if not (bl and ml and good(base) and good(measured)):
        return None
    return [m / b if b else None for b, m in zip(bl, ml, strict=False)]


def print_table(result: dict[str, Any]) -> None:
    """The table of every row, its header (run settings) and the notes."""

    def fmt(v: Any, unit: str) -> str:
        if v is None:
            return "-"
        if unit in ("calls/s", "handshakes/s", "events/s"):
            return f"{v:,.0f}"
        if unit.startswith("x"):
            return f"{v:.2f}x"
        return f"{v:,.1f}"

    head = [
        "scenario",
        "transport",
        "unit",
        "floor",
        "daemon",
        "ratio",
        "errors f/d",
        "target",
        "result",
    ]
    table = [head]
    for r in result["rows"]:
        fe = r.get("floor_errors")
        de = r.get("daemon_errors")
        errs = f"{'-' if fe is None else fe}/{'-' if de is None else de}"
        table.append(
            [
                r["scenario"],
                r["transport"],
                r["unit"],
                fmt(r.get("floor"), r["unit"]),
                fmt(r.get("daemon"), r["unit"]),
                "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
                errs,
                r.get("target", ""),
                r.get("result", ""),
            ]
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    right = {3, 4, 5, 6}
    m = result["meta"]
    print()
    print(
        f"mytimerd benchmark, {m['mode']} run, {m['when']}, {m['cpus']} CPUs, kernel {m['kernel']}"
    )
    # the floor and the daemon run for every scenario but the reference one
    with_floor = set(m["scenarios"]) != {"reference"}
    print(
        f"daemon: {m['daemon_cmd']} {m['daemon_args']}"
        + ("   (NOT AVAILABLE: floor only)" if with_floor and not m["daemon_available"] else "")
    )
    print(
        f"load average at start {m['loadavg_start'][0]}, at end {m['loadavg_end'][0]} "
        "(a busy machine makes every figure noisier)"
    )
    if with_floor:
        print("ratio = daemon / floor in this run (version depth 32: / floor 1 conn unpipelined)")
    t = m.get("tls") or {}
    if t.get("ran"):
        print(
            "tls rows: the daemon over TLS; floor column = the daemon over plaintext TCP "
            f"(same rounds), ratio = TLS / TCP; {t.get('version')} {t.get('cipher')}, "
            f"{t.get('key')} certificate" + (", client certificates" if t.get("mutual") else "")
        )
    ref = m.get("reference") or {}
    if ref:
        print(
            "reference rows: floor column = the C reference server (bench/reference_server.c) "
            "linking the library the daemon serves, same rounds; ratio = mytimerd / reference"
        )
        for variant, how in ref.items():
            env = " ".join(f"{k}={'(unset)' if v is None else v}" for k, v in how["env"].items())
            args = " ".join(how["daemon_args"]) or "(its defaults)"
            print(f"  {variant}: {how['library']}, {env}, daemon arguments {args}")
    print()
    for i, row in enumerate(table):
        cells = [
            str(c).rjust(widths[j]) if j in right else str(c).ljust(widths[j])
            for j, c in enumerate(row)
        ]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    targets = result["targets"]
    if targets:
        n_pass = sum(1 for r in targets if r.get("result") == "PASS")
        print(f"targets: {n_pass}/{len(targets)} PASS")
    for n in result["notes"]:
        print(f"note: {n}")
