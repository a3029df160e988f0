"""mytimerctl: call mytimerd from the command line.

Commands, options and help texts are generated from the method table
(:data:`mytimerd.schema.METHODS`): one command per method (daemon methods
without their ``mytimerd.`` prefix), one option per leaf field of its request,
named after the field (camelCase to kebab-case, or ``Field.cli``). Options the
user leaves out are left out of the request, so the library's defaults apply.
Calls go through :class:`mytimerd.client.Client`.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import shlex
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import cbor2

from .. import client
from ..protocol.address import (
    ADDRESS_ENV,
    DEFAULT_TCP_PORT,
    Address,
    TcpAddress,
    UnixAddress,
    default_client_paths,
    parse_port,
)
from ..protocol.errors import PREFIX
from ..protocol.schema import METHODS, Array, Field, Int, Method, Struct, Text

PROG: Final = "mytimerctl"

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_DAEMON_ERROR: Final = 5
EXIT_LIBRARY_ERROR: Final = 6
EXIT_UNHEALTHY: Final = 7

#: Every exit status with its meaning (shown by --help and in docs/mytimerctl.md).
EXIT_CODES: Final[tuple[tuple[int, str], ...]] = (
    (EXIT_OK, "success"),
    (EXIT_USAGE, f"usage error: bad command, option, JSON or ${ADDRESS_ENV}"),
    (
        EXIT_UNREACHABLE,
        "daemon unreachable: the connection failed or dropped, or the peer broke the protocol",
    ),
    (EXIT_TIMEOUT, "timeout: no answer within --timeout"),
    (EXIT_DAEMON_ERROR, f"daemon error: the daemon refused the call ({PREFIX}<Name>)"),
    (EXIT_LIBRARY_ERROR, "library error: the library answered RET_ERR"),
    (EXIT_UNHEALTHY, "ping only: the daemon answered but reports itself unhealthy"),
)

#: Fields given as a positional argument rather than an option, by command.
#: The issue fixes ``echo MESSAGE``; every other field is an option.
POSITIONAL: Final[Mapping[str, str]] = {"echo": "message"}

#: Commands that are not methods.
EXTRA_COMMANDS: Final = ("call", "completion")

SHELLS: Final = ("bash", "zsh")


# --- the command table, derived from the method table -----------------------


def kebab(name: str) -> str:
    """``maxAttempts`` -> ``max-attempts``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()


def command_name(method: Method) -> str:
    """The command for ``method``: its name without the ``mytimerd.`` prefix."""
    return method.name.removeprefix(PREFIX)


@dataclass(frozen=True)
class Param:
    """One command-line argument: a leaf value of a method's request.

    ``path`` is the chain of keys from the request map down to the value.
    A field that is an array becomes a repeatable option; an array of maps
    (complex's messages) takes one text per map and fills the map's first field.
    """

    path: tuple[str, ...]
    field: Field
    name: str
    positional: bool
    #: The type each given value is parsed as.
    scalar: Text | Int

    @property
    def dest(self) -> str:
        """The argparse destination (dotted, so it cannot clash with global options)."""
        return "param." + ".".join(self.path)

    @property
    def flag(self) -> str:
        """``--delay-ms``, or the metavar of a positional (``MESSAGE``)."""
        return self.name.upper() if self.positional else f"--{self.name}"

    @property
    def repeated(self) -> bool:
        """Whether the option may be given several times (an array field)."""
        return isinstance(self.field.type, Array)

    @property
    def element(self) -> Struct | None:
        """The map each value of an array-of-maps option becomes, else None."""
        kind = self.field.type
        if isinstance(kind, Array) and isinstance(kind.item, Struct):
            return kind.item
        return None

    @property
    def metavar(self) -> str:
        """The value's placeholder in help texts."""
        if self.positional:
            return self.flag
        return "N" if isinstance(self.scalar, Int) else "TEXT"

    def help(self) -> str:
        """The option's help text, from Field.doc and the library's default."""
        text = self.field.doc
        element = self.element
        if element is not None:
            first = element.fields[0].name
            text += (
                f" Repeatable: each TEXT becomes one {element.name} with {first}=TEXT"
                " (its other fields take the library's defaults)."
            )
        elif self.repeated:
            text += " Repeatable."
        if self.field.option:
            text += " Optional: absent unless given."
        elif not self.positional:
            text += f" Library default: {json.dumps(self.field.default)}."
        return text.replace("%", "%%")  # argparse formats help with %

    def convert(self, values: Any) -> Any:
        """The request value for what argparse parsed."""
        element = self.element
        if element is not None:
            return [{element.fields[0].name: value} for value in values]
        return values

    def argv(self, value: Any) -> list[str]:
        """The arguments that give ``value`` (for generated examples)."""
        if self.positional:
            return [str(value)]
        element = self.element
        if element is not None:
            value = [item[element.fields[0].name] for item in value]
        items = value if isinstance(value, list) else [value]
        return [arg for item in items for arg in (self.flag, str(item))]


@dataclass(frozen=True)
class Command:
    """A mytimerctl command for one method of the table."""

    name: str
    method: Method
    params: tuple[Param, ...]

    def request(self, ns: argparse.Namespace) -> dict[str, Any]:
        """The request map for the parsed arguments; options not given are left out."""
        request: dict[str, Any] = {}
        for param in self.params:
            value = getattr(ns, param.dest, None)
            if value is None:
                continue
            node = request
            for key in param.path[:-1]:
                node = node.setdefault(key, {})
            node[param.path[-1]] = param.convert(value)
        return request

    def example(self) -> list[str]:
        """The method's example request as mytimerctl arguments."""
        argv = [self.name]
        for param in self.params:
            value: Any = self.method.example
            for key in param.path:
                if not isinstance(value, dict) or key not in value:
                    break
                value = value[key]
            else:
                argv += param.argv(value)
        return argv


def _leaves(struct: Struct, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Field]]:
    for field in struct.fields:
        if isinstance(field.type, Struct):
            yield from _leaves(field.type, (*path, field.name))
        else:
            yield (*path, field.name), field


def _scalar_type(path: tuple[str, ...], field: Field) -> Text | Int:
    """The type of each value given for ``field``; ValueError if it has no command-line form."""
    kind = field.type
    if isinstance(kind, Array):
        kind = kind.item
    if isinstance(kind, Struct) and kind.fields:
        # Each text given fills the element map's first field.
        kind = kind.fields[0].type
    if not isinstance(kind, Text | Int):
        raise ValueError(f"{'.'.join(path)}: no command-line form for {kind!r}")
    return kind


def build_command(method: Method) -> Command:
    """The command for ``method``; ValueError if a field has no command-line form
    or two fields get the same option name."""
    name = command_name(method)
    params: list[Param] = []
    seen: set[str] = set()
    for path, field in _leaves(method.request, ()):
        option = field.cli or kebab(field.name)
        if option in seen:
            raise ValueError(f"{name}: two fields map to --{option}")
        seen.add(option)
        positional = POSITIONAL.get(name) == option
        params.append(Param(path, field, option, positional, _scalar_type(path, field)))
    return Command(name, method, tuple(params))


COMMANDS: Final[tuple[Command, ...]] = tuple(build_command(m) for m in METHODS)
COMMANDS_BY_NAME: Final[Mapping[str, Command]] = {c.name: c for c in COMMANDS}


# --- argument parsing -------------------------------------------------------


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{lo}, {hi}]")
        return value

    return parse


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options every command takes, before or after its name.

    Subcommands get ``default=SUPPRESS`` so that an option given before the
    command is not reset by the subcommand's own default.
    """

    def given(value: Any) -> Any:
        return argparse.SUPPRESS if default is argparse.SUPPRESS else value

    where = parser.add_argument_group("daemon address and output")
    where.add_argument(
        "--unix",
        metavar="PATH",
        default=given(None),
        help="Talk to the daemon on this unix socket.",
    )
    where.add_argument(
        "--tcp",
        nargs=2,
        metavar=("HOST", "PORT"),
        default=given(None),
        help=f"Talk to the daemon on this TCP endpoint (its usual port is {DEFAULT_TCP_PORT}).",
    )
    where.add_argument(
        "--timeout",
        type=_timeout,
        metavar="SECONDS",
        default=given(client.DEFAULT_TIMEOUT),
        help="Give up connecting, and waiting for the answer, after this long "
        f"(default {client.DEFAULT_TIMEOUT:g}; 0: no limit).",
    )
    where.add_argument(
        "--json",
        action="store_true",
        default=given(False),
        help='Print the answer as JSON (bytes as {"$bytes": "<base64>"}; see docs).',
    )


def _examples(lines: Sequence[Sequence[str] | str]) -> str:
    """An examples section: argument lists are quoted for the shell, text is kept as is."""
    shown = (line if isinstance(line, str) else shlex.join([PROG, *line]) for line in lines)
    return "examples:\n" + "\n".join(f"  {line}" for line in shown)


def _paragraphs(*texts: str) -> str:
    """Texts filled to the terminal's usual width (the raw formatter keeps line breaks)."""
    return "\n\n".join(textwrap.fill(text, 79) for text in texts)


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)


def _addressing() -> str:
    defaults = ", ".join(str(p) for p in default_client_paths())
    return (
        "address:\n"
        "  --unix PATH or --tcp HOST PORT; else $MYTIMER_ADDRESS (unix:/path,\n"
        "  tcp:host:port or tcp:[v6addr]:port); else the default sockets, in order:\n"
        f"  {defaults}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The mytimerctl argument parser, generated from the method table."""
    formatter = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_paragraphs(
            "Call mytimerd, the daemon serving libmy_timer: one command per method, "
            "one option per field of the method's request."
        ),
        epilog="\n\n".join(
            (
                _addressing(),
                _exit_codes(),
                _examples(
                    [
                        ["version"],
                        ["--json", "echo", "hello"],
                        ["--tcp", "127.0.0.1", str(DEFAULT_TCP_PORT), "ping"],
                        ["call", "echo", '{"req": {"message": "hi"}}'],
                    ]
                ),
                f"Run '{PROG} COMMAND --help' for a command's options.",
            )
        ),
        formatter_class=formatter,
    )
    _add_common(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        method = command.method
        handler = "the library" if method.library else "the daemon"
        sub = commands.add_parser(
            command.name,
            parents=[common],
            help=method.doc,
            description=_paragraphs(
                method.doc,
                f"Calls method {method.name!r}, answered by {handler}."
                + (
                    " Options left out are left out of the request: the library's defaults apply."
                    if command.params
                    else ""
                ),
            ),
            epilog=_examples([command.example(), ["--json", *command.example()]])
            + "\n\n"
            + _exit_codes(),
            formatter_class=formatter,
        )
        group = sub.add_argument_group(f"{method.name} request") if command.params else sub
        for param in command.params:
            scalar = param.scalar
            convert: Callable[[str], Any] = (
                _int_in(scalar.lo, scalar.hi) if isinstance(scalar, Int) else str
            )
            if param.positional:
                group.add_argument(param.dest, metavar=param.flag, type=convert, help=param.help())
            else:
                group.add_argument(
                    param.flag,
                    dest=param.dest,
                    metavar=param.metavar,
                    type=convert,
                    action="append" if param.repeated else "store",
                    help=param.help(),
                )

    call_examples: list[Sequence[str] | str] = [
        ["call", c.method.name, *([json.dumps(c.method.example)] if c.method.example else [])]
        for c in COMMANDS
        if c.method.library
    ]
    call = commands.add_parser(
        "call",
        parents=[common],
        help="Call any method with a JSON request.",
        description=_paragraphs(
            "Call METHOD with the request given as JSON (default {}; '-' reads it from "
            'standard input). Bytes may be written {"$bytes": "<base64>"}.',
            "Methods: " + ", ".join(m.name for m in METHODS) + ".",
        ),
        epilog=_examples([*call_examples, f"echo '{{\"req\": {{}}}}' | {PROG} --json call echo -"])
        + "\n\n"
        + _exit_codes(),
        formatter_class=formatter,
    )
    call.add_argument("method", metavar="METHOD", help="The method name, e.g. echo.")
    call.add_argument(
        "request",
        metavar="JSON",
        nargs="?",
        default="{}",
        help="The request as JSON, or - to read it from standard input.",
    )
    completion = commands.add_parser(
        "completion",
        help="Print a shell completion script.",
        description="Print a completion script for SHELL, generated from the method table.",
        epilog="\n".join(
            (
                "install:",
                f"  bash: {PROG} completion bash > /etc/bash_completion.d/{PROG}",
                f'        (or: eval "$({PROG} completion bash)" in ~/.bashrc)',
                f'  zsh:  eval "$({PROG} completion zsh)" in ~/.zshrc',
            )
        ),
        formatter_class=formatter,
    )
    completion.add_argument("shell", choices=SHELLS, help="The shell.")
    return parser


# --- JSON forms -------------------------------------------------------------


def to_json(value: Any) -> Any:
    """``value`` (as cbor2 decodes it) in a form ``json.dumps`` accepts.

    JSON has no form for some CBOR values; they become one-key objects:
    bytes ``{"$bytes": "<base64>"}``, non-finite floats ``{"$float": "nan"}``,
    maps with non-text keys ``{"$map": [[key, value], ...]}``, tags
    ``{"$tag": N, "value": ...}``, undefined ``{"$undefined": true}``,
    simple values ``{"$simple": N}``, anything else ``{"$repr": "..."}``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": str(value)}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: to_json(item) for key, item in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, cbor2.CBORTag):
        return {"$tag": value.tag, "value": to_json(value.value)}
    if value is cbor2.undefined:
        return {"$undefined": True}
    if isinstance(value, cbor2.CBORSimpleValue):
        return {"$simple": value.value}
    return {"$repr": repr(value)}


def _from_json_object(pairs: list[tuple[str, Any]]) -> Any:
    """The inverse of ``{"$bytes": ...}`` for requests given as JSON."""
    if len(pairs) == 1 and pairs[0][0] == "$bytes" and isinstance(pairs[0][1], str):
        return base64.b64decode(pairs[0][1], validate=True)
    return dict(pairs)


def parse_json_request(text: str) -> Any:
    """The request given to ``call`` as JSON; raises ValueError if it is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=_from_json_object)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the request is not valid JSON: {exc}") from None
    except ValueError as exc:  # binascii.Error from a bad $bytes
        raise ValueError(f'bad {{"$bytes": ...}} in the request: {exc}') from None


# --- human-readable output --------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes: {bytes(value).hex()}>"
    if isinstance(value, str):
        return value
    return json.dumps(to_json(value), ensure_ascii=False)


def _generic(value: Any, indent: int = 0) -> list[str]:
    """An indented outline of any answer: maps as aligned ``key: value``, lists as bullets."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        width = max(len(str(key)) for key in value) + 1
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines += _generic(item, indent + 2)
            else:
                lines.append(f"{pad}{f'{key}:':<{width}} {_scalar(item)}")
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            inner = _generic(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
        return lines
    return [pad + _scalar(value)]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def _rest(answer: Mapping[str, Any], shown: Sequence[str]) -> list[str]:
    """Keys a renderer does not know (a newer daemon's), shown generically."""
    extra = {k: v for k, v in answer.items() if k not in shown}
    return _generic(extra) if extra else []


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _error_name(name: str) -> str:
    """``mytimerd.<Name>`` whether or not the daemon's key carries the prefix."""
    return name if name.startswith(PREFIX) else PREFIX + name


def _render_describe(answer: Mapping[str, Any]) -> list[str]:
    daemon = answer.get("daemon") or {}
    library = answer.get("library") or {}
    lines = [
        f"daemon:     {daemon.get('name', '?')} {daemon.get('version', '?')}",
        f"library:    {library.get('path', '?')} ({library.get('version') or 'version unknown'})",
        f"timer name: {answer.get('timerName', '?')}",
    ]
    limits = answer.get("limits") or {}
    if limits:
        lines.append("limits:")
        lines += _generic(limits, 2)
    methods = answer.get("methods") or []
    if methods:
        lines.append("methods:")
        width = max(len(str(m.get("name", ""))) for m in methods)
        for m in methods:
            tag = f"[{m.get('handler', '?')}]"
            lines.append(f"  {m.get('name', '?'):<{width}}  {tag:<9} {m.get('doc', '')}")
    errors = answer.get("errors") or {}
    if errors:
        lines.append("errors:")
        width = max(len(_error_name(name)) for name in errors)
        lines += [f"  {_error_name(name):<{width}}  {doc}" for name, doc in errors.items()]
    return lines + _rest(answer, ("daemon", "library", "timerName", "limits", "methods", "errors"))


def _render_ping(answer: Mapping[str, Any]) -> list[str]:
    library = answer.get("library") or {}
    probe = library.get("lastProbeAgoSeconds")
    lines = [
        f"healthy: {_scalar(answer.get('healthy'))} ({answer.get('status', '?')})",
        f"uptime:  {_duration(answer.get('uptimeSeconds'))}",
        "library: "
        + ", ".join(
            (
                f"last probe {'never' if probe is None else _duration(probe) + ' ago'}",
                f"submit blocked {_duration(library.get('submitBlockedSeconds'))}",
                f"{library.get('inFlight', '?')} calls in flight",
            )
        ),
    ]
    known = ("lastProbeAgoSeconds", "submitBlockedSeconds", "inFlight")
    lines += [f"  {line}" for line in _rest(library, known)]
    return lines + _rest(answer, ("healthy", "status", "uptimeSeconds", "library"))


def _render_stats(answer: Mapping[str, Any]) -> list[str]:
    conns = answer.get("connections") or {}
    lines = [
        f"uptime:      {_duration(answer.get('uptimeSeconds'))}",
        f"connections: {conns.get('open', '?')} open, {conns.get('total', '?')} total, "
        f"{conns.get('refused', '?')} refused",
        f"in flight:   {answer.get('inFlight', '?')}",
    ]
    calls = answer.get("calls") or {}
    latency = answer.get("latencyMs") or {}
    names = list(calls) + [m for m in latency if m not in calls]
    if names:

        def ms(stat: Mapping[str, Any], key: str) -> str:
            value = stat.get(key)
            return f"{value:.2f}" if isinstance(value, int | float) else "-"

        rows = []
        for name in names:
            count = calls.get(name) or {}
            lat = latency.get(name) or {}
            rows.append(
                [
                    name,
                    str(count.get("ok", 0)),
                    str(count.get("libraryErrors", 0)),
                    str(count.get("daemonErrors", 0)),
                    *(ms(lat, key) for key in ("p50", "p90", "p99", "max")),
                ]
            )
        header = ["method", "ok", "lib err", "daemon err", "p50 ms", "p90 ms", "p99 ms", "max ms"]
        lines += ["", *_table(header, rows)]
    errors = answer.get("errors") or {}
    if errors:
        lines += ["", "errors:"]
        width = max(len(_error_name(name)) for name in errors)
        lines += [f"  {_error_name(name):<{width}}  {count}" for name, count in errors.items()]
    return lines + _rest(
        answer, ("uptimeSeconds", "connections", "inFlight", "calls", "latencyMs", "errors")
    )


_RENDERERS: Final[Mapping[str, Callable[[Mapping[str, Any]], list[str]]]] = {
    "mytimerd.describe": _render_describe,
    "mytimerd.ping": _render_ping,
    "mytimerd.stats": _render_stats,
}


def render(method: str, answer: Any) -> str:
    """The answer to ``method`` for humans."""
    renderer = _RENDERERS.get(method)
    if renderer is not None and isinstance(answer, dict):
        try:
            return "\n".join(renderer(answer))
        except (AttributeError, TypeError, ValueError):
            pass  # not the shape this version knows: fall back to the outline below
    return "\n".join(_generic(answer))


# --- shell completion -------------------------------------------------------

_GLOBAL_FLAGS: Final = ("--unix", "--tcp", "--timeout", "--json", "--help")


def _bash_script() -> str:
    commands = [c.name for c in COMMANDS] + list(EXTRA_COMMANDS)
    valued = sorted(
        {"--unix", "--timeout"} | {p.flag for c in COMMANDS for p in c.params if not p.positional}
    )
    cases = [
        f'        {c.name}) words="{" ".join(p.flag for p in c.params if not p.positional)}";;'
        for c in COMMANDS
    ]
    methods = " ".join(m.name for m in METHODS)
    return f"""# bash completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local globals="{" ".join(_GLOBAL_FLAGS)}" command="" args=0 i words=""
    case "$prev" in
        --unix) COMPREPLY=($(compgen -f -- "$cur")); return;;
        --tcp|{"|".join(valued)}) COMPREPLY=(); return;;
    esac
    # Find the command word and count the positional arguments after it,
    # skipping option values.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --tcp) ((i += 2));;
            {"|".join(valued)}) ((i++));;
            -*) ;;
            *) if [[ -z "$command" ]]; then command="${{COMP_WORDS[i]}}"; else ((args++)); fi;;
        esac
    done
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "$globals {" ".join(commands)}" -- "$cur"))
        return
    fi
    case "$command" in
{chr(10).join(cases)}
        call) if [[ $args -eq 0 && "$cur" != -* ]]; then
                  COMPREPLY=($(compgen -W "{methods}" -- "$cur")); return
              fi;;
        completion) COMPREPLY=($(compgen -W "{" ".join(SHELLS)}" -- "$cur")); return;;
    esac
    COMPREPLY=($(compgen -W "$words $globals" -- "$cur"))
}}
complete -F _{PROG} {PROG}
"""


def _zsh_describe(text: str) -> str:
    """``text`` escaped for an _arguments ``[description]``."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zsh_script() -> str:
    globals_ = [
        "'(--tcp)--unix[Unix socket of the daemon]:socket:_files'",
        "'(--unix)--tcp[TCP endpoint of the daemon]:host:_hosts:port: '",
        "'--timeout[Seconds to wait]:seconds: '",
        "'--json[Print the answer as JSON]'",
    ]
    described = [
        shlex.quote(f"{c.name}:{c.method.doc}".replace("\\", "\\\\")) for c in COMMANDS
    ] + ["'call:Call any method with a JSON request'", "'completion:Print a completion script'"]
    cases = []
    for c in COMMANDS:
        specs = []
        for p in c.params:
            if p.positional:
                specs.append(shlex.quote(f":{p.flag}: "))
            else:
                star = "*" if p.repeated else ""
                specs.append(
                    shlex.quote(f"{star}{p.flag}[{_zsh_describe(p.field.doc)}]:{p.metavar}: ")
                )
        cases.append(f"        {c.name}) _arguments $globals {' '.join(specs)};;")
    methods = " ".join(m.name for m in METHODS)
    return f"""# zsh completion for {PROG}, generated from the mytimerd method table
_{PROG}() {{
    local -a globals commands
    local context state state_descr line
    typeset -A opt_args
    globals=({" ".join(globals_)})
    commands=({" ".join(described)})
    _arguments -C $globals '1:command:->command' '*::argument:->argument'
    case $state in
    command) _describe -t commands '{PROG} command' commands;;
    argument)
        case $line[1] in
{chr(10).join(cases)}
        call) _arguments $globals '1:method:({methods})' '2:JSON request: ';;
        completion) _arguments '1:shell:({" ".join(SHELLS)})';;
        esac;;
    esac
}}
compdef _{PROG} {PROG}
"""


def completion_script(shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    return _bash_script() if shell == "bash" else _zsh_script()


# --- running a command --------------------------------------------------------


def _start_hint(addresses: Sequence[Address]) -> str:
    first = addresses[0]
    if isinstance(first, TcpAddress):
        by_hand = f"mytimerd --tcp {first.host} {first.port}"
        unit = "mytimerd-tcp.socket"
    else:
        by_hand = f"mytimerd --unix {first.path}"
        unit = "mytimerd.socket"
    return textwrap.fill(
        f"hint: is mytimerd running? Start it with 'systemctl start {unit}' "
        f"(or 'systemctl --user start {unit}' for your own daemon), or by hand: "
        f"'{by_hand}'. Point {PROG} elsewhere with --unix, --tcp or ${ADDRESS_ENV}.",
        79,
        subsequent_indent="      ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def _error(*messages: str) -> None:
    for message in messages:
        print(f"{PROG}: {message}", file=sys.stderr)


def _hint(text: str) -> None:
    print(text, file=sys.stderr)


def _explicit_address(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> Address | None:
    if ns.unix is not None and ns.tcp is not None:
        parser.error("give either --unix or --tcp, not both")
    if ns.unix is not None:
        return UnixAddress(ns.unix)
    if ns.tcp is not None:
        host, port = ns.tcp
        try:
            return TcpAddress(host.strip("[]"), parse_port(port))
        except ValueError as exc:
            parser.error(f"--tcp: {exc}")
    return None


def _request(ns: argparse.Namespace, stdin: TextIO) -> tuple[str, Any]:
    """The method and request the parsed command line asks for."""
    if ns.command == "call":
        text = stdin.read() if ns.request == "-" else ns.request
        return ns.method, parse_json_request(text)
    command = COMMANDS_BY_NAME[ns.command]
    return command.method.name, command.request(ns)


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    """Run mytimerctl with ``argv`` (default: sys.argv[1:]); return the exit status.

    ``stdin`` is where ``call METHOD -`` reads its request (default: sys.stdin).
    """
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        address = _explicit_address(parser, ns)
    except SystemExit as exc:  # argparse's way out of --help and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if ns.command == "completion":
        sys.stdout.write(completion_script(ns.shell))
        return EXIT_OK
    try:
        method, request = _request(ns, stdin or sys.stdin)
        limit = ns.timeout or None
        conn = client.Client(address, timeout=limit, connect_timeout=limit)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        with conn:
            answer = conn.call(method, request)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except client.ConnectError as exc:
        _error(*(f"cannot connect to the daemon at {a}: {r}" for a, r in exc.attempts))
        _hint(_start_hint([a for a, _ in exc.attempts]))
        return EXIT_UNREACHABLE
    except client.CallTimeout as exc:
        _error(f"{exc} (see --timeout)")
        return EXIT_TIMEOUT
    except client.BadResponse as exc:
        _error(f"the peer at {exc.address} does not speak the mytimerd protocol: {exc.reason}")
        return EXIT_UNREACHABLE
    except client.TransportError as exc:
        _error(f"lost the connection to the daemon at {exc.address}: {exc.reason}")
        _hint(
            "hint: the daemon may have stopped; see 'systemctl status mytimerd' "
            "or its log ('journalctl -u mytimerd')."
        )
        return EXIT_UNREACHABLE
    except client.DaemonCallError as exc:
        _error(str(exc))
        return EXIT_DAEMON_ERROR
    except client.LibraryError as exc:
        _error(f"library error: {exc.message}")
        return EXIT_LIBRARY_ERROR
    if ns.json:
        print(json.dumps(to_json(answer), indent=2, ensure_ascii=False))
    else:
        print(render(method, answer))
    # Like `systemctl is-active`: scripts and health checks can test the status.
    if method == "mytimerd.ping" and isinstance(answer, Mapping) and not answer.get("healthy"):
        return EXIT_UNHEALTHY
    return EXIT_OK
