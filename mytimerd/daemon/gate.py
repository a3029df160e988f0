"""The gate of a unix listener with allow-lists: refusing is cheap.

asyncio makes a transport and a protocol for every connection it accepts
before the daemon sees who connected, and accepts as many as the backlog
holds in one turn of the loop. A uid that ``--allow-user``/``--allow-group``
refuses could flood ``connect()`` faster than that path refuses, and an
allowed client's connection would wait in the listen queue behind the
flood. The gate accepts a bounded number per turn, reads SO_PEERCRED first,
and answers a refused peer with a read, a write and a close: it never
becomes a connection. (While few refused connections linger, a refused
peer goes the ordinary way instead, so its client reads the answer and a
clean EOF.) Allowed peers are handed to the loop as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final

from .activation import Listener
from .connection import Connection

log = logging.getLogger("mytimerd")

#: Connections accepted in one turn of the loop at most.
ACCEPT_SLICE: Final = 64
#: Bytes of a refused peer's first request read (and dropped) before the close.
_DROP: Final = 64 * 1024
_PEERCRED = struct.Struct("3i")


class UnixGate:
    """Accepts on one unix listener; see the module's docstring."""

    def __init__(
        self,
        listener: Listener,
        make: Callable[[], Connection],
        refusal: Callable[[int, int], bytes | None],
    ) -> None:
        """``make()`` makes the protocol of an admitted connection;
        ``refusal(uid, gid)`` is the answer to send before closing a refused
        peer at once, or None to hand it over like any other."""
        self._sock = listener.sock
        self._make = make
        self._refusal = refusal
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Stop accepting (the listener itself is closed by its owner)."""
        with contextlib.suppress(ValueError, OSError):  # already closed
            self._loop.remove_reader(self._sock.fileno())

    def _accept(self) -> None:
        for _ in range(ACCEPT_SLICE):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the next turn tries again
                log.debug("accept failed: %s", exc)
                return
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            _, uid, gid = _PEERCRED.unpack(creds)
            frame = self._refusal(uid, gid)
            if frame is not None:
                _refuse(conn, frame)
                continue
            hand_over(conn, self._make, self._tasks)


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
