"""The .deb under a real systemd: install with dpkg, call as root and as a
member of group mytimer, upgrade while clients call, turn TCP on while the
service runs, remove, purge.

One private system (tests/systemd/harness.py: PID 1 systemd, private /etc,
/usr and /var) is booted for this module, and the tests run in file order on
it: each starts by checking the state the one before left.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest

from tests.conftest import require
from tests.packaging.conftest import VERSION_1, VERSION_2
from tests.packaging.support import (
    NOBODY,
    SERVICE,
    SOCKET,
    TCP_SOCKET,
    UNITS,
    HeldConnection,
    Load,
    Subscriber,
    ctl,
    group_id,
    main_pid,
    ok,
    tree,
    wait_calls,
)
from tests.systemd.harness import Sandbox, free_tcp_port
from tests.systemd.test_systemd_units import call

pytestmark = pytest.mark.systemd

DPKG_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
#: Where dpkg keeps its own records, and caches it refreshes (man-db's
#: trigger): changed by any install and removal, not the package's files.
BOOKKEEPING = ("var/lib/dpkg/", "var/cache/man/", "var/log/", "var/cache/debconf/")


@dataclass
class Baseline:
    etc: dict[str, str]
    group: str
    gshadow: str
    usr: dict[str, str]
    var: dict[str, str]
    var_lib_systemd: dict[str, str]


@pytest.fixture(scope="module")
def baseline(system: Sandbox) -> Baseline:
    """The private system before the package is installed."""
    return Baseline(
        etc=tree(system.path("/etc")),
        group=system.path("/etc/group").read_text(),
        gshadow=system.path("/etc/gshadow").read_text(),
        usr=tree(system.upper("usr")),
        var=tree(system.upper("var")),
        var_lib_systemd=tree(system.path("/var/lib/systemd")),
    )


def dpkg(system: Sandbox, *args: str, timeout: float = 300) -> str:
    r = system.run(["dpkg", *args], check=False, timeout=timeout, env=DPKG_ENV)
    ok(r)
    return r.stdout + r.stderr


def copy_in(system: Sandbox, deb: Path) -> str:
    system.path("/run/debs").mkdir(exist_ok=True)
    shutil.copy(deb, system.path(f"/run/debs/{deb.name}"))
    return f"/run/debs/{deb.name}"


def status(system: Sandbox) -> str:
    r = system.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "mytimerd"], check=False)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def active(system: Sandbox, unit: str = SERVICE) -> str:
    return system.prop(unit, "ActiveState")


def held_progress(held: HeldConnection, before: int, timeout: float = 30) -> None:
    """Wait until the held connection has made 20 more calls (or failed)."""
    deadline = time.monotonic() + timeout
    while len(held.echoed) < before + 20 and held.failure is None:
        assert time.monotonic() < deadline, f"the held connection made no progress after {before}"
        time.sleep(0.02)


class Watch:
    """``mytimerctl watch`` in the system, its lines read as they come."""

    def __init__(self, system: Sandbox) -> None:
        self.system = system
        self.proc = system.popen(["/usr/bin/mytimerctl", "watch"], env={"HOME": "/"})
        self.messages: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("on_echo_fired "):
                self.messages.append(json.loads(line.split(" ", 1)[1])["message"])

    def wait_for(self, messages: list[str], timeout: float = 10) -> None:
        """Wait until watch has printed every one of ``messages``."""
        deadline = time.monotonic() + timeout
        while not set(messages) <= set(self.messages) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> str:
        """End it (nsenter passes no signal on: from inside); what it said on stderr."""
        self.system.run(["pkill", "-TERM", "-f", "mytimerctl watch"], check=False)
        _, err = self.proc.communicate(timeout=30)
        self._thread.join(timeout=10)
        return err


def wait_subscribers(system: Sandbox, n: int, timeout: float = 30) -> None:
    """Wait until the daemon has ``n`` subscribers to on_echo_fired."""
    deadline = time.monotonic() + timeout
    while True:
        stats = json.loads(ok(ctl(system, "--json", "stats")).stdout)
        if stats["events"]["subscribers"].get("on_echo_fired", 0) >= n:
            return
        assert time.monotonic() < deadline, stats["events"]
        time.sleep(0.1)


def require_installed(system: Sandbox, version: str) -> None:
    state = status(system)
    if state != f"install ok installed {version}":
        pytest.fail(f"mytimerd {version} is not installed ({state}): an earlier test failed")


# --------------------------------------------------------------------- install
def test_install_creates_group_enables_and_starts_the_socket(
    system: Sandbox, baseline: Baseline, deb: Path
) -> None:
    assert status(system) == "unknown", "the private system must start without mytimerd"
    assert group_id(system) is None, "group mytimer exists before the install"
    out = dpkg(system, "-i", copy_in(system, deb))
    assert status(system) == f"install ok installed {VERSION_1}", out

    gid = group_id(system)
    assert gid is not None and gid < 1000, f"no system group mytimer: {gid}"
    assert system.systemctl("is-enabled", SOCKET).stdout.strip() == "enabled"
    assert active(system, SOCKET) == "active"
    sock = system.run(["stat", "-c", "%a %U %G %F", "/run/mytimerd.sock"]).stdout.split(None, 3)
    assert sock == ["660", "root", "mytimer", "socket\n"], sock
    # socket activation: nothing runs until the first client
    assert active(system) == "inactive"
    # TCP is opt-in
    assert system.systemctl("is-enabled", TCP_SOCKET, check=False).stdout.strip() == "disabled"
    assert active(system, TCP_SOCKET) == "inactive"
    # the postinst byte-compiled the venv
    pycache = system.path("/usr/lib/mytimerd/lib/python3.11/site-packages/mytimerd/__pycache__")
    assert list(pycache.glob("*.pyc")), "postinst did not byte-compile the venv"


def test_root_and_group_members_call_others_are_refused(system: Sandbox) -> None:
    require_installed(system, VERSION_1)
    r = ok(ctl(system, "version"))
    assert r.stdout.strip(), "mytimerctl version printed nothing"
    assert active(system) == "active"
    assert "path=/usr/bin/mytimerd " in system.prop(SERVICE, "ExecStart")
    gid = group_id(system)
    assert gid is not None
    r = ok(ctl(system, "echo", "from a member", user=(NOBODY, NOBODY, [gid])))
    assert "from a member" in r.stdout
    r = ctl(system, "version", user=(NOBODY, NOBODY, None))
    assert r.returncode != 0, f"a user outside group mytimer got through:\n{r.stdout}"
    assert "ermission denied" in r.stderr, r.stderr


ECHO_SOCKET = "mytimerd@echo.socket"
ECHO_SERVICE = "mytimerd@echo.service"
#: the echo instance's daemon before the upgrade (test_echo_instance_* share it)
ECHO_BEFORE: dict[str, str] = {}


def call_answer(system: Sandbox, path: str, method: str, params: dict[str, object]) -> object:
    """One call on a new connection; the decoded answer (a failed call fails the test)."""
    ret, body = call(str(system.path(path)), method, params)
    assert ret == 0, body
    return cbor2.loads(body)


def test_echo_instance_enable_now(system: Sandbox) -> None:
    """One daemon per library: the shipped /etc/mytimerd/echo.conf, as the
    issue's one command turns it on, next to the plain mytimerd.socket."""
    require_installed(system, VERSION_1)
    conffiles = system.run(["dpkg-query", "-W", "-f", "${Conffiles}", "mytimerd"]).stdout
    assert "/etc/mytimerd/echo.conf" in conffiles, conffiles
    system.systemctl("enable", "--now", ECHO_SOCKET)
    assert system.systemctl("is-enabled", ECHO_SOCKET).stdout.strip() == "enabled"
    assert active(system, ECHO_SOCKET) == "active"
    sock = system.run(["stat", "-c", "%a %U %G %F", "/run/mytimerd-echo.sock"]).stdout.split(
        None, 3
    )
    assert sock == ["660", "root", "mytimer", "socket\n"], sock
    assert active(system, ECHO_SERVICE) == "inactive"
    answer = call_answer(system, "/run/mytimerd-echo.sock", "shout", {"req": {"text": "hi"}})
    assert answer == {"shouted": "echo: HI", "prefix": "echo"}
    assert active(system, ECHO_SERVICE) == "active"
    assert "path=/usr/bin/mytimerd " in system.prop(ECHO_SERVICE, "ExecStart")
    # the plain socket serves libmy_timer as before, from another daemon
    assert call_answer(system, "/run/mytimerd.sock", "version", {}) == "nim-timer v0.1.0"
    pid = int(system.prop(ECHO_SERVICE, "MainPID"))
    assert pid not in (0, main_pid(system))
    maps = system.run(["cat", f"/proc/{pid}/maps"]).stdout
    assert "/usr/lib/mytimerd/lib/python3.11/site-packages/mytimerd/_lib/libecho.so" in maps
    journal = system.journal("-u", ECHO_SERVICE)
    assert "ready: serving unix:/run/mytimerd-echo.sock (mytimerd-echo)" in journal, journal
    r = system.systemctl("status", "--no-pager", "--lines=0", ECHO_SOCKET, ECHO_SERVICE)
    assert r.stdout.count("Active: active") == 2, r.stdout
    ECHO_BEFORE.update(
        pid=str(pid),
        since=system.prop(ECHO_SOCKET, "ActiveEnterTimestampMonotonic"),
        inode=system.run(["stat", "-c", "%i", "/run/mytimerd-echo.sock"]).stdout,
    )


#: Drives an interactive zsh that finds completions in $fpath the way a
#: Debian zsh does (vendor-completions): types "mytimerctl $1<TAB>" and
#: prints the screen once $2 appears.
_ZSH_FPATH_DRIVER = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "PS1='> '; fpath=(/usr/share/zsh/vendor-completions \$fpath)"
zpty -w z "autoload -U compinit; compinit -u -d /tmp/zcompdump"
zpty -w -n z "mytimerctl $1"$'\t'
setopt extendedglob
out=""
for i in {1..100}; do
    while zpty -r -t z chunk; do out+=$chunk; done
    clean=${${out//$'\e'\[[0-9;?]#[a-zA-Z]/}//$'\r'/}
    [[ $clean == *"$2"* ]] && break
    sleep 0.1
done
print -r -- "$clean"
zpty -d z
"""


def test_man_pages_and_completion_work_installed(system: Sandbox) -> None:
    require_installed(system, VERSION_1)
    env = {"MANPAGER": "cat", "MANWIDTH": "80", "HOME": "/"}
    for section, name, expect in (
        ("8", "mytimerd", "--drain-timeout"),
        ("1", "mytimerctl", "--json"),
    ):
        r = system.run(["man", section, name], check=False, env=env)
        text = re.sub(r".\x08", "", r.stdout)
        assert r.returncode == 0 and expect in text, f"man {section} {name}: {r.stderr}"
    bash = system.run(
        [
            "bash",
            "-c",
            ". /usr/share/bash-completion/completions/mytimerctl; "
            "COMP_WORDS=(mytimerctl sch); COMP_CWORD=1; _mytimerctl; echo ${COMPREPLY[@]}",
        ]
    )
    assert bash.stdout.split() == ["schedule"], bash
    require(shutil.which("zsh") is not None, "zsh is not installed (scripts/setup installs it)")
    r = system.run(
        ["zsh", "-f", "-c", _ZSH_FPATH_DRIVER, "driver", "sch", "mytimerctl schedule "],
        check=False,
        env={"HOME": "/", "TERM": "xterm"},
    )
    assert "mytimerctl schedule " in r.stdout, r.stdout[-1000:]


# --------------------------------------------------------------------- upgrade
def test_upgrade_under_load_loses_no_call(system: Sandbox, deb_v2: Path) -> None:
    """Five restarts and then the upgrade, under load, while a raw-frame
    client holds one connection (no reconnect logic), a raw subscriber and
    ``mytimerctl watch`` hold theirs: every call answered, no connection
    closed, every event delivered (issue 19's proof)."""
    require_installed(system, VERSION_1)
    ok(ctl(system, "version"))
    old_pid = main_pid(system)
    socket_since = system.prop(SOCKET, "ActiveEnterTimestampMonotonic")
    inode = system.run(["stat", "-c", "%i", "/run/mytimerd.sock"]).stdout
    path = copy_in(system, deb_v2)
    watch = Watch(system)
    subscriber = Subscriber(system)
    wait_subscribers(system, 2)
    pids = {old_pid}
    with Load(system) as load, HeldConnection(system) as held:
        wait_calls(load, 30)
        for _ in range(5):
            before = len(held.echoed)
            system.systemctl("restart", SERVICE)
            pids.add(main_pid(system))
            wait_calls(load, 30)
            held_progress(held, before)
        # The journal's --since has 1 s resolution: the next whole second,
        # so the last restart above (maybe within this one) is not counted,
        # and wait for it to begin.
        since_s = math.ceil(time.time())
        since = f"@{since_s}"
        time.sleep(since_s - time.time() + 0.1)
        before = len(held.echoed)
        t0 = time.monotonic()
        out = dpkg(system, "-i", path)
        took = time.monotonic() - t0
        wait_calls(load, 30)
        held_progress(held, before)
    subscriber.wait_for(held.echoed)
    subscriber.close()
    watch.wait_for(held.echoed)
    watch_err = watch.stop()
    print(
        f"upgrade took {took:.1f}s; calls: {load.summary()}; held connection: "
        f"{len(held.echoed)} calls, longest pause {held.longest * 1000:.0f} ms"
    )
    failures = load.failures()
    assert not failures, f"{len(failures)} of {len(load.results)} calls failed: {failures[:5]}"
    assert len(load.results) > 100, load.summary()
    assert held.failure is None, held.failure
    assert len(pids) == 6, f"not restarted 5 times: {pids}"
    assert subscriber.failure is None, subscriber.failure
    missing = set(held.echoed) - set(subscriber.messages)
    assert not missing, f"{len(missing)} events never arrived, e.g. {sorted(missing)[:5]}"
    missing = set(held.echoed) - set(watch.messages)
    assert not missing, f"watch never printed {len(missing)} events, e.g. {sorted(missing)[:5]}"
    assert "subscribed again" not in watch_err, f"watch saw a gap: {watch_err}"
    assert status(system) == f"install ok installed {VERSION_2}", out
    journal = system.journal("-u", SERVICE)
    assert journal.count("handed ") >= 6 and "took back" in journal, journal[-3000:]

    # the service was restarted (once) and runs the new files ...
    new_pid = main_pid(system)
    assert new_pid not in (0, old_pid), "the service was not restarted"
    assert active(system) == "active"
    journal = system.journal("-u", SERVICE, f"--since={since}")
    assert journal.count("Stopping mytimerd.service") == 1, journal
    # ... restarted only after dpkg had put the new files in place: a daemon
    # started before that would still map the replaced (deleted) files
    maps = system.run(["cat", f"/proc/{new_pid}/maps"]).stdout
    assert "/usr/lib/mytimerd/" in maps and "libmy_timer.so" in maps, maps[-2000:]
    assert "(deleted)" not in maps, [m for m in maps.splitlines() if "(deleted)" in m]
    # ... while the socket stayed open throughout (never restarted or re-created)
    assert system.prop(SOCKET, "ActiveEnterTimestampMonotonic") == socket_since
    assert system.run(["stat", "-c", "%i", "/run/mytimerd.sock"]).stdout == inode
    assert system.systemctl("is-enabled", SOCKET).stdout.strip() == "enabled"


def test_echo_instance_restarted_by_the_upgrade(system: Sandbox) -> None:
    """The running instance was restarted on the new files by the upgrade
    (the postinst), its socket left open and enabled."""
    require_installed(system, VERSION_2)
    if not ECHO_BEFORE:
        pytest.fail("test_echo_instance_enable_now did not run or failed")
    assert system.systemctl("is-enabled", ECHO_SOCKET).stdout.strip() == "enabled"
    assert system.prop(ECHO_SOCKET, "ActiveEnterTimestampMonotonic") == ECHO_BEFORE["since"]
    assert (
        system.run(["stat", "-c", "%i", "/run/mytimerd-echo.sock"]).stdout == ECHO_BEFORE["inode"]
    )
    assert active(system, ECHO_SERVICE) == "active"
    pid = int(system.prop(ECHO_SERVICE, "MainPID"))
    assert pid not in (0, int(ECHO_BEFORE["pid"])), "the instance was not restarted"
    maps = system.run(["cat", f"/proc/{pid}/maps"]).stdout
    assert "libecho.so" in maps and "(deleted)" not in maps
    answer = call_answer(system, "/run/mytimerd-echo.sock", "shout", {"req": {"text": "v2"}})
    assert answer == {"shouted": "echo: V2", "prefix": "echo"}


# ------------------------------------------------------------------------- TCP
def test_enable_tcp_while_the_service_runs(system: Sandbox) -> None:
    """docs/systemd.md's way: enable, then restart the service, under load."""
    require_installed(system, VERSION_2)
    port = free_tcp_port()
    # the network namespace is the machine's: a free port instead of 9099
    system.write_file(
        f"/run/systemd/system/{TCP_SOCKET}.d/port.conf",
        f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n",
    )
    system.systemctl("daemon-reload")
    ok(ctl(system, "version"))
    assert active(system) == "active"
    old_pid = main_pid(system)

    with Load(system) as load:
        wait_calls(load, 20)
        system.systemctl("enable", TCP_SOCKET)
        system.systemctl("restart", SERVICE)
        wait_calls(load, 20)
    assert not load.failures(), load.summary()
    assert active(system, TCP_SOCKET) == "active"
    assert main_pid(system) not in (0, old_pid)
    r = ok(ctl(system, "--tcp", "127.0.0.1", str(port), "echo", "over tcp"))
    assert "over tcp" in r.stdout
    own = system.journal(f"_PID={main_pid(system)}")
    assert "mytimerd-tcp" in own and "mytimerd-unix" in own, own

    # enabled, it comes back with every start of the service
    system.systemctl("stop", SERVICE, TCP_SOCKET)
    ok(ctl(system, "version"))  # the unix socket starts the service ...
    assert active(system, TCP_SOCKET) == "active"  # ... which brings the TCP socket
    ok(ctl(system, "--tcp", "127.0.0.1", str(port), "version"))

    # and the documented way back
    system.systemctl("disable", "--now", TCP_SOCKET)
    system.systemctl("restart", SERVICE)
    r = ctl(system, "--tcp", "127.0.0.1", str(port), "version", "--timeout", "5")
    assert r.returncode == 3, r  # unreachable
    ok(ctl(system, "version"))

    # left enabled and listening for the removal test
    system.systemctl("enable", TCP_SOCKET)
    system.systemctl("restart", SERVICE)
    assert active(system, TCP_SOCKET) == "active"


# --------------------------------------------------------------- remove, purge
def test_remove_stops_and_disables(system: Sandbox) -> None:
    require_installed(system, VERSION_2)
    assert active(system) == "active" and active(system, TCP_SOCKET) == "active"
    dpkg(system, "-r", "mytimerd")
    assert status(system).startswith("deinstall ok config-files"), status(system)
    for unit in UNITS:
        assert active(system, unit) in ("inactive", ""), unit
        assert system.prop(unit, "LoadState") == "not-found", unit
    assert not system.path("/run/mytimerd.sock").exists()
    # the instance too (its socket, its daemon, its enablement link)
    assert active(system, ECHO_SOCKET) in ("inactive", ""), ECHO_SOCKET
    assert active(system, ECHO_SERVICE) in ("inactive", ""), ECHO_SERVICE
    assert not system.path("/run/mytimerd-echo.sock").exists()
    # the conffile stays until purge
    assert system.path("/etc/mytimerd/echo.conf").is_file()
    links = [p for p in tree(system.path("/etc/systemd/system")) if "mytimerd" in p]
    assert links == [], f"enablement symlinks left: {links}"
    for gone in ("/usr/bin/mytimerd", "/usr/bin/mytimerctl", "/usr/lib/mytimerd"):
        assert not system.path(gone).exists(), gone
    processes = system.run(["ps", "-eo", "comm="]).stdout.split()
    assert "mytimerd" not in processes, processes


def test_purge_leaves_nothing_behind(system: Sandbox, baseline: Baseline) -> None:
    if not status(system).startswith("deinstall ok config-files"):
        pytest.fail(f"mytimerd is not removed ({status(system)}): an earlier test failed")
    # the test's own port drop-in is not the package's
    shutil.rmtree(system.path(f"/run/systemd/system/{TCP_SOCKET}.d"), ignore_errors=True)
    dpkg(system, "-P", "mytimerd")
    system.systemctl("daemon-reload")
    assert status(system) in ("unknown", "unknown ok not-installed"), status(system)

    assert group_id(system) is None, "group mytimer is left"
    assert system.path("/etc/group").read_text() == baseline.group
    assert system.path("/etc/gshadow").read_text() == baseline.gshadow
    etc = tree(system.path("/etc"))
    assert {k: v for k, v in etc.items() if baseline.etc.get(k) != v} == {}
    assert {k: v for k, v in baseline.etc.items() if k not in etc} == {}
    units = tree(system.path("/usr/lib/systemd/system"))  # empty before the install
    assert units == {}, units
    assert tree(system.path("/var/lib/systemd")).keys() == baseline.var_lib_systemd.keys()
    assert not system.path("/run/mytimerd.sock").exists()
    listed = system.systemctl("list-unit-files", "--no-legend", "mytimerd*", check=False).stdout
    assert not [u for u in UNITS if u in listed], listed

    # every change dpkg made to /usr and /var (the overlays' upper layers) is
    # gone, except dpkg's own records: nothing new, and no new directory
    for top, before in (("usr", baseline.usr), ("var", baseline.var)):
        after = tree(system.upper(top))
        new = {
            k: v
            for k, v in after.items()
            if k not in before and not f"{top}/{k}/".startswith(BOOKKEEPING)
        }
        copied_up = {k for k, v in new.items() if v == "dir" and Path(f"/{top}/{k}").is_dir()}
        left = {k: v for k, v in new.items() if k not in copied_up}
        assert left == {}, f"left in /{top}: {sorted(left)[:20]}"
