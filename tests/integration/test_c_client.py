"""A C client written from the wire spec alone works against the real daemon."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.daemon import Daemon, TcpAddress, UnixAddress, free_tcp_port

SOURCE = Path(__file__).with_name("c_client.c")
MESSAGE = "hello over the wire"


@pytest.fixture(scope="module")
def c_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """c_client.c compiled with -Wall -Wextra -Werror (warnings are failures)."""
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is not installed")
    assert gcc is not None
    out = tmp_path_factory.mktemp("cclient") / "c_client"
    r = subprocess.run(
        [gcc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", str(SOURCE), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"c_client.c does not compile cleanly:\n{r.stderr}"
    return out


def expected_output(timer: str) -> str:
    return f"version: nim-timer v0.1.0\nechoed: {MESSAGE}\ntimerName: {timer}\n"


def test_c_client_unix_and_tcp(
    c_client: Path, daemon_factory: Callable[..., Daemon], sock_dir: Path
) -> None:
    """The C client gets the version and the echo reply over unix and over TCP."""
    path = sock_dir / "c.sock"
    port = free_tcp_port()
    daemon_factory(
        "--name",
        "ipc-server",
        "--unix",
        str(path),
        "--tcp",
        "127.0.0.1",
        str(port),
        address=UnixAddress(str(path)),
    )
    for argv in (["unix", str(path)], ["tcp", "127.0.0.1", str(port)]):
        r = subprocess.run(
            [str(c_client), *argv, MESSAGE], capture_output=True, text=True, timeout=20
        )
        assert r.returncode == 0, f"{argv}: {r.stderr}"
        assert r.stdout == expected_output("ipc-server"), argv


def test_c_client_reads_ret_err_text(c_client: Path, daemon_factory: Callable[..., Daemon]) -> None:
    """A RET_ERR answer (raw UTF-8 text, not CBOR) reaches the C client intact: the
    spec example's echo payload (43 bytes; the spec's header says 0x2c) exceeds
    ``--max-payload 40``."""
    port = free_tcp_port()
    daemon_factory(
        "--max-payload",
        "40",
        "--tcp",
        "127.0.0.1",
        str(port),
        address=TcpAddress("127.0.0.1", port),
    )
    r = subprocess.run(
        [str(c_client), "tcp", "127.0.0.1", str(port), MESSAGE],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 1, r.stdout
    assert r.stdout == "version: nim-timer v0.1.0\n"
    assert r.stderr == (
        "c_client: echo: RET_ERR mytimerd.FrameTooLarge: "
        "payload of 43 bytes exceeds the limit of 40\n"
    )
