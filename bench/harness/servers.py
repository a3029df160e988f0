"""The servers under test: a command listening on one unix socket and one TCP
port of the loopback address, started, checked, restarted and stopped by the
harness."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .calls import free_port, tls_version_call, version_call
from .children import spawn, stop
from .common import LOOPBACK
from .procfs import tail
from .tlsfiles import TLSFiles


class Server:
    """A server under test (the floor, the daemon, ...) on one unix + one TCP socket.

    env: environment variables to set for it (a value of None removes the
    variable); the rest of the harness's environment is inherited."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        extra: list[str],
        workdir: Path,
        env: dict[str, str | None] | None = None,
    ) -> None:
        self.name, self.cmd, self.extra, self.workdir = name, cmd, extra, workdir
        self.env = env or {}
        self.proc: subprocess.Popen[Any] | None = None
        self.unix = str(workdir / f"{name}.sock")
        self.port = 0
        self.log = workdir / f"{name}.log"
        self.starts = 0
        self.error = ""
        self.label = name  # the first part of its raw results' keys

    def transport(self, transport: str) -> str:
        """What a scenario's transport is called in keys and rows for this server."""
        return transport

    def target(self, transport: str) -> list[str]:
        """loadgen's options to reach this server over transport."""
        if transport == "unix":
            return ["--unix", self.unix]
        return ["--tcp", LOOPBACK, str(self.port)]

    def ready(self) -> bool:
        """True once it answers a version call on both sockets."""
        return version_call(socket.AF_UNIX, self.unix, 0.5) and version_call(
            socket.AF_INET, (LOOPBACK, self.port), 0.5
        )

    def start(self, timeout: float = 20.0) -> bool:
        """(Re)start it on a fresh TCP port; False (and self.error) if it does not
        answer within timeout seconds."""
        self.stop()
        self.port = free_port()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix)
        argv = [*self.cmd, "--unix", self.unix, "--tcp", LOOPBACK, str(self.port), *self.extra]
        env = dict(os.environ)
        for var, value in self.env.items():
            if value is None:
                env.pop(var, None)
            else:
                env[var] = value
        self.starts += 1
        with open(self.log, "ab") as logf:
            settings = [f"{k}={'(unset)' if v is None else v}" for k, v in self.env.items()]
            what = " ".join([*settings, shlex.join(argv)])
            logf.write(f"\n=== start {self.starts}: {what}\n".encode())
            logf.flush()
            self.proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"exited with {self.proc.returncode}: {tail(self.log, 4)}"
                return False
            if self.ready():
                self.error = ""
                return True
            time.sleep(0.05)
        self.error = f"not answering version within {timeout:.0f}s: {tail(self.log, 4)}"
        self.stop()
        return False

    def alive(self) -> bool:
        """True while its process runs."""
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> bool:
        """Running, or started again now."""
        return self.alive() or self.start()

    def stop(self) -> None:
        """Stop it (if it runs)."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class TLSServer(Server):
    """The daemon again, its TCP listener speaking TLS (--tls-cert/--tls-key): a
    second process, since TLS covers every TCP listener of a daemon. Its scenarios
    use transport "tcp" and are keyed and shown as daemon / tls."""

    def __init__(
        self, name: str, cmd: list[str], extra: list[str], workdir: Path, tls: TLSFiles
    ) -> None:
        super().__init__(name, cmd, [*extra, *tls.server_args()], workdir)
        self.tls = tls
        self.label = "daemon"

    def transport(self, transport: str) -> str:
        return "tls" if transport == "tcp" else transport

    def target(self, transport: str) -> list[str]:
        if transport == "tcp":
            return [*super().target("tcp"), *self.tls.client_args()]
        return super().target(transport)

    def ready(self) -> bool:
        return version_call(socket.AF_UNIX, self.unix, 0.5) and tls_version_call(
            self.port, self.tls, 0.5
        )
