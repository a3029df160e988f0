"""The mytimerctl entry point: parse the command line, make the call, print the answer.

Whatever the user or the system does, mytimerctl ends with an exit status and
a one-line reason, never a traceback: a closed or full standard output, a
closed standard input, a reader that leaves the pipe early (``| head -1``,
exit 141 as for other programs), bytes that are not UTF-8, Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import os
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO

import cbor2

from ...protocol.address import ADDRESS_ENV, Address, TcpAddress, UnixAddress, parse_port
from ..blocking import Client
from ..common import decode_body, encode_payload, os_reason, resolve_addresses
from ..errors import (
    BadResponse,
    CallTimeout,
    ConnectError,
    DaemonCallError,
    LibraryError,
    MytimerError,
    TLSError,
    TransportError,
)
from ..events import SUBSCRIBE, Gap
from ..tls import speaks_tls
from . import remote
from .commands import PROG
from .completion import COMPLETE, GLOBAL_FLAGS, command_words, completion_script
from .hints import (
    permission_denied_hint,
    permission_hint,
    plaintext_on_tls_hint,
    start_hint,
    tls_hint,
)
from .parser import (
    EXIT_BROKEN_PIPE,
    EXIT_DAEMON_ERROR,
    EXIT_IO,
    EXIT_LIBRARY_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_parser,
    front,
    utf8,
)
from .remote import TIMER, Table
from .render import escape_controls, parse_json_request, render, render_event, to_json

#: The daemon's answers that a stale cached description can explain: after
#: one, the description is fetched again and, if it changed, the call is sent
#: once more (safe: the daemon refused the request, the library never saw it).
STALE_ERRORS: Final = ("UnknownMethod", "InvalidParameter")


class _OutputFailed(Exception):
    """Writing to standard output failed (``error`` says why)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _InputFailed(Exception):
    """Standard input could not be read; the message says why."""


def _error(*messages: str) -> None:
    """Print ``mytimerctl: MESSAGE`` lines on stderr, control characters escaped.

    Messages carry the daemon's and the library's text. Nothing is printed if
    stderr is closed or fails: the exit status still tells.
    """
    for message in messages:
        _stderr(f"{PROG}: {escape_controls(message)}")


def _hint(text: str) -> None:
    _stderr(text)


def _stderr(line: str) -> None:
    if sys.stderr is not None:  # print(file=None) would write to stdout
        with contextlib.suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)


def _write(text: str) -> None:
    """Write ``text`` to standard output, as UTF-8, and flush it; _OutputFailed if that fails.

    UTF-8 whatever the locale: JSON output is documented as UTF-8, and a
    legacy locale would fail on text it cannot encode.
    """
    stream = sys.stdout
    try:
        stream.flush()  # what argparse wrote through the text layer goes first
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(text)
            stream.flush()
        else:
            buffer.write(text.encode("utf-8"))
            buffer.flush()
    except OSError as exc:
        raise _OutputFailed(exc) from None


def _discard_stdout() -> None:
    """Point standard output at /dev/null after a failed write.

    Python flushes sys.stdout once more on exit: what is still buffered would
    fail again and print "Exception ignored ..." with exit status 120.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _explicit_addresses(
    parser: argparse.ArgumentParser, ns: argparse.Namespace
) -> list[Address] | None:
    """The addresses --unix or --tcp give (each may be repeated: fail-over, in order)."""
    try:
        return _given_addresses(ns)
    except ValueError as exc:
        parser.error(str(exc))


def _given_addresses(ns: argparse.Namespace) -> list[Address] | None:
    """The addresses --unix or --tcp give; ValueError (the usage error) if they cannot be."""
    if ns.unix is not None and ns.tcp is not None:
        raise ValueError("give either --unix or --tcp, not both")
    if ns.unix is not None:
        # A path need not be UTF-8: it goes to the kernel as bytes.
        return [UnixAddress(path) for path in ns.unix]
    if ns.tcp is not None:
        addresses: list[Address] = []
        for host, port in ns.tcp:
            try:
                addresses.append(TcpAddress(utf8(host, "the host").strip("[]"), parse_port(port)))
            except ValueError as exc:
                raise ValueError(f"--tcp: {exc}") from None
        return addresses
    return None


def _tls_context(ns: argparse.Namespace, addresses: Sequence[Address]) -> ssl.SSLContext | None:
    """The TLS context the options ask for, or None for plaintext; ValueError if they cannot be.

    TLS is spoken to a ``tls:`` address, or to a TCP address given with
    ``--tls`` or any ``--tls-*`` option; a unix socket is never TLS.
    """
    options = {
        "--tls": ns.tls,
        "--tls-ca": ns.tls_ca,
        "--tls-cert": ns.tls_cert,
        "--tls-key": ns.tls_key,
        "--tls-server-name": ns.tls_server_name,
    }
    given = [flag for flag, value in options.items() if value not in (None, False)]
    if given and any(isinstance(a, UnixAddress) for a in addresses):
        where = ", ".join(str(a) for a in addresses)
        raise ValueError(
            f"{given[0]} needs a TCP address (--tcp HOST PORT, or "
            f"${ADDRESS_ENV}=tls:HOST:PORT); {where} is a unix socket, which is never TLS"
        )
    if ns.tls_key is not None and ns.tls_cert is None:
        raise ValueError("--tls-key goes with --tls-cert (the client certificate)")
    if not given and not any(isinstance(a, TcpAddress) and a.tls for a in addresses):
        return None
    try:
        context = ssl.create_default_context(cafile=ns.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-ca {ns.tls_ca}: cannot load it: {_ssl_reason(exc)}") from None
    if ns.tls_cert is not None:
        try:
            context.load_cert_chain(ns.tls_cert, ns.tls_key)
        except (OSError, ssl.SSLError) as exc:
            key = f" with --tls-key {ns.tls_key}" if ns.tls_key else ""
            raise ValueError(
                f"--tls-cert {ns.tls_cert}{key}: cannot load it: {_ssl_reason(exc)}"
            ) from None
    return context


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    return os_reason(exc)


def _read_stdin(stdin: TextIO | None) -> str:
    """The request text on standard input: _InputFailed if it is closed or unreadable."""
    if stdin is None:
        raise _InputFailed(
            "standard input is closed: pipe the request in, or give it as the JSON argument"
        )
    try:
        text = stdin.read()
    except UnicodeDecodeError:
        raise ValueError("the request on standard input is not valid UTF-8") from None
    except OSError as exc:
        raise _InputFailed(
            f"cannot read the request from standard input: {os_reason(exc)}"
        ) from None
    return utf8(text, "the request on standard input")


def _request(ns: argparse.Namespace, stdin: TextIO | None, table: Table = TIMER) -> tuple[str, Any]:
    """The method and request the parsed command line asks for."""
    if ns.command == "call":
        text = _read_stdin(stdin) if ns.request == "-" else ns.request
        return ns.method, parse_json_request(text)
    command = table.by_name[ns.command_name]
    return command.method.name, command.request(ns)


def _encode(request: Any) -> bytes:
    """The request's CBOR payload, before connecting: what CBOR cannot hold is a usage error.

    A JSON escape such as ``\\udcff`` gives text with no UTF-8 form.
    """
    try:
        return encode_payload(request)
    except (ValueError, TypeError, cbor2.CBOREncodeError) as exc:
        raise ValueError(f"the request cannot be sent as CBOR: {exc}") from None


def _output(ns: argparse.Namespace, method: str, answer: Any) -> str:
    """The answer as the command line asked for it to be printed."""
    form = getattr(ns, "format", "human")
    if form != "human":
        from ..metrics import exposition  # prometheus_client: loaded only when asked for

        return exposition(answer if isinstance(answer, Mapping) else {}, form)
    if ns.json:
        return json.dumps(to_json(answer), indent=2, ensure_ascii=False) + "\n"
    return render(method, answer) + "\n"


def _watch(conn: Client, events: Sequence[str] | None, as_json: bool, reconnect: bool) -> int:
    """``watch``: print each event as it comes, until interrupted or cut off.

    Waiting for events has no time limit; the client's timeout bounds the
    subscription's answer. Each line is written and flushed at once. When
    the connection ends (``reconnect``), the subscription comes back by
    itself and a line on stderr says when the gap began and ended.
    """
    with conn.subscribe(events, timeout=None, reconnect=reconnect) as subscription:
        for event in subscription:
            if isinstance(event, Gap):
                _error(_gap_line(event, subscription.address))
                continue
            if as_json:
                value = decode_body(event.raw, subscription.address)
                line = json.dumps(to_json(value), ensure_ascii=False)
            else:
                line = render_event(event.name, event.payload)
            _write(line + "\n")
    return EXIT_OK  # not reached: a subscription ends with an exception


def _gap_line(gap: Gap, address: Address | None) -> str:
    """What watch says on stderr after it subscribed again."""

    def when(seconds: float) -> str:
        stamp = datetime.datetime.fromtimestamp(seconds).astimezone()
        return stamp.isoformat(timespec="milliseconds")

    return (
        f"watch: subscribed again to the daemon at {address}; events fired from "
        f"{when(gap.began)} to {when(gap.ended)} ({gap.ended - gap.began:.1f} s) were "
        f"missed (the connection ended: {gap.reason})"
    )


def _plaintext_on_tls(address: Address | None, timeout: float | None) -> bool:
    """Whether a plaintext connection to ``address`` failed because the port speaks TLS.

    The daemon hangs up on a plaintext client on its TLS port without a
    word; a TLS handshake tells such a port from a broken daemon. If it
    does, say so (and how to speak TLS) and return True.
    """
    if not isinstance(address, TcpAddress) or address.tls:
        return False
    if not speaks_tls(address, timeout or None):
        return False
    _error(
        f"the daemon at {address} hung up without an answer: that port speaks TLS, "
        "and this connection was plaintext"
    )
    _hint(plaintext_on_tls_hint(address))
    return True


def _fetch_description(ns: argparse.Namespace, addresses: Sequence[Address]) -> dict[str, Any]:
    """The describe answer of the daemon at ``addresses`` (MytimerError, ValueError if none)."""
    conn = Client(
        list(addresses),
        timeout=ns.timeout,
        connect_timeout=ns.timeout,
        ssl=_tls_context(ns, addresses),
        server_hostname=ns.tls_server_name,
    )
    with conn:
        answer = conn.call("mytimerd.describe")
    if not isinstance(answer, dict):
        raise ValueError("its mytimerd.describe answer is not a map")
    return answer


def _table(args: Sequence[str]) -> tuple[Table, str | None]:
    """The command table for ``args``, and a note for stderr if it could not be the daemon's.

    libmy_timer's table needs no daemon. A cached description of the
    daemon at the address is used if it has the command word; otherwise an
    unknown command word, or ``--help`` with an address given (--unix, --tcp
    or $MYTIMER_ADDRESS), asks the daemon for its describe (and caches it).
    """
    parsed = front(args)
    if parsed is None:
        return TIMER, None
    ns, word = parsed
    try:
        addresses = resolve_addresses(_given_addresses(ns))
    except ValueError:
        return TIMER, None
    answer = remote.load(addresses)
    if answer is not None:
        table = remote.table_of(answer, cached=True)
        if word is None or table.knows(word):
            return table, None
    elif word is not None and TIMER.knows(word):
        return TIMER, None
    elif word is None:
        asked = ns.unix is not None or ns.tcp is not None or ADDRESS_ENV in os.environ
        if not asked or not any(a in ("-h", "--help") for a in args):
            return TIMER, None
    where = ", ".join(str(a) for a in addresses)
    try:
        answer = _fetch_description(ns, addresses)
    except (MytimerError, ValueError, OSError) as exc:
        what = "its commands" if word is None else f"its commands ({word!r} is not libmy_timer's)"
        return TIMER, f"could not ask the daemon at {where} for {what}: {exc}"
    remote.store(addresses, answer)
    return remote.table_of(answer, cached=False), None


def _parser(table: Table) -> argparse.ArgumentParser:
    return build_parser(table.commands, None if table.timer else table.library)


def _refreshed(
    table: Table, exc: DaemonCallError, conn: Client, addresses: Sequence[Address]
) -> Table | None:
    """The daemon's description fetched again after ``exc``, if the cached one was stale."""
    if not table.cached or exc.name not in STALE_ERRORS:
        return None
    try:
        answer = conn.call("mytimerd.describe")
    except MytimerError:
        return None
    if not isinstance(answer, dict):
        return None
    fresh = remote.table_of(answer, cached=False)
    if fresh.digest == table.digest:
        return None  # not stale: the refusal stands
    remote.store(addresses, answer)
    return fresh


def complete_words(words: Sequence[str]) -> str:
    """What the completion scripts offer after ``words`` for a library other than libmy_timer.

    One word a line, from the cache only (never the network): the served
    library's command names when no command is typed yet (those libmy_timer
    lacks), else the options of its command ``words`` name (with the global
    options), or the choices of the option being given a value. Nothing
    when the cache has no such library or command.
    """
    parsed = front(words)
    if parsed is None:
        return ""
    ns, word = parsed
    try:
        answer = remote.load(resolve_addresses(_given_addresses(ns)))
    except ValueError:
        return ""
    table = remote.table_of(answer, cached=True) if answer is not None else TIMER
    if table.timer:
        return ""
    if word is None:
        names = [n for c in table.commands for n in (c.name, *c.aliases) if not TIMER.knows(n)]
    else:
        command = table.by_name.get(word)
        if command is None:
            return ""
        last = words[-1] if words else ""
        values = {p.flag: p.choices for p in command.params if not p.positional and not p.switch}
        values.update(command.options)
        names = list(values[last]) if last in values else [*command_words(command), *GLOBAL_FLAGS]
    return "".join(f"{n}\n" for n in names)


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    """Run mytimerctl with ``argv`` (default: sys.argv[1:]); return the exit status.

    ``stdin`` is where ``call METHOD -`` reads its request (default: sys.stdin).
    """
    if sys.stdout is None:  # started with >&-: Python has no stdout to give
        _error("standard output is closed: nowhere to print (use >/dev/null to discard it)")
        return EXIT_IO
    try:
        status = _run(argv, stdin if stdin is not None else sys.stdin)
        _write("")  # flushes what argparse (--help, --version) left buffered
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except _OutputFailed as exc:
        _discard_stdout()
        if isinstance(exc.error, BrokenPipeError):
            return EXIT_BROKEN_PIPE  # the reader left (| head -1): quietly, as `yes | head` does
        _error(f"cannot write to standard output: {os_reason(exc.error)}")
        return EXIT_IO
    return status


def _parse(table: Table, args: Sequence[str]) -> argparse.Namespace | int:
    """The parsed command line, or the exit status of --help, --version or a usage error."""
    parser = _parser(table)
    try:
        ns = parser.parse_args(args)
        _explicit_addresses(parser, ns)
    except SystemExit as exc:  # argparse's way out of --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except OSError as exc:
        # Only printing fails here: --help or --version (a usage message goes to
        # stderr, where there is no telling anyway) on a full disk or broken pipe.
        raise _OutputFailed(exc) from None
    return ns


def _run(argv: Sequence[str] | None, stdin: TextIO | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [COMPLETE]:
        _write(complete_words(args[1:]))
        return EXIT_OK
    table, note = _table(args)
    ns = _parse(table, args)
    if note is not None and isinstance(ns, int):
        _error(note)  # after argparse's own message (or the help)
    if isinstance(ns, int):
        return ns
    address = _given_addresses(ns)
    if ns.command == "completion":
        _write(completion_script(ns.shell))
        return EXIT_OK
    if ns.json and getattr(ns, "format", "human") != "human":
        _error("give either --json or --format, not both")
        return EXIT_USAGE
    try:
        addresses = resolve_addresses(address)
        context = _tls_context(ns, addresses)
        method, request = _request(ns, stdin, table)
        payload = _encode(request)
        conn = Client(
            address,
            timeout=ns.timeout,
            connect_timeout=ns.timeout,
            ssl=context,
            server_hostname=ns.tls_server_name,
        )
    except _InputFailed as exc:
        _error(str(exc))
        return EXIT_IO
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        if method == SUBSCRIBE:
            return _watch(conn, request.get("events"), ns.json, not ns.no_reconnect)
        with conn:
            try:
                body = conn.call_raw(method, payload)
            except DaemonCallError as exc:
                fresh = None if ns.command == "call" else _refreshed(table, exc, conn, addresses)
                if fresh is None:
                    raise
                _error("the daemon's commands changed since they were cached: sent again")
                again = _parse(fresh, args)
                if isinstance(again, int):
                    return again
                ns = again
                method, request = _request(ns, stdin, fresh)
                body = conn.call_raw(method, _encode(request))
            answer = decode_body(body, conn.address)
    except TLSError as exc:
        _error(f"TLS with the daemon at {exc.address} failed: {exc.reason}")
        _hint(tls_hint(exc))
        return EXIT_UNREACHABLE
    except ConnectError as exc:
        _error(*(f"cannot connect to the daemon at {a}: {r}" for a, r in exc.attempts))
        denied = [
            a.path
            for (a, _), code in zip(exc.attempts, exc.errnos, strict=True)
            if isinstance(a, UnixAddress) and code == errno.EACCES
        ]
        for path in denied:
            _hint(permission_hint(path))
        # EAGAIN: a daemon is there, but its listen queue stayed full; starting one is no help.
        if not denied and errno.EAGAIN not in exc.errnos:
            _hint(start_hint([a for a, _ in exc.attempts]))
        return EXIT_UNREACHABLE
    except CallTimeout as exc:
        _error(f"{exc} (see --timeout)")
        return EXIT_TIMEOUT
    except (BadResponse, TransportError) as exc:
        if _plaintext_on_tls(exc.address, ns.timeout):
            return EXIT_UNREACHABLE
        if isinstance(exc, BadResponse):
            _error(f"the peer at {exc.address} does not speak the mytimerd protocol: {exc.reason}")
            return EXIT_UNREACHABLE
        _error(f"lost the connection to the daemon at {exc.address}: {exc.reason}")
        _hint(
            "hint: the daemon may have stopped; see 'systemctl status mytimerd' "
            "or its log ('journalctl -u mytimerd')."
        )
        return EXIT_UNREACHABLE
    except DaemonCallError as exc:
        _error(str(exc))
        if exc.name == "PermissionDenied":
            _hint(permission_denied_hint(conn.address))
        if exc.name == "SlowSubscriber":
            _hint(
                "hint: the daemon cut this watch off because it did not read the events as "
                "fast as they came (its output was not read fast enough); run it again, with "
                "its output going somewhere that keeps up (a file, or a faster reader)."
            )
        return EXIT_DAEMON_ERROR
    except LibraryError as exc:
        _error(f"library error: {exc.message}")
        return EXIT_LIBRARY_ERROR
    _write(_output(ns, method, answer))
    # Like `systemctl is-active`: scripts and health checks can test the status.
    if method == "mytimerd.ping" and isinstance(answer, Mapping) and not answer.get("healthy"):
        return EXIT_UNHEALTHY
    return EXIT_OK
