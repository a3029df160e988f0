"""``mytimerd``: the command line, logging, sd_notify and the main loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from .. import __version__
from ..protocol import errors, schema
from ..protocol.address import (
    DEFAULT_TCP_PORT,
    Address,
    TcpAddress,
    UnixAddress,
    default_unix_path,
    parse_port,
)
from ..protocol.limits import Limits
from . import activation
from .library import BUNDLED_LIBRARY, Library, LibraryLoadError
from .server import Server

log = logging.getLogger("mytimerd")

#: Environment variable naming the library when --library is not given.
LIBRARY_ENV = "MYTIMERD_LIBRARY"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOCKETS = 3
EXIT_LIBRARY = 4

EPILOG = f"""\
sockets:
  Started by systemd (socket activation), mytimerd serves every stream socket
  it is handed (unix or TCP, IPv4 or IPv6) and never unlinks them. Started by
  hand it binds --unix and --tcp itself (each repeatable); with neither, it
  binds {default_unix_path()} (/run/mytimerd.sock as root,
  $XDG_RUNTIME_DIR/mytimerd.sock otherwise). It replaces a stale socket file
  but refuses one that another server is listening on.

methods:
{textwrap.indent(chr(10).join(f"{m.name:<20} {m.doc}" for m in schema.METHODS), "  ")}

errors (RET_ERR bodies "mytimerd.<Name>: <message>"; library errors pass through):
{textwrap.indent(chr(10).join(f"{n:<20} {d}" for n, d in errors.CATALOGUE.items()), "  ")}

exit status:
  0 stopped cleanly, 2 usage error, 3 cannot serve the sockets,
  4 cannot load the library or create its context.

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (options for limits come from the Limits table)."""
    p = argparse.ArgumentParser(
        prog="mytimerd",
        description="Serve libmy_timer's CBOR ABI on unix and TCP sockets, "
        "one long-lived library context for all clients.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument("--name", default="mytimerd", help="the timer's name (default: %(default)s)")
    p.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help=f"load this ABI-compatible libmy_timer instead of the bundled one "
        f"(also ${LIBRARY_ENV}; either symbol generation)",
    )
    p.add_argument(
        "--submit",
        choices=["auto", "thread", "direct"],
        default="auto",
        help="how calls reach the library: 'thread' makes them from a dedicated thread, so "
        "a library that blocks its caller (the real Nim build can) cannot stall the daemon; "
        "'direct' makes them from the event loop, one thread hand-off less per call, for "
        "libraries whose calls never block; 'auto': direct for the bundled library, thread "
        "for any other (default: %(default)s)",
    )
    p.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="uvloop (libuv, about twice as fast per call) or the standard library's "
        "asyncio loop (default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    defaults = Limits()
    for f in fields(Limits):
        kind = int if f.type in ("int", int) else float
        p.add_argument(
            f.metadata["option"],
            dest=f.name,
            type=_positive(kind),
            metavar=f.metadata["unit"].upper(),
            default=getattr(defaults, f.name),
            help=f"{f.metadata['doc']} (default: %(default)s)",
        )
    return p


def _addresses(args: argparse.Namespace) -> list[Address]:
    out: list[Address] = [UnixAddress(path) for path in args.unix]
    for host, port in args.tcp:
        out.append(TcpAddress(host, parse_port(port)))
    return out


def setup_logging(level: str) -> None:
    """Structured journald logging when stderr is the journal, else stderr."""
    handler: logging.Handler
    if _stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="mytimerd")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("mytimerd[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return bool(ino) and f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class Notifier:
    """sd_notify, a no-op when not run by systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if message.startswith("STATUS="):
            if message == self._last_status:
                return
            self._last_status = message
        from systemd import daemon  # type: ignore[attr-defined]

        try:
            daemon.notify(message)
        except OSError as exc:  # the socket went away: stop trying
            log.warning("sd_notify failed (%s); no further notifications", exc)
            self.enabled = False


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec= for this process, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def _raise_fd_limit() -> None:
    # Every connection is a descriptor; systemd's default soft limit (1024)
    # is far below --max-connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(
    args: argparse.Namespace, listeners: list[activation.Listener], library: Library
) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    notify = Notifier()
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    server = Server(library, limits, args.name, notify)
    await server.start(listeners)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = ", ".join(f"{x.address} ({x.name})" for x in listeners)
    log.info(
        "ready: serving %s with %s (%s, %s calls), timer %r",
        where,
        library.path,
        server.library_version,
        "direct" if library.direct else "threaded",
        args.name,
        extra={"LISTENERS": where, "LIBRARY": library.path},
    )
    notify("READY=1")
    notify(f"STATUS=Ready: {where}")
    watchdog = watchdog_interval()
    last_ping = 0.0
    was_healthy = True
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, watchdog or 1.0))
        healthy, why = server.health()
        if healthy != was_healthy:
            (log.info if healthy else log.error)(
                "library %s",
                "healthy again" if healthy else why,
                extra={"LIBRARY_HEALTHY": int(healthy), "LIBRARY_STATUS": why},
            )
            was_healthy = healthy
        notify(f"STATUS={server.status_line(healthy, why)}")
        now = loop.time()
        if watchdog is not None and healthy and now - last_ping >= watchdog:
            notify("WATCHDOG=1")
            last_ping = now
    notify("STOPPING=1")
    in_flight, connections = len(server.pending), len(server.connections)
    log.info(
        "stopping: %d calls in flight, %d connections",
        in_flight,
        connections,
        extra={"IN_FLIGHT": in_flight, "CONNECTIONS": connections},
    )
    await server.drain()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mytimerd`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        addresses = _addresses(args)
    except ValueError as exc:
        parser.error(str(exc))
    _raise_fd_limit()
    try:
        listeners = activation.from_systemd()
        if listeners is None:
            listeners = activation.bind(addresses or [UnixAddress(str(default_unix_path()))])
        elif addresses:
            log.warning(
                "socket activation: ignoring --unix/--tcp, serving the sockets systemd passed"
            )
    except activation.ActivationError as exc:
        log.error("%s", exc)
        return EXIT_SOCKETS
    library_path = Path(args.library or os.environ.get(LIBRARY_ENV) or BUNDLED_LIBRARY)
    direct = args.submit == "direct" or (
        args.submit == "auto" and library_path.resolve() == BUNDLED_LIBRARY
    )
    try:
        library = Library(library_path, args.name, args.probe_timeout, direct)
    except LibraryLoadError as exc:
        log.error("cannot start the library: %s", exc)
        for listener in listeners:
            listener.close()
        return EXIT_LIBRARY
    try:
        if args.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(args, listeners, library))
        else:
            asyncio.run(serve(args, listeners, library))
    finally:
        # The drain is over: a second signal must not interrupt the teardown,
        # which is bounded by its own timeout.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for listener in listeners:
            listener.close()
        outcome = library.shutdown(timeout=min(5.0, args.drain_timeout))
        log.info("library context %s; exiting", outcome, extra={"LIBRARY_CONTEXT": outcome})
    return EXIT_OK
