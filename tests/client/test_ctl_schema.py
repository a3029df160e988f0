"""mytimerctl's commands from any description: both bundled generations, their
union, and a synthetic one with booleans, enums, nesting and clashing names."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from mytimerd.client import ctl
from mytimerd.client.ctl.commands import Command, Param, build_commands
from mytimerd.client.ctl.completion import completion_script
from mytimerd.client.ctl.parser import build_parser
from mytimerd.protocol import interfaces
from mytimerd.protocol.schema import Bool, Enum, Int, Text

from .test_ctl import _complete, run

#: A description with what the bundled ones lack: booleans, enums (alone and
#: in arrays), a nested map used twice (clashing option names), an array of
#: maps, an array of arrays and an `any` (no command-line form), and methods
#: whose names clash with mytimerctl's own commands.
SYNTHETIC = """
Color = "red" / "green" / "blue"
Inner = { depth: int, flag: bool }
Widget = { name: tstr, color: Color, enabled: bool, tags: [* tstr], levels: [* int],
           colors: [* Color], switches: [* bool], points: [* Inner], matrix: [* [* int]],
           blob: any, note: tstr / nil }
MyWidgetCreateCtorReq = { config: Inner }
MyWidgetPaintReq = { widget: Widget, a: Inner, b: Inner, verbose: bool, mode: Color }
MyWidgetSelfTestReq = { }
MyWidgetDescribeReq = { }
MyWidgetCallReq = { }

; my_widget_create (ctor)
my_widget_create-request = MyWidgetCreateCtorReq
my_widget_create-response = tstr

; my_widget_paint (ffi)
my_widget_paint-request = MyWidgetPaintReq
my_widget_paint-response = tstr

; my_widget_self_test (ffiStatic)
my_widget_self_test-request = MyWidgetSelfTestReq
my_widget_self_test-response = bool

; my_widget_describe (ffi)
my_widget_describe-request = MyWidgetDescribeReq
my_widget_describe-response = tstr

; my_widget_call (ffi)
my_widget_call-request = MyWidgetCallReq
my_widget_call-response = tstr

; my_widget_destroy (dtor)
my_widget_destroy-response = nil
"""


def _sample(param: Param) -> tuple[list[str], Any]:
    """Arguments giving ``param`` a value, and the value the request should hold."""
    kind = param.types[0]
    if param.switch:
        return [param.flag], True
    value: object
    if isinstance(kind, Int):
        text, value = "7", 7
    elif isinstance(kind, Enum):
        text, value = kind.choices[-1], kind.choices[-1]
    elif isinstance(kind, Bool):
        text, value = "true", True
    else:
        assert isinstance(kind, Text)
        text, value = "x", "x"
    if param.element is not None:
        value = {param.element.fields[0].name: value}
    if param.repeated:
        value = [value, value]
        argv = [text, text] if param.positional else [param.flag, text, param.flag, text]
        return argv, value
    return ([text] if param.positional else [param.flag, text]), value


def _parse(table: tuple[Command, ...], argv: list[str]) -> tuple[Command, dict[str, Any]]:
    ns = build_parser(table).parse_args(argv)
    command = next(c for c in table if c.name == ns.command_name)
    return command, command.request(ns)


def _expected(command: Command) -> tuple[list[str], dict[str, Any]]:
    argv = [command.name]
    request: dict[str, Any] = {}
    for param in command.params:
        args, value = _sample(param)
        argv += args
        node = request
        for key in param.path[:-1]:
            node = node.setdefault(key, {})
        node[param.path[-1]] = value
    return argv, request


SOURCES = {
    "0.2": [("0.2", interfaces.bundled("0.2"))],
    "0.3": [("0.3", interfaces.bundled("0.3"))],
    "union": [("0.2", interfaces.bundled("0.2")), ("0.3", interfaces.bundled("0.3"))],
    "synthetic": [("test", interfaces.build(SYNTHETIC, "test"))],
}


@pytest.mark.parametrize("source", SOURCES)
def test_every_command_of_every_description_parses(source: str) -> None:
    """One command per method; a command line giving every option parses into the
    request with each value at its field's path."""
    table = build_commands(SOURCES[source])
    methods = {m.name for _, i in SOURCES[source] for m in i.methods}
    assert {c.method.name for c in table} == methods - {"call"}  # `call` is mytimerctl's own
    for command in table:
        argv, expected = _expected(command)
        parsed, request = _parse(table, argv)
        assert parsed is command
        assert request == expected, argv


def test_the_synthetic_description() -> None:
    table = build_commands(SOURCES["synthetic"])
    by_name = {c.name: c for c in table}
    paint = by_name["paint"]
    flags = {".".join(p.path): p.flag for p in paint.params}
    assert flags == {
        "widget.name": "--name",
        "widget.color": "--color",
        "widget.enabled": "--enabled",
        "widget.tags": "--tags",
        "widget.levels": "--levels",
        "widget.colors": "--colors",
        "widget.switches": "--switches",
        "widget.points": "--points",
        "widget.note": "--note",
        "a.depth": "--depth",
        "a.flag": "--flag",
        "b.depth": "--b-depth",  # the same name again: qualified by its path
        "b.flag": "--b-flag",
        "verbose": "--verbose",
        "mode": "--mode",
    }
    assert paint.json_only == ("widget.matrix", "widget.blob")
    # A library method named like a daemon command keeps the short name; the
    # daemon's then goes by its full name. `call` is mytimerctl's own: no command.
    assert by_name["describe"].method.library
    assert not by_name["mytimerd.describe"].method.library
    assert by_name["self-test"].aliases == ("self_test",)

    argv = ["paint", "--no-enabled", "--flag", "--no-b-flag", "--color", "green"]
    argv += ["--switches", "false", "--points", "3", "--mode", "red", "--no-verbose"]
    _, request = _parse(table, argv)
    assert request == {
        "widget": {
            "color": "green",
            "enabled": False,
            "switches": [False],
            "points": [{"depth": 3}],
        },
        "a": {"flag": True},
        "b": {"flag": False},
        "verbose": False,
        "mode": "red",
    }
    parser = build_parser(table)
    for bad in (["--color", "purple"], ["--depth", "x"], ["--switches", "yes"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["paint", *bad])
    assert build_parser(table).parse_args(["self_test"]).command_name == "self-test"


def test_synthetic_help_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    table = build_commands(SOURCES["synthetic"])
    with pytest.raises(SystemExit):
        build_parser(table).parse_args(["paint", "--help"])
    out = capsys.readouterr().out
    assert "--color {red,green,blue}" in out
    assert "--enabled, --no-enabled" in out
    assert "No option gives widget.matrix, widget.blob" in out
    bash = completion_script("bash", table)
    assert _complete(bash, ["mytimerctl", "paint", "--color", ""]) == ["red", "green", "blue"]
    assert _complete(bash, ["mytimerctl", "paint", "--colors", "b"]) == ["blue"]
    assert _complete(bash, ["mytimerctl", "paint", "--switches", ""]) == ["true", "false"]
    assert _complete(bash, ["mytimerctl", "paint", "--no-e"]) == ["--no-enabled"]
    # A switch takes no value: the next word is an option again.
    assert _complete(bash, ["mytimerctl", "paint", "--enabled", "--mo"]) == ["--mode"]
    zsh = completion_script("zsh", table)
    assert "--color[" in zsh and ":(red green blue)" in zsh
    assert "(--enabled --no-enabled)--no-enabled" in zsh


def test_priority_takes_an_integer_or_a_choice(capsys: pytest.CaptureFixture[str]) -> None:
    """schedule --priority: an integer for 0.2, low/normal/high for 0.3, either accepted."""
    table = ctl.COMMANDS
    assert _parse(table, ["schedule", "--priority", "2"])[1] == {"job": {"priority": 2}}
    assert _parse(table, ["schedule", "--priority", "high"])[1] == {"job": {"priority": "high"}}
    code, _, err = run(capsys, "schedule", "--priority", "urgent")
    assert code == ctl.EXIT_USAGE
    assert "'urgent' is not an integer or one of low, normal, high" in err
    code, out, _ = run(capsys, "schedule", "--help")
    assert "--priority N|{low,normal,high}" in out
    assert "a value of digits is sent as an integer" in " ".join(out.split())


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["schedule", "--priority", ""], ["low", "normal", "high"]),
        (["schedule", "--priority", "h"], ["high"]),
        (["watch", ""], ["on_echo_fired", "on_job_scheduled"]),
        (["watch", "on_echo_fired", "on_j"], ["on_job_scheduled"]),
        (["watch", "--js"], ["--json"]),
        (["lib"], ["lib-version", "lib_version"]),
    ],
)
def test_bash_completion_of_choices(
    capsys: pytest.CaptureFixture[str], words: list[str], expected: list[str]
) -> None:
    script = run(capsys, "completion", "bash")[1]
    assert _complete(script, ["mytimerctl", *words]) == expected


def test_zsh_completion_of_choices(capsys: pytest.CaptureFixture[str]) -> None:
    script = run(capsys, "completion", "zsh")[1]
    assert "--priority[Job priority.]:N|{low,normal,high}:(low normal high)" in script
    assert "'*:EVENT:(on_echo_fired on_job_scheduled)'" in script


def test_commands_never_fail_to_build() -> None:
    """A field with no command-line form is left to `call`, not an import error."""
    text = SYNTHETIC.replace("verbose: bool", "verbose: [* [* bool]], widget2: Widget")
    table = build_commands([("test", interfaces.build(text, "test"))])
    paint = next(c for c in table if c.name == "paint")
    assert "verbose" in paint.json_only
    assert isinstance(build_parser(table), argparse.ArgumentParser)
