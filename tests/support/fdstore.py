"""Plays systemd for hand-over tests: a listening socket kept across
restarts, the notify socket, and a file descriptor store.

Like systemd, it passes the listener and then everything stored (LISTEN_FDS,
LISTEN_FDNAMES, LISTEN_PID of the daemon itself) to every instance it
starts, takes descriptors sent with ``FDSTORE=1`` (named by ``FDNAME=``, at
most ``capacity``: the rest are closed, as systemd 252 does), and forgets
them on ``FDSTOREREMOVE=1``. The real systemd is exercised by
tests/systemd/test_handover_systemd.py; this one makes the daemon's side
fast to test and lets a test tamper with the store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.integration.helpers import clean_env
from tests.support.daemon import mytimerd_command

#: Run as ``python -c LAUNCH FDS NAMES CMD...``: moves the descriptors FDS
#: (comma-separated) to 3, 4, ... and execs CMD with the variables of socket
#: activation; exec keeps the pid, so LISTEN_PID is the daemon's.
LAUNCH = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()),
                  LISTEN_FDNAMES=sys.argv[2])
os.execvp(sys.argv[3], sys.argv[3:])
"""


class FakeSystemd:
    """One socket unit, one service, its store; see the module's docstring."""

    def __init__(self, workdir: Path, capacity: int) -> None:
        """Listen on ``workdir``/mytimerd.sock and a free loopback TCP port;
        store ``capacity`` descriptors at most."""
        self.workdir = workdir
        self.capacity = capacity
        self.path = workdir / "mytimerd.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(socket.SOMAXCONN)
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp_port = int(self.tcp.getsockname()[1])
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = workdir / "notify.sock"
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.05)
        self._lock = threading.Lock()
        #: (descriptor, name), in the order they came.
        self.store: list[tuple[int, str]] = []
        #: Every notification line, in order.
        self.messages: list[str] = []
        #: Descriptors refused because the store was full.
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    # the notify socket ------------------------------------------------------

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, fds, _, _ = socket.recv_fds(self.notify, 65536, 256)
            except TimeoutError:
                continue
            except OSError:
                return
            self._take(data.decode(errors="replace").splitlines(), fds)

    def _take(self, lines: list[str], fds: list[int]) -> None:
        fields = dict(line.partition("=")[::2] for line in lines)
        with self._lock:
            self.messages.extend(lines)
            if fields.get("FDSTORE") == "1":
                name = fields.get("FDNAME", "stored")
                for fd in fds:
                    if len(self.store) < self.capacity:
                        self.store.append((fd, name))
                    else:
                        self.refused += 1
                        os.close(fd)
                return
            for fd in fds:  # descriptors sent without FDSTORE=1 are dropped
                os.close(fd)
            if fields.get("FDSTOREREMOVE") == "1":
                gone = fields.get("FDNAME")
                for fd, stored in [entry for entry in self.store if entry[1] == gone]:
                    os.close(fd)
                    self.store.remove((fd, stored))

    def wait_for(self, line: str, timeout: float = 15.0, after: int = 0) -> None:
        """Wait until ``line`` was notified (as message ``after`` or later)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if line in self.messages[after:]:
                    return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}): {self.log()}")
            time.sleep(0.01)
        raise AssertionError(f"no {line!r} within {timeout} s: {self.log()}")

    def names(self) -> list[str]:
        """The names in the store now."""
        with self._lock:
            return [name for _, name in self.store]

    def replace(self, name: str, fd: int) -> None:
        """Put ``fd`` in the store instead of whatever is named ``name`` (a test's tampering)."""
        with self._lock:
            for old, stored in [e for e in self.store if e[1] == name]:
                os.close(old)
                self.store.remove((old, stored))
            self.store.append((fd, name))

    # the service ------------------------------------------------------------

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start an instance with the listener and the store; wait for READY=1."""
        assert self.proc is None or self.proc.poll() is not None, "one instance at a time"
        with self._lock:
            handed = [
                (self.listener.fileno(), "mytimerd.socket"),
                (self.tcp.fileno(), "mytimerd-tcp.socket"),
                *self.store,
            ]
            mark = len(self.messages)
        command = mytimerd_command("--fd-store-max", str(self.capacity), *args)
        log = self.workdir / f"mytimerd-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LAUNCH,
                    ",".join(str(fd) for fd, _ in handed),
                    ":".join(name for _, name in handed),
                    *command,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=[fd for fd, _ in handed],
                env=clean_env({"NOTIFY_SOCKET": str(self.notify_path)}),
            )
        self.wait_for("READY=1", after=mark)
        return self.proc

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the instance and wait for it to exit; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self, *args: str) -> float:
        """Stop, then start with what was stored; seconds from SIGTERM to READY=1."""
        began = time.monotonic()
        assert self.stop() == 0, self.log()
        self.start(*args)
        return time.monotonic() - began

    def log(self) -> str:
        """Every instance's log so far."""
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def close(self) -> None:
        """Kill the instance; close the listener, the notify socket and the store."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stop.set()
        self._thread.join()
        with self._lock:
            for fd, _ in self.store:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.store.clear()
        self.listener.close()
        self.tcp.close()
        self.notify.close()
