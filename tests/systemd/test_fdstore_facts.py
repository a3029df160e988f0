"""Facts about systemd's file descriptor store, observed under the machine's
real systemd 252 (issue 19: hand open client connections, and a memfd of
state for each, to the fd store across a restart).

Each test asserts one observed behaviour, so that a different systemd (or a
changed unit setting) fails loudly instead of silently changing what issue
19 builds on. docs/fdstore-facts.md says what each fact implies.

The probe (tests/systemd/fdstore_probe.py) is a Type=notify service behind a
unix socket unit (fdprobe.socket, ``FileDescriptorName=probe-listen``), like
mytimerd. It stores descriptors with sd_notify ``FDSTORE=1`` messages (fds as
SCM_RIGHTS) and records, at every start, what it was handed
(LISTEN_FDS/LISTEN_FDNAMES, each descriptor's kind, a memfd's contents).
Held connections are real client connections from this test process.

One private system (tests/systemd/harness.py, ``private_system=True``: PID 1
systemd in namespaces, private /etc, /usr and /var overlays, so dpkg can
install the probe packages of the upgrade test) is booted for the module.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systemd import daemon as sd_daemon  # type: ignore[attr-defined]  # systemd-python
from tests.packaging.conftest import boot_private_system
from tests.systemd.conftest import _cannot_run
from tests.systemd.harness import Sandbox, free_tcp_port

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
PROBE_SRC = Path(__file__).resolve().parent / "fdstore_probe.py"
SERVICE = "fdprobe.service"
SOCKET = "fdprobe.socket"
PROBE = "/run/fdprobe/probe.py"
#: The probe runs on the system's interpreter (the sandbox hides /tmp and
#: /run, where a checkout and its virtualenv may live), with a copy of this
#: interpreter's systemd-python (same CPython) in SITE.
PYTHON = "/usr/bin/python3"
SITE = "/run/fdprobe-site"

SOCKET_UNIT = """[Socket]
ListenStream=/run/fdprobe.sock
FileDescriptorName=probe-listen
Service=fdprobe.service
"""

#: no start rate limit unless a test sets one: every test restarts the probe a
#: few times, and systemd's default (5 starts in 10 s) counts manual restarts
DEFAULT_UNIT = "StartLimitIntervalSec=0\n"
#: seconds a client waits for the probe's answer
TIMEOUT = 120


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = boot_private_system(tmp_path_factory.mktemp("fdstore"))
    try:
        assert sb.path(PYTHON).exists(), f"{PYTHON} is not visible inside the sandbox"
        shutil.copytree(
            Path(sd_daemon.__file__).parent,
            sb.path(f"{SITE}/systemd"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        sb.path("/run/fdprobe").mkdir(parents=True, exist_ok=True)
        shutil.copy(PROBE_SRC, sb.path(PROBE))
        sb.write_file(f"/run/systemd/system/{SOCKET}", SOCKET_UNIT)
        yield sb
    finally:
        sb.teardown()


@pytest.fixture
def sb(system: Sandbox) -> Iterator[Sandbox]:
    """The system, with the probe's units stopped; the journal of the test is
    printed (pytest shows it when the test failed)."""
    mark = cursor(system)
    yield system
    print("---- journal of this test ----")
    print(journal_after(system, mark) or "(empty)")
    system.systemctl("stop", SERVICE, SOCKET, check=False)
    system.systemctl("reset-failed", check=False)


# ---------------------------------------------------------------------- helpers
def configure(sb: Sandbox, service: str, unit: str = DEFAULT_UNIT) -> None:
    """(Re)write fdprobe.service with these [Service] lines, start the socket.
    The service itself starts on the first connection."""
    sb.systemctl("stop", SERVICE, SOCKET, check=False)
    sb.systemctl("reset-failed", check=False)
    sb.path("/run/fdprobe/events.jsonl").unlink(missing_ok=True)
    sb.write_file(
        f"/run/systemd/system/{SERVICE}",
        "[Unit]\nRequires=fdprobe.socket\nAfter=fdprobe.socket\n"
        f"{unit}\n"
        "[Service]\nType=notify\nEnvironment=PROBE_DIR=/run/fdprobe\n"
        f"Environment=PYTHONPATH={SITE}\nExecStart={PYTHON} {PROBE}\n"
        f"{service}",
    )
    sb.systemctl("daemon-reload")
    sb.systemctl("start", SOCKET)


class Conn:
    """A client connection to a probe (line-based: one command, JSON answers)."""

    def __init__(self, sb: Sandbox, path: str = "/run/fdprobe.sock") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # generous: the probe's sendmsg to PID 1 blocks while PID 1 is busy
        # with a large store, and a barrier waits for it
        self.sock.settimeout(TIMEOUT)
        # the sandbox's /run, reached through its PID 1's root
        self.sock.connect(str(sb.path(path)))
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def answer(self) -> dict[str, object]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"EOF before an answer (had {self.buf!r})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        answer: dict[str, object] = json.loads(line)
        return answer

    def ping(self) -> dict[str, object]:
        self.send("ping")
        return self.answer()

    def nothing_pending(self) -> bool:
        """No data and no EOF waiting: the connection looks open and idle."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)
        return False

    def sees_eof(self, within: float) -> bool:
        """The server side closed (EOF, or a reset because data was unread)."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()


def command(sb: Sandbox, line: str, path: str = "/run/fdprobe.sock") -> dict[str, object]:
    c = Conn(sb, path)
    try:
        c.send(line)
        return c.answer()
    finally:
        c.close()


def hold(sb: Sandbox, line: str, path: str = "/run/fdprobe.sock") -> Conn:
    """``hold NAME ...``: this connection goes to the fd store and stays open."""
    c = Conn(sb, path)
    c.send(line)
    a = c.answer()
    assert "held" in a, a
    return c


def barrier(sb: Sandbox, path: str = "/run/fdprobe.sock") -> None:
    """Every message the probe sent before has been processed by systemd."""
    assert command(sb, "barrier", path) == {"barrier": True}


def nstore(sb: Sandbox, unit: str = SERVICE) -> int:
    return int(sb.prop(unit, "NFileDescriptorStore"))


def events(sb: Sandbox, probe_dir: str = "/run/fdprobe") -> list[dict[str, object]]:
    p = sb.path(f"{probe_dir}/events.jsonl")
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines()]


def starts(sb: Sandbox, probe_dir: str = "/run/fdprobe") -> list[dict[str, object]]:
    return [e for e in events(sb, probe_dir) if e["event"] == "start"]


def fds_of(start: dict[str, object]) -> list[dict[str, object]]:
    fds = start["fds"]
    assert isinstance(fds, list)
    return fds


def main_pid(sb: Sandbox, unit: str = SERVICE) -> int:
    return int(sb.prop(unit, "MainPID"))


def cursor(sb: Sandbox) -> str:
    out = sb.run(["journalctl", "-n0", "--show-cursor", "--no-pager"], check=False).stdout
    m = re.search(r"^-- cursor: (\S+)", out, re.M)
    return m.group(1) if m else ""


def journal_after(sb: Sandbox, mark: str) -> str:
    sb.run(["journalctl", "--sync"], check=False)
    argv = ["journalctl", "--no-pager", "-o", "short-monotonic"]
    argv += [f"--after-cursor={mark}"] if mark else []
    return sb.run(argv, check=False).stdout


def settle(sb: Sandbox, old_pid: int, timeout: float = 10) -> str:
    """Wait until the service runs with another main process than old_pid, or
    is down for good (inactive/failed); returns ActiveState."""

    def done() -> str:
        state = sb.prop(SERVICE, "ActiveState")
        if state in ("inactive", "failed"):
            return state
        if state == "active" and main_pid(sb) not in (0, old_pid):
            return state
        return ""

    return str(sb.wait_for(done, timeout, "the probe to restart or stop", interval=0.05))


def start_with_conn_and_state(sb: Sandbox) -> tuple[int, Conn]:
    """Start the probe, store one held connection ("conn") and one memfd
    ("state"), as issue 19's daemon would; returns the pid and the client."""
    pid = int(command(sb, "info")["pid"])  # type: ignore[call-overload]
    conn = hold(sb, "hold conn")
    command(sb, "memfd state st-of-conn")
    barrier(sb)
    assert nstore(sb) == 2
    return pid, conn


# ---------------------------------------------------------------- the platform
def test_facts_are_for_systemd_252(system: Sandbox) -> None:
    """What this module asserts was observed on systemd 252 (Debian 12)."""
    out = system.run(["systemctl", "--version"]).stdout
    assert out.startswith("systemd 252 "), out.splitlines()[0]


# -------------------------------------------- handing fds over and getting back
def test_stored_fds_come_back_named_after_the_socket_units_newest_first(sb: Sandbox) -> None:
    """FDSTORE=1 + FDNAME= with the fds as SCM_RIGHTS (by hand, and through
    systemd-python's notify(fds=...)); after `systemctl restart` the new main
    process gets the socket unit's fd first, then the stored ones, the most
    recently stored first; names in LISTEN_FDNAMES; connections stay open
    for their clients and carry on with the new process; a memfd keeps its
    contents (and its file offset, shared with every copy)."""
    configure(sb, "FileDescriptorStoreMax=16\n")
    old = int(command(sb, "info")["pid"])  # type: ignore[call-overload]
    a = hold(sb, "hold conn-a")  # raw sendmsg(SCM_RIGHTS)
    b = hold(sb, "hold conn-b via=sdpy")  # systemd.daemon.notify(..., fds=[...])
    command(sb, "memfd state-a hello-state")
    c = hold(sb, "hold conn-c poll=0")
    barrier(sb)
    assert nstore(sb) == 4

    sb.systemctl("restart", SERVICE)
    new = main_pid(sb)
    assert new != old
    start = starts(sb)[-1]
    assert start["pid"] == new
    assert start["listen_fds"] == 5
    assert start["listen_fdnames"] == "probe-listen:conn-c:state-a:conn-b:conn-a"
    fds = fds_of(start)
    assert [d["fd"] for d in fds] == [3, 4, 5, 6, 7]
    assert [d["kind"] for d in fds] == [
        "listening-socket",
        "socket",
        "memfd",
        "socket",
        "socket",
    ]
    memfd = fds[2]
    assert memfd["contents"] == "hello-state"
    # the offset the old process left after write(): the open file is shared
    assert memfd["offset"] == len("hello-state")
    # the store keeps its copies after handing them out
    assert nstore(sb) == 4

    for conn, name in ((a, "conn-a"), (b, "conn-b"), (c, "conn-c")):
        assert conn.nothing_pending(), f"{name}: the client saw data or EOF"
        assert conn.ping() == {"pong": new, "name": name}
        conn.close()


def test_with_two_socket_units_both_come_before_the_stored_fds(sb: Sandbox) -> None:
    """mytimerd has two socket units (unix, and TCP when enabled): every
    socket unit's fd comes first, the stored ones after all of them."""
    configure(sb, "FileDescriptorStoreMax=16\n")
    sb.write_file(
        "/run/systemd/system/fdprobe-two.socket",
        "[Socket]\nListenStream=/run/fdprobe-two.sock\nFileDescriptorName=probe-two\n"
        "Service=fdprobe.service\n",
    )
    sb.systemctl("daemon-reload")
    try:
        sb.systemctl("start", "fdprobe-two.socket")  # before the service starts
        command(sb, "memfd state x")
        barrier(sb)
        sb.systemctl("restart", SERVICE)
        names = str(starts(sb)[-1]["listen_fdnames"]).split(":")
        assert sorted(names[:2]) == ["probe-listen", "probe-two"] and names[2:] == ["state"]
    finally:
        sb.systemctl("stop", "fdprobe-two.socket", check=False)
        sb.path("/run/systemd/system/fdprobe-two.socket").unlink()
        sb.systemctl("daemon-reload")


def test_the_order_of_stored_fds_flips_at_every_daemon_reload(sb: Sandbox) -> None:
    """Stored fds come back newest first, but every daemon-reload or
    daemon-reexec (systemd serializing the store and reading it back)
    reverses that order: only the names identify them."""
    configure(sb, "FileDescriptorStoreMax=16\n")
    for name in ("m1", "m2", "m3"):
        command(sb, f"memfd {name} {name}")
    barrier(sb)
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:m3:m2:m1"
    sb.systemctl("restart", SERVICE)  # a plain restart keeps the order
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:m3:m2:m1"
    sb.systemctl("daemon-reload")
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:m1:m2:m3"
    sb.systemctl("daemon-reload")
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:m3:m2:m1"
    # a newly stored fd goes in front; the next reload reverses the whole list
    command(sb, "memfd m4 m4")
    barrier(sb)
    sb.systemctl("daemon-reload")
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:m1:m2:m3:m4"


# ------------------------------------------------- which paths keep the store
#: (id, [Service] lines, action, store kept)
PATHS = [
    ("restart", "", "restart", True),
    ("try-restart", "", "try-restart", True),
    ("daemon-reload-then-restart", "", "daemon-reload restart", True),
    ("daemon-reexec-then-restart", "", "daemon-reexec restart", True),
    ("stop-then-start", "", "stop start", False),
    ("exit-0-restart-no", "Restart=no\n", "exit 0", False),
    ("exit-1-restart-no", "Restart=no\n", "exit 1", False),
    ("sigkill-restart-no", "Restart=no\n", "kill", False),
    ("exit-0-on-failure", "Restart=on-failure\n", "exit 0", False),
    ("exit-1-on-failure", "Restart=on-failure\n", "exit 1", True),
    ("sigkill-on-failure", "Restart=on-failure\n", "kill", True),
    ("watchdog-on-failure", "Restart=on-failure\nWatchdogSec=1s\n", "hang", True),
    ("exit-0-always", "Restart=always\n", "exit 0", True),
    ("sigkill-always", "Restart=always\n", "kill", True),
    (
        "reload-kills-with-sigterm-on-failure",
        "Restart=on-failure\nExecReload=/bin/kill -TERM $MAINPID\n",
        "reload",
        False,
    ),
    (
        "reload-kills-with-sigterm-always",
        "Restart=always\nExecReload=/bin/kill -TERM $MAINPID\n",
        "reload",
        True,
    ),
    (
        "reload-kills-with-sigkill-on-failure",
        "Restart=on-failure\nExecReload=/bin/kill -KILL $MAINPID\n",
        "reload",
        True,
    ),
]


@pytest.mark.parametrize(
    ("settings", "action", "kept"), [p[1:] for p in PATHS], ids=[p[0] for p in PATHS]
)
def test_which_paths_keep_the_store(sb: Sandbox, settings: str, action: str, kept: bool) -> None:
    """Kept: the next main process gets "conn" and "state" back and the held
    connection carries on with it. Discarded: the client sees its connection
    closed and the next start (by the next connection) gets nothing."""
    configure(sb, f"FileDescriptorStoreMax=4\nRestartSec=100ms\n{settings}")
    old, conn = start_with_conn_and_state(sb)

    if action.startswith("exit"):
        command(sb, action)  # "exit 0" / "exit 1", after answering
    elif action == "kill":
        command(sb, "kill")  # SIGKILL to itself
    elif action == "hang":
        command(sb, "hang")  # no more watchdog pings: killed after WatchdogSec=
    else:
        for step in action.split():
            if step == "daemon-reexec":
                sb.systemctl("daemon-reexec")
                sb.wait_for(
                    lambda: (
                        sb.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                        in ("running", "degraded")
                    ),
                    10,
                    "PID 1 back after daemon-reexec",
                )
                assert nstore(sb) == 2  # serialized across the re-execution
            elif step == "daemon-reload":
                sb.systemctl("daemon-reload")
            else:
                # a reload whose ExecReload= kills the main process may report failure
                sb.systemctl(step, SERVICE, check=step != "reload")
    state = settle(sb, old, timeout=15)

    if kept:
        assert state == "active"
        new = main_pid(sb)
        assert nstore(sb) == 2
        start = starts(sb)[-1]
        assert start["pid"] == new
        # the order of stored fds is not stable (see the order test below)
        assert sorted(str(start["listen_fdnames"]).split(":")) == ["conn", "probe-listen", "state"]
        assert str(start["listen_fdnames"]).startswith("probe-listen:")
        assert [d["contents"] for d in fds_of(start) if d["kind"] == "memfd"] == ["st-of-conn"]
        assert conn.nothing_pending()
        assert conn.ping() == {"pong": new, "name": "conn"}
    else:
        assert nstore(sb) == 0
        assert conn.sees_eof(within=5), "the stored connection stayed open"
        if state != "active":  # the next connection starts it, with nothing
            command(sb, "info")
        assert starts(sb)[-1]["listen_fdnames"] == "probe-listen"
    conn.close()


def test_reload_by_reexec_keeps_the_store_but_hands_nothing_over(sb: Sandbox) -> None:
    """ExecReload= signalling a daemon that re-executes itself (same pid): the
    unit never stops, the store is untouched, but nothing is handed over at
    the exec (LISTEN_* are only set up by systemd at ExecStart). A connection
    the process drops on exec stays open for its client, idle: systemd's copy
    keeps it alive."""
    configure(
        sb,
        "FileDescriptorStoreMax=4\nEnvironment=PROBE_HUP=reexec\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n",
    )
    old, conn = start_with_conn_and_state(sb)
    sb.systemctl("reload", SERVICE)
    sb.wait_for(lambda: len(starts(sb)) == 2, 10, "the re-executed probe's start record")
    assert main_pid(sb) == old
    start = starts(sb)[-1]
    assert start["reexec"] is True and start["listen_fdnames"] == "probe-listen"
    assert nstore(sb) == 2
    # the process closed its copy at exec (CLOEXEC); the client sees nothing
    assert not conn.sees_eof(within=0.5)
    # the next real restart hands everything back
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:state:conn"
    assert conn.ping()["pong"] == main_pid(sb)
    conn.close()


def test_hitting_the_start_limit_discards_the_store_and_fails_the_socket(sb: Sandbox) -> None:
    """A crash loop: once the start rate limit is hit the service fails, its
    store is closed (clients see their connections end) and the socket unit
    fails too (service-start-limit-hit), so nothing listens any more."""
    configure(
        sb,
        "FileDescriptorStoreMax=4\nRestart=always\nRestartSec=50ms\n",
        unit="StartLimitBurst=2\nStartLimitIntervalSec=60s\n",
    )
    old, conn = start_with_conn_and_state(sb)
    command(sb, "kill")  # 2nd start: within the limit
    settle(sb, old)
    assert nstore(sb) == 2
    command(sb, "kill")  # a 3rd start would exceed StartLimitBurst=2
    sb.wait_for(lambda: sb.prop(SERVICE, "ActiveState") == "failed", 10, "the service to fail")
    assert nstore(sb) == 0
    assert conn.sees_eof(within=5)
    assert sb.prop(SOCKET, "ActiveState") == "failed"
    assert sb.prop(SOCKET, "Result") == "service-start-limit-hit"
    conn.close()


# ------------------------------------------------------ FileDescriptorStoreMax
def test_default_max_is_zero_and_stored_fds_are_closed_with_a_warning(sb: Sandbox) -> None:
    """Without FileDescriptorStoreMax= nothing is stored; the sender cannot
    tell: systemd-python's notify() still returns True (the probe's "hold
    ... via=sdpy" answers only when it did)."""
    configure(sb, "")
    assert sb.prop(SERVICE, "FileDescriptorStoreMax") == "0"
    mark = cursor(sb)
    command(sb, "memfd state x")
    conn = hold(sb, "hold conn via=sdpy")
    barrier(sb)
    assert nstore(sb) == 0
    assert (
        journal_after(sb, mark).count(
            "fdprobe.service: Cannot store more fds than FileDescriptorStoreMax=0, "
            "closing remaining."
        )
        == 2
    )
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen"
    assert conn.sees_eof(within=5)  # its only other copy was the old process's
    conn.close()


def test_over_the_max_in_separate_messages_the_first_ones_are_kept(sb: Sandbox) -> None:
    configure(sb, "FileDescriptorStoreMax=3\n")
    mark = cursor(sb)
    command(sb, "each e 5")  # five messages of one memfd each
    barrier(sb)
    assert nstore(sb) == 3
    log = journal_after(sb, mark)
    # one warning per refused message; the message's other fds were stored
    assert log.count("Cannot store more fds than FileDescriptorStoreMax=3, closing remaining.") == 2
    sb.systemctl("restart", SERVICE)
    got = [d.get("contents") for d in fds_of(starts(sb)[-1])[1:]]
    assert got == ["e/2", "e/1", "e/0"]  # newest first


def test_over_the_max_in_one_message_some_are_kept_in_no_particular_order(sb: Sandbox) -> None:
    """Within one message the fds are not kept in the order sent (systemd
    puts them in a hash set): which ones survive an overflow is arbitrary."""
    configure(sb, "FileDescriptorStoreMax=3\n")
    mark = cursor(sb)
    command(sb, "batch b 5")
    barrier(sb)
    assert nstore(sb) == 3
    assert "Cannot store more fds than FileDescriptorStoreMax=3" in journal_after(sb, mark)
    sb.systemctl("restart", SERVICE)
    start = starts(sb)[-1]
    assert start["listen_fdnames"] == "probe-listen:b:b:b"
    got = [str(d["contents"]) for d in fds_of(start)[1:]]
    assert len(set(got)) == 3 and set(got) <= {f"b/{i}" for i in range(5)}

    # the order within one message, with room for all: neither as sent nor reversed
    configure(sb, "FileDescriptorStoreMax=32\n")
    command(sb, "batch m 16")
    barrier(sb)
    sb.systemctl("restart", SERVICE)
    got = [str(d["contents"]) for d in fds_of(starts(sb)[-1])[1:]]
    sent = [f"m/{i}" for i in range(16)]
    assert sorted(got) == sorted(sent)
    assert got not in (sent, sent[::-1]), got


# --------------------------------------------- names, duplicates and removal
def test_same_fd_twice_is_kept_once_same_name_twice_is_kept_twice(sb: Sandbox) -> None:
    configure(sb, "FileDescriptorStoreMax=16\n")
    command(sb, "twice dup")  # one memfd, sent in two messages
    barrier(sb)
    assert nstore(sb) == 1
    command(sb, "memfd same x1")
    command(sb, "memfd same x2")
    barrier(sb)
    assert nstore(sb) == 3

    # FDSTOREREMOVE=1 + FDNAME= removes every fd of that name
    command(sb, "remove same")
    barrier(sb)
    assert nstore(sb) == 1
    mark = cursor(sb)
    command(sb, "remove nosuch")  # an unknown name: nothing happens, nothing logged
    barrier(sb)
    assert nstore(sb) == 1
    assert "nosuch" not in journal_after(sb, mark)
    sb.systemctl("restart", SERVICE)
    start = starts(sb)[-1]
    assert start["listen_fdnames"] == "probe-listen:dup"
    assert fds_of(start)[1]["contents"] == "dup/same"


def test_invalid_fdname_is_stored_as_stored(sb: Sandbox) -> None:
    """A name with ':' (LISTEN_FDNAMES' separator, e.g. "127.0.0.1:5000") or
    longer than 255 characters is replaced by the default "stored"."""
    configure(sb, "FileDescriptorStoreMax=16\n")
    mark = cursor(sb)
    command(sb, "memfd conn:127.0.0.1:5000 colon")
    command(sb, "memfd " + "a" * 255 + " long-ok")
    command(sb, "memfd " + "b" * 256 + " too-long")
    barrier(sb)
    assert journal_after(sb, mark).count("Passed FDNAME= name is invalid, ignoring.") == 2
    sb.systemctl("restart", SERVICE)
    got = [(d["name"], d["contents"]) for d in fds_of(starts(sb)[-1])[1:]]
    assert got == [("stored", "too-long"), ("a" * 255, "long-ok"), ("stored", "colon")]


# -------------------------------------------------------- polling (FDPOLL=0)
def test_polling_drops_connections_whose_client_hung_up(sb: Sandbox) -> None:
    """By default systemd polls stored fds and closes them on EPOLLHUP: a unix
    connection whose client closed is dropped from the store, whether the
    daemon runs or not. With FDPOLL=0 it stays and comes back with EOF
    pending; so does a half-closed one (client shut down its writing side:
    no EPOLLHUP on our side). What a client sends while no process runs
    waits in its socket for the next one."""
    configure(sb, "FileDescriptorStoreMax=16\nRestart=always\nRestartSec=2s\n")
    command(sb, "info")
    polled = hold(sb, "hold polled")
    unpolled = hold(sb, "hold unpolled poll=0")
    half = hold(sb, "hold half")
    barrier(sb)
    assert nstore(sb) == 3
    polled.close()
    unpolled.close()
    half.sock.shutdown(socket.SHUT_WR)
    # the probe sees EOF on the first two and closes its copies; systemd's
    # polled copy goes too
    sb.wait_for(lambda: nstore(sb) == 2, 5, "the polled connection to leave the store")
    time.sleep(0.3)
    assert nstore(sb) == 2

    # the same while no process runs (between an exit and the auto-restart);
    # and a live client's request sent meanwhile waits for the next process
    early = hold(sb, "hold early")
    early_unpolled = hold(sb, "hold early-unpolled poll=0")
    waiting = hold(sb, "hold waiting")
    barrier(sb)
    assert nstore(sb) == 5
    old = int(command(sb, "info")["pid"])  # type: ignore[call-overload]
    command(sb, "exit 0")
    sb.wait_for(lambda: sb.prop(SERVICE, "SubState") == "auto-restart", 5, "auto-restart")
    early.close()
    early_unpolled.close()
    waiting.send("ping")
    time.sleep(0.3)
    assert sb.prop(SERVICE, "SubState") == "auto-restart", "RestartSec too short for the test"
    assert nstore(sb) == 4
    settle(sb, old)
    start = starts(sb)[-1]
    assert start["listen_fdnames"] == "probe-listen:waiting:early-unpolled:half:unpolled"
    # EOF pending on the three hung up; the request waiting on the live one
    assert [d["readable"] for d in fds_of(start)[1:]] == ["b'p'", "b''", "b''", "b''"]
    assert waiting.answer() == {"pong": main_pid(sb), "name": "waiting"}
    half.close()
    waiting.close()


def test_polling_keeps_tcp_connections_whose_client_sent_fin_drops_reset_ones(
    sb: Sandbox,
) -> None:
    """On TCP a client's close (FIN) only shuts our receiving side: no
    EPOLLHUP, the connection stays in the store and comes back with EOF
    pending. A reset (RST) closes it: EPOLLHUP, dropped."""
    port = free_tcp_port()  # the network namespace is the machine's
    sb.write_file(
        "/run/systemd/system/fdprobe-tcp.socket",
        f"[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=probe-tcp\n"
        "Service=fdprobe.service\n",
    )
    configure(sb, "FileDescriptorStoreMax=16\n")
    try:
        sb.systemctl("start", "fdprobe-tcp.socket")
        tcp = {}
        for name in ("tcp-fin", "tcp-rst"):
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            s.sendall(f"hold {name}\n".encode())
            assert b"held" in s.recv(4096)
            tcp[name] = s
        barrier(sb)
        assert nstore(sb) == 2
        tcp["tcp-fin"].close()
        tcp["tcp-rst"].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tcp["tcp-rst"].close()  # linger 0: close sends RST
        sb.wait_for(lambda: nstore(sb) == 1, 5, "the reset connection to leave the store")
        time.sleep(0.3)
        assert nstore(sb) == 1
        sb.systemctl("restart", SERVICE)
        stored = [d for d in fds_of(starts(sb)[-1]) if d["kind"] == "socket"]
        assert [(d["name"], d["readable"]) for d in stored] == [("tcp-fin", "b''")]
    finally:
        sb.systemctl("stop", SERVICE, "fdprobe-tcp.socket", check=False)
        sb.path("/run/systemd/system/fdprobe-tcp.socket").unlink()
        sb.systemctl("daemon-reload")


def test_a_handed_back_connection_closes_for_its_client_only_once_removed(sb: Sandbox) -> None:
    """After a restart the store still holds every fd it handed back. The
    daemon closing its copy is not enough for the client to see the close:
    FDSTOREREMOVE=1 (or shutdown(), which also gets it dropped by polling)
    is."""
    configure(sb, "FileDescriptorStoreMax=16\n")
    command(sb, "info")
    held = {n: hold(sb, f"hold {n}") for n in ("c-close", "c-remove", "c-shutdown")}
    held["c-close-unpolled"] = hold(sb, "hold c-close-unpolled poll=0")
    barrier(sb)
    sb.systemctl("restart", SERVICE)
    assert nstore(sb) == 4

    held["c-close"].send("close")  # the daemon closes its fd, nothing else
    assert not held["c-close"].sees_eof(within=1)
    held["c-remove"].send("remove")  # FDSTOREREMOVE=1 FDNAME=c-remove, then close
    assert held["c-remove"].sees_eof(within=5)
    held["c-shutdown"].send("shutdown")  # shutdown(SHUT_RDWR), then close
    assert held["c-shutdown"].sees_eof(within=5)
    held["c-close-unpolled"].send("close")
    assert not held["c-close-unpolled"].sees_eof(within=1)
    barrier(sb)
    # the two closed-only ones are still stored, and come back at the next start
    assert nstore(sb) == 2
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fdnames"] == "probe-listen:c-close-unpolled:c-close"
    for c in held.values():
        c.close()


# --------------------------------------------------------------- LimitNOFILE
def test_the_soft_fd_limit_at_exec_bounds_what_can_come_back(sb: Sandbox) -> None:
    """systemd renumbers the passed fds to 3.. in the new process after
    applying LimitNOFILE=; with too many for the soft limit that start fails
    (202/FDS) before the daemon runs. The hard limit alone does not help; a
    higher soft limit does. With Restart=on-failure (mytimerd's setting) the
    store is kept through the auto-restarts, each fails the same way, and
    the start limit ends it all: service failed, store discarded (clients
    see their connections close), socket unit failed (nothing listens)."""
    for limit, count in (("64", 20), ("256", 60)):
        configure(sb, f"FileDescriptorStoreMax=100\nLimitNOFILE={limit}\n")
        command(sb, f"each e {count}")
        barrier(sb)
        assert nstore(sb) == count
        sb.systemctl("restart", SERVICE)
        assert starts(sb)[-1]["listen_fds"] == count + 1

    # mytimerd's restart settings and systemd's default start limit
    configure(
        sb,
        "FileDescriptorStoreMax=100\nLimitNOFILE=64:65536\nRestart=on-failure\nRestartSec=100ms\n",
        unit="",
    )
    command(sb, "each e 59")
    conn = hold(sb, "hold conn")
    barrier(sb)
    assert nstore(sb) == 60
    mark = cursor(sb)
    r = sb.systemctl("restart", SERVICE, check=False)
    assert r.returncode != 0
    sb.wait_for(lambda: sb.prop(SERVICE, "ActiveState") == "failed", 15, "the start limit")
    assert int(sb.prop(SERVICE, "NRestarts")) >= 1
    assert sb.prop(SERVICE, "ExecMainStatus") == "202"
    assert nstore(sb) == 0
    assert conn.sees_eof(within=5)
    assert sb.prop(SOCKET, "ActiveState") == "failed"
    assert sb.prop(SOCKET, "Result") == "service-start-limit-hit"
    # the wording depends on where renumbering hits the limit: "Failed to
    # adjust passed file descriptors: Too many open files" or "Failed to
    # shift fd and set FD_CLOEXEC: Invalid argument"
    log = journal_after(sb, mark)
    assert "fdprobe.service: Failed at step FDS spawning" in log, log
    assert "fdprobe.service: Start request repeated too quickly." in log, log
    conn.close()


def test_storing_gets_slower_with_every_fd_already_stored(sb: Sandbox) -> None:
    """PID 1 compares each fd it is sent with every fd already in the store
    (to drop duplicates), so storing n fds costs about n*n/2 comparisons, in
    PID 1, while the sender blocks once the notify socket's buffer is full.
    Also: 2,500 fds come back fine when the soft LimitNOFILE is high."""
    configure(sb, "FileDescriptorStoreMax=4000\nLimitNOFILE=65536\n")
    command(sb, "info")

    def store(first: int, batches: int) -> float:
        t = time.monotonic()
        for i in range(first, first + batches):
            command(sb, f"batch b{i} 250")  # 250 a message, as mytimerd sends them
        barrier(sb)
        return time.monotonic() - t

    into_empty = store(0, 2)  # fds 1..500
    store(2, 6)  # 501..2000
    into_2000 = store(8, 2)  # 2001..2500
    assert nstore(sb) == 2500
    print(f"500 fds into an empty store: {into_empty:.2f}s; into one of 2000: {into_2000:.2f}s")
    # 9 times the comparisons; the bound leaves room for a busy machine
    assert into_2000 > 3 * into_empty, (into_empty, into_2000)
    sb.systemctl("restart", SERVICE)
    assert starts(sb)[-1]["listen_fds"] == 2501
    sb.systemctl("stop", SERVICE)  # PID 1 closes them: the sandbox's PID 1 has 20,000


def test_storing_in_the_sigterm_handler_right_before_exit_is_taken(sb: Sandbox) -> None:
    """A daemon handing over on stop sends FDSTORE=1 and exits at once: systemd
    reads the message before it handles the exit (the notify socket is
    dispatched before SIGCHLD), so nothing is lost, restart after restart."""
    configure(sb, "FileDescriptorStoreMax=16\nEnvironment=PROBE_STORE_ON_TERM=1\n")
    command(sb, "info")
    for _ in range(5):
        old = main_pid(sb)
        command(sb, "remove on-term")  # only the one the next SIGTERM stores
        barrier(sb)
        sb.systemctl("restart", SERVICE)
        got = [d["contents"] for d in fds_of(starts(sb)[-1]) if d.get("name") == "on-term"]
        assert got == [f"term-of-{old}"]


# -------------------------------------------------------------------- timing
def test_restart_pause(sb: Sandbox) -> None:
    """How long no process serves: from the old main process exiting to
    systemd starting the new one (ExecMainStartTimestampMonotonic; the probe
    writes CLOCK_MONOTONIC times, the same clock). `systemctl restart`: no
    delay of its own (observed 10-25 ms). An auto-restart waits RestartSec=,
    plus up to sd-event's 250 ms timer slack."""
    configure(sb, "FileDescriptorStoreMax=4\nRestart=on-failure\nRestartSec=100ms\n")
    command(sb, "info")
    conn = hold(sb, "hold conn")
    barrier(sb)

    def pause() -> float:
        exits = [e for e in events(sb) if e["event"] == "exit"]
        started = int(sb.prop(SERVICE, "ExecMainStartTimestampMonotonic")) / 1e6
        return started - float(exits[-1]["t"])  # type: ignore[arg-type]

    manual = []
    for _ in range(3):
        sb.systemctl("restart", SERVICE)
        manual.append(pause())
        assert conn.ping()["pong"] == main_pid(sb)
    auto = []
    for _ in range(2):
        old = main_pid(sb)
        command(sb, "kill")
        settle(sb, old)
        auto.append(pause())
        assert conn.ping()["pong"] == main_pid(sb)
    print(f"restart pauses: systemctl restart {manual}, auto-restart (RestartSec=100ms) {auto}")
    assert all(0 < p < 0.5 for p in manual), manual
    assert all(0.1 <= p < 1.0 for p in auto), auto
    conn.close()


# -------------------------------------------------- FileDescriptorStorePreserve
def test_file_descriptor_store_preserve_is_unknown_to_252(sb: Sandbox) -> None:
    """systemd >= 254's FileDescriptorStorePreserve= is ignored with a
    warning (the unit still loads): systemd-analyze verify warns too, which
    tests/systemd/test_systemd_units.py's clean-verify check would catch."""
    configure(sb, "FileDescriptorStoreMax=4\nFileDescriptorStorePreserve=yes\n")
    assert sb.prop(SERVICE, "LoadState") == "loaded"
    assert sb.prop(SERVICE, "FileDescriptorStorePreserve") == ""
    r = sb.run(["systemd-analyze", "verify", f"/run/systemd/system/{SERVICE}"], check=False)
    assert (
        "Unknown key 'FileDescriptorStorePreserve' in section [Service], ignoring." in r.stderr
    ), r.stderr
    # and it changes nothing: a stop still empties the store
    start_with_conn_and_state(sb)[1].close()
    sb.systemctl("stop", SERVICE)
    assert nstore(sb) == 0


# ---------------------------------------------------------- Debian upgrades
VARIANTS = ("restart", "stop", "ours")

PROBE_RULES = """#!/usr/bin/make -f
%:
\tdh $@

override_dh_auto_install:
\tfor v in restart stop ours; do \\
\t    install -D -m 644 -t debian/fdprobe-$$v/lib/systemd/system \\
\t        units/fdprobe-$$v.socket units/fdprobe-$$v.service; \\
\tdone

# debhelper 13.11 looks for units in lib/systemd/system (packaging/debian/rules)
override_dh_installsystemd:
\t# debhelper's default (compat 13): restart after upgrade
\tdh_installsystemd -pfdprobe-restart fdprobe-restart.socket fdprobe-restart.service
\t# stop before the upgrade, start after it
\tdh_installsystemd -pfdprobe-stop --no-restart-after-upgrade \\
\t    fdprobe-stop.socket fdprobe-stop.service
\t# mytimerd's options (packaging/debian/rules), its postinst does try-restart
\tdh_installsystemd -pfdprobe-ours --no-restart-after-upgrade --no-stop-on-upgrade \\
\t    fdprobe-ours.socket
\tdh_installsystemd -pfdprobe-ours --no-enable --no-start --no-stop-on-upgrade fdprobe-ours.service
"""

#: what packaging/debian/postinst does on upgrade, for the probe's service
PROBE_OURS_POSTINST = """#!/bin/sh
set -e
#DEBHELPER#
if [ "$1" = configure ] && [ -n "$2" ] && [ -z "${DPKG_ROOT:-}" ] && \\
        [ -d /run/systemd/system ]; then
    deb-systemd-invoke try-restart fdprobe-ours.service
fi
exit 0
"""


def _probe_source(top: Path) -> None:
    (top / "debian" / "source").mkdir(parents=True)
    (top / "units").mkdir()
    control = (
        "Source: fdprobe\nSection: misc\nPriority: optional\n"
        "Maintainer: fdprobe test <fdprobe@example.org>\n"
        "Build-Depends: debhelper-compat (= 13)\nStandards-Version: 4.6.2\n"
        "Rules-Requires-Root: no\n"
    )
    for v in VARIANTS:
        control += (
            f"\nPackage: fdprobe-{v}\nArchitecture: all\n"
            f"Description: fd store probe ({v})\n test only\n"
        )
        (top / "units" / f"fdprobe-{v}.socket").write_text(
            f"[Socket]\nListenStream=/run/fdprobe-{v}.sock\nFileDescriptorName=probe-listen\n"
            f"Service=fdprobe-{v}.service\n\n[Install]\nWantedBy=sockets.target\n"
        )
        (top / "units" / f"fdprobe-{v}.service").write_text(
            f"[Unit]\nRequires=fdprobe-{v}.socket\nAfter=fdprobe-{v}.socket\n\n"
            f"[Service]\nType=notify\nEnvironment=PROBE_DIR=/run/fdprobe-{v}\n"
            f"Environment=PYTHONPATH={SITE}\nExecStart={PYTHON} {PROBE}\n"
            "FileDescriptorStoreMax=4\n"
        )
    (top / "debian" / "control").write_text(control)
    (top / "debian" / "source" / "format").write_text("3.0 (native)\n")
    (top / "debian" / "rules").write_text(PROBE_RULES)
    (top / "debian" / "rules").chmod(0o755)
    (top / "debian" / "fdprobe-ours.postinst").write_text(PROBE_OURS_POSTINST)


def _build_probe_debs(work: Path, version: str) -> list[Path]:
    top = work / f"src-{version}"
    _probe_source(top)
    (top / "debian" / "changelog").write_text(
        f"fdprobe ({version}) unstable; urgency=medium\n\n  * test\n\n"
        " -- fdprobe test <fdprobe@example.org>  Thu, 01 Jan 2025 00:00:00 +0000\n"
    )
    r = subprocess.run(
        ["dpkg-buildpackage", "-b", "-us", "-uc"],
        cwd=top,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"dpkg-buildpackage failed:\n{r.stdout}\n{r.stderr}"
    return [work / f"fdprobe-{v}_{version}_all.deb" for v in VARIANTS]


def test_our_packaging_still_restarts_the_service_the_probe_package_does() -> None:
    """The "ours" probe package copies packaging/debian's upgrade handling;
    if that changes, the upgrade fact below must be observed again."""
    rules = (REPO / "packaging" / "debian" / "rules").read_text()
    assert (
        "dh_installsystemd --no-restart-after-upgrade --no-stop-on-upgrade mytimerd.socket" in rules
    )
    assert (
        "dh_installsystemd --no-enable --no-start --no-stop-on-upgrade "
        "mytimerd-tcp.socket mytimerd.service" in rules
    )
    postinst = (REPO / "packaging" / "debian" / "postinst").read_text()
    assert "deb-systemd-invoke try-restart mytimerd.service" in postinst
    preinst = REPO / "packaging" / "debian" / "preinst"
    assert not preinst.exists() or "stop" not in preinst.read_text()


def test_debian_upgrade_keeps_the_store_unless_the_service_is_stopped(
    sb: Sandbox, tmp_path: Path
) -> None:
    """dpkg -i of version 1 then 2 of three probe packages whose maintainer
    scripts debhelper 13.11 generated (plus, for "ours", mytimerd's
    postinst): restart-after-upgrade (postinst: deb-systemd-invoke restart
    SERVICE SOCKET) keeps the store but also restarts the socket unit (a new
    listening socket); stop-before-upgrade (preinst: stop) loses it; ours
    (postinst: deb-systemd-invoke try-restart SERVICE) keeps the store and the
    listening socket."""
    for tool in ("dpkg-buildpackage", "dh", "dh_installsystemd"):
        if shutil.which(tool) is None:
            _cannot_run(f"{tool} not installed (scripts/setup installs it)")
    v1 = _build_probe_debs(tmp_path, "1")
    v2 = _build_probe_debs(tmp_path, "2")
    sb.path("/run/fdprobe-debs").mkdir(exist_ok=True)
    for deb in (*v1, *v2):
        shutil.copy(deb, sb.path(f"/run/fdprobe-debs/{deb.name}"))
    env = {"DEBIAN_FRONTEND": "noninteractive"}

    results = {}
    for variant, old_deb, new_deb in zip(VARIANTS, v1, v2, strict=True):
        service, sock = f"fdprobe-{variant}.service", f"/run/fdprobe-{variant}.sock"
        probe_dir = f"/run/fdprobe-{variant}"
        sb.path(probe_dir).mkdir(exist_ok=True)
        sb.run(["dpkg", "-i", f"/run/fdprobe-debs/{old_deb.name}"], env=env)
        assert sb.prop(f"fdprobe-{variant}.socket", "ActiveState") == "active"
        old = int(command(sb, "info", sock)["pid"])  # type: ignore[call-overload]
        # a new listening socket is a new inode at the socket's path
        listening = sb.path(sock).stat().st_ino
        conn = hold(sb, "hold conn", sock)
        command(sb, "memfd state st", sock)
        barrier(sb, sock)
        assert nstore(sb, service) == 2

        sb.run(["dpkg", "-i", f"/run/fdprobe-debs/{new_deb.name}"], env=env)
        r = sb.run(["dpkg-query", "-W", "-f=${Version}", f"fdprobe-{variant}"])
        assert r.stdout == "2"
        kept = nstore(sb, service) == 2
        if kept:
            assert main_pid(sb, service) != old
            assert conn.ping() == {"pong": main_pid(sb, service), "name": "conn"}
        else:
            assert sb.prop(service, "ActiveState") == "inactive"
            assert conn.sees_eof(within=5)
        conn.close()
        if not kept:  # the next connection starts it
            command(sb, "info", sock)
        results[variant] = (
            kept,
            # the upgrade's daemon-reload reversed the order (see the order test)
            starts(sb, probe_dir)[-1]["listen_fdnames"],
            sb.path(sock).stat().st_ino == listening,
        )
        sb.run(["dpkg", "--purge", f"fdprobe-{variant}"], env=env)

    assert results == {
        # kept; handed back; but the listening socket was replaced
        "restart": (True, "probe-listen:conn:state", False),
        # lost (the service is not even running after the upgrade), and the
        # listening socket was replaced
        "stop": (False, "probe-listen", False),
        # kept, and the listening socket is the same
        "ours": (True, "probe-listen:conn:state", True),
    }
