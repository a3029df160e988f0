"""The gate of a unix listener with allow-lists: refusing is cheap.

asyncio makes a transport and a protocol for every connection it accepts
before the daemon sees who connected. A uid that
``--allow-user``/``--allow-group`` refuses could flood ``connect()`` faster
than that path refuses, and an allowed client's connection would wait in the
listen queue behind the flood. So the event loop does not accept on such a
listener: the glue's gate does (glue/gate.h), on threads of its own, and
reads SO_PEERCRED first. A refused peer is answered with a read, a write and
a close: it never becomes a connection. (While few refused connections
linger, a refused peer goes the ordinary way instead, so its client reads
the answer and a clean EOF.) Allowed peers are handed to the loop as usual.

The gate hands every peer to Python, which decides, except those of a
(uid, gid) that Python has just refused at once: the gate refuses those on
its own for a lease (:data:`LEASE_MS`) and reports how many, so that they are
counted and logged as if Python had refused them. Refusing costs the
kernel's accept and close, 8-10 us a peer, in C or not; what the threads
change is where it runs: on every CPU the daemon may use and off the event
loop. In tests/hostile's connect-flood row (4 threads flooding, 2 CPUs) the
allowed client's p99 went from 93-125 ms (refused on the loop in Python;
54-140 ms in C) to 12-59 ms, and the loop's turns stay short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

from .._glue import ffi, lib
from .activation import Listener
from .connection import Connection

log = logging.getLogger("mytimerd")

#: The gate's threads: one per CPU the daemon may run on, up to 4 (each
#: refuses 100,000 peers a second; more would only sleep).
THREADS: Final = max(1, min(4, len(os.sched_getaffinity(0))))
#: Peers taken from the gate in one turn of the loop at most: the longest
#: turn it makes is 0.8 ms handing all over, 1.5 ms refusing all here (2
#: CPUs); the take itself, in C, is under 30 us (tests/glue/test_gate.py).
PEERS_SLICE: Final = 64
#: How long the gate refuses a (uid, gid) on its own after Python refused it
#: at once, in milliseconds. Python decides again when it runs out: after a
#: flood, refused peers linger again within this long, and a flood costs
#: Python one decision (and up to a turn of connections refused the ordinary
#: way) per lease.
LEASE_MS: Final = 1000
#: Bytes of a refused peer's first request read (and dropped) before the close.
_DROP: Final = 64 * 1024


class Refusal(Protocol):
    """The server's decision about unix peers at the gate."""

    def __call__(self, uid: int, gid: int, refused: int = 0) -> bytes | None:
        """The answer to close peer (uid, gid) with at once, or None to hand
        it over like any other. With ``refused``, no peer waits: the gate
        has closed that many of (uid, gid) with that answer on its own, and
        they are to be counted."""
        ...


class UnixGate:
    """Accepts on one unix listener; see the module's docstring."""

    def __init__(
        self, listener: Listener, make: Callable[[], Connection], refusal: Refusal
    ) -> None:
        """``make()`` makes the protocol of an admitted connection;
        ``refusal`` decides about the peers (see :class:`Refusal`)."""
        self._make = make
        self._refusal = refusal
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._peers: Any = ffi.new("mt_peer[]", PEERS_SLICE)
        self._taken: Any = ffi.new("mt_gate_taken *")
        gate = lib.mt_gate_new()
        if gate == ffi.NULL:
            raise OSError(ffi.errno, f"cannot make the gate of {listener.name}")
        listener.sock.setblocking(False)
        err = lib.mt_gate_start(gate, listener.sock.fileno(), THREADS)
        if err:
            lib.mt_gate_free(gate)
            raise OSError(err, f"cannot start the gate of {listener.name}: {os.strerror(err)}")
        self._gate: Any = gate
        self._fd: int = lib.mt_gate_fd(gate)
        self._loop.add_reader(self._fd, self._take)

    def close(self) -> None:
        """Stop accepting (the listener itself is closed by its owner); the
        peers already accepted are served or refused as usual."""
        if self._gate is None:
            return
        self._loop.remove_reader(self._fd)
        lib.mt_gate_stop(self._gate)
        while self._take():
            pass
        lib.mt_gate_free(self._gate)
        self._gate = None

    def _take(self) -> int:
        """Take what the gate has for the loop: peers to decide about, the
        counts of its own refusals, an accept error. Returns the peers taken."""
        taken = self._taken
        n: int = lib.mt_gate_take(self._gate, self._peers, PEERS_SLICE, taken)
        # Owned before anything else can fail: a socket closes its descriptor.
        handed = [(socket.socket(fileno=p.fd), p.uid, p.gid) for p in self._peers[0:n]]
        for counted in taken.refused[0 : taken.nrefused]:
            self._refusal(counted.uid, counted.gid, counted.refused)
        if taken.err:  # EMFILE and the like: the gate tries again shortly
            log.debug("accept failed: %s", os.strerror(taken.err))
        for conn, uid, gid in handed:
            frame = self._refusal(uid, gid)
            if frame is None:
                hand_over(conn, self._make, self._tasks)
                continue
            _refuse(conn, frame)
            # Not in the table (a longer answer than it holds, or every entry
            # has a count waiting): the next one is refused here again.
            lib.mt_gate_refuse(self._gate, uid, gid, frame, len(frame), LEASE_MS)
        return n


def hand_over(
    sock: socket.socket, make: Callable[[], Connection], tasks: set[asyncio.Task[None]]
) -> None:
    """Serve an accepted ``sock`` with a connection from ``make()``; the
    task is kept in ``tasks`` until it is done."""

    async def serve() -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(make, sock=sock)
        except OSError as exc:  # the client left before it was served
            log.debug("could not serve an accepted connection: %s", exc)
            sock.close()

    sock.setblocking(False)
    task = asyncio.get_running_loop().create_task(serve())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _refuse(conn: socket.socket, frame: bytes) -> None:
    """Read what the client already sent (closing with it unread would reset
    the connection), answer, close; never waiting (MSG_DONTWAIT)."""
    with contextlib.suppress(OSError):
        conn.recv(_DROP, socket.MSG_DONTWAIT)
    with contextlib.suppress(OSError):
        conn.send(frame, socket.MSG_DONTWAIT)
    conn.close()
