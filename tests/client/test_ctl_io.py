"""mytimerctl as a process: closed and broken pipes, a full disk, closed fds, bad bytes, --version.

Each case runs the real console script with real file descriptors and checks
the exit status and that no traceback is shown.
"""

from __future__ import annotations

import errno
import importlib.metadata
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from mytimerd.client import ctl
from mytimerd.protocol import wire

from .conftest import Daemon, FakeServer

_SCRIPT = Path(sys.executable).with_name("mytimerctl")
MYTIMERCTL: list[str | bytes] = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [
        sys.executable,
        "-c",
        "import sys; from mytimerd.client.ctl import main; sys.exit(main())",
    ]
)


def spawn(
    argv: Sequence[str | bytes],
    *,
    stdout: int | None = subprocess.PIPE,
    stdin: int | None = subprocess.DEVNULL,
    input: bytes | None = None,
    shell_redirect: str = "",
) -> subprocess.CompletedProcess[bytes]:
    """Run mytimerctl with ``argv``; ``shell_redirect`` (e.g. ``>&-``) is applied by sh."""
    command = [*MYTIMERCTL, *argv]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *command]
    return subprocess.run(
        command,
        stdout=stdout,
        stdin=None if input is not None else stdin,
        input=input,
        stderr=subprocess.PIPE,
        timeout=30,
        check=False,
    )


def no_traceback(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode(errors="replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return err


# --- standard output --------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["describe"], ["--help"], ["completion", "bash"]])
def test_a_reader_that_left_the_pipe_exits_141_quietly(daemon: Daemon, argv: list[str]) -> None:
    """`mytimerctl describe | head -0`: the pipe's reader is gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = spawn(["--unix", str(daemon.path), *argv], stdout=write)
    finally:
        os.close(write)
    assert done.returncode == ctl.EXIT_BROKEN_PIPE == 141
    assert no_traceback(done) == ""


@pytest.mark.parametrize("argv", [["describe"], ["--json", "stats"], ["--help"], ["--version"]])
def test_a_full_disk_is_a_clear_error(daemon: Daemon, argv: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        done = spawn(["--unix", str(daemon.path), *argv], stdout=full.fileno())
    assert done.returncode == ctl.EXIT_IO == 8
    assert no_traceback(done) == (
        "mytimerctl: cannot write to standard output: No space left on device\n"
    )


@pytest.mark.parametrize("argv", [["version"], ["--help"], ["completion", "zsh"]])
def test_closed_stdout_is_an_error_not_silence(daemon: Daemon, argv: list[str]) -> None:
    done = spawn(["--unix", str(daemon.path), *argv], stdout=None, shell_redirect=">&-")
    assert done.returncode == ctl.EXIT_IO
    assert "standard output is closed" in no_traceback(done)


def test_errors_never_go_to_stdout_when_stderr_is_closed(daemon: Daemon) -> None:
    """With stderr closed errors have nowhere to go (not stdout), but the status still tells."""
    done = spawn(["--unix", str(daemon.path), "version"], shell_redirect="2>&-")
    assert (done.returncode, done.stdout) == (0, b"nim-timer v0.1.0\n")
    done = spawn(["--unix", str(daemon.path), "schedule"], shell_redirect="2>&-")
    assert (done.returncode, done.stdout) == (ctl.EXIT_LIBRARY_ERROR, b"")


# --- standard input and bytes that are not UTF-8 ----------------------------------------


def test_closed_stdin_is_a_clear_error(daemon: Daemon) -> None:
    done = spawn(["--unix", str(daemon.path), "call", "echo", "-"], shell_redirect="<&-")
    assert done.returncode == ctl.EXIT_IO
    assert "standard input is closed" in no_traceback(done)
    assert done.stdout == b""


def test_unreadable_stdin_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    """A read error (here EIO, as from a terminal that went away) is an I/O error, exit 8."""

    class Unreadable(io.StringIO):
        def read(self, size: int | None = -1) -> str:
            raise OSError(errno.EIO, "Input/output error")

    argv = ["--unix", str(daemon.path), "call", "echo", "-"]
    assert ctl.main(argv, stdin=Unreadable()) == ctl.EXIT_IO
    assert capsys.readouterr() == (
        "",
        "mytimerctl: cannot read the request from standard input: Input/output error\n",
    )


@pytest.mark.parametrize(
    "argv",
    [
        [b"echo", b"\xff\xfe"],
        [b"complex", b"--tag", b"ok", b"--tag", b"\xc3"],
        [b"call", b"echo\xff"],
        [b"call", b"echo", b'{"req": {"message": "\xff"}}'],
        [b"call", b"echo", b'{"req": {"message": "\\udcff"}}'],  # a JSON escape of no UTF-8
        [b"--tcp", b"h\xff", b"1", b"version"],
    ],
)
def test_bytes_that_are_not_utf8_are_a_usage_error(daemon: Daemon, argv: list[bytes]) -> None:
    address = [] if argv[0] == b"--tcp" else [b"--unix", bytes(daemon.path)]
    done = spawn([*address, *argv])
    assert done.returncode == ctl.EXIT_USAGE
    err = no_traceback(done)
    assert "UTF-8" in err or "utf-8" in err
    assert done.stdout == b""


def test_stdin_that_is_not_utf8_is_a_usage_error(daemon: Daemon) -> None:
    done = spawn(
        ["--unix", str(daemon.path), "call", "echo", "-"], input=b'{"req": {"message": "\xff"}}'
    )
    assert done.returncode == ctl.EXIT_USAGE
    assert "the request on standard input is not valid UTF-8" in no_traceback(done)


def test_a_socket_path_need_not_be_utf8(sock_dir: Path) -> None:
    """Paths are bytes to the kernel: a non-UTF-8 one is tried (here: absent, exit 3)."""
    done = spawn([b"--unix", bytes(sock_dir / "none") + b"\xff.sock", b"version"])
    assert done.returncode == ctl.EXIT_UNREACHABLE
    assert "No such file or directory" in no_traceback(done)


def test_a_host_name_the_resolver_cannot_encode_is_unreachable_not_a_crash() -> None:
    done = spawn(["--tcp", "a..b", "1", "version"])
    assert done.returncode == ctl.EXIT_UNREACHABLE
    assert "not a valid host name" in no_traceback(done)


# --- --version ------------------------------------------------------------------------------


def test_version_prints_the_clients_and_where_to_find_the_daemons() -> None:
    done = spawn(["--version"])
    assert done.returncode == 0
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"mytimerctl {importlib.metadata.version('mytimerd')}"
    assert "mytimerctl describe" in lines[1]
    assert no_traceback(done) == ""


# --- text from the library and the daemon on a terminal -------------------------------------

HOSTILE = "red\x1b[31m bell\x07 title\x1b]0;pwned\x07 nl\nforged: line\r csi\x9b2J rlo\u202e"


def test_control_characters_are_escaped_in_human_output(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    a = ["--unix", str(daemon.path)]
    assert ctl.main([*a, "echo", HOSTILE], stdin=io.StringIO()) == 0
    out = capsys.readouterr().out
    assert out == (
        "echoed:    red\\x1b[31m bell\\x07 title\\x1b]0;pwned\\x07 nl\\nforged: line\\r"
        " csi\\x9b2J rlo\\u202e\ntimerName: mytimerd\n"
    )
    assert ctl.main([*a, "--json", "echo", HOSTILE], stdin=io.StringIO()) == 0
    assert json.loads(capsys.readouterr().out)["echoed"] == HOSTILE  # JSON: exact


def test_control_characters_are_escaped_in_errors(
    capsys: pytest.CaptureFixture[str], fake: FakeServer
) -> None:
    fake.handler = lambda method, payload: (wire.RET_ERR, b"bad \x1b[2J job")
    assert ctl.main(["--unix", str(fake.path), "version"], stdin=io.StringIO()) == 6
    assert capsys.readouterr().err == "mytimerctl: library error: bad \\x1b[2J job\n"


def test_control_characters_in_keys_and_daemon_answers() -> None:
    text = ctl.render("mytimerd.describe", {"timerName": "t\x1b", "new\x1bkey": ["\x00"]})
    assert "\x1b" not in text and "\x00" not in text
    assert "timer name: t\\x1b" in text and "new\\x1bkey:" in text and "\\x00" in text


# --- timeouts ---------------------------------------------------------------------------------


def test_timeout_zero_means_no_limit(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    argv = ["--unix", str(daemon.path), "--timeout", "0", "echo", "slow", "--delay-ms", "300"]
    assert ctl.main(argv, stdin=io.StringIO()) == 0
    assert capsys.readouterr().out.startswith("echoed:    slow\n")
