"""One real systemd (PID 1 in private namespaces) for all tests in this directory.

The session fixture installs mytimerd with ``packaging/install.sh`` into a
scratch DESTDIR (PREFIX=/usr/local), boots the sandbox with that tree
bind-mounted over /usr/local, runs systemd-sysusers on the installed sysusers
file and reloads systemd. Tests then drive the *installed* units.

Skips only outside CI when the sandbox cannot work at all (not root, no
unshare/nsenter/systemd). With ``CI`` set, anything that stops the sandbox
from booting is a test failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.systemd.harness import UNITS, BootError, Sandbox  # noqa: E402


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"systemd sandbox unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"systemd sandbox unavailable: {reason}")


@pytest.fixture(scope="session")
def installed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``install.sh PREFIX=/usr/local DESTDIR=<tmp>``; returns DESTDIR/usr/local."""
    if os.geteuid() != 0:
        _cannot_run("needs root")
    for tool in ("unshare", "nsenter", "systemctl", "setpriv"):
        if shutil.which(tool) is None:
            _cannot_run(f"{tool} not installed")
    if not os.path.exists("/lib/systemd/systemd"):
        _cannot_run("/lib/systemd/systemd not installed")
    dest = tmp_path_factory.mktemp("destdir")
    r = subprocess.run(
        [str(REPO / "packaging" / "install.sh"), "PREFIX=/usr/local", f"DESTDIR={dest}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"install.sh failed:\n{r.stdout}\n{r.stderr}"
    tree = dest / "usr" / "local"
    tree.chmod(0o755)
    return tree


@pytest.fixture(scope="session")
def sandbox(installed_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"), usr_local=installed_tree)
    try:
        try:
            sb.boot()
        except (BootError, OSError, subprocess.SubprocessError) as e:
            # root and the tools are there: a boot failure is a real failure
            pytest.fail(f"could not boot systemd in namespaces: {e}", pytrace=False)
        # what a package's post-install does: create group mytimer, reload
        sb.run(["systemd-sysusers", "/usr/local/lib/sysusers.d/mytimerd.conf"])
        sb.systemctl("daemon-reload")
        yield sb
    finally:
        sb.teardown()


def _reset(sb: Sandbox) -> None:
    sb.systemctl("stop", *UNITS, check=False, timeout=60)
    for unit in UNITS:
        d = sb.path(f"/run/systemd/system/{unit}.d")
        if d.exists():
            shutil.rmtree(d)
    sb.systemctl("reset-failed", check=False)
    sb.systemctl("daemon-reload")


@pytest.fixture
def sd(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The sandbox with mytimerd's units stopped, drop-ins removed and
    mytimerd.socket started (the service itself inactive)."""
    _reset(sandbox)
    sandbox.systemctl("start", "mytimerd.socket")
    since = f"@{time.time() - 1:.0f}"
    yield sandbox
    # shown by pytest only when the test failed
    print("---- journal of this test ----")
    print(
        sandbox.journal(
            f"--since={since}", "_TRANSPORT=journal", "_TRANSPORT=stdout", "_TRANSPORT=syslog"
        )
        or "(empty)"
    )
    _reset(sandbox)
