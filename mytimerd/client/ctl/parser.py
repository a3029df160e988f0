"""The argument parser of mytimerctl, generated from the command table, and its exit codes."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

from ... import __version__
from ...protocol.address import ADDRESS_ENV, DEFAULT_TCP_PORT, default_client_paths
from ...protocol.errors import PREFIX
from ..common import DEFAULT_TIMEOUT
from .commands import COMMANDS, GENERATIONS, PROG, Command, Param
from .completion import SHELLS

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_DAEMON_ERROR: Final = 5
EXIT_LIBRARY_ERROR: Final = 6
EXIT_UNHEALTHY: Final = 7
EXIT_IO: Final = 8
#: 128 + SIGPIPE: what the shell reports for a program its pipe's reader left.
EXIT_BROKEN_PIPE: Final = 128 + signal.SIGPIPE

#: Every exit status with its meaning (shown by --help and in docs/mytimerctl.md).
EXIT_CODES: Final[tuple[tuple[int, str], ...]] = (
    (EXIT_OK, "success"),
    (
        EXIT_USAGE,
        f"usage error: bad command, option, JSON or ${ADDRESS_ENV}; a --tls-* file that"
        " cannot be loaded",
    ),
    (
        EXIT_UNREACHABLE,
        "daemon unreachable: the connection failed or dropped, TLS failed (the message"
        " says what), or the peer broke the protocol",
    ),
    (EXIT_TIMEOUT, "timeout: no answer within --timeout"),
    (EXIT_DAEMON_ERROR, f"daemon error: the daemon refused the call ({PREFIX}<Name>)"),
    (EXIT_LIBRARY_ERROR, "library error: the library answered RET_ERR"),
    (EXIT_UNHEALTHY, "ping only: the daemon answered but reports itself unhealthy"),
    (
        EXIT_IO,
        "local I/O error: standard output closed (>&-) or unwritable (a full disk),"
        " or standard input closed or unreadable",
    ),
    (
        EXIT_BROKEN_PIPE,
        "the reader of the output went away (e.g. '| head -1'): 128+SIGPIPE, quietly,"
        " as for other programs",
    ),
)


def _value_of(param: Param) -> Callable[[str], Any]:
    """An argparse type: one value of ``param`` (UTF-8 text, an integer, a choice)."""

    def parse(text: str) -> Any:
        try:
            return param.parse(utf8(text, "the value"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = param.metavar  # what argparse calls the type in its messages
    return parse


def utf8(text: str, what: str = "an argument") -> str:
    """``text`` if it is valid UTF-8 (all the daemon takes), else ValueError.

    Undecodable bytes in the command line or in standard input reach Python
    as lone surrogates (surrogateescape); they have no UTF-8 form to send.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ValueError(f"{what} is not valid UTF-8: {shown!r}") from None
    return text


def _text(text: str) -> str:
    """An argparse type: text the daemon will take (UTF-8)."""
    try:
        return utf8(text, "the value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


class _Quiet(argparse.ArgumentParser):
    """A parser that raises ValueError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def front(args: Sequence[str]) -> tuple[argparse.Namespace, str | None] | None:
    """The global options and the command word of ``args``, before the command
    table is known (None if they do not parse: the full parser will say why).

    Global options may come before or after the command; ``-h``/``--help``
    and the command's own options are left alone.
    """
    first = _Quiet(add_help=False, allow_abbrev=False)
    _add_common(first, None)
    first.add_argument("command", nargs="?")
    first.add_argument("rest", nargs=argparse.REMAINDER)
    rest = _Quiet(add_help=False, allow_abbrev=False)
    _add_common(rest, argparse.SUPPRESS)
    try:
        ns, _ = first.parse_known_args(args)
        rest.parse_known_args(ns.rest, namespace=ns)
    except (ValueError, argparse.ArgumentError):
        return None
    command = ns.command
    return ns, command if isinstance(command, str) else None


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
        action="append",
        default=given(None),
        help="Talk to the daemon on this unix socket. Repeat it to fail over: the next "
        "socket is tried when one refuses the connection.",
    )
    where.add_argument(
        "--tcp",
        nargs=2,
        metavar=("HOST", "PORT"),
        action="append",
        default=given(None),
        help=f"Talk to the daemon on this TCP endpoint (its usual port is {DEFAULT_TCP_PORT}). "
        "Repeat it to fail over: the next endpoint is tried when one refuses the connection "
        "or a request never left; a call that may have reached a daemon is not sent again.",
    )
    tls = parser.add_argument_group(
        "TLS (TCP only; any of these speaks TLS to a --tcp or tcp: address)"
    )
    tls.add_argument(
        "--tls",
        action="store_true",
        default=given(False),
        help="Speak TLS to the daemon, checking its certificate against the system's CA "
        "store (or --tls-ca). Same as the address tls:HOST:PORT.",
    )
    tls.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=given(None),
        help="Trust the CA certificates in FILE (PEM) for the daemon's certificate, "
        "instead of the system's store.",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=given(None),
        help="Present this client certificate (PEM), for a daemon that wants one "
        "(mutual TLS, its --tls-client-ca).",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        default=given(None),
        help="The private key of --tls-cert (PEM; default: read from the --tls-cert file).",
    )
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=given(None),
        help="Check that the daemon's certificate names NAME (and ask for NAME by SNI), "
        "instead of the host connected to.",
    )
    where.add_argument(
        "--timeout",
        type=_timeout,
        metavar="SECONDS",
        default=given(DEFAULT_TIMEOUT),
        help="Give up connecting, and waiting for the answer, after this long "
        f"(default {DEFAULT_TIMEOUT:g}; 0: no limit).",
    )
    where.add_argument(
        "--json",
        action="store_true",
        default=given(False),
        help='Print the answer as JSON (bytes as {"$bytes": "<base64>"}; see docs).',
    )


#: The help of the options in commands.EXTRA_OPTIONS and commands.EXTRA_SWITCHES.
_OPTION_HELP: Final = {
    "--no-reconnect": "Exit when the connection to the daemon ends (exit 3), as before "
    "reconnecting was the default. Without it, watch connects and subscribes again (with "
    "a growing pause, up to 5 s, between attempts) and says on stderr when the gap began "
    "and ended: events fired in the gap are missed.",
    "--format": "How to print the answer: human (the default), openmetrics (OpenMetrics "
    "text), or prometheus (the Prometheus text format, which node_exporter's textfile "
    "collector reads). --json prints it as JSON.",
}

#: What a command does, where the method's doc says what the protocol does.
_SUMMARIES: Final = {"watch": "Print the library's events as they come, until interrupted."}

#: A command's description, where the method's doc says what the protocol does.
_DESCRIPTIONS: Final[dict[str, Sequence[str]]] = {
    "watch": (
        "Print the library's events as they come, until interrupted (Ctrl-C exits 130): "
        "one line per event, its name and its payload; with --json, one JSON object per "
        'line, the event as the library sent it ({"eventType": ..., "payload": ...}). '
        "No EVENT: every event the library has; an event it does not have is the "
        "daemon's mytimerd.InvalidParameter (exit 5).",
        "--timeout bounds connecting and the subscription's answer; waiting for events "
        "has no limit. A watch that does not keep up (its output is not read) is cut off "
        "by the daemon with mytimerd.SlowSubscriber (exit 5).",
        "When the connection ends (the daemon restarted or stopped), watch subscribes "
        "again by itself, to any address given, and prints a line on stderr saying when "
        "the gap began and ended; --no-reconnect exits instead (exit 3).",
    ),
}

#: Examples shown in a command's help beyond those generated from its request.
_EXTRA_EXAMPLES: Final[dict[str, list[Sequence[str] | str]]] = {
    "watch": [["watch", "on_echo_fired", "on_job_scheduled"], ["watch", "--no-reconnect"]],
    "stats": [
        ["stats", "--format", "openmetrics"],
        f"{PROG} stats --format prometheus > mytimerd.prom.tmp && mv mytimerd.prom.tmp "
        "/var/lib/prometheus/node-exporter/mytimerd.prom",
    ],
}


def _examples(lines: Sequence[Sequence[str] | str]) -> str:
    """An examples section: argument lists are quoted for the shell, text is kept as is."""
    shown = (line if isinstance(line, str) else shlex.join([PROG, *line]) for line in lines)
    return "examples:\n" + "\n".join(f"  {line}" for line in shown)


def _paragraphs(*texts: str) -> str:
    """Texts filled to the terminal's usual width (the raw formatter keeps line breaks)."""
    return "\n\n".join(textwrap.fill(text, 79) for text in texts)


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(
        textwrap.fill(text, 79, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, text in EXIT_CODES
    )


def _addressing() -> str:
    defaults = ", ".join(str(p) for p in default_client_paths())
    return (
        "address:\n"
        "  --unix PATH or --tcp HOST PORT; else $MYTIMER_ADDRESS (unix:/path,\n"
        "  tcp:host:port, tcp:[v6addr]:port, or tls:host:port for TLS); else the\n"
        f"  default sockets, in order: {defaults}\n"
        "  TLS: tls:HOST:PORT, or --tls or any --tls-* option with a TCP address."
    )


def _description(command: Command) -> str:
    method = command.method
    handler = "the library" if method.library else "the daemon"
    if command.name in _DESCRIPTIONS:
        return _paragraphs(*_DESCRIPTIONS[command.name], f"Calls method {method.name!r}.")
    texts = [method.doc, f"Calls method {method.name!r}, answered by {handler}."]
    if command.params:
        texts[-1] += " Options left out are left out of the request: the library's defaults apply."
    missing = [g for g in GENERATIONS if command.generations and g not in command.generations]
    if method.library and missing:
        texts.append(
            f"Only libraries of generation {', '.join(command.generations)} have this method; "
            f"a daemon serving generation {', '.join(missing)} answers mytimerd.UnknownMethod."
        )
    if command.json_only:
        texts.append(
            f"No option gives {', '.join(command.json_only)}: use "
            f"'{PROG} call {method.name} JSON' to send "
            + ("it." if len(command.json_only) == 1 else "them.")
        )
    return _paragraphs(*texts)


def _add_command(commands: Any, common: argparse.ArgumentParser, command: Command) -> None:
    """The subparser of one command: one argument per param."""
    sub = commands.add_parser(
        command.name,
        aliases=command.aliases,
        parents=[common],
        help=_SUMMARIES.get(command.name, command.method.doc),
        description=_description(command),
        epilog=_examples(
            [
                command.example(),
                ["--json", *command.example()],
                *_EXTRA_EXAMPLES.get(command.name, ()),
            ]
        )
        + "\n\n"
        + _exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(command_name=command.name)
    for flag, values in command.options.items():
        sub.add_argument(
            flag, choices=values, default=values[0], help=_OPTION_HELP[flag].replace("%", "%%")
        )
    for flag in command.switches:
        sub.add_argument(flag, action="store_true", help=_OPTION_HELP[flag].replace("%", "%%"))
    group = sub.add_argument_group(f"{command.method.name} request") if command.params else sub
    for param in command.params:
        if param.positional:
            group.add_argument(
                param.dest,
                metavar=param.flag,
                type=_value_of(param),
                nargs="*" if param.repeated else None,
                help=param.help(),
            )
        elif param.switch:
            group.add_argument(
                param.flag,
                dest=param.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=param.help(),
            )
        else:
            group.add_argument(
                param.flag,
                dest=param.dest,
                metavar=param.metavar,
                type=_value_of(param),
                action="append" if param.repeated else "store",
                help=param.help(),
            )


#: What the timer's --help says about other libraries' commands.
OTHER_LIBRARIES: Final = (
    "A daemon serving another nim-ffi library (mytimerd --library ... --schema ...) "
    "has that library's commands: they come from the daemon's mytimerd.describe, "
    "asked once and cached per address. Run "
    f"'{PROG} --unix PATH --help' (or --tcp, or ${ADDRESS_ENV}) to list them."
)


def _top_examples(table: Sequence[Command], library: str | None) -> list[Sequence[str] | str]:
    """The examples of the top-level help: libmy_timer's, or the served library's first command."""
    if library is None:
        return [
            ["version"],
            ["--json", "echo", "hello"],
            ["--tcp", "127.0.0.1", str(DEFAULT_TCP_PORT), "ping"],
            [
                "--tcp",
                "timer.example",
                str(DEFAULT_TCP_PORT),
                "--tls-ca",
                "ca.pem",
                "--tls-cert",
                "me.crt",
                "--tls-key",
                "me.key",
                "ping",
            ],
            ["call", "echo", '{"req": {"message": "hi"}}'],
        ]
    first = next((c for c in table if c.method.library), None)
    shown: list[Sequence[str] | str] = [["describe"]]
    if first is not None:
        request = json.dumps(first.method.example)
        shown += [
            first.example(),
            ["--json", *first.example()],
            ["call", first.method.name, request],
        ]
    return shown


def build_parser(
    table: Sequence[Command] = COMMANDS, library: str | None = None
) -> argparse.ArgumentParser:
    """The mytimerctl argument parser, generated from the command table.

    ``library``: the name of the library a daemon serves when ``table`` was
    built from its describe (None: libmy_timer's bundled table).
    """
    formatter = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)
    if library is None:
        about = _paragraphs(
            "Call mytimerd, the daemon serving libmy_timer: one command per method, "
            "one option per field of the method's request.",
            OTHER_LIBRARIES,
        )
    else:
        about = _paragraphs(
            f"Call mytimerd serving the library {library!r}: one command per method its "
            "daemon describes (mytimerd.describe, cached per address), one option per "
            "field of the method's request.",
            f"Without these options {PROG} has libmy_timer's commands.",
        )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=about,
        epilog="\n\n".join(
            (
                _addressing(),
                _exit_codes(),
                _examples(_top_examples(table, library)),
                f"Run '{PROG} COMMAND --help' for a command's options.",
            )
        ),
        formatter_class=formatter,
    )
    _add_common(parser, None)
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {__version__}\n"
        f"daemon: run '{PROG} describe' for the daemon's and the library's versions",
        help=f"Print the version of {PROG} and exit (the library's: '{PROG} version').",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in table:
        _add_command(commands, common, command)

    call_examples: list[Sequence[str] | str] = [
        ["call", c.method.name, *([json.dumps(c.method.example)] if c.method.example else [])]
        for c in table
        if c.method.library
    ]
    from_stdin = (
        f"echo '{{\"req\": {{}}}}' | {PROG} --json call echo -"
        if library is None
        else f"echo '{{}}' | {PROG} --json call {next(iter(call_examples), ['', 'describe'])[1]} -"
    )
    call = commands.add_parser(
        "call",
        parents=[common],
        help="Call any method with a JSON request.",
        description=_paragraphs(
            "Call METHOD with the request given as JSON (default {}; '-' reads it from "
            'standard input). Bytes may be written {"$bytes": "<base64>"}.',
            "Methods: " + ", ".join(c.method.name for c in table) + ".",
        ),
        epilog=_examples([*call_examples, from_stdin]) + "\n\n" + _exit_codes(),
        formatter_class=formatter,
    )
    call.add_argument("method", metavar="METHOD", type=_text, help="The method name, e.g. echo.")
    call.add_argument(
        "request",
        metavar="JSON",
        type=_text,
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
