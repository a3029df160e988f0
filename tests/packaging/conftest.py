"""Fixtures for the packaging tests: the .deb packages, built once per session
with ``packaging/build-deb``, and private systems (a real systemd as PID 1
with private /etc, /usr and /var, see tests/systemd/harness.py) to install
them on with dpkg, or to run ``packaging/install.sh`` on.

Outside CI, tests skip when the tools are missing (not root, no debhelper,
no unshare...). With ``CI`` set they fail instead: CI must run them.
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

from tests.systemd.harness import BootError, Sandbox  # noqa: E402

#: The version of the first build and of the upgrade built from the same tree.
VERSION_1 = "0.1.0-1"
VERSION_2 = "0.1.0-2"


def cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"packaging test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"packaging test cannot run here: {reason}")


def need_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            cannot_run(f"{tool} not installed (scripts/setup installs it)")


def build_deb(out: Path, version: str | None = None) -> Path:
    need_tools("dpkg-buildpackage", "dh", "dpkg-deb")
    argv = [str(REPO / "packaging" / "build-deb"), "--output", str(out)]
    if version:
        argv += ["--version", version]
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, f"build-deb failed:\n{r.stdout}\n{r.stderr}"
    debs = sorted(out.glob(f"mytimerd_{version or VERSION_1}_*.deb"))
    assert len(debs) == 1, (list(out.iterdir()), r.stdout)
    print(f"built {debs[0].name} in {time.monotonic() - t0:.0f}s")
    return debs[0]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``packaging/build-deb``: the package at packaging/debian/changelog's version."""
    return build_deb(tmp_path_factory.mktemp("deb1"))


@pytest.fixture(scope="session")
def deb_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tree rebuilt as a newer version (``build-deb --version``)."""
    return build_deb(tmp_path_factory.mktemp("deb2"), VERSION_2)


def boot_private_system(state: Path) -> Sandbox:
    if os.geteuid() != 0:
        cannot_run("needs root")
    need_tools("unshare", "nsenter", "systemctl", "setpriv", "dpkg")
    if not os.path.exists("/lib/systemd/systemd"):
        cannot_run("/lib/systemd/systemd not installed")
    sb = Sandbox(state, private_system=True)
    try:
        sb.boot()
    except (BootError, OSError, subprocess.SubprocessError) as e:
        sb.teardown()
        # root and the tools are there: a boot failure is a real failure
        pytest.fail(f"could not boot systemd in namespaces: {e}", pytrace=False)
    return sb


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A private system booted for one test module (its state carries from
    test to test within the module, in file order)."""
    sb = boot_private_system(tmp_path_factory.mktemp("system"))
    try:
        yield sb
    finally:
        sb.teardown()
