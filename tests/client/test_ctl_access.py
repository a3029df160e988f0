"""mytimerctl when the daemon's socket or the daemon itself refuses this user:
the hint names the socket's owner, group and mode and how to join the group;
a mytimerd.PermissionDenied answer says who the daemon admits.

The end-to-end tests run mytimerctl as another user through setpriv, so they
need root: they skip on a laptop and fail in CI when root is missing (as
tests/daemon/test_access.py does). The hint's other cases are tested in process.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mytimerd.client.ctl import hints

from .conftest import Daemon, start_daemon, stop_daemon

NOBODY = 65534
#: A group nobody is not in, named in the group database.
GROUP = "users"
MYTIMERCTL = Path(sys.executable).with_name("mytimerctl")


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("these tests need root in CI", pytrace=False)
        pytest.skip("needs root (mytimerctl runs as another user)")


@pytest.fixture
def public_daemon(root: None) -> Iterator[list[Daemon]]:
    """Daemons started by the test, in a directory anyone may traverse (pytest's are 0700)."""
    started: list[Daemon] = []
    yield started
    for running in started:
        stop_daemon(running)
        shutil.rmtree(running.path.parent, ignore_errors=True)


def start_public(started: list[Daemon], *args: str) -> Daemon:
    public = Path(tempfile.mkdtemp(prefix="mytimerctl-access-", dir="/tmp"))
    public.chmod(0o755)
    running = start_daemon(public, *args)
    started.append(running)
    return running


def ctl_as_nobody(*argv: str, gid: int = NOBODY) -> subprocess.CompletedProcess[str]:
    """mytimerctl ``argv`` as nobody (group ``gid``), with no supplementary groups."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={gid}",
            "--clear-groups",
            str(MYTIMERCTL),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def unwrapped(text: str) -> str:
    return " ".join(text.split())


def test_permission_denied_on_the_socket_names_its_group(public_daemon: list[Daemon]) -> None:
    d = start_public(public_daemon, "--socket-group", GROUP)
    assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o660
    done = ctl_as_nobody("--unix", str(d.path), "version")
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    err = unwrapped(done.stderr)
    assert f"mytimerctl: cannot connect to the daemon at unix:{d.path}: Permission denied" in err
    nobody = pwd.getpwuid(NOBODY).pw_name
    assert (
        f"hint: permission denied on {d.path} (owner root, group {GROUP}, mode 0660): "
        f"ask an administrator to add you to group {GROUP} "
        f"('sudo usermod -aG {GROUP} {nobody}', then log in again)."
    ) in err, err
    assert "is mytimerd running" not in err
    # With the group, the same user is served.
    served = ctl_as_nobody("--unix", str(d.path), "version", gid=grp.getgrnam(GROUP).gr_gid)
    assert (served.returncode, served.stdout) == (0, "nim-timer v0.1.0\n"), served.stderr


def test_permission_denied_by_the_daemon_says_who_it_admits(
    public_daemon: list[Daemon],
) -> None:
    d = start_public(public_daemon, "--socket-mode", "0666", "--allow-user", "4243")
    done = ctl_as_nobody("--unix", str(d.path), "version")
    assert done.returncode == 5, done.stderr
    err = unwrapped(done.stderr)
    assert err.startswith(
        f"mytimerctl: mytimerd.PermissionDenied: uid {NOBODY} may not use this socket "
        "(--allow-user/--allow-group)"
    ), err
    nobody = pwd.getpwuid(NOBODY).pw_name
    assert (
        f"hint: the daemon at unix:{d.path} admits only the users and groups of its "
        f"--allow-user/--allow-group; ask its administrator to allow your user ({nobody}) "
        "or one of your groups."
    ) in err, err


# --- the hint's other cases, in process ----------------------------------------------


def fake_stat(mode: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFSOCK | mode, 0, 0, 1, 0, gid, 0, 0, 0, 0))


def test_hint_when_only_the_owner_may_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "stat", lambda path: fake_stat(0o600, 0))
    text = unwrapped(hints.permission_hint("/run/x.sock"))
    assert text.startswith("hint: permission denied on /run/x.sock (owner root, group ")
    assert "mode 0600): only its owner may connect" in text
    assert "--socket-mode 0660 --socket-group GROUP" in text


def test_hint_when_the_group_is_not_in_this_session_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    gid = 4242424
    monkeypatch.setattr(os, "stat", lambda path: fake_stat(0o660, gid))
    monkeypatch.setattr(hints, "_group", lambda g: "mytimer")
    monkeypatch.setattr(hints, "_member_of", lambda g, name: True)
    text = unwrapped(hints.permission_hint("/run/x.sock"))
    assert text == (
        "hint: permission denied on /run/x.sock (owner root, group mytimer, mode 0660): "
        "you are in group mytimer, but this login session is not yet: log in again "
        "(or run 'newgrp mytimer')."
    )


def test_hint_when_a_directory_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> os.stat_result:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "stat", refuse)
    text = unwrapped(hints.permission_hint("/srv/private/x.sock"))
    assert "a directory on its way is closed to you (see 'namei -l /srv/private/x.sock')" in text
