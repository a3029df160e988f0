"""Reading a lone client's next request on the spot.

While one client calls alone, one call at a time, the loop would go back to
epoll and sleep after each answer, and the client's next request would cost
a wake-up: tens of microseconds on a virtual machine, more than the call.
:func:`spin_read` waits a few microseconds for it on the client's socket
instead, and :func:`spin_wait` before the loop gets its turn, so that its
epoll finds the request there (see
:meth:`~mytimerd.daemon.server.Server.read_ahead` for when).
"""

from __future__ import annotations

from typing import Final

from .._glue import ffi, lib

#: Most bytes one read ahead takes (as much as one of the event loop's reads).
READ_CAP: Final = 256 * 1024
#: How long one callback reads ahead for a lone client at most: a client
#: that joins meanwhile waits at most about this long (the lane's lone
#: serving keeps to the same slice: glue.h).
READ_AHEAD_SLICE: Final[float] = lib.MT_READ_AHEAD_SLICE_NS / 1e9
#: The shortest wait for a lone client's next request (the longest is
#: --read-ahead-wait), as the lane's.
READ_AHEAD_MIN_WAIT: Final[float] = lib.MT_READ_AHEAD_MIN_NS / 1e9

_buf = ffi.new("uint8_t[]", READ_CAP)


def spin_read(fd: int, seconds: float) -> bytes:
    """The bytes that arrive on socket ``fd`` within ``seconds`` (busy
    waiting, the GIL released); b"" if none did, or the peer closed or
    failed (left for the event loop to see: it reads the end, or the error
    or an end)."""
    n = lib.mt_spin_read(fd, _buf, READ_CAP, int(seconds * 1e9))
    return ffi.buffer(_buf, n)[:] if n else b""


def spin_wait(fd: int, seconds: float) -> bool:
    """Whether input arrives on socket ``fd`` within ``seconds`` (busy
    waiting, the GIL released); it is left for the event loop to read."""
    return bool(lib.mt_spin_read(fd, _buf, 0, int(seconds * 1e9)))
