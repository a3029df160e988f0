"""Small helpers for tests that drive real sockets directly."""

from __future__ import annotations

import socket


def fill(sock: socket.socket, byte: bytes = b"\0") -> int:
    """Send ``byte`` from non-blocking ``sock`` until the kernel takes no
    more (its peer reads nothing); the bytes sent."""
    sent = 0
    try:
        while True:
            sent += sock.send(byte * 65536)
    except BlockingIOError:
        pass
    return sent
