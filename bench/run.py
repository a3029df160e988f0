#!/usr/bin/env python3
"""mytimerd benchmark harness (issue 6). Not part of the test suite.

    .venv/bin/python bench/run.py [--quick] [--out bench/results] [--daemon-cmd CMD]

Builds bench/floor_server and bench/loadgen (make -C bench), then runs every
scenario against the floor server and against the daemon, prints a table with
ratios to the floor and PASS/FAIL against the issue-6 targets, and writes the
same figures to OUT/latest.json (plus OUT/latency.png and raw latency files).
See bench/README.md.

Only unix sockets and 127.0.0.1 are used. Every child runs in its own process
group and is killed on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
LOADGEN = BUILD / "loadgen"
FLOOR = BUILD / "floor_server"
LOOPBACK = "127.0.0.1"
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

VERSION_REQ = (7).to_bytes(4, "big") + b"version" + (1).to_bytes(4, "big") + b"\xa0"
VERSION_RESP = bytes.fromhex("0000000000000011706e696d2d74696d65722076302e312e30")

# issue-6 targets
T_RATIO_1CONN = 0.30
T_RATIO_16CONN = 0.30
T_RATIO_PIPE = 1.0
T_BURST_MS = 150.0
T_COLD_MS = 150.0
T_IDLE_RSS_MB = 150.0
T_IDLE_P50_X = 2.0
# issue 12: TLS throughput vs the daemon's own plaintext TCP in the same run
T_RATIO_TLS = 0.50
# issue 11: event fan-out: subscriber counts; every subscriber gets every event, none cut off
FANOUT_SUBS = (1, 10, 100)
FANOUT_RATE = 500  # events/s offered in the latency run (100 subs: 50,000 deliveries/s)
FANOUT_DRIVER = ("4", "4")  # driver connections, depth each, in the throughput run

# ---------------------------------------------------------------- children

_children: list[subprocess.Popen[Any]] = []


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # in the child before exec: SIGTERM when the harness dies, even by SIGKILL
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
    p = subprocess.Popen(
        cmd, start_new_session=True, cwd=kw.pop("cwd", ROOT), preexec_fn=_die_with_parent, **kw
    )
    _children.append(p)
    return p


def stop(p: subprocess.Popen[Any], grace: float = 3.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)
    # the group may still hold children even if the leader is gone
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=grace)
    if p in _children:
        _children.remove(p)


def stop_all() -> None:
    for p in list(_children):
        stop(p, grace=2.0)


def _on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def version_call(family: int, addr: Any, timeout: float = 1.0) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(addr)
            s.sendall(VERSION_REQ)
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(VERSION_RESP) and time.monotonic() < deadline:
                chunk = s.recv(len(VERSION_RESP) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == VERSION_RESP
    except OSError:
        return False


def daemon_cut_off(path: str, timeout: float = 2.0) -> int | None:
    """The daemon's own count of subscribers cut off (mytimerd.stats events.cutOff),
    or None if it cannot be had (no such method, cbor2 missing, no answer)."""
    try:
        import cbor2

        m = b"mytimerd.stats"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(len(m).to_bytes(4, "big") + m + (1).to_bytes(4, "big") + b"\xa0")
            got = b""
            while len(got) < 8 or len(got) < 8 + int.from_bytes(got[4:8], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                got += chunk
        if got[:4] != b"\0\0\0\0":
            return None
        cut = cbor2.loads(got[8 : 8 + int.from_bytes(got[4:8], "big")])["events"]["cutOff"]
        return int(cut)
    except Exception:  # whatever the reason, the figure is just not there
        return None


def tls_version_call(port: int, tls: TLSFiles, timeout: float = 1.0) -> bool:
    """A version call over TLS (the readiness check of the TLS daemon)."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        if tls.mutual:
            ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with (
            socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=LOOPBACK) as s,
        ):
            s.sendall(VERSION_REQ)
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(VERSION_RESP) and time.monotonic() < deadline:
                chunk = s.recv(len(VERSION_RESP) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == VERSION_RESP
    except (OSError, ssl.SSLError):
        return False


class TLSFiles:
    """Test certificates made at run time: a CA, a server certificate for
    127.0.0.1/localhost and a client certificate, all ECDSA P-256, valid one day."""

    KEY = "ECDSA P-256"

    def __init__(self, d: Path, mutual: bool) -> None:
        self.dir, self.mutual = d, mutual
        self.ca = d / "ca.pem"
        self.server_cert, self.server_key = d / "server.pem", d / "server.key"
        self.client_cert, self.client_key = d / "client.pem", d / "client.key"

    def make(self) -> None:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.dir.mkdir(mode=0o700, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        before, after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write_key(k: ec.EllipticCurvePrivateKey, path: Path) -> None:
            path.write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("mytimerd bench CA"))
            .issuer_name(name("mytimerd bench CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

        def leaf(cn: str, san: list[x509.GeneralName], usage: Any, cert: Path, key: Path) -> None:
            k = ec.generate_private_key(ec.SECP256R1())
            c = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(ca.subject)
                .public_key(k.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(before)
                .not_valid_after(after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
                .sign(ca_key, hashes.SHA256())
            )
            cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
            write_key(k, key)

        leaf(
            "localhost",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))],
            ExtendedKeyUsageOID.SERVER_AUTH,
            self.server_cert,
            self.server_key,
        )
        leaf(
            "mytimerd-bench-client",
            [x509.DNSName("mytimerd-bench-client")],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            self.client_cert,
            self.client_key,
        )

    def server_args(self) -> list[str]:
        a = ["--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key)]
        return a + (["--tls-client-ca", str(self.ca)] if self.mutual else [])

    def client_args(self) -> list[str]:
        a = ["--tls", "--tls-ca", str(self.ca)]
        if self.mutual:
            a += ["--tls-cert", str(self.client_cert), "--tls-key", str(self.client_key)]
        return a


def descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10000:
        cur = todo.pop()
        kids = [c for c, pp in parent.items() if pp == cur]
        out.extend(kids)
        todo.extend(kids)
    return out


def rss_kb(pid: int) -> int:
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of a process and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / tick


def fd_count(pid: int) -> int:
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- servers


class Server:
    """A server under test (the floor or the daemon) on one unix + one TCP socket."""

    def __init__(self, name: str, cmd: list[str], extra: list[str], workdir: Path) -> None:
        self.name, self.cmd, self.extra, self.workdir = name, cmd, extra, workdir
        self.proc: subprocess.Popen[Any] | None = None
        self.unix = str(workdir / f"{name}.sock")
        self.port = 0
        self.log = workdir / f"{name}.log"
        self.starts = 0
        self.error = ""
        self.label = name  # the first part of its raw results' keys

    def transport(self, transport: str) -> str:
        """What a scenario's transport is called in keys and rows for this server."""
        return transport

    def target(self, transport: str) -> list[str]:
        if transport == "unix":
            return ["--unix", self.unix]
        return ["--tcp", LOOPBACK, str(self.port)]

    def ready(self) -> bool:
        return version_call(socket.AF_UNIX, self.unix, 0.5) and version_call(
            socket.AF_INET, (LOOPBACK, self.port), 0.5
        )

    def start(self, timeout: float = 20.0) -> bool:
        self.stop()
        self.port = free_port()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix)
        argv = [*self.cmd, "--unix", self.unix, "--tcp", LOOPBACK, str(self.port), *self.extra]
        self.starts += 1
        with open(self.log, "ab") as logf:
            logf.write(f"\n=== start {self.starts}: {shlex.join(argv)}\n".encode())
            logf.flush()
            self.proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"exited with {self.proc.returncode}: {tail(self.log, 4)}"
                return False
            if self.ready():
                self.error = ""
                return True
            time.sleep(0.05)
        self.error = f"not answering version within {timeout:.0f}s: {tail(self.log, 4)}"
        self.stop()
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> bool:
        return self.alive() or self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class TLSServer(Server):
    """The daemon again, its TCP listener speaking TLS (--tls-cert/--tls-key): a
    second process, since TLS covers every TCP listener of a daemon. Its scenarios
    use transport "tcp" and are keyed and shown as daemon / tls."""

    def __init__(
        self, name: str, cmd: list[str], extra: list[str], workdir: Path, tls: TLSFiles
    ) -> None:
        super().__init__(name, cmd, [*extra, *tls.server_args()], workdir)
        self.tls = tls
        self.label = "daemon"

    def transport(self, transport: str) -> str:
        return "tls" if transport == "tcp" else transport

    def target(self, transport: str) -> list[str]:
        if transport == "tcp":
            return [*super().target("tcp"), *self.tls.client_args()]
        return super().target(transport)

    def ready(self) -> bool:
        return version_call(socket.AF_UNIX, self.unix, 0.5) and tls_version_call(
            self.port, self.tls, 0.5
        )


# ---------------------------------------------------------------- loadgen


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.out = Path(args.out).resolve()
        self.raw: dict[str, Any] = {}
        self.notes: list[str] = []
        self.t0 = time.monotonic()
        self.load0 = [round(x, 2) for x in os.getloadavg()]
        self.current: Server | None = None  # the server the running scenario targets
        self.tls_skipped = True  # until the TLS scenarios are set up
        self.fanout_elapsed = 0.0
        self.budget = 135.0 if self.quick else 365.0
        self.rounds = 2 if self.quick else 3
        if self.quick:
            self.dur, self.warm = 0.5, 0.2
            self.lat_dur, self.lat_warm = 1.5, 0.5
            self.idle_dur = 0.8
            self.reps = 2
            self.fo_dur, self.fo_warm = 0.8, 0.2
        else:
            self.dur, self.warm = 1.5, 0.3
            self.lat_dur, self.lat_warm = 4.0, 1.0
            self.idle_dur = 1.5
            self.reps = 3
            self.fo_dur, self.fo_warm = 2.5, 0.5

    def over_budget(self) -> bool:
        return time.monotonic() - self.t0 > self.budget

    def loadgen(
        self, key: str, target: list[str], args: list[str], timeout: float
    ) -> dict[str, Any]:
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

    # ------------------------------------------------------------ scenarios

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
                f"  {key:<40} {agg.get('calls_per_s', 0):>12,.0f} {unit} (rounds {rounds})"
                f"  errors {errors}",
                flush=True,
            )
            tls_errors = sorted({r["tls_error"] for r in rs if r.get("tls_error")})
            if tls_errors:
                self.notes.append(f"{key}: TLS error: {'; '.join(tls_errors)}")

    def open_loop(
        self, srv: Server, transport: str, rate: float = 5000, conns: int = 16
    ) -> dict[str, Any]:
        key = f"{srv.name}.{transport}.open{int(rate)}"
        self.current = srv
        if not srv.ensure():
            fail: dict[str, Any] = {"errors": -1, "failure": srv.error}
            self.raw[key] = fail
            return fail
        latfile = self.out / f"lat_{srv.name}_{transport}_{int(rate)}.txt"
        a = [
            "--conns",
            str(conns),
            "--rate",
            str(rate),
            "--duration",
            str(self.lat_dur),
            "--warmup",
            str(self.lat_warm),
            "--drain",
            "2",
            "--latency-out",
            str(latfile),
        ]
        r = self.loadgen(key, srv.target(transport), a, timeout=self.lat_dur + self.lat_warm + 30)
        r["latency_file"] = str(latfile)
        lat = r.get("lat_us", {})
        print(
            f"  {key:<40} p50 {lat.get('p50', -1):>9.1f} us  p99 {lat.get('p99', -1):>9.1f} us"
            f"  errors {r.get('errors')}",
            flush=True,
        )
        return r

    def burst(self, srv: Server, transport: str) -> dict[str, Any]:
        key = f"{srv.name}.{transport}.burst64_echo100"
        self.current = srv
        walls: list[float] = []
        errors = 0
        runs = []
        for i in range(self.reps):
            if not srv.ensure():
                errors = -1
                break
            r = self.loadgen(
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
        self.raw[key] = res
        print(f"  {key:<40} wall ms {walls}  errors {errors}", flush=True)
        return res

    def fanout(self, srv: Server, subs: int) -> None:
        """Event fan-out (issue 11): `subs` connections subscribe to on_echo_fired on the
        unix socket while driver connections make echo calls (each fires one event).
        Two loadgen runs: a closed loop (4 connections x depth 4: as fast as the daemon
        goes) for events fired/delivered per second, then an open loop at FANOUT_RATE
        calls/s for the delivery latency. Errors include subscribers cut off or lost
        and every event a subscriber missed."""
        for kind in ("closed", "rate"):
            key = f"{srv.name}.unix.fanout{subs}" + (
                f".rate{FANOUT_RATE}" if kind == "rate" else ""
            )
            self.current = srv
            if not srv.ensure():
                self.raw[key] = {"errors": -1, "failure": srv.error}
                continue
            drive = (
                ["--conns", FANOUT_DRIVER[0], "--depth", FANOUT_DRIVER[1]]
                if kind == "closed"
                else ["--conns", "4", "--rate", str(FANOUT_RATE)]
            )
            a = [
                "--fanout", str(subs), *drive, "--duration", str(self.fo_dur),
                "--warmup", str(self.fo_warm), "--drain", "5", "--timeout", "10",
            ]  # fmt: skip
            assert srv.proc is not None
            pid = srv.proc.pid
            cut0 = daemon_cut_off(srv.unix)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            r = self.loadgen(key, srv.target("unix"), a, timeout=self.fo_dur + self.fo_warm + 40)
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
                self.notes.append(
                    f"{key}: errors {r.get('errors')}: cut off {r.get('daemon_cut_off')} (daemon) "
                    f"/ {r.get('cut_off')} (SlowSubscriber seen), subscribers "
                    f"lost {r.get('subs_lost')} / unacknowledged {r.get('subs_unacked')}, events "
                    f"missed {r.get('events_missed')}, bad {r.get('events_bad')}, mismatches "
                    f"{r.get('mismatches')}{', ' + r['failure'] if r.get('failure') else ''}"
                )

    def cold_start(self, name: str, cmd: list[str]) -> dict[str, Any]:
        key = f"{name}.cold_start"
        self.current = None
        walls: list[float] = []
        spawn_ms: list[float] = []
        errors = 0
        failure = ""
        ssa = shutil.which("systemd-socket-activate")
        if not ssa:
            res = {"errors": -1, "failure": "systemd-socket-activate not installed"}
            self.raw[key] = res
            return res
        for i in range(self.reps):
            path = self.workdir / f"cold-{name}-{i}.sock"
            log = self.workdir / f"cold-{name}-{i}.log"
            # systemd-socket-activate gives the daemon a clean environment: pass on
            # the variables a Python daemon (or an A/B build) may depend on
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
                r = self.loadgen(
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
        self.raw[key] = res
        print(f"  {key:<40} first connect -> first answer ms {walls}  errors {errors}", flush=True)
        return res

    def idle(self, srv: Server, n_idle: int) -> dict[str, Any]:
        """Fresh server; probe p50 idle, open n_idle silent connections (held by one
        loadgen), RSS, probe p50 twice while they are held, close them, probe again.
        p50 ratio = median(probes during) / median(probes before and after)."""
        key = f"{srv.name}.unix.idle{n_idle}"
        self.current = srv
        res: dict[str, Any] = {"idle": n_idle}
        if not srv.start():  # a fresh process, so earlier scenarios do not count
            res.update(errors=-1, failure=srv.error)
            self.raw[key] = res
            return res
        assert srv.proc is not None
        pid = srv.proc.pid
        time.sleep(0.3)
        res["rss_kb_before"] = rss_kb(pid)
        res["fds_before"] = fd_count(pid)
        probe = [
            "--conns", "4", "--rate", "1000", "--duration", str(self.idle_dur),
            "--warmup", "0.2", "--drain", "2",
        ]  # fmt: skip
        errors = 0

        def run_probe(name: str) -> float | None:
            nonlocal errors
            r = self.loadgen(f"{key}.{name}", srv.target("unix"), probe, timeout=self.idle_dur + 30)
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
        wait_s = 15.0 if self.quick else 30.0
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
        self.raw[key] = res
        rss = res.get("rss_kb_idle") or 0
        print(
            f"  {key:<40} RSS {res['rss_kb_before'] / 1024:.1f} -> {rss / 1024:.1f} MB, "
            f"accepted {res.get('server_accepted')}, p50 idle {[p_before, p_after]} "
            f"during {p_during} us, errors {errors}",
            flush=True,
        )
        srv.stop()
        return res

    # ------------------------------------------------------------ main

    def run(self) -> int:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="mytimerd-bench-"))
        atexit.register(shutil.rmtree, self.workdir, True)

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        n_idle = args.idle_conns
        if hard != resource.RLIM_INFINITY and n_idle + 200 > hard:
            n_idle = max(0, hard - 200)
            self.notes.append(
                f"RLIMIT_NOFILE hard limit {hard}: idle connections reduced to {n_idle}"
            )

        print("building bench/ (make -C bench) ...", flush=True)
        if subprocess.run(["make", "-s", "-C", str(BENCH)]).returncode != 0:
            print("bench: building the C programs failed (see above)", file=sys.stderr)
            return 2

        daemon_cmd = (
            shlex.split(args.daemon_cmd) if args.daemon_cmd else [sys.executable, "-m", "mytimerd"]
        )
        daemon_extra = shlex.split(args.daemon_args)
        floor = Server("floor", [str(FLOOR), "--lifetime", "900"], [], self.workdir)
        daemon = Server("daemon", daemon_cmd, daemon_extra, self.workdir)
        tls = TLSFiles(self.workdir / "tls", mutual=args.tls_mutual)
        daemon_tls: TLSServer | None = None
        servers = [floor]
        if not floor.start():
            print(f"floor server does not start: {floor.error}", file=sys.stderr)
            return 2
        daemon_ok = False
        if not args.floor_only:
            daemon_ok = daemon.start()
            if daemon_ok:
                servers.append(daemon)
            else:
                self.notes.append(f"daemon unavailable ({shlex.join(daemon_cmd)}): {daemon.error}")
                print(f"!! daemon unavailable, floor only: {daemon.error}", flush=True)
        if daemon_ok and not args.no_tls:
            try:
                tls.make()
            except Exception as e:  # cryptography missing or broken: no TLS rows
                self.notes.append(f"TLS scenarios skipped: cannot make test certificates: {e!r}")
            else:
                daemon_tls = TLSServer("daemon-tls", daemon_cmd, daemon_extra, self.workdir, tls)
                self.tls_skipped = False
        elif args.no_tls:
            self.notes.append("TLS scenarios skipped (--no-tls)")
        transports = ["unix", "tcp"]

        # Floor and daemon run side by side (the one not measured is idle) and each
        # scenario is measured on the floor and then at once on the daemon, so that
        # the noise of this small shared machine hits both figures of a ratio alike.
        # TLS (issue 12): a second daemon serves TLS on its TCP port; "version, 1 conn"
        # and "16 conns" measure it in the same rounds as the plaintext TCP daemon
        # (floor, daemon TCP, daemon TLS, in turn). It runs only for the TCP rows and the
        # handshake scenario, then stops.
        print(f"scenarios ({'quick' if self.quick else 'full'}) ...", flush=True)
        for t in transports:
            with_tls = list(servers)
            if t == "tcp" and daemon_tls is not None:
                if daemon_tls.start():
                    with_tls.append(daemon_tls)
                else:
                    self.notes.append(f"TLS daemon unavailable: {daemon_tls.error}")
                    print(f"!! TLS daemon unavailable: {daemon_tls.error}", flush=True)
                    daemon_tls = None
            for conns, depth in ((1, 1), (16, 1), (1, 32)):
                self.closed(with_tls if depth == 1 else servers, t, conns, depth)
            if daemon_ok:
                self.closed([daemon], t, 16, 1, method="echo", delay=0)
        if daemon_tls is not None:
            for conns in (1, 4):
                self.closed([daemon_tls], "tcp", conns, 1, handshakes=True)
            daemon_tls.stop()
        for t in transports:
            for srv in servers:
                if not self.over_budget():
                    self.open_loop(srv, t)
        if daemon_ok:
            for t in transports:
                if not self.over_budget():
                    self.burst(daemon, t)
            t_fo = time.monotonic()
            for subs in FANOUT_SUBS:
                if not self.over_budget():
                    self.fanout(daemon, subs)
            self.fanout_elapsed = round(time.monotonic() - t_fo, 1)
        for srv in servers:
            srv.stop()
        if not self.over_budget():
            self.cold_start("floor", [str(FLOOR), "--lifetime", "60"])
        if daemon_ok and not self.over_budget():
            self.cold_start("daemon", [*daemon_cmd, "--log-level", "warning"])
        if n_idle > 0:
            for srv in servers:
                if not self.over_budget():
                    self.idle(srv, n_idle)
        else:
            self.notes.append("idle-connection scenario skipped")
        if self.over_budget():
            self.notes.append(f"time budget of {self.budget:.0f}s exceeded: some scenarios skipped")
        stop_all()

        rows = self.rows(daemon_ok, n_idle)
        notes: list[str] = []
        for n in self.notes:
            n = n if len(n) <= 400 else n[:400] + " ..."
            if n not in notes:
                notes.append(n)
        self.notes = notes
        result = {
            "meta": {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "mode": "quick" if self.quick else "full",
                "host": platform.node(),
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "daemon_cmd": shlex.join(daemon_cmd),
                "daemon_args": shlex.join(daemon_extra),
                "daemon_available": daemon_ok,
                "closed_loop_s": self.dur,
                "closed_loop_rounds": self.rounds,
                "warmup_s": self.warm,
                "open_loop_s": self.lat_dur,
                "fanout_s": self.fo_dur,
                "fanout_subscribers": list(FANOUT_SUBS),
                "fanout_rate": FANOUT_RATE,
                "fanout_elapsed_s": self.fanout_elapsed,
                "idle_connections": n_idle,
                "elapsed_s": round(time.monotonic() - self.t0, 1),
                "loadavg_start": self.load0,
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "server_starts": {
                    "floor": floor.starts,
                    "daemon": daemon.starts,
                    "daemon_tls": daemon_tls.starts if daemon_tls is not None else 0,
                },
                "tls": self.tls_meta(tls, daemon_tls is not None),
            },
            "rows": rows,
            "targets": [r for r in rows if r.get("target")],
            "notes": self.notes,
            "raw": self.raw,
        }
        (self.out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
        self.print_table(result)
        png = self.plot(servers)
        print(f"\nwrote {self.out / 'latest.json'}" + (f" and {png}" if png else ""))
        fails = [r for r in rows if r.get("result") == "FAIL"]
        return 1 if (fails and args.strict) else 0

    # ------------------------------------------------------------ report

    def tls_meta(self, tls: TLSFiles, ran: bool) -> dict[str, Any]:
        seen: dict[str, Any] = next(
            (
                r
                for k, r in self.raw.items()
                if k.startswith("daemon.tls.") and r.get("tls_version")
            ),
            {},
        )
        return {
            "ran": ran,
            "key": TLSFiles.KEY,
            "mutual": tls.mutual,
            "version": seen.get("tls_version"),
            "cipher": seen.get("tls_cipher"),
        }

    def rows(self, daemon_ok: bool, n_idle: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        raw = self.raw

        def verdict(ok: bool | None) -> str:
            if ok is None:
                return "SKIP" if not daemon_ok else "FAIL"
            return "PASS" if ok else "FAIL"

        def good(r: dict[str, Any] | None) -> bool:
            return bool(r) and r.get("errors", -1) == 0  # type: ignore[union-attr]

        for t in ("unix", "tcp"):
            f1 = raw.get(f"floor.{t}.version.c1.d1")
            f16 = raw.get(f"floor.{t}.version.c16.d1")
            fp = raw.get(f"floor.{t}.version.c1.d32")
            d1 = raw.get(f"daemon.{t}.version.c1.d1")
            d16 = raw.get(f"daemon.{t}.version.c16.d1")
            dp = raw.get(f"daemon.{t}.version.c1.d32")
            de = raw.get(f"daemon.{t}.echo.c16.d1")

            def cps(r: dict[str, Any] | None) -> float | None:
                return r.get("calls_per_s") if good(r) else None  # type: ignore[union-attr]

            def thr_row(
                name: str,
                fr: Any,
                dr: Any,
                base: Any,
                target: float | None,
                tdesc: str,
                t: str = t,
            ) -> None:
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
                    row["result"] = verdict(None if ratio is None else ratio >= target)
                rows.append(row)

            thr_row("version, 1 conn", f1, d1, f1, T_RATIO_1CONN, f">= {T_RATIO_1CONN:.2f}x floor")
            thr_row(
                "version, 16 conns",
                f16,
                d16,
                f16,
                T_RATIO_16CONN,
                f">= {T_RATIO_16CONN:.2f}x floor",
            )
            thr_row(
                "version, depth 32, 1 conn",
                fp,
                dp,
                f1,
                T_RATIO_PIPE,
                f">= {T_RATIO_PIPE:.1f}x floor 1 conn",
            )
            for row, dr_, base_ in ((-3, d1, f1), (-2, d16, f16), (-1, dp, f1)):
                fl = (base_ or {}).get("rounds_calls_per_s") or []
                dl = (dr_ or {}).get("rounds_calls_per_s") or []
                if fl and dl and good(dr_) and good(base_):
                    rows[row]["ratio_per_round"] = [
                        d / f if f else None for f, d in zip(fl, dl, strict=False)
                    ]
            dpv, fpv = cps(dp), cps(fp)
            rows[-1]["ratio_to_floor_pipelined"] = dpv / fpv if dpv is not None and fpv else None
            thr_row("echo(0), 16 conns", None, de, None, None, "")

            fo = raw.get(f"floor.{t}.open5000")
            do = raw.get(f"daemon.{t}.open5000")
            for q in ("p50", "p99"):
                fv = fo["lat_us"][q] if good(fo) else None  # type: ignore[index]
                dv = do["lat_us"][q] if good(do) else None  # type: ignore[index]
                rows.append(
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

            b = raw.get(f"daemon.{t}.burst64_echo100")
            bv = b.get("wall_ms_median") if b and b.get("errors") == 0 else None
            rows.append(
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
                    "result": verdict(None if bv is None else bv <= T_BURST_MS),
                }
            )

        # TLS: the daemon over TLS against the daemon over plaintext TCP, same rounds;
        # the floor column holds the plaintext figure (the ratio's base)
        for name, conns in (("version, 1 conn", 1), ("version, 16 conns", 16)):
            plain = raw.get(f"daemon.tcp.version.c{conns}.d1")
            sec = raw.get(f"daemon.tls.version.c{conns}.d1")
            pv = plain.get("calls_per_s") if good(plain) else None  # type: ignore[union-attr]
            sv = sec.get("calls_per_s") if good(sec) else None  # type: ignore[union-attr]
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
                # SKIP when TLS was not tried (--no-tls, no certificates, no daemon);
                # a TLS daemon that does not start or fails its calls is a FAIL
                "result": "SKIP"
                if self.tls_skipped
                else verdict(None if ratio is None else ratio >= T_RATIO_TLS),
            }
            pl = (plain or {}).get("rounds_calls_per_s") or []
            sl = (sec or {}).get("rounds_calls_per_s") or []
            if pl and sl and good(plain) and good(sec):
                trow["ratio_per_round"] = [
                    d / f if f else None for f, d in zip(pl, sl, strict=False)
                ]
            rows.append(trow)
        for conns in (1, 4):
            h = raw.get(f"daemon.tls.handshakes.c{conns}")
            rows.append(
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

        # event fan-out (issue 11): daemon only, unix; no floor (it has no events)
        for subs in FANOUT_SUBS:
            fo = raw.get(f"daemon.unix.fanout{subs}")
            fr = raw.get(f"daemon.unix.fanout{subs}.rate{FANOUT_RATE}")
            name = f"event fan-out, {subs} sub{'s' if subs > 1 else ''}"
            errs = [(r or {}).get("errors") for r in (fo, fr)]
            err_sum = (
                sum(e if e >= 0 else 1 for e in errs if e is not None) if None not in errs else None
            )
            rows.append(
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
            rows.append(
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
                    "result": verdict(None if fo is None or fr is None else good(fo) and good(fr)),
                }
            )
            for q in ("p50", "p99"):
                rows.append(
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

        fc, dc = raw.get("floor.cold_start"), raw.get("daemon.cold_start")
        fcv = fc.get("wall_ms_median") if fc and fc.get("errors") == 0 else None
        dcv = dc.get("wall_ms_median") if dc and dc.get("errors") == 0 else None
        rows.append(
            {
                "scenario": "cold start (socket activation)",
                "transport": "unix",
                "unit": "ms (median)",
                "floor": fcv,
                "daemon": dcv,
                "floor_errors": (fc or {}).get("errors"),
                "daemon_errors": (dc or {}).get("errors"),
                "daemon_runs": (dc or {}).get("wall_ms_runs"),
                "ratio": dcv / fcv if dcv is not None and fcv else None,
                "target": f"<= {T_COLD_MS:.0f} ms",
                "threshold": T_COLD_MS,
                "result": verdict(None if dcv is None else dcv <= T_COLD_MS),
            }
        )

        fi, di = raw.get(f"floor.unix.idle{n_idle}"), raw.get(f"daemon.unix.idle{n_idle}")

        def mb(r: dict[str, Any] | None) -> float | None:
            if not r or r.get("errors") != 0 or not r.get("rss_kb_idle"):
                return None
            return float(max(r["rss_kb_idle"], r.get("rss_kb_after") or 0)) / 1024.0

        fmb, dmb = mb(fi), mb(di)
        rows.append(
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
                "result": verdict(None if dmb is None else dmb <= T_IDLE_RSS_MB),
            }
        )

        def p50x(r: dict[str, Any] | None) -> float | None:
            return r.get("p50_ratio") if r and r.get("errors") == 0 else None

        fx, dx = p50x(fi), p50x(di)
        rows.append(
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
                "result": verdict(None if dx is None else dx <= T_IDLE_P50_X),
            }
        )
        return rows

    def print_table(self, result: dict[str, Any]) -> None:
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
            f"mytimerd benchmark, {m['mode']} run, {m['when']}, "
            f"{m['cpus']} CPUs, kernel {m['kernel']}"
        )
        print(
            f"daemon: {m['daemon_cmd']} {m['daemon_args']}"
            + ("" if m["daemon_available"] else "   (NOT AVAILABLE: floor only)")
        )
        print(
            f"load average at start {m['loadavg_start'][0]}, at end {m['loadavg_end'][0]} "
            "(a busy machine makes every figure noisier)"
        )
        print("ratio = daemon / floor in this run (version depth 32: / floor 1 conn unpipelined)")
        t = m.get("tls") or {}
        if t.get("ran"):
            print(
                "tls rows: the daemon over TLS; floor column = the daemon over plaintext TCP "
                f"(same rounds), ratio = TLS / TCP; {t.get('version')} {t.get('cipher')}, "
                f"{t.get('key')} certificate" + (", client certificates" if t.get("mutual") else "")
            )
        print()
        for i, row in enumerate(table):
            cells = [
                str(c).rjust(widths[j]) if j in right else str(c).ljust(widths[j])
                for j, c in enumerate(row)
            ]
            print("  ".join(cells).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        targets = result["targets"]
        n_pass = sum(1 for r in targets if r.get("result") == "PASS")
        print(f"\ntargets: {n_pass}/{len(targets)} PASS")
        for n in result["notes"]:
            print(f"note: {n}")

    def plot(self, servers: list[Server]) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.notes.append(
                "matplotlib not installed (pip install -r bench/requirements.txt): no plot"
            )
            print("note: matplotlib not installed: no plot (pip install -r bench/requirements.txt)")
            return None
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
        styles = {"floor": "tab:blue", "daemon": "tab:red"}
        drawn = 0
        for srv in servers:
            for t, ls in (("unix", "-"), ("tcp", "--")):
                path = self.out / f"lat_{srv.name}_{t}_5000.txt"
                r = self.raw.get(f"{srv.name}.{t}.open5000")
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
            f"mytimerd vs floor, {self.raw and time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        fig.tight_layout()
        png = self.out / "latency.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        return png


def main() -> int:
    ap = argparse.ArgumentParser(description="mytimerd benchmark harness (floor vs daemon)")
    ap.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
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
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    atexit.register(stop_all)
    try:
        return Bench(args).run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping children", file=sys.stderr)
        return 130
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
