"""``mytimerd``'s entry point: the command line builds a :class:`Config`, then
the sockets, the library and the server start, run until a signal, and drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import grp
import logging
import os
import pwd
import signal
import ssl
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from .. import __version__
from ..protocol import cddl, errors, interfaces
from ..protocol.address import (
    DEFAULT_TCP_PORT,
    Address,
    TcpAddress,
    UnixAddress,
    default_unix_path,
    parse_port,
)
from ..protocol.cddl import CDDLError
from ..protocol.limits import FIELDS, MAX_LANE_SLOTS, MAX_READ_AHEAD_WAIT, Limits
from ..protocol.record import replace
from ..protocol.schema import Interface
from . import activation, handover
from .config import (
    DEFAULT_NAME,
    Config,
    EventLoop,
    LogLevel,
    SubmitMode,
    constructor_request,
    read_config_file,
    timer_name,
)
from .host import BUNDLED_LIBRARIES, BUNDLED_LIBRARY, LibraryHost
from .library import DescriptionMismatch, LibraryLoadError
from .server import Server
from .service import LoopErrors, Notifier, raise_fd_limit, setup_logging, watchdog_interval
from .tls import TLSConfigError, is_loopback
from .tls import server_context as tls_context

log = logging.getLogger("mytimerd")

#: Environment variable naming the library when --library is not given.
LIBRARY_ENV = "MYTIMERD_LIBRARY"
#: Environment variable naming the description when --schema is not given
#: (with MYTIMERD_LIBRARY, what /etc/mytimerd/INSTANCE.conf sets for mytimerd@.service).
SCHEMA_ENV = "MYTIMERD_SCHEMA"

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own status for a usage error
EXIT_SOCKETS = 3
EXIT_LIBRARY = 4

EXIT_CODES = (
    (EXIT_OK, "stopped cleanly"),
    (EXIT_USAGE, "usage error"),
    (EXIT_SOCKETS, "cannot serve the sockets"),
    (EXIT_LIBRARY, "cannot load the library or create its context"),
)

EPILOG = f"""\
sockets:
  Started by systemd (socket activation), mytimerd serves every stream socket
  it is handed (unix or TCP, IPv4 or IPv6) and never unlinks them. Started by
  hand it binds --unix and --tcp itself (each repeatable); with neither, it
  binds {default_unix_path()} (/run/mytimerd.sock as root,
  $XDG_RUNTIME_DIR/mytimerd.sock otherwise). It replaces a stale socket file
  but refuses one that another server is listening on.

methods:
{textwrap.indent(chr(10).join(f"{m.name:<20} {m.doc}" for m in interfaces.METHODS), "  ")}

errors (RET_ERR bodies "mytimerd.<Name>: <message>"; library errors pass through):
{textwrap.indent(chr(10).join(f"{n:<20} {d}" for n, d in errors.CATALOGUE.items()), "  ")}

exit status:
{textwrap.indent(chr(10).join(f"{code:<3}{what}" for code, what in EXIT_CODES), "  ")}

examples:
  mytimerd                                  # default unix socket
  mytimerd --unix /tmp/t.sock --tcp 127.0.0.1 {DEFAULT_TCP_PORT}
  mytimerd --library ./libmy_timer.so --name demo --log-level debug
  systemd-socket-activate -l /tmp/t.sock mytimerd
"""


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, as wide as the terminal, found without importing shutil.

    argparse makes a formatter for every option it adds (to check its
    metavar), and the default width comes from shutil.get_terminal_size:
    importing shutil (with bz2 and lzma) cost every start a few milliseconds
    for help it seldom prints. The width is found as shutil finds it."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # argparse's margin
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns or 80


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (options for limits come from the Limits table)."""
    p = argparse.ArgumentParser(
        prog="mytimerd",
        description="Serve a nim-ffi library's CBOR ABI (by default the bundled "
        "libmy_timer's) on unix and TCP sockets, one long-lived library context for all "
        "clients.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mytimerd {__version__}")
    p.add_argument(
        "--unix",
        metavar="PATH",
        action="append",
        default=[],
        help="listen on this unix socket (repeatable)",
    )
    p.add_argument(
        "--tcp",
        metavar=("HOST", "PORT"),
        nargs=2,
        action="append",
        default=[],
        help="listen on this TCP address (repeatable); HOST may be a name, IPv4 or IPv6",
    )
    access = p.add_argument_group(
        "who may call (unix sockets)",
        "A unix socket mytimerd binds gets --socket-mode and --socket-group whatever the "
        "umask. --allow-user/--allow-group check every unix peer (SO_PEERCRED), on "
        "sockets bound or handed over by systemd: others are answered "
        "mytimerd.PermissionDenied once and closed; root and the daemon's own user always "
        "pass. Without them, whoever may open the socket may call.",
    )
    access.add_argument(
        "--socket-mode",
        metavar="MODE",
        type=_octal_mode,
        default=0o660,
        help="octal mode of self-bound unix sockets (default: 0660)",
    )
    access.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="group of self-bound unix sockets (name or gid; default: the daemon's)",
    )
    access.add_argument(
        "--allow-user",
        metavar="USER",
        action="append",
        default=[],
        help="admit this user on unix sockets (name or uid; repeatable)",
    )
    access.add_argument(
        "--allow-group",
        metavar="GROUP",
        action="append",
        default=[],
        help="admit members of this group on unix sockets (name or gid; repeatable)",
    )
    tls = p.add_argument_group(
        "TLS (TCP listeners)",
        "With --tls-cert and --tls-key every TCP listener, bound or handed over by systemd, "
        "speaks TLS 1.2 or newer; unix listeners stay plain. Under systemd the files can "
        "come from LoadCredential= (Environment=MYTIMERD_TLS_CERT=%d/server.pem ...: %d "
        "is the credentials directory). A plaintext TCP listener on a non-loopback "
        "address is logged as a warning at start.",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        type=Path,
        default=_env_path("MYTIMERD_TLS_CERT"),
        help="server certificate (PEM; also $MYTIMERD_TLS_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        type=Path,
        default=_env_path("MYTIMERD_TLS_KEY"),
        help="its private key (PEM; also $MYTIMERD_TLS_KEY)",
    )
    tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        type=Path,
        default=_env_path("MYTIMERD_TLS_CLIENT_CA"),
        help="require client certificates signed by this CA (mutual TLS; also "
        "$MYTIMERD_TLS_CLIENT_CA)",
    )
    tls.add_argument(
        "--tls-allow",
        metavar="NAME",
        action="append",
        default=[],
        help="admit only clients whose certificate names NAME (CN or DNS subjectAltName; "
        "repeatable; needs --tls-client-ca)",
    )
    served = p.add_argument_group(
        "the library",
        "Any nim-ffi CBOR-ABI library, of either symbol generation: --library and its "
        "description (--schema). Without them, the bundled libmy_timer. Its context is "
        "created with the request its description gives the constructor (<name>_create), "
        "holding the --config-file values, then each --config, then --name; it is "
        "checked like any request.",
    )
    served.add_argument(
        "--name",
        help=f"the timer's name: libmy_timer's shorthand for --config name=NAME "
        f"(default: {DEFAULT_NAME})",
    )
    served.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help=f"load this nim-ffi CBOR-ABI library instead of the bundled libmy_timer "
        f"(also ${LIBRARY_ENV}; either symbol generation)",
    )
    served.add_argument(
        "--schema",
        metavar="FILE",
        type=Path,
        default=_env_path(SCHEMA_ENV),
        help="the library's interface description (the CDDL nim-ffi generates; a regular "
        f"UTF-8 file of at most {cddl.MAX_BYTES} bytes; also ${SCHEMA_ENV}); default: "
        "libmy_timer's, bundled for the library's symbol generation (0.2 with _cbor "
        "names, 0.3 without). Its proc kinds, (ffi) method or (ffiStatic) static call, are "
        "trusted like its types: one the 0.2 generation cannot have (a static call) or that "
        "contradicts the bundled description of the same library and generation is "
        "refused, but a wrong kind for any other library cannot be detected (its symbol "
        "table does not show it) and crashes the daemon at the first call",
    )
    served.add_argument(
        "--library-name",
        metavar="NAME",
        help="the library's name, the prefix of its symbols (NAME_create, ...); default: "
        f"the one its description's procs share ({interfaces.DEFAULT_LIBRARY} without "
        "--schema)",
    )
    served.add_argument(
        "--config",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a value of the constructor's request (repeatable): KEY a dotted path "
        "(config.prefix, or prefix for short); VALUE as is for text, JSON otherwise",
    )
    served.add_argument(
        "--config-file",
        metavar="FILE",
        type=Path,
        help='the constructor\'s request as a TOML table ([config] prefix = "demo"), '
        "or JSON if FILE ends in .json",
    )
    served.add_argument(
        "--probe-method",
        metavar="METHOD",
        help="the cheap library method the liveness probe calls with {} (default: "
        f"the first of {', '.join(interfaces.PROBE_METHODS)} the description has)",
    )
    p.add_argument(
        "--submit",
        choices=get_args(SubmitMode),
        default="auto",
        help="how calls reach the library: 'thread' makes them from a dedicated thread, so "
        "a library that blocks its caller (the real Nim build can) cannot stall the daemon; "
        "'direct' makes them from the event loop, one thread hand-off less per call, for "
        "libraries whose calls never block; 'auto': direct for the bundled library, thread "
        "for any other (default: %(default)s)",
    )
    p.add_argument(
        "--event-loop",
        choices=get_args(EventLoop),
        default="uvloop",
        help="uvloop (libuv, about twice as fast per call) or the standard library's "
        "asyncio loop (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=get_args(LogLevel),
        help="(default: %(default)s)",
    )
    defaults = Limits()
    for f in FIELDS:
        kind = int if f.type == "int" else float
        p.add_argument(
            f.option,
            dest=f.name,
            type=_non_negative(kind) if f.zero_ok else _positive(kind),
            metavar=f.unit.upper(),
            default=getattr(defaults, f.name),
            help=f"{f.doc} (default: %(default)s)",
        )
    return p


def _addresses(args: argparse.Namespace) -> tuple[Address, ...]:
    out: list[Address] = [UnixAddress(path) for path in args.unix]
    for host, port in args.tcp:
        out.append(TcpAddress(host, parse_port(port)))
    return tuple(out)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an octal mode such as 0660, got {text!r}"
        ) from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"mode {text} is out of range 0000..0777")
    return mode


def _id(name: str, kind: str) -> int:
    """A user's uid or a group's gid, by name or number."""
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"no {kind} {name!r}") from None


def _library_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[Interface, dict[str, Any], str]:
    """The description the options are checked against (--schema's, or the
    bundled one), the constructor's request and the probe method; a usage
    error (exit 2) for anything wrong with them."""
    name = args.library_name
    if name is not None and not cddl.is_name(name):
        parser.error(
            f"--library-name {name!r}: expected a symbol prefix (a letter, then letters, "
            f"digits or _; at most {cddl.MAX_NAME})"
        )
    try:
        if args.schema is not None:
            described = interfaces.load(args.schema, name)
        else:
            # Each bundled library's generations share their constructor
            # and probe (a test checks), so 0.2's stands for both.
            described = interfaces.bundled("0.2", name or interfaces.DEFAULT_LIBRARY)
    except (OSError, CDDLError) as exc:
        parser.error(f"--schema {args.schema}: {exc}")
    except LookupError as exc:
        parser.error(f"--library-name {name}: {exc}; give its description with --schema")
    try:
        values = read_config_file(args.config_file) if args.config_file else {}
    except (OSError, ValueError) as exc:
        parser.error(f"--config-file {args.config_file}: {exc}")
    try:
        constructor = constructor_request(described.constructor, values, args.config, args.name)
    except ValueError as exc:
        parser.error(f"the constructor's request ({described.name}_create): {exc}")
    try:
        probe = interfaces.probe_method(described, args.probe_method)
    except LookupError as exc:
        parser.error(f"--probe-method: {exc}")
    return described, constructor, probe


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line (and ``$MYTIMERD_LIBRARY``, ``$MYTIMERD_SCHEMA``) into a
    :class:`Config`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        addresses = _addresses(args)
        socket_group = None if args.socket_group is None else _id(args.socket_group, "group")
        allow_uids = frozenset(_id(u, "user") for u in args.allow_user)
        allow_gids = frozenset(_id(g, "group") for g in args.allow_group)
    except ValueError as exc:
        parser.error(str(exc))
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.tls_allow and args.tls_client_ca is None:
        parser.error("--tls-allow needs --tls-client-ca (the names come from client certificates)")
    if args.lane_slots > MAX_LANE_SLOTS:
        parser.error(f"--lane-slots {args.lane_slots}: at most {MAX_LANE_SLOTS}")
    if args.read_ahead_wait > MAX_READ_AHEAD_WAIT:
        parser.error(f"--read-ahead-wait {args.read_ahead_wait}: at most {MAX_READ_AHEAD_WAIT}")
    described, constructor, probe = _library_options(parser, args)
    library = args.library or os.environ.get(LIBRARY_ENV)
    return Config(
        name=timer_name(constructor, described.constructor),
        library=Path(library) if library else None,
        schema=args.schema,
        library_name=described.name,
        constructor=constructor,
        probe_method=probe,
        submit=args.submit,
        event_loop=args.event_loop,
        log_level=args.log_level,
        addresses=addresses,
        limits=Limits(**{f.name: getattr(args, f.name) for f in FIELDS}),
        watchdog=watchdog_interval(),
        socket_mode=args.socket_mode,
        socket_group=socket_group,
        allow_uids=allow_uids,
        allow_gids=allow_gids,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        tls_allow=frozenset(args.tls_allow),
    )


async def serve(
    config: Config,
    listeners: list[activation.Listener],
    library: LibraryHost,
    interface: Interface,
    tls: ssl.SSLContext | None,
    stored: list[tuple[int, str]],
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (or hand over; see
    :func:`fd_store`). ``stored``: what a previous instance handed over."""
    notify = Notifier()
    server = Server(config, library, interface, notify, tls=tls)
    await server.start(listeners, stored)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(LoopErrors())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP is what operators send to reload; the default action would kill
    # the daemon without a drain. Every setting comes from the command line.
    loop.add_signal_handler(
        signal.SIGHUP,
        log.info,
        "SIGHUP: nothing to reload (settings come from the command line); still serving",
    )
    where = ", ".join(f"{x.address} ({x.name})" for x in listeners)
    log.info(
        "ready: serving %s with %s (%s, nim-ffi %s, %s calls, interface %s)%s",
        where,
        library.path,
        server.library_version,
        library.generation,
        "direct" if library.direct else "threaded",
        interface.source,
        "" if config.name is None else f", timer {config.name!r}",
        extra={"LISTENERS": where, "LIBRARY": library.path, "SCHEMA": interface.source},
    )
    for name in sorted(library.unavailable):
        log.warning(
            "the library lacks %s, which its description lists: calls are answered "
            "MethodUnavailable",
            name,
            extra={"METHOD": name},
        )
    for name in sorted(library.unheard):
        log.warning("the library does not deliver event %s", name, extra={"EVENT": name})
    _collect_garbage()
    notify("READY=1")
    notify(f"STATUS=Ready: {where}")
    await stop.wait()
    grace = config.limits.drain_grace
    if grace > 0:
        # Still serving; health checks see accepting: false and take us out.
        stop.clear()
        server.announce_drain()
        log.info(
            "draining in %g s (--drain-grace): still serving, ping reports accepting: false",
            grace,
        )
        notify(f"STATUS=Draining: serving for {grace:g} s more, then stopping")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), grace)  # a second signal cuts it short
    notify("STOPPING=1")
    in_flight, connections = len(server.pending), len(server.connections)
    log.info(
        "stopping: %d calls in flight, %d connections",
        in_flight,
        connections,
        extra={"IN_FLIGHT": in_flight, "CONNECTIONS": connections},
    )
    await server.shutdown(fd_store(config, listeners, notify))
    closed = server.stats.closed
    log.info(
        "stopped: %d calls answered since start; connections closed: %s",
        server.stats.answered(),
        ", ".join(f"{n} {reason}" for reason, n in sorted(closed.items())) or "none",
        extra={"ANSWERED": server.stats.answered()},
    )


def fd_store(
    config: Config, listeners: list[activation.Listener], notify: Notifier
) -> handover.Store | None:
    """systemd's file descriptor store, when connections can go there: run
    by systemd, with sockets it keeps open for the next instance, and room
    (systemd 254 and later say how much in $FDSTORE; before, --fd-store-max)."""
    capacity = config.limits.fd_store_max
    with contextlib.suppress(ValueError):
        capacity = int(os.environ.get("FDSTORE", capacity))
    if not notify.enabled or capacity < handover.STORE_NEEDS:
        return None
    if all(listener.name == activation.BOUND for listener in listeners):
        return None  # a socket this process bound dies with it: nobody would resume
    return handover.Store(notify.with_fds)


def _collect_garbage() -> None:
    """Turn the garbage collector back on (see :func:`main`), the objects made
    so far frozen: else its first pass, during the first call, would go through
    all of them (they are the modules, classes and functions, which stay)."""
    gc.freeze()
    gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    """The daemon (the ``mytimerd`` command runs it through :mod:`mytimerd.start`)."""
    # No garbage collection until serving (serve() turns it back on): during
    # the start (importing uvloop above all) it would run some 30 times,
    # about 3 ms, and free next to nothing. mytimerd.start turns it off
    # before the modules load.
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    config = config_from_args(argv)
    setup_logging(config.log_level)
    config = replace(config, fd_limit=raise_fd_limit())
    try:
        tls = tls_context(config)
    except TLSConfigError as exc:
        log.error("%s", exc)
        return EXIT_SOCKETS
    stored: list[tuple[int, str]] = []
    try:
        handed = activation.from_systemd()
        listeners: list[activation.Listener] = []
        if handed is not None:
            listeners, stored = handed
        if not listeners:
            listeners = activation.bind(
                list(config.addresses) or [UnixAddress(str(default_unix_path()))],
                config.socket_mode,
                config.socket_group,
            )
        elif config.addresses:
            log.warning(
                "socket activation: ignoring --unix/--tcp, serving the sockets systemd passed"
            )
    except activation.ActivationError as exc:
        log.error("%s", exc)
        return EXIT_SOCKETS
    if tls is None:
        for listener in listeners:
            if listener.tcp_host is not None and not is_loopback(listener.tcp_host):
                log.warning(
                    "%s is plaintext on a non-loopback address: anyone who reaches it can "
                    "call the library; use --tls-cert/--tls-key (and --tls-client-ca)",
                    listener.address,
                    extra={"LISTENER": listener.address},
                )
    library_path = config.library or BUNDLED_LIBRARY
    direct = config.submit == "direct" or (
        config.submit == "auto" and library_path.resolve() in BUNDLED_LIBRARIES
    )
    try:
        library = LibraryHost(library_path, config.library_name)
        interface = (
            interfaces.load(config.schema, config.library_name)
            if config.schema
            else interfaces.bundled(library.generation, config.library_name)
        )
        library.start(
            interface,
            config.constructor,
            config.probe_method,
            config.limits.create_timeout,
            direct,
        )
    except DescriptionMismatch as exc:
        log.error("the description contradicts the library: %s", exc)
        for listener in listeners:
            listener.close()
        return EXIT_USAGE
    except LibraryLoadError as exc:
        log.error("cannot start the library: %s", exc)
        for listener in listeners:
            listener.close()
        return EXIT_LIBRARY
    try:
        if config.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(config, listeners, library, interface, tls, stored))
        else:
            asyncio.run(serve(config, listeners, library, interface, tls, stored))
    finally:
        # The drain is over: a second signal must not interrupt the teardown,
        # which is bounded by its own timeout.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for listener in listeners:
            listener.close()
        outcome = library.shutdown(timeout=config.limits.teardown_timeout)
        log.info("library context %s; exiting", outcome, extra={"LIBRARY_CONTEXT": outcome})
    return EXIT_OK
