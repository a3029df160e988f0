"""Clients calling ``version`` back to back from a process of their own, so
that no GIL is shared with the test that watches them.

    python tests/support/callers.py ADDRESS CONNECTIONS SECONDS

ADDRESS as ``mytimerd.protocol.address.parse_address`` reads it. Round after
round, every connection sends its request, then each reads its answer,
compared byte for byte with the version frame; one call in flight per
connection (never a pipeline). Prints the calls made. :func:`command` builds
the command line."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import cbor2

from mytimerd.protocol import wire
from mytimerd.protocol.address import Address, TcpAddress, UnixAddress, parse_address

REQUEST = wire.encode_request("version", b"\xa0")
ANSWER = wire.encode_response(wire.RET_OK, cbor2.dumps("nim-timer v0.1.0"))


def command(address: Address, connections: int, seconds: float) -> list[str]:
    """The command line that runs these callers."""
    return [sys.executable, str(Path(__file__)), str(address), str(connections), str(seconds)]


def _connect(address: Address) -> socket.socket:
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(address.path)
        return sock
    assert isinstance(address, TcpAddress) and not address.tls
    sock = socket.create_connection((address.host, address.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _answer(sock: socket.socket) -> bytes:
    got = b""
    while len(got) < len(ANSWER):
        chunk = sock.recv(len(ANSWER) - len(got))
        assert chunk, "closed"
        got += chunk
    return got


def main(argv: list[str]) -> int:
    address, connections, seconds = parse_address(argv[0]), int(argv[1]), float(argv[2])
    socks = [_connect(address) for _ in range(connections)]
    calls, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in socks:
            sock.sendall(REQUEST)
        for sock in socks:
            got = _answer(sock)
            assert got == ANSWER, got
            calls += 1
    print(calls)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
