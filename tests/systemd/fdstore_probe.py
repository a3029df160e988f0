"""A probe service for systemd's file descriptor store (tests/systemd/test_fdstore_facts.py).

Run by the sandboxed systemd (tests/systemd/harness.py) as the main process
of a Type=notify service behind a unix socket unit. Standard library only,
except the ``via=sdpy`` variant of ``hold``, which checks that
systemd-python's ``notify(..., fds=...)`` works too.

At start it records what it was handed (LISTEN_FDS, LISTEN_FDNAMES and what
each descriptor is; a memfd's contents; a connected socket's peer) as one
JSON line in ``$PROBE_DIR/events.jsonl``, with CLOCK_MONOTONIC times, so that
the test sees every start, not only the last one. Then it serves the
listening socket(s) it was handed. A client sends one command line and gets
one JSON line back:

``info``
    this process's pid and its start record
``hold NAME [poll=0] [via=sdpy]``
    store *this connection* in the fd store under NAME, answer, and keep
    serving it: on a held connection (also one handed back after a restart)
    ``ping`` answers ``{"pong": PID}``, ``close`` closes this process's
    descriptor only, ``remove`` sends FDSTOREREMOVE=1 for its name then
    closes, ``shutdown`` shuts the socket down then closes
``memfd NAME TEXT``
    store a new memfd holding TEXT
``batch NAME COUNT [poll=0]``
    COUNT new memfds ("NAME/0", "NAME/1", ... as contents) in ONE message
``each NAME COUNT``
    COUNT new memfds, one message each
``twice NAME``
    one memfd sent twice (two messages), to see whether duplicates are kept
``remove NAME``
    FDSTOREREMOVE=1 + FDNAME=NAME
``barrier``
    BARRIER=1: answers once systemd has processed every message before it
``exit CODE`` / ``kill``
    exit with CODE after answering / SIGKILL itself after answering
``hang``
    stop sending watchdog pings (with WatchdogSec=, it pings at a third of
    WATCHDOG_USEC otherwise, as a healthy daemon does)

On SIGTERM it records an ``exit`` event (monotonic time) and exits 0 (with
PROBE_STORE_ON_TERM=1 it first stores a memfd "on-term" holding
"term-of-PID", and exits right after sending it). On
SIGHUP, when PROBE_HUP=reexec, it re-executes itself in place (same pid),
as a daemon reloading by re-exec would.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import selectors
import signal
import socket
import stat
import sys
import time
from collections.abc import Sequence

PROBE_DIR = os.environ.get("PROBE_DIR", "/run/fdprobe")
EVENTS = os.path.join(PROBE_DIR, "events.jsonl")
T_START = time.monotonic()


def record(event: dict[str, object]) -> None:
    # one write(2) of one line: events from successive processes never interleave
    line = json.dumps(event, sort_keys=True) + "\n"
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def notify(message: str, fds: Sequence[int] = ()) -> None:
    """sd_pid_notify_with_fds() by hand: one datagram, the fds as SCM_RIGHTS."""
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        ancillary = (
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        )
        s.sendmsg([message.encode()], ancillary)


def notify_sdpy(message: str, fds: Sequence[int]) -> None:
    # systemd-python, as mytimerd uses it (the ignore: mypy run from the
    # repository root takes its systemd/ directory of units for this package)
    from systemd import daemon  # type: ignore[attr-defined,unused-ignore]

    if not daemon.notify(message, fds=list(fds)):
        raise RuntimeError("systemd.daemon.notify returned False")


def barrier(timeout: float = 120.0) -> bool:
    """sd_notify_barrier(): systemd closes the pipe's write end once it has
    processed everything sent before; we then see POLLHUP on the read end."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        notify("BARRIER=1", [w])
        os.close(w)
        w = -1
        p = select.poll()
        p.register(r, select.POLLHUP)
        return bool(p.poll(timeout * 1000))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def describe(fd: int) -> dict[str, object]:
    """What a handed-over descriptor is."""
    st = os.fstat(fd)
    d: dict[str, object] = {"fd": fd, "ino": st.st_ino}
    try:
        d["link"] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        d["link"] = None
    if stat.S_ISSOCK(st.st_mode):
        s = socket.socket(fileno=os.dup(fd))
        try:
            listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            d["kind"] = "listening-socket" if listening else "socket"
            if not listening:
                d["peer_pid"] = peer_pid(s)
                # a client that hung up while no process was running: EOF waits
                s.setblocking(False)
                try:
                    d["readable"] = repr(s.recv(1, socket.MSG_PEEK))
                except BlockingIOError:
                    d["readable"] = "EAGAIN"
        finally:
            s.close()
    elif str(d["link"]).startswith("/memfd:"):
        d["kind"] = "memfd"
        # pread: the file offset is shared with every other copy (the old
        # process and systemd's) and may sit at the end
        d["contents"] = os.pread(fd, 1 << 16, 0).decode(errors="replace")
        d["offset"] = os.lseek(fd, 0, os.SEEK_CUR)
    else:
        d["kind"] = "other"
    return d


def peer_pid(s: socket.socket) -> int:
    import struct

    pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


def memfd(name: str, text: str) -> int:
    # memfd names are limited to 249 bytes; FDNAMEs may be longer
    fd = os.memfd_create(name[:40], os.MFD_CLOEXEC)
    os.write(fd, text.encode())  # offset left at the end, on purpose
    return fd


class Probe:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.held: dict[int, tuple[socket.socket, str]] = {}
        self.kept: list[int] = []  # memfds we keep open (as a daemon would)
        self.listeners: list[socket.socket] = []
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog = int(usec) / 3e6 if usec else None  # ping interval, seconds
        self.hung = False

    def start(self) -> None:
        n = int(os.environ.get("LISTEN_FDS", "0"))
        names = os.environ.get("LISTEN_FDNAMES", "")
        pid_ok = os.environ.get("LISTEN_PID") == str(os.getpid())
        fds = [describe(3 + i) for i in range(n)] if pid_ok else []
        name_list = names.split(":") if names else []
        for d, name in zip(fds, name_list, strict=False):
            d["name"] = name
        record(
            {
                "event": "start",
                "pid": os.getpid(),
                "t": T_START,
                "argv0": sys.argv[0],
                "listen_fds": n,
                "listen_fdnames": names,
                "fds": fds,
                "reexec": os.environ.get("PROBE_REEXECED") == "1",
            }
        )
        for d in fds:
            fd = int(d["fd"])  # type: ignore[call-overload]
            if d["kind"] == "listening-socket":
                s = socket.socket(fileno=fd)
                s.setblocking(False)
                self.listeners.append(s)
                self.sel.register(s, selectors.EVENT_READ, "listen")
            elif d["kind"] == "socket":
                s = socket.socket(fileno=fd)
                self.adopt(s, str(d.get("name", "")))
            else:
                self.kept.append(fd)
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGHUP, self.on_hup)
        notify(f"READY=1\nMAINPID={os.getpid()}")

    def adopt(self, s: socket.socket, name: str) -> None:
        s.setblocking(False)
        self.held[s.fileno()] = (s, name)
        self.sel.register(s, selectors.EVENT_READ, "held")

    def on_term(self, _signo: int, _frame: object) -> None:
        if os.environ.get("PROBE_STORE_ON_TERM") == "1":
            # what a daemon handing over on stop does: store, then exit at
            # once (no BARRIER=1): does systemd still take it?
            fd = memfd("on-term", f"term-of-{os.getpid()}")
            notify("FDSTORE=1\nFDNAME=on-term", [fd])
        record({"event": "exit", "pid": os.getpid(), "t": time.monotonic(), "why": "SIGTERM"})
        os._exit(0)

    def on_hup(self, _signo: int, _frame: object) -> None:
        if os.environ.get("PROBE_HUP") != "reexec":
            return
        notify("RELOADING=1")
        record({"event": "reexec", "pid": os.getpid(), "t": time.monotonic()})
        # keep the handed-over descriptors across exec (LISTEN_* still names them)
        n = int(os.environ.get("LISTEN_FDS", "0"))
        for fd in range(3, 3 + n):
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, True)
        os.environ["PROBE_REEXECED"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])

    def serve(self) -> None:
        last_ping = time.monotonic()
        while True:
            events = self.sel.select(self.watchdog)
            if self.watchdog and not self.hung and time.monotonic() - last_ping >= self.watchdog:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
            for key, _ev in events:
                if key.data == "listen":
                    try:
                        conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    conn.settimeout(5)
                    try:
                        line = b""
                        while not line.endswith(b"\n"):
                            chunk = conn.recv(4096)
                            if not chunk:
                                break
                            line += chunk
                        self.command(conn, line.decode().split())
                    except Exception as e:  # a probe: report, keep serving
                        with contextlib.suppress(OSError):
                            conn.sendall((json.dumps({"error": repr(e)}) + "\n").encode())
                        conn.close()
                else:
                    self.on_held(key.fileobj)  # type: ignore[arg-type]

    def reply(self, conn: socket.socket, obj: dict[str, object]) -> None:
        conn.sendall((json.dumps(obj) + "\n").encode())

    def command(self, conn: socket.socket, words: list[str]) -> None:
        cmd, args = (words[0], words[1:]) if words else ("", [])
        opts = dict(a.split("=", 1) for a in args if "=" in a)
        plain = [a for a in args if "=" not in a]
        poll = "\nFDPOLL=0" if opts.get("poll") == "0" else ""
        keep_open = False
        if cmd == "info":
            self.reply(
                conn, {"pid": os.getpid(), "held": sorted(n for _s, n in self.held.values())}
            )
        elif cmd == "hold":
            msg = f"FDSTORE=1\nFDNAME={plain[0]}{poll}"
            if opts.get("via") == "sdpy":
                notify_sdpy(msg, [conn.fileno()])
            else:
                notify(msg, [conn.fileno()])
            self.reply(conn, {"held": plain[0], "pid": os.getpid()})
            self.adopt(conn, plain[0])
            keep_open = True
        elif cmd == "memfd":
            fd = memfd(plain[0], plain[1])
            notify(f"FDSTORE=1\nFDNAME={plain[0]}{poll}", [fd])
            self.kept.append(fd)
            self.reply(conn, {"stored": plain[0]})
        elif cmd == "batch":
            fds = [memfd(plain[0], f"{plain[0]}/{i}") for i in range(int(plain[1]))]
            notify(f"FDSTORE=1\nFDNAME={plain[0]}{poll}", fds)
            for fd in fds:
                os.close(fd)
            self.reply(conn, {"sent": len(fds)})
        elif cmd == "each":
            for i in range(int(plain[1])):
                fd = memfd(plain[0], f"{plain[0]}/{i}")
                notify(f"FDSTORE=1\nFDNAME={plain[0]}{poll}", [fd])
                os.close(fd)
            self.reply(conn, {"sent": int(plain[1])})
        elif cmd == "twice":
            fd = memfd(plain[0], f"{plain[0]}/same")
            notify(f"FDSTORE=1\nFDNAME={plain[0]}", [fd])
            notify(f"FDSTORE=1\nFDNAME={plain[0]}", [fd])
            os.close(fd)
            self.reply(conn, {"sent": 2})
        elif cmd == "remove":
            notify(f"FDSTOREREMOVE=1\nFDNAME={plain[0]}")
            self.reply(conn, {"removed": plain[0]})
        elif cmd == "barrier":
            self.reply(conn, {"barrier": barrier()})
        elif cmd == "hang":
            self.hung = True
            self.reply(conn, {"hung": os.getpid()})
        elif cmd == "exit":
            self.reply(conn, {"exiting": int(plain[0])})
            conn.close()
            record({"event": "exit", "pid": os.getpid(), "t": time.monotonic(), "why": cmd})
            os._exit(int(plain[0]))
        elif cmd == "kill":
            self.reply(conn, {"killing": os.getpid()})
            conn.close()
            record({"event": "exit", "pid": os.getpid(), "t": time.monotonic(), "why": cmd})
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            self.reply(conn, {"error": f"unknown command {words!r}"})
        if not keep_open:
            conn.close()

    def on_held(self, s: socket.socket) -> None:
        _s, name = self.held[s.fileno()]
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client hung up
            self.drop(s)
            return
        for word in data.decode().split():
            if word == "ping":
                s.sendall((json.dumps({"pong": os.getpid(), "name": name}) + "\n").encode())
            elif word == "close":
                self.drop(s)
                return
            elif word == "remove":
                notify(f"FDSTOREREMOVE=1\nFDNAME={name}")
                self.drop(s)
                return
            elif word == "shutdown":
                s.shutdown(socket.SHUT_RDWR)
                self.drop(s)
                return

    def drop(self, s: socket.socket) -> None:
        self.sel.unregister(s)
        del self.held[s.fileno()]
        s.close()


def main() -> None:
    p = Probe()
    p.start()
    p.serve()


if __name__ == "__main__":
    main()
