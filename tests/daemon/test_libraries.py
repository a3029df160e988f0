"""--library: other ABI-compatible builds, the newer symbol generation, and a
library that stops answering or blocks its callers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest

from tests.support.daemon import Daemon
from tests.support.native import HEADER, TESTS_BUILD, build_native, build_stuck_double

SHIM_SRC = Path(__file__).resolve().parents[1] / "doubles" / "newgen_shim.c"


def build_newgen_shim() -> Path:
    """The suffix-less generation with RET_STALE_WARN, forwarding to native/."""
    TESTS_BUILD.mkdir(parents=True, exist_ok=True)
    out = TESTS_BUILD / "libnewgen_shim.so"
    subprocess.run(
        [
            "gcc",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            "-pthread",
            f"-I{HEADER.parent}",
            str(SHIM_SRC),
            "-o",
            str(out),
            "-ldl",
        ],
        check=True,
    )
    return out


def test_library_option_loads_another_build(daemon_factory: Callable[..., Daemon]) -> None:
    lib = build_native()
    d = daemon_factory("--library", str(lib), "--name", "other")
    with d.client() as c:
        desc = c.call_value("mytimerd.describe")
        assert c.call_value("echo", {"req": {"message": "m"}}) == {
            "echoed": "m",
            "timerName": "other",
        }
    assert isinstance(desc, dict) and desc["library"]["path"] == str(lib)
    # Only the bundled library is trusted to never block a call.
    assert "threaded calls" in d.log()


def test_bundled_library_is_called_directly(daemon: Daemon) -> None:
    assert "direct calls" in daemon.log()


def test_newer_generation_without_suffix_and_with_stale_warnings(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Code 3 is not final: the answer is the result that follows it."""
    shim = build_newgen_shim()
    d = daemon_factory(
        "--library",
        str(shim),
        "--name",
        "gen2",
        env={"NEWGEN_SHIM_TARGET": str(build_native())},
    )
    with d.client() as c:
        assert c.call_value("version") == "nim-timer v0.1.0"
        assert c.call_value("echo", {"req": {"message": "g", "delayMs": 20}}) == {
            "echoed": "g",
            "timerName": "gen2",
        }
        resp = c.call("schedule", cbor2.dumps({"job": {"name": ""}}))
        assert (resp.ret, resp.body) == (1, b"job name must not be empty")


def test_unloadable_library_fails_start_up_clearly(tmp_path: Path) -> None:
    not_a_lib = tmp_path / "libnope.so"
    not_a_lib.write_text("nope")
    for path, expected in (
        (not_a_lib, "cannot load"),
        (Path("/lib/x86_64-linux-gnu/libc.so.6"), "not a nim-ffi CBOR-ABI library named my_timer"),
    ):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mytimerd",
                "--unix",
                str(tmp_path / "s"),
                "--library",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 4, proc.stderr
        assert expected in proc.stderr
        assert not (tmp_path / "s").exists()


@pytest.fixture
def stuck(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> tuple[Daemon, Path]:
    control = tmp_path / "control"
    control.write_text("ok")
    d = daemon_factory(
        "--library",
        str(build_stuck_double()),
        "--timeout",
        "0.5",
        "--probe-timeout",
        "0.4",
        env={"STUCK_TIMER_CONTROL": str(control)},
    )
    return d, control


def wait_unhealthy(d: Daemon, within: float) -> dict[str, object]:
    deadline = time.monotonic() + within
    with d.client() as c:
        while True:
            ping = c.call_value("mytimerd.ping")
            assert isinstance(ping, dict)
            if not ping["healthy"]:
                return ping
            assert time.monotonic() < deadline, ping
            time.sleep(0.05)


@pytest.mark.parametrize("mode", ["silent", "block"])
def test_a_stuck_library_costs_only_its_own_calls(stuck: tuple[Daemon, Path], mode: str) -> None:
    """The daemon keeps accepting, answers its own methods, times calls out,
    and reports itself unhealthy."""
    d, control = stuck
    with d.client() as c:
        assert c.call_value("version") == "nim-timer v0.1.0"
        control.write_text(mode)
        start = time.monotonic()
        resp = c.call("version")
        assert resp.body == b"mytimerd.Timeout: version did not complete within 0.5 s (--timeout)"
        assert time.monotonic() - start < 2.0
    ping = wait_unhealthy(d, 3.0)
    expected = "blocking" if mode == "block" else "liveness probe"
    assert expected in str(ping["status"])
    for _ in range(5):  # new connections are still accepted and served
        with d.client() as c:
            assert isinstance(c.call_value("mytimerd.describe"), dict)
            assert c.call("echo", cbor2.dumps({"req": {"message": "x"}})).body.startswith(
                b"mytimerd.Timeout"
            )
    assert d.stop() == 0  # and it still shuts down


def test_mytimerctl_ping_exits_7_while_unhealthy(stuck: tuple[Daemon, Path]) -> None:
    from mytimerd.client import ctl

    d, control = stuck
    args = ["--unix", d.address.path, "ping"]  # type: ignore[union-attr]
    assert ctl.main(args) == ctl.EXIT_OK
    control.write_text("silent")
    wait_unhealthy(d, 3.0)
    assert ctl.main(args) == ctl.EXIT_UNHEALTHY == 7
