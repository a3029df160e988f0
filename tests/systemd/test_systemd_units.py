"""mytimerd's shipped units, installed by packaging/install.sh, under a real systemd.

Every test drives the installed units unchanged; the only drop-ins are the
TCP port (the network namespace is shared with the machine) and, for the
watchdog test, MYTIMERD_LIBRARY / STUCK_TIMER_CONTROL.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import cbor2
import pytest

from tests.support.certs import make_pki
from tests.systemd.harness import UNIT_DIR, UNITS, Sandbox, free_tcp_port

pytestmark = pytest.mark.systemd

SERVICE = "mytimerd.service"
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------- helpers
def ctl(
    sd: Sandbox,
    *args: str,
    timeout: float = 30,
    user: tuple[int, int, list[int] | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed mytimerctl inside the sandbox (as root or as uid/gid/groups)."""
    argv = ["/usr/local/bin/mytimerctl", *args]
    if user is not None:
        uid, gid, groups = user
        groups_opt = ["--clear-groups"] if not groups else ["--groups", ",".join(map(str, groups))]
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", *groups_opt, *argv]
    return sd.run(argv, check=False, timeout=timeout, env={"HOME": "/"})


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def call(
    path: str, method: str, params: dict[str, object], timeout: float = 10
) -> tuple[int, bytes]:
    """One request on a new unix connection (the wire protocol, done by hand)."""
    payload = cbor2.dumps(params)
    m = method.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(struct.pack(">I", len(m)) + m + struct.pack(">I", len(payload)) + payload)
        head = _recv_exact(s, 8)
        ret, n = struct.unpack(">iI", head)
        return ret, _recv_exact(s, n)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def main_pid(sd: Sandbox) -> int:
    return int(sd.prop(SERVICE, "MainPID"))


def active(sd: Sandbox, unit: str = SERVICE) -> str:
    return sd.prop(unit, "ActiveState")


def drop_in(sd: Sandbox, unit: str, name: str, text: str) -> None:
    sd.write_file(f"/run/systemd/system/{unit}.d/{name}.conf", text)
    sd.systemctl("daemon-reload")


def start_service(sd: Sandbox) -> int:
    ok(ctl(sd, "version"))
    assert active(sd) == "active"
    return main_pid(sd)


# ------------------------------------------------------------- static checks
def test_sandbox_runs_nothing_of_the_host(sandbox: Sandbox) -> None:
    """Guard for the harness: sysinit.target's usual units (sysctl, tmpfiles,
    binfmt, ...) act on the whole machine and must not exist in the sandbox."""
    sandbox.systemctl("start", "mytimerd.socket")
    try:
        units = sandbox.systemctl("list-units", "--all", "--plain", "--no-legend").stdout
        loaded = {
            line.split()[0]
            for line in units.splitlines()
            if len(line.split()) > 1 and line.split()[1] == "loaded"
        }
        for unit in (
            "systemd-sysctl.service",
            "systemd-tmpfiles-setup.service",
            "systemd-binfmt.service",
            "systemd-modules-load.service",
            "systemd-remount-fs.service",
            "systemd-udev-trigger.service",
            "systemd-sysusers.service",
        ):
            assert unit not in loaded, f"{unit} is loaded in the sandbox:\n{units}"
    finally:
        sandbox.systemctl("stop", "mytimerd.socket", check=False)


def test_verify_every_unit_is_clean(sandbox: Sandbox) -> None:
    installed = [f"{UNIT_DIR}/{u}" for u in UNITS]
    r = sandbox.run(["systemd-analyze", "verify", *installed], check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    # the shipped sources too (their ExecStart is the default PREFIX's path)
    src = sandbox.path("/run/mytimerd-src")
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(REPO / "systemd", src)
    r = sandbox.run(
        ["systemd-analyze", "verify", *[f"/run/mytimerd-src/{u}" for u in UNITS]], check=False
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def test_security_exposure_at_most_1(sandbox: Sandbox) -> None:
    r = sandbox.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", f"{UNIT_DIR}/{SERVICE}"],
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 1.0, r.stdout
    # the properties the requirement names, as systemd loaded them
    assert sandbox.prop(SERVICE, "DynamicUser") == "yes"
    assert sandbox.prop(SERVICE, "MemoryDenyWriteExecute") == "yes"
    assert sandbox.prop(SERVICE, "SystemCallFilter") != ""
    assert sandbox.prop(SERVICE, "Type") == "notify"
    assert sandbox.prop(SERVICE, "WatchdogUSec") != "0"
    assert sandbox.prop(SERVICE, "ExecStart").find("path=/usr/local/bin/mytimerd ") >= 0


# ---------------------------------------------------------- socket activation
def test_unix_socket_activates_on_first_call(sd: Sandbox) -> None:
    sock = sd.run(["stat", "-c", "%a %U %G %F", "/run/mytimerd.sock"]).stdout.split(None, 3)
    assert sock[:3] == ["660", "root", "mytimer"], sock
    assert active(sd) == "inactive"
    time.sleep(1)
    assert active(sd) == "inactive", "the service must start only on the first connection"

    r = ok(ctl(sd, "version"))
    assert r.stdout.strip(), "mytimerctl version printed nothing"
    assert active(sd) == "active"
    pid = main_pid(sd)

    # really sandboxed: a dynamic, non-root uid
    status = sd.run(["cat", f"/proc/{pid}/status"]).stdout
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    assert 61184 <= uid <= 65519, f"expected a DynamicUser uid, got {uid}"

    journal = sd.journal("-u", SERVICE)
    # the daemon's own start-up lines (it logs the socket names it was handed)
    own = sd.journal(f"_PID={pid}")
    assert "mytimerd-unix" in own, f"daemon did not log its socket names:\n{own}\n{journal}"
    # stderr is the journal, so the daemon logs through journald with its own fields
    fields = sd.journal(f"_PID={pid}", "-o", "verbose")
    assert "LISTENERS=unix:/run/mytimerd.sock (mytimerd-unix)" in fields, fields
    # READY=1: for Type=notify systemd logs "Started" only after READY=1
    assert re.search(r"systemd\[1\]: Started mytimerd\.service", journal), journal


def test_tcp_socket(sd: Sandbox) -> None:
    port = free_tcp_port()
    # the network namespace is the machine's: move the default 9099 to a free port
    drop_in(
        sd,
        "mytimerd-tcp.socket",
        "port",
        f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
    )
    sd.systemctl("start", "mytimerd-tcp.socket")
    assert active(sd) == "inactive"
    r = ok(ctl(sd, "--tcp", "127.0.0.1", str(port), "echo", "hi"))
    assert "hi" in r.stdout
    assert active(sd) == "active"
    own = sd.journal(f"_PID={main_pid(sd)}")
    assert "mytimerd-tcp" in own and "mytimerd-unix" in own, own
    # the unix socket keeps working alongside
    ok(ctl(sd, "--unix", "/run/mytimerd.sock", "version"))


# ----------------------------------------------------------------- lifecycle
def test_stop_drains_in_flight_call(sd: Sandbox) -> None:
    start_service(sd)
    echo = sd.popen(
        ["/usr/local/bin/mytimerctl", "echo", "hi", "--delay-ms", "2000"], env={"HOME": "/"}
    )
    time.sleep(0.7)  # the call is in flight inside the daemon
    assert echo.poll() is None, "echo returned before the stop"
    t0 = time.monotonic()
    sd.systemctl("stop", SERVICE)
    stop_took = time.monotonic() - t0
    out, err = echo.communicate(timeout=30)
    assert echo.returncode == 0, f"in-flight echo failed: {out}\n{err}"
    assert "hi" in out
    assert active(sd) == "inactive"
    assert sd.prop(SERVICE, "Result") == "success"
    assert sd.prop(SERVICE, "ExecMainStatus") == "0"
    assert stop_took < 10, f"stop took {stop_took:.1f}s"
    # the socket stays and activates the daemon again
    assert active(sd, "mytimerd.socket") == "active"
    ok(ctl(sd, "version"))


def test_restart_under_load_loses_no_call(sd: Sandbox) -> None:
    old_pid = start_service(sd)
    path = str(sd.path("/run/mytimerd.sock"))
    stop = threading.Event()
    results: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                ret, _body = call(path, "version", {})
                results.append("ok" if ret == 0 else f"ret={ret}")
            except Exception as e:
                results.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        sd.systemctl("restart", SERVICE)
        time.sleep(1.0)
        sd.systemctl("restart", SERVICE)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    failures = [r for r in results if r != "ok"]
    assert not failures, f"{len(failures)} of {len(results)} calls failed: {failures[:5]}"
    assert len(results) > 20, results
    assert main_pid(sd) not in (0, old_pid)
    assert active(sd) == "active"


def test_sigkill_socket_survives_and_next_call_restarts(sd: Sandbox) -> None:
    old_pid = start_service(sd)
    sd.systemctl("kill", "--signal=SIGKILL", "--kill-whom=main", SERVICE)
    sd.wait_for(lambda: main_pid(sd) != old_pid, 10, "the killed daemon to go away")
    assert active(sd, "mytimerd.socket") == "active"
    assert sd.run(["test", "-S", "/run/mytimerd.sock"], check=False).returncode == 0
    ok(ctl(sd, "version"))
    new_pid = main_pid(sd)
    assert new_pid not in (0, old_pid)
    assert active(sd) == "active"


def test_watchdog_restarts_a_stuck_library(sd: Sandbox) -> None:
    from tests.support.native import build_stuck_double

    double = build_stuck_double()
    # /run is visible (read-only) in the service's sandbox; /tmp and /root are not
    sd.path("/run/mytimerd-test").mkdir(mode=0o755, exist_ok=True)
    sd.path("/run/mytimerd-test").chmod(0o755)
    shutil.copy(double, sd.path("/run/mytimerd-test/libstuck_timer.so"))
    sd.path("/run/mytimerd-test/libstuck_timer.so").chmod(0o755)
    sd.write_file("/run/mytimerd-test/control", "ok\n")
    drop_in(
        sd,
        SERVICE,
        "stuck-double",
        "[Service]\n"
        "Environment=MYTIMERD_LIBRARY=/run/mytimerd-test/libstuck_timer.so\n"
        "Environment=STUCK_TIMER_CONTROL=/run/mytimerd-test/control\n",
    )
    old_pid = start_service(sd)
    restarts = int(sd.prop(SERVICE, "NRestarts"))
    time.sleep(6)  # several watchdog periods (WatchdogSec=10s, pings every 5s)
    assert main_pid(sd) == old_pid, "killed while the library was answering"

    sd.write_file("/run/mytimerd-test/control", "silent\n")
    t0 = time.monotonic()
    sd.wait_for(lambda: main_pid(sd) != old_pid, 25, "the watchdog to kill the daemon")
    sd.write_file("/run/mytimerd-test/control", "ok\n")
    fired_after = time.monotonic() - t0
    journal = sd.journal("-u", SERVICE)
    assert "Watchdog timeout" in journal, journal
    sd.wait_for(
        lambda: active(sd) == "active" and main_pid(sd) not in (0, old_pid),
        30,
        "systemd to restart the service",
    )
    assert int(sd.prop(SERVICE, "NRestarts")) > restarts
    assert fired_after > 4, f"watchdog fired {fired_after:.1f}s after the library got stuck"
    ok(ctl(sd, "version"))


# --------------------------------------------------------------- permissions
def test_socket_permissions_by_group(sd: Sandbox) -> None:
    gid = int(sd.run(["getent", "group", "mytimer"]).stdout.split(":")[2])
    nobody = 65534
    r = ctl(sd, "version", user=(nobody, nobody, None))
    assert r.returncode != 0, f"a user outside group mytimer got through:\n{r.stdout}"
    assert "ermission denied" in r.stderr or "EACCES" in r.stderr, r.stderr
    assert active(sd) == "inactive", "a refused connection must not reach the daemon"
    ok(ctl(sd, "version", user=(nobody, nobody, [gid])))


# ----------------------------------------------------------------------- TLS
def test_tls_under_the_locked_down_service(sd: Sandbox, tmp_path: Path) -> None:
    """The documented TLS drop-in (systemd/examples/mytimerd-tls.conf): mutual
    TLS on the TCP socket unit, the unix socket plain, under the shipped
    sandbox (DynamicUser, MemoryDenyWriteExecute, ...).

    The namespace harness's systemd leaves LoadCredential= directories empty
    (it cannot set up the credentials file system there), so this test hands
    the files over with the drop-in's Environment= lines pointing at files the
    dynamic user can read, instead of at %d.
    """
    pki = make_pki(tmp_path)
    for source, name in (
        (pki.server.cert, "server.pem"),
        (pki.server.key, "server.key"),
        (pki.ca.pem, "clients-ca.pem"),
    ):
        sd.write_file(f"/etc/mytimerd/tls/{name}", source.read_text(), mode=0o644)
    port = free_tcp_port()
    drop_in(
        sd,
        "mytimerd-tcp.socket",
        "port",
        f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
    )
    example = (REPO / "systemd" / "examples" / "mytimerd-tls.conf").read_text()
    assert example.count("%d/") == 3
    lines = [line for line in example.splitlines() if not line.startswith("LoadCredential=")]
    drop_in(sd, SERVICE, "tls", "\n".join(lines).replace("%d/", "/etc/mytimerd/tls/") + "\n")
    sd.systemctl("start", "mytimerd-tcp.socket")
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    ctx.load_cert_chain(pki.alice.cert, pki.alice.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(struct.pack(">I", 7) + b"version" + struct.pack(">I", 1) + b"\xa0")
        ret, n = struct.unpack(">iI", _recv_exact(s, 8))
        assert (ret, cbor2.loads(_recv_exact(s, n))) == (0, "nim-timer v0.1.0")
    refused = ssl.create_default_context(cafile=str(pki.ca.pem))  # no client certificate
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        refused.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(struct.pack(">I", 7) + b"version" + struct.pack(">I", 1) + b"\xa0")
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            s.recv(100)
    ok(ctl(sd, "--unix", "/run/mytimerd.sock", "version"))  # unix stays plain
    assert active(sd) == "active"
