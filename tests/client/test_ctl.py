"""mytimerctl: commands, options from the method table, output forms, exit codes."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from mytimerd.client import Client, ctl
from mytimerd.protocol import interfaces, wire
from mytimerd.protocol.interfaces import METHODS
from mytimerd.protocol.schema import Array, Struct
from tests.conftest import require

from .conftest import Daemon, FakeServer, canned

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> Run:
    """Run mytimerctl in-process; return (exit status, stdout, stderr)."""
    code = ctl.main(list(argv), stdin=io.StringIO(stdin))
    out, err = capsys.readouterr()
    return code, out, err


# --- the command table --------------------------------------------------------------


def test_one_command_per_method_and_one_argument_per_leaf_field() -> None:
    """The commands are the union of both bundled generations' methods, library ones first."""
    union = [m for g in ("0.2", "0.3") for m in interfaces.bundled(g).methods]
    names = list(dict.fromkeys(m.name for m in union if m.library))
    names += list(dict.fromkeys(m.name for m in union if not m.library))
    assert [c.method.name for c in ctl.COMMANDS] == names
    assert {m.name for m in METHODS} < set(names)  # 0.3's lib_version too
    assert "lib_version" in names
    for command in ctl.COMMANDS:

        def leaves(struct: Struct, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
            out: list[tuple[str, ...]] = []
            for f in struct.fields:
                if isinstance(f.type, Struct):
                    out += leaves(f.type, (*path, f.name))
                else:
                    out.append((*path, f.name))
            return out

        assert [p.path for p in command.params] == leaves(command.method.request)
        for p in command.params:
            assert p.name == (p.field.cli or ctl.kebab(p.field.name))
            assert p.repeated == isinstance(p.field.type, Array)
    assert not {c.name for c in ctl.COMMANDS} & set(ctl.EXTRA_COMMANDS)


def test_option_names() -> None:
    flags = {c.name: [p.flag for p in c.params] for c in ctl.COMMANDS}
    assert flags["echo"] == ["MESSAGE", "--delay-ms"]
    assert flags["complex"] == ["--message", "--tag", "--note", "--retries"]
    assert flags["schedule"] == [
        "--job",
        "--payload",
        "--priority",
        "--max-attempts",
        "--backoff-ms",
        "--retry-on",
        "--start-at-ms",
        "--interval-ms",
        "--jitter",
    ]
    assert flags["version"] == flags["describe"] == flags["ping"] == flags["stats"] == []
    assert ctl.kebab("maxAttempts") == "max-attempts"


@pytest.mark.parametrize("command", [c.name for c in ctl.COMMANDS] + ["call", "completion", ""])
def test_help_on_every_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, *([command] if command else []), "--help")
    assert code == 0
    assert "usage: mytimerctl" in out
    if command != "completion":
        assert "exit codes:" in out and "6  library error" in out
        assert "examples:" in out
    found = next((c for c in ctl.COMMANDS if c.name == command), None)
    if found is not None:
        if command != "watch":  # its description says what it does, not what the protocol does
            assert found.method.doc[:40] in out.replace("\n", " ")
        for p in found.params:
            assert p.flag in out
            assert p.field.doc.split()[0] in out


def test_examples_come_from_the_table() -> None:
    by_name = {c.name: c for c in ctl.COMMANDS}
    assert by_name["echo"].example() == ["echo", "hello", "--delay-ms", "0"]
    assert by_name["complex"].example() == ["complex", "--message", "a", "--tag", "t"]
    assert "--max-attempts" in by_name["schedule"].example()


# --- requests built from options -------------------------------------------------------


def test_left_out_options_are_left_out_of_the_request(
    capsys: pytest.CaptureFixture[str], fake: FakeServer
) -> None:
    a = ("--unix", str(fake.path))
    assert run(capsys, *a, "echo", "hi")[0] == 0
    assert run(capsys, *a, "echo", "", "--delay-ms", "-4")[0] == 0
    assert run(capsys, *a, "complex")[0] == 0
    assert (
        run(
            capsys,
            *a,
            "complex",
            "--message",
            "x",
            "--message",
            "y",
            "--tag",
            "t",
            "--note",
            "",
            "--retries",
            "2",
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            *a,
            "schedule",
            "--job",
            "j",
            "--payload",
            "p",
            "--payload",
            "q",
            "--max-attempts",
            "3",
            "--retry-on",
            "timeout",
            "--jitter",
            "-1",
        )[0]
        == 0
    )
    assert fake.requests == [
        ("echo", {"req": {"message": "hi"}}),
        ("echo", {"req": {"message": "", "delayMs": -4}}),
        ("complex", {}),
        (
            "complex",
            {
                "req": {
                    "messages": [{"message": "x"}, {"message": "y"}],
                    "tags": ["t"],
                    "note": "",
                    "retries": 2,
                }
            },
        ),
        (
            "schedule",
            {
                "job": {"name": "j", "payload": ["p", "q"]},
                "retry": {"maxAttempts": 3, "retryOn": ["timeout"]},
                "schedule": {"jitter": -1},
            },
        ),
    ]


def test_call_json_argument_stdin_and_bytes(
    capsys: pytest.CaptureFixture[str], fake: FakeServer
) -> None:
    a = ("--unix", str(fake.path))
    assert run(capsys, *a, "call", "version")[0] == 0
    assert run(capsys, *a, "call", "echo", '{"req": {"message": "m"}}')[0] == 0
    assert run(capsys, *a, "call", "echo", "-", stdin='{"req": {"delayMs": 1}}')[0] == 0
    assert run(capsys, *a, "call", "echo", '{"req": {"message": {"$bytes": "AAE="}}}')[0] == 0
    assert fake.requests == [
        ("version", {}),
        ("echo", {"req": {"message": "m"}}),
        ("echo", {"req": {"delayMs": 1}}),
        ("echo", {"req": {"message": b"\x00\x01"}}),
    ]


def test_global_options_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], fake: FakeServer
) -> None:
    before = run(capsys, "--json", "--unix", str(fake.path), "echo", "hi")
    after = run(capsys, "echo", "hi", "--json", "--unix", str(fake.path))
    assert before == after
    assert json.loads(before[1]) == {"echoed": "hi", "timerName": "fake"}


# --- exit codes and messages ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["echo"],
        ["echo", "x", "--delay-ms", "soon"],
        ["echo", "x", "--delay-ms", str(10**13)],
        ["schedule", "--priority", str(1 << 63)],
        ["--unix", "/x", "--tcp", "h", "1", "version"],
        ["--tcp", "h", "0", "version"],
        ["--timeout", "-1", "version"],
        ["call", "echo", "{not json"],
        ["call", "echo", '{"$bytes": "!!"}'],
        ["completion", "fish"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == ctl.EXIT_USAGE == 2
    assert out == ""
    assert err


def test_bad_environment_address_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYTIMER_ADDRESS", "udp:somewhere")
    code, _, err = run(capsys, "version")
    assert code == 2
    assert "MYTIMER_ADDRESS" in err and "udp:somewhere" in err


def test_unreachable_exits_3_and_suggests_the_fix(
    capsys: pytest.CaptureFixture[str], sock_dir: Path
) -> None:
    path = sock_dir / "none.sock"
    code, out, err = run(capsys, "--unix", str(path), "version")
    assert code == ctl.EXIT_UNREACHABLE == 3
    assert out == ""
    assert f"cannot connect to the daemon at unix:{path}: No such file or directory" in err
    hint = " ".join(err.split())  # the hint is wrapped
    assert "systemctl start mytimerd.socket" in hint
    assert f"mytimerd --unix {path}" in hint


def test_unreachable_tcp_suggests_the_tcp_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--tcp", "127.0.0.1", "1", "ping")
    assert code == 3
    assert "tcp:127.0.0.1:1" in err and "refused" in err
    hint = " ".join(err.split())
    assert "mytimerd --tcp 127.0.0.1 1" in hint and "mytimerd-tcp.socket" in hint


def test_dropped_connection_exits_3(capsys: pytest.CaptureFixture[str], fake: FakeServer) -> None:
    fake.handler = lambda method, payload: None
    code, _, err = run(capsys, "--unix", str(fake.path), "version")
    assert code == 3
    assert "lost the connection" in err and "closed the connection" in err


def test_protocol_violation_exits_3(capsys: pytest.CaptureFixture[str], fake: FakeServer) -> None:
    fake.handler = lambda method, payload: (wire.RET_OK, b"\xff")
    code, _, err = run(capsys, "--unix", str(fake.path), "version")
    assert code == 3
    assert "does not speak the mytimerd protocol" in err


def test_timeout_exits_4(capsys: pytest.CaptureFixture[str], fake: FakeServer) -> None:
    fake.delay = 1
    code, out, err = run(capsys, "--unix", str(fake.path), "--timeout", "0.1", "version")
    assert code == ctl.EXIT_TIMEOUT == 4
    assert out == ""
    assert "no answer to 'version' within 0.1 s" in err and "--timeout" in err


def test_daemon_error_exits_5(capsys: pytest.CaptureFixture[str], fake: FakeServer) -> None:
    code, out, err = run(capsys, "--unix", str(fake.path), "call", "frobnicate")
    assert code == ctl.EXIT_DAEMON_ERROR == 5
    assert out == ""
    assert err.startswith("mytimerctl: mytimerd.UnknownMethod: no method 'frobnicate'")


def test_library_error_exits_6(capsys: pytest.CaptureFixture[str], fake: FakeServer) -> None:
    code, out, err = run(capsys, "--unix", str(fake.path), "schedule")
    assert code == ctl.EXIT_LIBRARY_ERROR == 6
    assert out == ""
    assert err == "mytimerctl: library error: job name must not be empty\n"


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [code for code, _ in ctl.EXIT_CODES]
    assert codes == [0, 2, 3, 4, 5, 6, 7, 8, 141]
    doc = (Path(__file__).parents[2] / "docs" / "mytimerctl.md").read_text()
    for code, text in ctl.EXIT_CODES:
        assert f"| {code} |" in doc, text


# --- the environment variable ------------------------------------------------------------


def test_environment_address(
    capsys: pytest.CaptureFixture[str], fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYTIMER_ADDRESS", fake.address)
    assert run(capsys, "version") == (0, "nim-timer v0.1.0\n", "")


def test_explicit_option_beats_environment(
    capsys: pytest.CaptureFixture[str],
    fake: FakeServer,
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MYTIMER_ADDRESS", f"unix:{sock_dir / 'none.sock'}")
    assert run(capsys, "--unix", str(fake.path), "version")[0] == 0
    assert run(capsys, "version")[0] == 3


# --- output forms ------------------------------------------------------------------------


def test_to_json_forms() -> None:
    value = {
        "b": b"\x00\xff",
        "f": [1.5, math.inf, -math.inf],
        "m": {1: "one"},
        "t": cbor2.CBORTag(4242, [1]),
        "u": cbor2.undefined,
        "s": cbor2.CBORSimpleValue(99),
        "n": None,
    }
    assert ctl.to_json(value) == {
        "b": {"$bytes": "AP8="},
        "f": [1.5, {"$float": "inf"}, {"$float": "-inf"}],
        "m": {"$map": [[1, "one"]]},
        "t": {"$tag": 4242, "value": [1]},
        "u": {"$undefined": True},
        "s": {"$simple": 99},
        "n": None,
    }
    assert ctl.to_json(float("nan")) == {"$float": "nan"}
    assert ctl.parse_json_request('{"$bytes": "AP8="}') == b"\x00\xff"


def test_json_output_of_bytes(capsys: pytest.CaptureFixture[str], fake: FakeServer) -> None:
    fake.handler = lambda method, payload: (wire.RET_OK, cbor2.dumps({"raw": b"hi"}))
    code, out, _ = run(capsys, "--unix", str(fake.path), "--json", "call", "x")
    assert code == 0
    assert json.loads(out) == {"raw": {"$bytes": "aGk="}}
    code, out, _ = run(capsys, "--unix", str(fake.path), "call", "x")
    assert out == "raw: <2 bytes: 6869>\n"


def test_renderers_tolerate_other_shapes() -> None:
    odd = {"uptimeSeconds": 4000.0, "calls": {"echo": {"ok": 1}}, "new": {"thing": [1, 2]}}
    text = ctl.render("mytimerd.stats", odd)
    assert "1h 06m 40s" in text and "echo" in text and "thing:" in text
    assert "calls" in ctl.render("mytimerd.stats", {"calls": [1]})  # falls back to the outline
    assert "healthy: no" in ctl.render("mytimerd.ping", {"healthy": False})
    assert ctl.render("mytimerd.describe", {}).startswith("daemon:")
    assert ctl.render("version", "v") == "v"


# --- every command against the real daemon ------------------------------------------------


def test_real_version_prints_exactly(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    assert run(capsys, "--unix", str(daemon.path), "version") == (0, "nim-timer v0.1.0\n", "")
    assert run(capsys, "--unix", str(daemon.path), "--json", "version") == (
        0,
        '"nim-timer v0.1.0"\n',
        "",
    )


def test_real_echo(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, _ = run(capsys, "--unix", str(daemon.path), "echo", "hello", "--delay-ms", "5")
    assert code == 0
    assert out == "echoed:    hello\ntimerName: mytimerd\n"
    code, out, _ = run(capsys, "--tcp", "127.0.0.1", str(daemon.port), "--json", "echo", "hi")
    assert json.loads(out) == {"echoed": "hi", "timerName": "mytimerd"}


def test_real_complex(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    a = ("--unix", str(daemon.path), "--json", "complex")
    assert json.loads(run(capsys, *a)[1]) == {
        "summary": "received 0 messages, note=<none>, retries=0",
        "itemCount": 0,
        "hasNote": False,
    }
    code, out, _ = run(
        capsys,
        *a,
        "--message",
        "a",
        "--message",
        "b",
        "--tag",
        "t1",
        "--note",
        "n",
        "--retries",
        "3",
    )
    assert json.loads(out) == {
        "summary": "received 2 messages, note=n, retries=3",
        "itemCount": 2,
        "hasNote": True,
    }
    code, out, _ = run(capsys, "--unix", str(daemon.path), "complex", "--note", "")
    assert code == 0 and "hasNote:   yes" in out


def test_real_schedule(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, _ = run(
        capsys,
        "--unix",
        str(daemon.path),
        "--json",
        "schedule",
        "--job",
        "backup",
        "--max-attempts",
        "3",
        "--backoff-ms",
        "100",
        "--retry-on",
        "timeout",
        "--start-at-ms",
        "1000",
        "--interval-ms",
        "250",
        "--jitter",
        "5",
    )
    assert code == 0
    assert json.loads(out) == {
        "jobId": "mytimerd:backup",
        "willRunCount": 240,
        "firstRunAtMs": 1005,
        "effectiveBackoffMs": 100,
    }
    code, out, err = run(capsys, "--unix", str(daemon.path), "schedule", "--job", "j")
    assert (code, out) == (6, "")
    assert err == "mytimerctl: library error: retry.maxAttempts must be positive\n"


def test_real_describe(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, _ = run(capsys, "--unix", str(daemon.path), "describe")
    assert code == 0
    assert "timer name: mytimerd" in out
    for method in METHODS:
        assert method.name in out
    assert "mytimerd.InvalidParameter" in out and "mytimerd.mytimerd." not in out
    code, out, _ = run(capsys, "--unix", str(daemon.path), "--json", "describe")
    described = json.loads(out)
    with Client(daemon.address) as c:
        assert described["methods"] == ctl.to_json(c.describe())["methods"]


def test_real_ping(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, _ = run(capsys, "--unix", str(daemon.path), "ping")
    assert code == 0
    assert out.startswith("healthy: yes")
    assert json.loads(run(capsys, "--unix", str(daemon.path), "--json", "ping")[1])["healthy"]


def test_real_stats(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    run(capsys, "--unix", str(daemon.path), "version")
    code, out, _ = run(capsys, "--unix", str(daemon.path), "stats")
    assert code == 0
    assert "connections:" in out and "p99 ms" in out
    assert any(line.startswith("version ") for line in out.splitlines())
    stats = json.loads(run(capsys, "--unix", str(daemon.path), "--json", "stats")[1])
    assert stats["calls"]["version"]["ok"] >= 1


def test_real_call(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    a = ("--unix", str(daemon.path))
    assert run(capsys, *a, "call", "version") == (0, "nim-timer v0.1.0\n", "")
    code, out, _ = run(capsys, *a, "--json", "call", "echo", "-", stdin='{"req": {"message": "s"}}')
    assert code == 0
    assert json.loads(out) == {"echoed": "s", "timerName": "mytimerd"}
    code, out, _ = run(capsys, *a, "call", "mytimerd.ping")
    assert code == 0
    assert out.startswith("healthy: yes")


def test_real_error_exit_codes(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    a = ("--unix", str(daemon.path))
    code, _, err = run(capsys, *a, "call", "echo", '{"req": {"delayMs": "5"}}')
    assert code == 5
    assert err.startswith("mytimerctl: mytimerd.InvalidParameter: req.delayMs")
    code, _, err = run(capsys, *a, "call", "echo", '{"req": {"extra": 1}}')
    assert code == 5 and "unknown key" in err
    assert run(capsys, *a, "schedule")[0] == 6
    code, _, err = run(capsys, *a, "--timeout", "0.2", "echo", "x", "--delay-ms", "2000")
    assert code == 4


def test_real_environment_address_subprocess(daemon: Daemon, tmp_path: Path) -> None:
    """The installed console script, addressed through MYTIMER_ADDRESS only."""
    script = Path(sys.executable).with_name("mytimerctl")
    argv = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from mytimerd.client.ctl import main; exit(main())"]
    )
    for address in (daemon.address, daemon.tcp):
        done = subprocess.run(
            [*argv, "version"],
            env={"MYTIMER_ADDRESS": address, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "nim-timer v0.1.0\n", "")


# --- completion ----------------------------------------------------------------------------


def _complete(script: str, words: list[str]) -> list[str]:
    """Run the bash completion function for ``words`` (the last is being typed)."""
    program = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n_mytimerctl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, check=True
    )
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    assert set(_complete(script, ["mytimerctl", ""])) >= {
        "version",
        "echo",
        "complex",
        "schedule",
        "describe",
        "ping",
        "stats",
        "call",
        "completion",
        "--unix",
        "--json",
    }
    assert _complete(script, ["mytimerctl", "sch"]) == ["schedule"]
    assert _complete(script, ["mytimerctl", "--json", "schedule", "--ma"]) == ["--max-attempts"]
    assert _complete(script, ["mytimerctl", "--tcp", "h", "1", "complex", "--m"]) == ["--message"]
    assert _complete(script, ["mytimerctl", "schedule", "--job", ""]) == []
    assert _complete(script, ["mytimerctl", "call", "mytimerd.p"]) == ["mytimerd.ping"]
    assert _complete(script, ["mytimerctl", "completion", ""]) == ["bash", "zsh"]
    assert "--delay-ms" in _complete(script, ["mytimerctl", "echo", "hi", "--"])


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["--tcp", "h", ""], []),  # PORT
        (["--tcp", "h", "9"], []),
        (["--tcp", "h", "1", "sch"], ["schedule"]),
        (["--tcp", "h", "1", "echo", "x", "--d"], ["--delay-ms"]),
        (["--unix", "/s", "--tcp", "h", ""], []),
        (["--timeout", ""], []),
        (["--timeout", "5", "pi"], ["ping"]),
        (["echo", ""], []),  # MESSAGE is free text
        (["echo", "--d"], ["--delay-ms"]),
        (["echo", "hi", "--delay-ms", ""], []),
        (["call", "echo", ""], []),  # the JSON request
        (["call", "echo", "{}", "--js"], ["--json"]),
        (["completion", "bash", ""], []),
        (["stats", "--format", ""], ["human", "openmetrics", "prometheus"]),
        (["stats", "--format", "o"], ["openmetrics"]),
        (["stats", "--f"], ["--format"]),
        (["--vers"], ["--version"]),
        (["version", "--vers"], []),  # --version is only before the command
    ],
)
def test_bash_completion_in_every_slot(
    capsys: pytest.CaptureFixture[str], words: list[str], expected: list[str]
) -> None:
    script = run(capsys, "completion", "bash")[1]
    assert _complete(script, ["mytimerctl", *words]) == expected


def test_bash_completion_offers_hosts_after_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    script = run(capsys, "completion", "bash")[1]
    offered = _complete(script, ["mytimerctl", "--tcp", "local"])
    assert "localhost" in offered
    assert not set(offered) & {"version", "schedule", "--json"}


def test_zsh_completion_script(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(capsys, "completion", "zsh")
    assert code == 0
    assert "compdef _mytimerctl mytimerctl" in script
    for command in ctl.COMMANDS:
        assert f"{'|'.join((command.name, *command.aliases))}) _arguments" in script
        for p in command.params:
            assert p.flag in script


@pytest.fixture
def zsh() -> str:
    """The zsh to run: scripts/setup installs it, so CI fails without it
    (a developer machine without zsh skips)."""
    path = shutil.which("zsh")
    require(path is not None, "zsh is not installed (scripts/setup installs it)")
    assert path is not None
    return path


#: Drives an interactive zsh in a pseudo-terminal: loads the script, types
#: "mytimerctl $2<TAB>" and prints what the terminal shows once $3 appears.
_ZPTY_DRIVER = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "PS1='> '; autoload -U compinit; compinit -u -d $1.dump; source $1"
zpty -w -n z "mytimerctl $2"$'\t'
setopt extendedglob
out=""
for i in {1..100}; do
    while zpty -r -t z chunk; do out+=$chunk; done
    clean=${${out//$'\e'\[[0-9;?]#[a-zA-Z]/}//$'\r'/}  # without terminal escapes
    [[ $clean == *"$3"* ]] && break
    sleep 0.1
done
print -r -- "$clean"
zpty -d z
"""


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("sch", "mytimerctl schedule "),
        ("schedule --max-a", "mytimerctl schedule --max-attempts "),
        ("call mytimerd.pi", "mytimerctl call mytimerd.ping "),
        ("schedule --j", "--job"),
        ("stats --format o", "mytimerctl stats --format openmetrics "),
        ("schedule --priority h", "mytimerctl schedule --priority high "),
        ("watch on_j", "mytimerctl watch on_job_scheduled "),
        ("--tcp localhost 9099 sch", "mytimerctl --tcp localhost 9099 schedule "),
    ],
)
def test_zsh_completion_in_zsh(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, zsh: str, typed: str, expected: str
) -> None:
    script = tmp_path / "mytimerctl.zsh"
    script.write_text(run(capsys, "completion", "zsh")[1])
    done = subprocess.run(
        [zsh, "-f", "-c", _ZPTY_DRIVER, "driver", str(script), typed, expected],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert expected in done.stdout


def test_zsh_completion_offers_nothing_for_the_port(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, zsh: str
) -> None:
    """In the PORT slot zsh rings the bell (nothing to offer) instead of listing commands."""
    script = tmp_path / "mytimerctl.zsh"
    script.write_text(run(capsys, "completion", "zsh")[1])
    done = subprocess.run(
        [zsh, "-f", "-c", _ZPTY_DRIVER, "driver", str(script), "--tcp localhost ", "\a"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    after = done.stdout.rpartition("mytimerctl --tcp localhost ")[2]
    assert after.startswith("\a")
    assert "schedule" not in after and "version" not in after


def test_canned_fake_matches_real_shapes(daemon: Daemon) -> None:
    """The fake's canned answers have the real daemon's keys (so fake-based tests stay honest)."""
    with Client(daemon.address) as c:
        real = c.echo("x")
    assert set(cbor2.loads(canned("echo", cbor2.dumps({"req": {}}))[1])) == set(real)  # type: ignore[index]
