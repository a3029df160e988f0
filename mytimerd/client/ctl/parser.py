"""The argument parser of mytimerctl, generated from the command table, and its exit codes."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Final

from ...protocol.address import ADDRESS_ENV, DEFAULT_TCP_PORT, default_client_paths
from ...protocol.errors import PREFIX
from ...protocol.schema import METHODS, Int
from ..common import DEFAULT_TIMEOUT
from .commands import COMMANDS, PROG
from .completion import SHELLS

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
