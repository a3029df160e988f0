"""packaging/install.sh under a real systemd: install, upgrade (service stopped,
then under load), a failed upgrade, uninstall.

One private system (tests/systemd/harness.py) for the module; the tests run
in file order on it, each checking the state the one before left.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO
from tests.packaging.support import (
    NOBODY,
    SERVICE,
    SOCKET,
    UNITS,
    Load,
    ctl,
    group_id,
    main_pid,
    ok,
    tree,
    wait_calls,
)
from tests.systemd.harness import Sandbox

pytestmark = pytest.mark.systemd

#: The checkout, copied into the private system (the real one may live under
#: /tmp, which the system does not see)
SRC = "/run/mytimerd-src"
INSTALL_SH = f"{SRC}/packaging/install.sh"
LIB = "/usr/local/lib/mytimerd"
CTL = "/usr/local/bin/mytimerctl"


@pytest.fixture(scope="module")
def before(system: Sandbox) -> dict[str, dict[str, str]]:
    """The system before the install, with the checkout copied in."""
    snapshot = {"usr": tree(system.upper("usr")), "etc": tree(system.path("/etc"))}
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "__pycache__", ".*_cache", ".hypothesis", "_lib", "*.so"
    )
    shutil.copytree(REPO, system.path(SRC), ignore=ignore, symlinks=True)
    return snapshot


def install(system: Sandbox, *args: str) -> tuple[int, str, str]:
    r = system.run([INSTALL_SH, *args], check=False, timeout=600, env={"HOME": "/root"})
    return r.returncode, r.stdout, r.stderr


def current(system: Sandbox) -> str:
    return str(system.path(f"{LIB}/current").readlink())


def releases(system: Sandbox) -> list[str]:
    return sorted(p.name for p in system.path(f"{LIB}/releases").iterdir())


def active(system: Sandbox, unit: str = SERVICE) -> str:
    return system.prop(unit, "ActiveState")


def require_installed(system: Sandbox) -> None:
    if not system.path(f"{LIB}/current").is_symlink():
        pytest.fail("mytimerd is not installed by install.sh: an earlier test failed")


def test_install(system: Sandbox, before: dict[str, dict[str, str]]) -> None:
    code, out, err = install(system)
    assert code == 0, out + err
    assert "install.sh: done" in out, out
    assert current(system).startswith("releases/0.1.0-")
    assert group_id(system) is not None, "install.sh did not create group mytimer"
    for path in (
        "/usr/local/bin/mytimerd",
        "/usr/local/lib/systemd/system/mytimerd.service",
        "/usr/local/lib/sysusers.d/mytimerd.conf",
        "/usr/local/share/man/man8/mytimerd.8",
        "/usr/local/share/man/man1/mytimerctl.1",
        "/usr/local/share/bash-completion/completions/mytimerctl",
        "/usr/local/share/zsh/site-functions/_mytimerctl",
        "/usr/local/share/doc/mytimerd/protocol.md",
        f"{LIB}/installed-files",
    ):
        assert system.path(path).exists(), path
    system.systemctl("enable", "--now", SOCKET)
    ok(ctl(system, "version", prog=CTL))
    gid = group_id(system)
    assert gid is not None
    ok(ctl(system, "version", prog=CTL, user=(NOBODY, NOBODY, [gid])))
    assert active(system) == "active"


def test_upgrade_leaves_a_stopped_service_stopped(system: Sandbox) -> None:
    require_installed(system)
    system.systemctl("stop", SERVICE)
    old = current(system)
    code, out, err = install(system)
    assert code == 0, out + err
    assert current(system) != old
    assert releases(system) == sorted([old.removeprefix("releases/"), current(system)[9:]])
    assert active(system) == "inactive", "install.sh started a service that was not running"
    assert active(system, SOCKET) == "active"
    ok(ctl(system, "version", prog=CTL))  # the socket starts the new version


def test_upgrade_under_load_loses_no_call(system: Sandbox) -> None:
    require_installed(system)
    ok(ctl(system, "version", prog=CTL))
    old_pid, old = main_pid(system), current(system)
    socket_since = system.prop(SOCKET, "ActiveEnterTimestampMonotonic")
    with Load(system) as load:
        wait_calls(load, 30)
        t0 = time.monotonic()
        code, out, err = install(system)
        took = time.monotonic() - t0
        wait_calls(load, 30)
    print(f"install.sh upgrade took {took:.0f}s; calls: {load.summary()}")
    assert code == 0 and "install.sh: done" in out, out + err
    failures = load.failures()
    assert not failures, f"{len(failures)} of {len(load.results)} calls failed: {failures[:5]}"
    assert len(load.results) > 100, load.summary()
    new = current(system)
    assert new != old
    # the previous release is kept (to roll back to), older ones are removed
    assert releases(system) == sorted([old[9:], new[9:]])
    new_pid = main_pid(system)
    assert new_pid not in (0, old_pid), "the running service was not restarted"
    maps = system.run(["cat", f"/proc/{new_pid}/maps"]).stdout
    assert f"{LIB}/{new}/" in maps, "the restarted daemon does not run the new release"
    assert system.prop(SOCKET, "ActiveEnterTimestampMonotonic") == socket_since


def test_failed_upgrade_keeps_the_running_version(system: Sandbox) -> None:
    require_installed(system)
    ok(ctl(system, "version", prog=CTL))
    pid, old, kept = main_pid(system), current(system), releases(system)
    # no package index: pip cannot install anything, the build fails
    code, out, err = install(system, "PIP_ARGS=--no-index --find-links /nonexistent")
    assert code != 0, out
    assert "done" not in out, out
    assert "FAILED" in err and "unchanged" in err, err
    assert (current(system), releases(system)) == (old, kept)
    assert (active(system), main_pid(system)) == ("active", pid)
    ok(ctl(system, "version", prog=CTL))


def test_uninstall_leaves_nothing(system: Sandbox, before: dict[str, dict[str, str]]) -> None:
    require_installed(system)
    code, out, err = install(system, "uninstall")
    assert code == 0, out + err
    system.systemctl("daemon-reload")
    for unit in UNITS:
        assert system.prop(unit, "LoadState") == "not-found", unit
        assert active(system, unit) == "inactive", unit
    assert not system.path("/run/mytimerd.sock").exists()
    assert group_id(system) is None
    etc = tree(system.path("/etc"))
    assert {k: v for k, v in etc.items() if before["etc"].get(k) != v} == {}
    assert {k for k in before["etc"] if k not in etc} == set()
    # nothing new under /usr (the overlay's upper layer) but copied-up parents
    after = tree(system.upper("usr"))
    left = {
        k: v
        for k, v in after.items()
        if k not in before["usr"] and not (v == "dir" and Path(f"/usr/{k}").is_dir())
    }
    assert left == {}, sorted(left)
