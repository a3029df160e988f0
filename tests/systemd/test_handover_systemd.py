"""Hand-over at scale under the real systemd, with the installed units
unchanged: 2,000 connections, each with a frame sent in part, survive
``systemctl restart``; the store is empty once the new instance runs; and a
``systemctl stop`` closes them (systemd 252 empties the store on a stop)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.systemd.harness import Sandbox
from tests.systemd.test_systemd_units import SERVICE, main_pid, ok, start_service

pytestmark = pytest.mark.systemd

#: Connections held across the restart: within the daemon's per-uid share
#: (2,048) and the store (4,096), past what a default LimitNOFILE would let
#: systemd pass back (about 600).
CONNECTIONS = 2000
VERSION = struct.pack(">I", 7) + b"version" + struct.pack(">I", 1) + b"\xa0"


def answer(sock: socket.socket) -> int:
    """Read one answer; its return code."""
    head = b""
    while len(head) < 8:
        chunk = sock.recv(8 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    ret, n = struct.unpack(">iI", head)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed in an answer")
        body += chunk
    return int(ret)


def connections(sd: Sandbox, n: int) -> list[socket.socket]:
    """``n`` connections that each made one call."""
    path = str(sd.path("/run/mytimerd.sock"))
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(path)
        s.sendall(VERSION)
        out.append(s)
    assert all(answer(s) == 0 for s in out)
    return out


def test_two_thousand_connections_survive_a_restart(sd: Sandbox) -> None:
    old_pid = start_service(sd)
    held = connections(sd, CONNECTIONS)
    try:
        for s in held:
            s.sendall(VERSION[:6])  # the next instance reads the rest
        t0 = time.monotonic()
        sd.systemctl("restart", SERVICE, timeout=120)
        restarted = time.monotonic() - t0
        assert main_pid(sd) not in (0, old_pid)
        for s in held:
            s.sendall(VERSION[6:])
        assert [answer(s) for s in held] == [0] * CONNECTIONS
        resumed = time.monotonic() - t0
        print(f"{CONNECTIONS} connections: restart {restarted:.2f} s, all answered {resumed:.2f} s")
        assert sd.prop(SERVICE, "NFileDescriptorStore") == "0"
        journal = sd.journal("-u", SERVICE)
        assert f"handed {CONNECTIONS} connections" in journal, journal[-3000:]
        assert f"took back {CONNECTIONS} connections" in journal, journal[-3000:]

        # A stop: systemd closes what is stored; every client sees the end.
        sd.systemctl("stop", SERVICE, timeout=120)
        for s in held[:50]:
            s.settimeout(10)
            assert s.recv(1) == b"", "a stop must end the stored connections"
    finally:
        for s in held:
            s.close()
    ok(sd.run(["true"]))
