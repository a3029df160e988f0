"""mytimerctl against a daemon serving another library (issue 18 item 3): commands,
options, help and completion built from the daemon's describe, cached per address.

A real daemon serves libecho (native/echo, generation 0.2) with prefix "P".
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mytimerd.client import ctl
from mytimerd.client.ctl import remote
from mytimerd.protocol.address import UnixAddress
from mytimerd.protocol.schema import Any_, Struct
from tests.echo.conftest import ECHO_DIR, build_echo
from tests.support.daemon import Daemon, start_daemon

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run mytimerctl in-process; return (exit status, stdout, stderr)."""
    code = ctl.main(list(argv), stdin=io.StringIO(""))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh describe cache per test (never the user's)."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("MYTIMER_ADDRESS", raising=False)
    return home


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon serving libecho 0.2 with prefix P."""
    folder = tmp_path / "d"
    folder.mkdir()
    args = ["--library", str(build_echo("0.2")), "--schema", str(ECHO_DIR / "echo-0.2.cddl")]
    daemon = start_daemon(folder, [*args, "--config", "prefix=P", "--log-level", "warning"])
    yield daemon
    daemon.stop()


def listed(help_text: str, command: str) -> bool:
    """Whether the top-level ``help_text`` lists ``command``."""
    return re.search(rf"^    {command} ", help_text, re.MULTILINE) is not None


def sock(daemon: Daemon) -> str:
    assert isinstance(daemon.address, UnixAddress)
    return daemon.address.path


def test_a_described_command_is_called_with_the_builders_options(
    capsys: pytest.CaptureFixture[str], echo: Daemon, cache_home: Path
) -> None:
    code, out, err = run(capsys, "--unix", sock(echo), "shout", "--text", "hi")
    assert (code, err) == (0, "")
    assert out.split() == ["shouted:", "P:", "HI", "prefix:", "P"]
    code, out, _ = run(capsys, "shout", "--json", "--text", "yo", "--unix", sock(echo))
    assert (code, json.loads(out)) == (0, {"shouted": "P: YO", "prefix": "P"})
    assert len(list((cache_home / "mytimerd").glob("describe-*.json"))) == 1
    # libmy_timer's commands are the same as ever; a bad option is a usage error.
    assert run(capsys, "--unix", sock(echo), "version")[:2] == (0, "nim-echo v0.1.0\n")
    code, _, err = run(capsys, "--unix", sock(echo), "shout", "--txt", "x")
    assert code == 2 and "--txt" in err


def test_help_lists_the_described_commands_also_from_the_cache(
    capsys: pytest.CaptureFixture[str], echo: Daemon
) -> None:
    path = sock(echo)
    code, out, err = run(capsys, "--unix", path, "--help")
    assert (code, err) == (0, "")
    assert "serving the library 'echo'" in " ".join(out.split()) and listed(out, "shout")
    code, out, _ = run(capsys, "--unix", path, "shout", "--help")
    assert code == 0
    assert "--text TEXT" in out and "mytimerctl shout --text hi" in out
    assert echo.stop() == 0
    # The daemon is gone: the cache still knows its commands.
    code, out, err = run(capsys, "--unix", path, "--help")
    assert (code, err) == (0, "") and listed(out, "shout")
    code, out, _ = run(capsys, "--unix", path, "shout", "--help")
    assert code == 0 and "--text TEXT" in out
    code, _, err = run(capsys, "--unix", path, "shout", "--text", "hi")
    assert code == 3 and "cannot connect" in err


def test_without_a_daemon_or_cache_help_is_the_timers_and_says_where_others_come_from(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gone = str(tmp_path / "none.sock")
    code, out, err = run(capsys, "--unix", gone, "--help")
    assert code == 0
    assert listed(out, "schedule") and not listed(out, "shout")
    assert "come from the daemon's mytimerd.describe" in out.replace("\n", " ")
    assert "could not ask the daemon" in err
    code, _, err = run(capsys, "--unix", gone, "shout", "--text", "hi")
    assert code == 2
    assert "invalid choice: 'shout'" in err
    assert "'shout' is not libmy_timer's" in err
    # The timer's own commands need no daemon and ask none.
    code, out, err = run(capsys, "schedule", "--help")
    assert (code, err) == (0, "") and "--max-attempts" in out


def _stale(shout_request: dict[str, Any]) -> dict[str, Any]:
    return {
        "library": {"name": "echo"},
        "methods": [{"name": "shout", "handler": "library", "request": shout_request}],
        "events": [],
    }


def test_a_stale_cache_is_refreshed_and_the_call_sent_once_more(
    capsys: pytest.CaptureFixture[str], echo: Daemon
) -> None:
    addresses = [echo.address]
    wrong = {
        "type": "map",
        "fields": [
            {"name": "request", "type": "map", "fields": [{"name": "text", "type": "text"}]}
        ],
    }
    stored = remote.store(addresses, _stale(wrong))
    assert stored is not None
    before = stored.read_text()
    code, out, err = run(capsys, "--unix", sock(echo), "shout", "--text", "hi")
    assert code == 0, err
    assert "P: HI" in out and "changed since they were cached" in err
    assert stored.read_text() != before
    answer = remote.load(addresses)
    assert answer is not None and remote.table_of(answer, cached=True).knows("version")


def test_a_corrupt_or_edited_cache_is_ignored_and_refetched(
    capsys: pytest.CaptureFixture[str], echo: Daemon
) -> None:
    path = remote.cache_path([echo.address])
    path.parent.mkdir(parents=True)
    for junk in (b"\xff{not json", b"[]", b'{"format": 1}', b"x" * (remote.MAX_CACHE_BYTES + 2)):
        path.write_bytes(junk)
        assert remote.load([echo.address]) is None
        assert run(capsys, "--unix", sock(echo), "shout", "--text", "a")[0] == 0
        assert remote.load([echo.address]) is not None
    # An edit that does not match the stored digest is not trusted either.
    record = json.loads(path.read_text())
    record["describe"]["methods"] = []
    path.write_text(json.dumps(record))
    assert remote.load([echo.address]) is None


def test_the_cache_is_kept_per_address(tmp_path: Path) -> None:
    one, two = UnixAddress(str(tmp_path / "a.sock")), UnixAddress(str(tmp_path / "b.sock"))
    assert remote.store([one], _stale({"type": "map", "fields": []})) is not None
    assert remote.load([one]) is not None
    assert remote.load([two]) is None
    assert remote.cache_path([one]) != remote.cache_path([two])


def test_any_describe_answer_builds_commands() -> None:
    """Whatever a daemon (or a damaged cache) says, building never fails."""
    deep: dict[str, Any] = {"type": "text"}
    for _ in range(500):
        deep = {"type": "map", "fields": [{"name": "k", **deep}]}
    hostile: dict[str, Any] = {
        "library": {"name": 7},
        "methods": [
            None,
            {"name": 3},
            {"name": "deep", "request": deep},
            {
                "name": "odd",
                "request": {
                    "type": "map",
                    "fields": [{"name": "n", "type": "int", "min": "x", "max": True}],
                },
            },
            {
                "name": "enum",
                "request": {
                    "type": "map",
                    "fields": [{"name": "e", "type": "enum", "choices": [1, None]}],
                },
            },
            {"name": "list", "request": ["not", "a", "map"]},
            {"name": "-dash", "request": {"type": "map"}},
        ],
        "events": "none",
    }
    interface = remote.interface_of(hostile)
    assert [m.name for m in interface.methods] == ["deep", "odd", "enum", "list", "-dash"]
    enum = interface.methods[2].request.fields[0]
    assert isinstance(enum.type, Any_)
    assert isinstance(interface.methods[3].request, Struct)
    table = remote.table_of(hostile, cached=False)
    assert not table.timer and table.knows("odd") and not table.knows("-dash")
    assert "e" in table.by_name["enum"].json_only


def test_a_timer_describe_keeps_the_bundled_table() -> None:
    table = remote.table_of({"library": {"name": "my_timer"}, "methods": []}, cached=True)
    assert table.timer and table.commands is ctl.COMMANDS


def _program(tmp_path: Path) -> str:
    """An executable that runs this checkout's mytimerctl (what the scripts call back)."""
    program = tmp_path / "mytimerctl"
    program.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        "'import sys; from mytimerd.client.ctl import main; sys.exit(main())' \"$@\"\n"
    )
    program.chmod(0o755)
    return str(program)


def _bash(script: str, words: list[str]) -> list[str]:
    program = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n_mytimerctl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    return [line for line in done.stdout.splitlines() if line]


def test_completion_offers_the_cached_commands_and_options(
    capsys: pytest.CaptureFixture[str], echo: Daemon, tmp_path: Path
) -> None:
    path = sock(echo)
    script = run(capsys, "completion", "bash")[1]
    me = _program(tmp_path)
    # Nothing cached yet: completion never asks the daemon.
    assert _bash(script, [me, "--unix", path, "sh"]) == []
    assert run(capsys, "--unix", path, "version")[0] == 0  # a timer command: no describe
    assert _bash(script, [me, "--unix", path, "sh"]) == []
    assert run(capsys, "--unix", path, "--help")[0] == 0  # fetches and caches
    assert _bash(script, [me, "--unix", path, "sh"]) == ["shout"]
    assert _bash(script, [me, "--unix", path, "shout", "--t"]) == [
        "--text",
        "--tcp",
        "--tls",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--tls-server-name",
        "--timeout",
    ]
    assert _bash(script, [me, "--unix", path, "shout", "--text", ""]) == []
    assert _bash(script, [me, "sh"]) == []  # another address: another cache
    # libmy_timer's completion is unchanged.
    assert _bash(script, [me, "--unix", path, "sch"]) == ["schedule"]
    code, out, _ = run(capsys, "__complete", "--unix", path)
    assert (code, out) == (0, "shout\n")
    assert "__complete" in run(capsys, "completion", "zsh")[1]
