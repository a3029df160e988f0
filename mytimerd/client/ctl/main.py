"""The mytimerctl entry point: parse the command line, make the call, print the answer."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ...protocol.address import ADDRESS_ENV, Address, TcpAddress, UnixAddress, parse_port
from ..blocking import Client
from ..errors import (
    BadResponse,
    CallTimeout,
    ConnectError,
    DaemonCallError,
    LibraryError,
    TransportError,
)
from .commands import COMMANDS_BY_NAME, PROG
from .completion import completion_script
from .parser import (
    EXIT_DAEMON_ERROR,
    EXIT_LIBRARY_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_parser,
)
from .render import parse_json_request, render, to_json


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
        conn = Client(address, timeout=limit, connect_timeout=limit)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        with conn:
            answer = conn.call(method, request)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except ConnectError as exc:
        _error(*(f"cannot connect to the daemon at {a}: {r}" for a, r in exc.attempts))
        _hint(_start_hint([a for a, _ in exc.attempts]))
        return EXIT_UNREACHABLE
    except CallTimeout as exc:
        _error(f"{exc} (see --timeout)")
        return EXIT_TIMEOUT
    except BadResponse as exc:
        _error(f"the peer at {exc.address} does not speak the mytimerd protocol: {exc.reason}")
        return EXIT_UNREACHABLE
    except TransportError as exc:
        _error(f"lost the connection to the daemon at {exc.address}: {exc.reason}")
        _hint(
            "hint: the daemon may have stopped; see 'systemctl status mytimerd' "
            "or its log ('journalctl -u mytimerd')."
        )
        return EXIT_UNREACHABLE
    except DaemonCallError as exc:
        _error(str(exc))
        return EXIT_DAEMON_ERROR
    except LibraryError as exc:
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
