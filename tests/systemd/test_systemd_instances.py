"""One daemon per library: the template units mytimerd@.socket and
mytimerd@.service, installed by packaging/install.sh, under a real systemd.

Two instances side by side, each configured by /etc/mytimerd/INSTANCE.conf
and listening on /run/mytimerd-INSTANCE.sock: ``echo`` with the shipped
example configuration (libecho, nim-ffi's second example library) and
``timer`` with the bundled libmy_timer; the plain mytimerd.socket keeps
serving next to them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import cbor2
import pytest

from tests.systemd.harness import UNIT_DIR, Sandbox
from tests.systemd.test_systemd_units import call, ctl, ok

pytestmark = pytest.mark.systemd

TEMPLATES = ("mytimerd@.socket", "mytimerd@.service")
INSTANCES = ("echo", "timer", "nope")
#: install.sh's copy of systemd/instances/echo.conf, paths rewritten for its PREFIX
ECHO_EXAMPLE = "/usr/local/share/doc/mytimerd/examples/echo.conf"


def units(name: str) -> tuple[str, str]:
    return f"mytimerd@{name}.socket", f"mytimerd@{name}.service"


def _clean(sb: Sandbox) -> None:
    names = [u for name in INSTANCES for u in units(name)]
    sockets = [n for n in names if n.endswith(".socket")]
    sb.systemctl("disable", "--runtime", "--now", *sockets, check=False)
    sb.systemctl("stop", *names, check=False)
    sb.systemctl("reset-failed", check=False)
    etc = sb.path("/etc/mytimerd")
    for name in INSTANCES:
        (etc / f"{name}.conf").unlink(missing_ok=True)


@pytest.fixture
def inst(sd: Sandbox) -> Iterator[Sandbox]:
    """``sd`` (mytimerd.socket listening) with no instance configured or running."""
    _clean(sd)
    yield sd
    _clean(sd)


def active(sb: Sandbox, unit: str) -> str:
    return sb.prop(unit, "ActiveState")


def test_templates_verify_and_are_as_locked_down(sandbox: Sandbox) -> None:
    sandbox.write_file("/etc/mytimerd/verify.conf", "MYTIMERD_ARGS=--name verify\n")
    try:
        installed = [f"{UNIT_DIR}/{u}" for u in TEMPLATES]
        # verify instantiates templates itself (as mytimerd@test_instance)
        r = sandbox.run(["systemd-analyze", "verify", *installed], check=False)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
        # the same sandbox as mytimerd.service: the same score
        scores = []
        for unit in (f"{UNIT_DIR}/mytimerd.service", f"{UNIT_DIR}/mytimerd@.service"):
            r = sandbox.run(
                ["systemd-analyze", "security", "--offline=true", "--no-pager", unit], check=False
            )
            m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
            assert m, r.stdout + r.stderr
            scores.append(float(m.group(1)))
        assert scores[1] <= 1.0 and scores[1] == scores[0], scores
        service = "mytimerd@verify.service"
        assert sandbox.prop(service, "DynamicUser") == "yes"
        assert sandbox.prop(service, "Type") == "notify"
        assert sandbox.prop(service, "WatchdogUSec") != "0"
        assert "/etc/mytimerd/verify.conf" in sandbox.prop(service, "EnvironmentFiles")
        assert sandbox.prop("mytimerd@verify.socket", "Listen") == (
            "/run/mytimerd-verify.sock (Stream)"
        )
        assert sandbox.prop("mytimerd@verify.socket", "Triggers") == service
    finally:
        sandbox.path("/etc/mytimerd/verify.conf").unlink(missing_ok=True)


def test_two_instances_side_by_side(inst: Sandbox) -> None:
    sd = inst
    sd.run(["mkdir", "-p", "/etc/mytimerd"])
    # the shipped example, as docs/systemd.md tells an install.sh user to copy it
    sd.run(["cp", ECHO_EXAMPLE, "/etc/mytimerd/echo.conf"])
    sd.write_file("/etc/mytimerd/timer.conf", "MYTIMERD_ARGS=--name side-timer\n")
    since = f"@{time.time() - 1:.0f}"

    # --runtime: this sandbox's unit path has /run/systemd/system but not
    # /etc/systemd/system (tests/packaging enables for real, on a private system)
    sd.systemctl("enable", "--runtime", "--now", "mytimerd@echo.socket", "mytimerd@timer.socket")
    for name in ("echo", "timer"):
        sock, service = units(name)
        assert sd.systemctl("is-enabled", sock).stdout.strip() == "enabled-runtime"
        assert active(sd, sock) == "active"
        stat = sd.run(["stat", "-c", "%a %U %G %F", f"/run/mytimerd-{name}.sock"]).stdout
        assert stat.split(None, 3) == ["660", "root", "mytimer", "socket\n"], stat
        assert active(sd, service) == "inactive", "an instance must start on its first call"

    # each answers its own library's calls, on its own socket
    echo_path = str(sd.path("/run/mytimerd-echo.sock"))
    timer_path = str(sd.path("/run/mytimerd-timer.sock"))
    ret, body = call(echo_path, "shout", {"req": {"text": "hi"}})
    assert ret == 0, body
    assert cbor2.loads(body) == {"shouted": "echo: HI", "prefix": "echo"}
    assert active(sd, "mytimerd@echo.service") == "active"
    assert active(sd, "mytimerd@timer.service") == "inactive"
    ret, body = call(timer_path, "version", {})
    assert (ret, cbor2.loads(body)) == (0, "nim-timer v0.1.0")
    ret, body = call(echo_path, "version", {})
    assert ret == 0 and cbor2.loads(body) != "nim-timer v0.1.0", body
    # ... and not the other's
    ret, body = call(timer_path, "shout", {"req": {"text": "hi"}})
    assert ret != 0 and b"shout" in body, body
    ret, body = call(echo_path, "echo", {"req": {"message": "x", "delayMs": 0}})
    assert ret != 0, body
    # the timer instance's constructor got its INSTANCE.conf's --name
    ok(ctl(sd, "--unix", "/run/mytimerd-timer.sock", "version"))
    # the plain mytimerd.socket is unchanged and serves next to them
    assert sd.systemctl("is-enabled", "mytimerd.socket", check=False).stdout.strip() != "enabled"
    ok(ctl(sd, "--unix", "/run/mytimerd.sock", "version"))
    assert active(sd, "mytimerd.service") == "active"

    # two daemons, each with its own library mapped and its own dynamic user
    pids = {name: int(sd.prop(units(name)[1], "MainPID")) for name in ("echo", "timer")}
    plain = int(sd.prop("mytimerd.service", "MainPID"))
    assert len({*pids.values(), plain}) == 3 and 0 not in pids.values(), (pids, plain)
    echo_maps = sd.run(["cat", f"/proc/{pids['echo']}/maps"]).stdout
    timer_maps = sd.run(["cat", f"/proc/{pids['timer']}/maps"]).stdout
    assert "libecho.so" in echo_maps and "libmy_timer" not in echo_maps
    assert "libmy_timer.so" in timer_maps and "libecho" not in timer_maps
    for name, pid in pids.items():
        status = sd.run(["cat", f"/proc/{pid}/status"]).stdout
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        assert 61184 <= uid <= 65519, f"{name}: expected a DynamicUser uid, got {uid}"

    # systemctl status: healthy, with the daemon's STATUS= line
    for name in ("echo", "timer"):
        sock, service = units(name)
        r = sd.systemctl("status", "--no-pager", "--lines=0", sock, service)
        assert r.returncode == 0, r
        assert r.stdout.count("Active: active") == 2, r.stdout
        assert f"/run/mytimerd-{name}.sock" in r.stdout, r.stdout
        assert sd.prop(service, "Result") == "success"
        assert sd.prop(service, "NRestarts") == "0"

    # journal lines per instance: each daemon's ready line names its library and socket
    echo_log = sd.journal("-u", "mytimerd@echo.service", f"--since={since}")
    timer_log = sd.journal("-u", "mytimerd@timer.service", f"--since={since}")
    assert re.search(r"ready: serving unix:/run/mytimerd-echo\.sock \(mytimerd-echo\)", echo_log), (
        echo_log
    )
    assert "libecho.so" in echo_log and "/run/mytimerd-timer.sock" not in echo_log, echo_log
    assert re.search(
        r"ready: serving unix:/run/mytimerd-timer\.sock \(mytimerd-timer\)", timer_log
    ), timer_log
    assert "'side-timer'" in timer_log and "libecho" not in timer_log, timer_log
    assert "Started mytimerd@echo.service" in echo_log, echo_log

    # restarting one instance leaves the other alone
    sd.systemctl("restart", "mytimerd@echo.service")
    assert int(sd.prop("mytimerd@timer.service", "MainPID")) == pids["timer"]
    assert int(sd.prop("mytimerd@echo.service", "MainPID")) not in (0, pids["echo"])
    ret, body = call(echo_path, "shout", {"req": {"text": "again"}})
    assert (ret, cbor2.loads(body)) == (0, {"shouted": "echo: AGAIN", "prefix": "echo"})

    # disable --now: the socket goes away, the other instance keeps serving
    sd.systemctl("disable", "--runtime", "--now", "mytimerd@echo.socket")
    sd.systemctl("stop", "mytimerd@echo.service")
    assert not sd.path("/run/mytimerd-echo.sock").exists()
    ret, _body = call(timer_path, "version", {})
    assert ret == 0


def test_instance_without_its_conf_fails_visibly(inst: Sandbox) -> None:
    sd = inst
    sd.systemctl("start", "mytimerd@nope.socket")
    r = sd.systemctl("start", "mytimerd@nope.service", check=False)
    assert r.returncode != 0, r
    # Restart=on-failure tries again until the start limit
    assert active(sd, "mytimerd@nope.service") in ("failed", "activating")
    journal = sd.journal("-u", "mytimerd@nope.service")
    assert "/etc/mytimerd/nope.conf" in journal, journal
    assert "Failed to load environment files" in journal, journal


def test_instance_with_a_wrong_conf_fails_visibly(inst: Sandbox) -> None:
    sd = inst
    # MYTIMERD_SCHEMA reaches the daemon (a description that is not there)
    sd.write_file(
        "/etc/mytimerd/nope.conf",
        "MYTIMERD_LIBRARY=/usr/local/lib/mytimerd/libecho.so\n"
        "MYTIMERD_SCHEMA=/usr/local/share/mytimerd/descriptions/nope.cddl\n",
    )
    since = f"@{time.time() - 1:.0f}"
    r = sd.systemctl("start", "mytimerd@nope.service", check=False)
    assert r.returncode != 0, r
    journal = sd.wait_for(
        lambda: (lambda j: j if "nope.cddl" in j else "")(
            sd.journal("-u", "mytimerd@nope.service", f"--since={since}")
        ),
        20,
        "the usage error in the journal",
    )
    assert "--schema /usr/local/share/mytimerd/descriptions/nope.cddl" in journal, journal
    assert "status=2" in journal, journal
