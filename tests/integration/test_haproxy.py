"""Three daemons behind HAProxy (systemd/examples/haproxy-mytimerd.cfg), under load.

Five network namespaces made here: three "hosts" with one daemon each
(timer1..3), HAProxy on a fourth, the clients on a fifth, all on one bridge
inside the balancer's namespace. The addresses (10.205.N.0/24) exist only in
those namespaces; nothing leaves this machine.

HAProxy runs the shipped example with only what must differ here rewritten
(addresses, file paths, logging to stderr) and its check timing scaled down
four times (inter 250 ms, fall 2, timeout check 250 ms): each daemon runs with
--drain-grace 1.25 s, the shipped 5 s scaled the same way, longer than
inter x fall + timeout check. timer3 runs tests/doubles/stuck_timer.c, whose
control file makes its library stop answering (the probe fails, ping says
accepting: false); the other two run the bundled native library.

Each scenario runs its own steady load (tests/integration/haproxy_load.py, in
the clients' namespace). Its figures go through :func:`figure`: printed as
they are measured (``pytest -s``) and again in the "figures" section that ends
the run (tests/integration/conftest.py), which CI's log shows without -s.

A client that keeps its connection stays on its daemon through --drain-grace
(HAProxy moves connections, not calls). When the drain begins, the daemon
answers what it has not started mytimerd.ShuttingDown ("not started"), and
mytimerd's client sends such a call again on a fresh connection, which HAProxy
gives to a daemon still in rotation: mytimerd's clients lose no call. A raw
client with no such logic sees those answers as errors; they are counted and
printed, not asserted (the bound is for mytimerd's clients).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.integration.conftest import record_figure
from tests.integration.helpers import clean_env, wait_until
from tests.support.certs import Authority
from tests.support.daemon import mytimerd_command
from tests.support.native import build_stuck_double

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "systemd" / "examples" / "haproxy-mytimerd.cfg"
PORT = 9099
TLS_PORT = 9443
NAMES = ("timer1", "timer2", "timer3")
SERVICE_NAME = "timer.example"  # the name clients of the TLS front end verify

#: The shipped timing, scaled down four times (see the module doc).
INTER = 0.25
FALL = 2
TIMEOUT_CHECK = 0.25
DRAIN_GRACE = 1.25
PROBE_TIMEOUT = 0.5
CALL_TIMEOUT = 1.0  # the daemons' --timeout: a call the stuck library holds fails after it
#: How long after os.kill a kept connection's call may still be sent to the
#: killed daemon: until SIGKILL has closed its sockets and HAProxy has passed
#: the close on to the client (well under a check interval).
HELD_SLACK = 0.05
assert DRAIN_GRACE > INTER * FALL + TIMEOUT_CHECK


def ip(*args: str) -> None:
    """Run ``ip ARGS``; fail with its stderr."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"


def in_ns(ns: str, *cmd: str) -> list[str]:
    """``cmd`` run inside network namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *cmd]


@dataclass
class Host:
    """One daemon host: its namespace, address and daemon process."""

    name: str
    ns: str
    addr: str
    log: Path
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon (plaintext TCP on the host's address) and wait until it serves."""
        with open(self.log, "ab") as err:
            start = err.tell()
            self.proc = subprocess.Popen(
                in_ns(self.ns, *mytimerd_command(*self.args)),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=clean_env(self.env),
                cwd=REPO,
            )
        proc = self.proc

        def ready() -> bool:
            text = self.log.read_bytes()[start:].decode(errors="replace")
            return proc.poll() is not None or "ready: serving" in text

        wait_until(ready, 15, f"{self.name} to serve")
        assert proc.poll() is None, self.log.read_text(errors="replace")

    def pid(self) -> int:
        """The daemon's pid (``ip netns exec`` execs it: the same process)."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """Kill the daemon if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@dataclass
class Cluster:
    """The five namespaces, three daemons and HAProxy."""

    tmp: Path
    lb_ns: str
    cli_ns: str
    lb_addr: str
    hosts: dict[str, Host]
    stats_sock: Path
    haproxy: subprocess.Popen[bytes] | None = None
    haproxy_log: Path = field(default_factory=Path)
    stuck_control: Path = field(default_factory=Path)

    def stat(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's ``show stat``: (proxy, server) -> its row."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.stats_sock))
            s.sendall(b"show stat\n")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
        text = b"".join(chunks).decode(errors="replace").lstrip("# ")
        return {(r["pxname"], r["svname"]): r for r in csv.DictReader(io.StringIO(text))}

    def status(self, server: str, backend: str = "mytimerd") -> str:
        """A server's check status: UP, DOWN, "UP 1/2" (going down), ..."""
        return self.stat()[(backend, server)]["status"]

    def wait_status(
        self, server: str, want: str, timeout: float, backend: str = "mytimerd"
    ) -> float:
        """Wait until ``server`` is exactly ``want``; return the monotonic time seen."""
        wait_until(
            lambda: self.status(server, backend) == want,
            timeout,
            f"{backend}/{server} to be {want} ({self.log_tail()})",
            step=0.005,
        )
        return time.monotonic()

    def all_up(self, timeout: float = 10.0) -> None:
        """Wait until every daemon is UP in the plaintext backend."""
        for name in NAMES:
            self.wait_status(name, "UP", timeout)

    def log_tail(self) -> str:
        """The end of HAProxy's log, for failure messages."""
        return self.haproxy_log.read_text(errors="replace")[-1500:]


@dataclass
class LoadResult:
    """What a load run saw (haproxy_load's summary)."""

    began: float
    ended: float
    workers: list[dict[str, Any]]

    def ok(self, kind: str | None = None) -> Counter[str]:
        """Calls answered, by daemon (of workers of ``kind``, or all)."""
        total: Counter[str] = Counter()
        for w in self.workers:
            if kind is None or w["kind"] == kind:
                total.update(w["ok"])
        return total

    def failures(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Failed calls (of workers of ``kind``, or all)."""
        return [f for w in self.workers if kind in (None, w["kind"]) for f in w["failures"]]

    def rate(self) -> float:
        """Calls answered per second over the run."""
        return sum(self.ok().values()) / (self.ended - self.began)

    def line(self) -> str:
        """Counts per kind of worker: answered, failed (with the errors' kinds)."""
        parts = []
        for kind in sorted({w["kind"] for w in self.workers}):
            errors = Counter(f["error"] for f in self.failures(kind))
            parts.append(
                f"{kind}: {sum(self.ok(kind).values())} ok, {len(self.failures(kind))} failed"
                + (f" {dict(errors)}" if errors else "")
            )
        return "; ".join(parts)


class Load:
    """haproxy_load running in the clients' namespace until :meth:`stop`."""

    def __init__(self, cluster: Cluster, target: str, **workers: int) -> None:
        tag = secrets.token_hex(3)
        self.out = cluster.tmp / f"load-{tag}.json"
        self.stop_file = cluster.tmp / f"load-{tag}.stop"
        argv = [sys.executable, "-m", "tests.integration.haproxy_load", target]
        argv += [str(self.out), str(self.stop_file), "--timeout", "5"]
        for kind, n in workers.items():
            argv += [f"--{kind}", str(n)]
        self.proc = subprocess.Popen(
            in_ns(cluster.cli_ns, *argv),
            cwd=REPO,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> LoadResult:
        """Stop the workers; their summary."""
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out.decode(errors="replace")
        data = json.loads(self.out.read_text())
        return LoadResult(data["began"], data["ended"], data["workers"])

    def kill(self) -> None:
        """Stop it however it is (cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_load(cluster: Cluster, target: str, seconds: float, **workers: int) -> LoadResult:
    """A load of ``seconds`` against ``target``."""
    load = Load(cluster, target, **workers)
    try:
        time.sleep(seconds)
        return load.stop()
    finally:
        load.kill()


#: Scenario load (haproxy_load's kinds): a connection per call (raw frames;
#: mytimerd.client.Client), a connection kept across calls (raw; Client).
SCENARIO_LOAD = {"raw": 2, "oneshot": 1, "persistent": 2, "client": 2}


def haproxy_config(cluster: Cluster, tls_dir: Path) -> str:
    """The shipped example with this test's addresses, paths and scaled timing."""
    text = EXAMPLE.read_text()
    edits: list[tuple[str, str]] = [
        (r"(?m)^    log /dev/log local0 info$", "    log stderr format raw local0 info"),
        (r"/run/haproxy/mytimerd-admin\.sock", str(cluster.stats_sock)),
        (r"(?m)^    bind :9099$", f"    bind {cluster.lb_addr}:{PORT}"),
        (r"(?m)^    bind :9443$", f"    bind {cluster.lb_addr}:{TLS_PORT}"),
        (r"inter 1s fastinter 500ms fall 2 rise 2", "inter 250ms fastinter 125ms fall 2 rise 2"),
        (r"(?m)^    timeout check 1s$", "    timeout check 250ms"),
        (r"/etc/haproxy/mytimerd-ca\.pem", str(tls_dir / "main-ca.pem")),
        (r"/etc/haproxy/mytimerd-check\.pem", str(tls_dir / "check.pem")),
    ]
    for i, name in enumerate(NAMES, 1):
        edits.append((re.escape(f"192.0.2.1{i}:"), f"{cluster.hosts[name].addr}:"))
    for pattern, new in edits:
        text, n = re.subn(pattern, new, text)
        assert n >= 1, f"the example no longer has {pattern!r}: update this test"
    assert "192.0.2." not in text and "/etc/haproxy" not in text, text
    return text


def make_tls(folder: Path) -> Authority:
    """A CA, a server certificate per daemon (timerN.example as the example's
    check-sni/verifyhost, and SERVICE_NAME), HAProxy's check certificate (cert
    and key in one PEM) and a client's (alice)."""
    folder.mkdir()
    ca = Authority(folder, "main")
    for name in NAMES:
        # Its own name (HAProxy's check verifies it) and the service's, which
        # the clients verify whichever daemon HAProxy picks.
        ca.issue(name, dns=(f"{name}.example", SERVICE_NAME), server=True)
    check = ca.issue("haproxy-check")
    (folder / "check.pem").write_bytes(check.cert.read_bytes() + check.key.read_bytes())
    ca.issue("alice")
    return ca


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The namespaces, three daemons and HAProxy; everything removed afterwards."""
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    require(shutil.which("haproxy") is not None, "haproxy is not installed (scripts/setup)")
    tmp = tmp_path_factory.mktemp("haproxy")
    tag = secrets.token_hex(3)
    net = f"10.205.{secrets.randbelow(250) + 1}"
    created: list[str] = []
    double = build_stuck_double()
    stuck_control = tmp / "stuck-control"
    stuck_control.write_text("ok")
    hosts: dict[str, Host] = {}
    for i, name in enumerate(NAMES, 1):
        args = ["--tcp", f"{net}.1{i}", str(PORT), "--name", name]
        args += ["--drain-grace", str(DRAIN_GRACE), "--probe-timeout", str(PROBE_TIMEOUT)]
        args += ["--timeout", str(CALL_TIMEOUT), "--drain-timeout", "3"]
        env: dict[str, str] = {}
        if name == "timer3":
            args += ["--library", str(double)]
            env["STUCK_TIMER_CONTROL"] = str(stuck_control)
        hosts[name] = Host(name, f"mt-{name}-{tag}", f"{net}.1{i}", tmp / f"{name}.log", args, env)
    c = Cluster(
        tmp=tmp,
        lb_ns=f"mt-lb-{tag}",
        cli_ns=f"mt-cli-{tag}",
        lb_addr=f"{net}.1",
        hosts=hosts,
        stats_sock=tmp / "haproxy.sock",
        haproxy_log=tmp / "haproxy.log",
        stuck_control=stuck_control,
    )
    try:
        for ns in [c.lb_ns, c.cli_ns, *(h.ns for h in hosts.values())]:
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        # The bridge lives in the balancer's namespace; every other namespace
        # gets one end of a veth whose other end is on the bridge.
        ip("-n", c.lb_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", c.lb_ns, "addr", "add", f"{c.lb_addr}/24", "dev", "br0")
        ip("-n", c.lb_ns, "link", "set", "br0", "up")
        members = [(h.ns, h.addr, h.name) for h in hosts.values()]
        members.append((c.cli_ns, f"{net}.20", "cli"))
        for ns, addr, short in members:
            ip("-n", c.lb_ns, "link", "add", f"v-{short}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            ip("-n", c.lb_ns, "link", "set", f"v-{short}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        make_tls(tmp / "tls")
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(haproxy_config(c, tmp / "tls"))
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        threads = [threading.Thread(target=h.start) for h in hosts.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in hosts.values():
            assert h.proc is not None and h.proc.poll() is None, h.log.read_text()
        with open(c.haproxy_log, "wb") as log:
            c.haproxy = subprocess.Popen(
                in_ns(c.lb_ns, "haproxy", "-db", "-f", str(cfg)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_until(c.stats_sock.exists, 10, "HAProxy's stats socket")
        c.all_up()
        yield c
    finally:
        if c.haproxy is not None and c.haproxy.poll() is None:
            c.haproxy.terminate()
            c.haproxy.wait(10)
        for h in hosts.values():
            h.stop()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert tag not in left, f"namespaces left behind: {left}"


def figure(text: str) -> None:
    """One measured figure: printed now (``pytest -s``) and recorded for the
    "figures" section at the end of the run (CI's log, no -s needed)."""
    print(f"\n[haproxy] {text}", flush=True)
    record_figure("haproxy", text)


def test_throughput_direct_and_through_haproxy(cluster: Cluster) -> None:
    """Calls/s of four clients on kept connections, straight to timer1 and through
    HAProxy to all three: every call answered, every daemon used."""
    direct = run_load(cluster, f"{cluster.hosts['timer1'].addr}:{PORT}", 2.0, persistent=4)
    through = run_load(cluster, f"{cluster.lb_addr}:{PORT}", 2.0, persistent=4)
    figure(
        f"echo calls/s, 4 clients on kept connections: direct to timer1 {direct.rate():.0f}, "
        f"through HAProxy to three daemons {through.rate():.0f} (by daemon {dict(through.ok())})"
    )
    per_call = run_load(cluster, f"{cluster.lb_addr}:{PORT}", 2.0, raw=4)
    figure(f"echo calls/s through HAProxy, a connection per call: {per_call.rate():.0f}")
    assert direct.failures() == [] and through.failures() == [] and per_call.failures() == []
    assert set(direct.ok()) == {"timer1"}, direct.ok()
    assert set(through.ok()) == set(NAMES), through.ok()
    assert set(per_call.ok()) == set(NAMES), per_call.ok()


def kept_connection_failures(result: LoadResult, what: str) -> None:
    """mytimerd's client on a kept connection loses no call (ShuttingDown is sent
    again elsewhere); a raw client's ShuttingDown answers are only reported."""
    lost = result.failures("client")
    assert not lost, f"{what}: calls of mytimerd's client on kept connections failed: {lost}"
    raw = result.failures("persistent")
    why = sorted({f["text"][:60] for f in raw})
    figure(f"{what}: raw kept-connection calls not served: {len(raw)} {why}")


def test_rolling_restart_loses_no_call(cluster: Cluster) -> None:
    """SIGTERM each daemon in turn (--drain-grace 1.25 s > inter x fall + timeout
    check), wait for its exit, start it again and wait until HAProxy has it UP:
    HAProxy takes each out before it drains, and no call fails."""
    load = Load(cluster, f"{cluster.lb_addr}:{PORT}", **SCENARIO_LOAD)
    out_after: dict[str, float] = {}
    try:
        time.sleep(0.5)
        for name in NAMES:
            host = cluster.hosts[name]
            assert host.proc is not None
            sent = time.monotonic()
            host.proc.send_signal(signal.SIGTERM)
            out_after[name] = cluster.wait_status(name, "DOWN", DRAIN_GRACE) - sent
            assert host.proc.wait(DRAIN_GRACE + 10) == 0, host.log.read_text()
            host.start()
            cluster.wait_status(name, "UP", 5)
        time.sleep(0.5)
        result = load.stop()
    finally:
        load.kill()
    figure(
        "(a) rolling restart: out of HAProxy after SIGTERM in "
        + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in out_after.items())
        + f" (the drain begins at {DRAIN_GRACE * 1000:.0f} ms); calls: {result.line()}"
    )
    assert set(result.ok()) == set(NAMES)
    assert all(t < DRAIN_GRACE for t in out_after.values()), out_after
    # A connection per call: HAProxy sends each to a daemon that is accepting.
    assert result.failures("raw") == []
    assert result.failures("oneshot") == []
    kept_connection_failures(result, "rolling restart")


def test_sigkill_fails_only_the_calls_it_held(cluster: Cluster) -> None:
    """SIGKILL timer2 under load: HAProxy marks it down within one check
    interval (observe layer4: the first refused connection), only calls that
    were on it when it died fail, and every client goes on being served."""
    host = cluster.hosts["timer2"]
    load = Load(cluster, f"{cluster.lb_addr}:{PORT}", **SCENARIO_LOAD)
    try:
        time.sleep(0.7)
        killed = time.monotonic()
        os.kill(host.pid(), signal.SIGKILL)
        down = cluster.wait_status("timer2", "DOWN", 5) - killed
        time.sleep(1.0)
        result = load.stop()
    finally:
        load.kill()
    assert host.proc is not None and host.proc.wait(5) == -signal.SIGKILL
    failures = result.failures()
    started = [f"{f['kind']} {(f['start'] - killed) * 1000:+.1f}" for f in failures]
    figure(
        f"(b) SIGKILL of timer2: marked DOWN after {down * 1000:.0f} ms "
        f"(check interval {INTER * 1000:.0f} ms); calls: {result.line()}; failed calls "
        f"started at (ms from the kill) {started}"
    )
    host.start()
    cluster.wait_status("timer2", "UP", 5)
    assert down <= INTER, down
    # Each worker has one call at a time: at most one failure per worker, and
    # none for a worker that connects per call once HAProxy had it down.
    assert len(failures) <= sum(SCENARIO_LOAD.values()), failures
    for worker in result.workers:
        assert len(worker["failures"]) <= 1, worker
        assert worker["last_ok"] > killed + down + 0.5, worker  # it went on being served
    for f in result.failures("raw") + result.failures("oneshot"):
        assert f["start"] < killed + down, f
    # A worker that keeps its connection loses only the call that was on
    # timer2's connection: started before the kill (and failing after it, as
    # the close reached the client), or sent on that connection in the instant
    # before its close got through HAProxy (SIGKILL takes effect, and HAProxy
    # passes the close on, a little after `killed`; HELD_SLACK bounds it). One
    # that saw the close first reconnects, and HAProxy redispatches a refused
    # connection: it loses nothing.
    for f in result.failures("persistent") + result.failures("client"):
        assert f["start"] < killed + HELD_SLACK, f
    assert {n for n, c in result.ok().items() if c} == set(NAMES)


def test_stuck_library_taken_out_and_put_back(cluster: Cluster) -> None:
    """timer3's library stops answering (stuck_timer double, "silent": calls are
    taken and never answered, as a deadlocked library does). The daemon's probe
    fails after --probe-timeout, ping says accepting: false, HAProxy takes it
    out; once the library answers again it is put back."""
    load = Load(cluster, f"{cluster.lb_addr}:{PORT}", **SCENARIO_LOAD)
    try:
        time.sleep(0.7)
        stuck = time.monotonic()
        cluster.stuck_control.write_text("silent")
        out = cluster.wait_status("timer3", "DOWN", 10) - stuck
        time.sleep(1.0)
        healed = time.monotonic()
        cluster.stuck_control.write_text("ok")
        back = cluster.wait_status("timer3", "UP", 10) - healed
        time.sleep(0.7)
        result = load.stop()
    finally:
        cluster.stuck_control.write_text("ok")
        load.kill()
    figure(
        f"(c) library of timer3 stops answering: out of HAProxy after {out * 1000:.0f} ms "
        f"(--probe-timeout {PROBE_TIMEOUT * 1000:.0f} ms), back {back * 1000:.0f} ms after "
        f"it answers again; calls: {result.line()}"
    )
    cluster.all_up()
    failures = result.failures()
    # What fails is what the stuck library held: answered mytimerd.Timeout
    # after --timeout, or waited for by a raw client until it gave up.
    for f in failures:
        assert "Timeout" in f["text"] or f["error"] in ("TimeoutError", "CallTimeout"), f
        # A call sent just before the switch may reach the library after it.
        assert stuck - 0.1 <= f["start"] < healed, f
    # A client that connects per call is sent elsewhere once timer3 is out.
    for f in result.failures("raw") + result.failures("oneshot"):
        assert f["start"] < stuck + out, f
    assert result.ok().get("timer3", 0) > 0


def test_hung_host_taken_out_and_put_back(cluster: Cluster) -> None:
    """SIGSTOP of timer1 models a host that hangs: its kernel still accepts
    connections, nothing answers. The check times out (timeout check), HAProxy
    takes it out after `fall` checks; SIGCONT puts it back. Calls caught on it
    wait and are answered once it runs again (the clients wait 5 s)."""
    host = cluster.hosts["timer1"]
    load = Load(cluster, f"{cluster.lb_addr}:{PORT}", **SCENARIO_LOAD)
    try:
        time.sleep(0.7)
        stopped = time.monotonic()
        os.kill(host.pid(), signal.SIGSTOP)
        try:
            out = cluster.wait_status("timer1", "DOWN", 10) - stopped
            time.sleep(0.5)
        finally:
            os.kill(host.pid(), signal.SIGCONT)
        resumed = time.monotonic()
        back = cluster.wait_status("timer1", "UP", 10) - resumed
        time.sleep(0.5)
        result = load.stop()
    finally:
        load.kill()
    figure(
        f"(c') timer1 hangs (SIGSTOP): out of HAProxy after {out * 1000:.0f} ms "
        f"(inter {INTER * 1000:.0f} ms x fall {FALL}, timeout check "
        f"{TIMEOUT_CHECK * 1000:.0f} ms), back {back * 1000:.0f} ms after SIGCONT; "
        f"calls: {result.line()}"
    )
    for f in result.failures():
        figure(f"  failed: {f['kind']} {f['error']}: {f['text']}")
    assert out <= FALL * INTER + TIMEOUT_CHECK + 2 * INTER, out
    # Only calls timer1 held while it was frozen may fail: those it had handed
    # to the library find --timeout passed when it runs again (the daemon's
    # clock went on) and are answered mytimerd.Timeout.
    for f in result.failures():
        assert "Timeout" in f["text"] and f["start"] < resumed, f
    for f in result.failures("raw") + result.failures("oneshot"):
        assert f["start"] < stopped + out, f
    assert result.ok().get("timer1", 0) > 0


TLS_CALL = """
import ssl, sys
from mytimerd.client import Client
host, port, ca, cert, key = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
seen = set()
for _ in range(12):
    with Client(f"tls:{host}:{port}", ssl=ctx, server_hostname=sys.argv[6], timeout=5) as c:
        seen.add(c.call("echo", {"req": {"message": "tls", "delayMs": 0}})["timerName"])
print(" ".join(sorted(seen)))
"""


def test_tls_passthrough(cluster: Cluster) -> None:
    """The TLS front end passes mutual TLS through to three TLS daemons; HAProxy's
    own health check speaks TLS with its client certificate and sees them UP."""
    tls = cluster.tmp / "tls"
    hosts: list[Host] = []
    try:
        for i, name in enumerate(NAMES, 1):
            base = cluster.hosts[name]
            args = ["--tcp", base.addr, str(TLS_PORT), "--name", f"{name}-tls"]
            args += ["--tls-cert", str(tls / f"main-{name}.crt")]
            args += ["--tls-key", str(tls / f"main-{name}.key")]
            args += ["--tls-client-ca", str(tls / "main-ca.pem")]
            hosts.append(Host(f"{name}-tls", base.ns, base.addr, cluster.tmp / f"{name}-tls.log",
                              args, {}))  # fmt: skip
            hosts[-1].start()
            assert i == len(hosts)
        for name in NAMES:
            cluster.wait_status(f"{name}-tls", "UP", 10, backend="mytimerd-tls")
        argv = [cluster.lb_addr, str(TLS_PORT), str(tls / "main-ca.pem")]
        argv += [str(tls / "main-alice.crt"), str(tls / "main-alice.key"), SERVICE_NAME]
        r = subprocess.run(
            in_ns(cluster.cli_ns, sys.executable, "-c", TLS_CALL, *argv),
            capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env(),
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        # Twelve connections, each verified and answered, spread over all three.
        assert r.stdout.split() == [f"{n}-tls" for n in NAMES], r.stdout
        figure(f"TLS passthrough: mutual TLS through HAProxy answered by {r.stdout.strip()}")
    finally:
        for h in hosts:
            h.stop()
