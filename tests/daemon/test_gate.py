"""The unix gate's Python side (mytimerd/daemon/gate.py) on the real glue
and a real listener: what the gate's table refuses reaches the decision as
counts, every other peer is decided there and served or refused, and closing
the gate serves what it had accepted but the loop had not taken yet.

The decision stands in for ``Server._refuse_early``; the clients are
threads, so that the loop is free to take.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mytimerd.daemon.activation import BOUND, Listener
from mytimerd.daemon.gate import PEERS_SLICE, UnixGate

FRAME = b"\x00\x00\x00\x01\x00\x00\x00\x07refused"
REQUEST = b"\x00\x00\x00\x07version\x00\x00\x00\x01\xa0"


class Decision:
    """Refuses every peer at once (``refuse``), or none; notes what it is
    asked and what it is told the gate refused on its own."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.asked: list[tuple[int, int]] = []
        self.counted: Counter[tuple[int, int]] = Counter()

    def __call__(self, uid: int, gid: int, refused: int = 0) -> bytes | None:
        if refused:
            self.counted[uid, gid] += refused
            return FRAME
        self.asked.append((uid, gid))
        return FRAME if self.refuse else None


class Echo(asyncio.Protocol):
    """An admitted connection: sends back what it reads."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def listener(tmp_path: Path) -> Listener:
    sock = socket.socket(socket.AF_UNIX)
    path = tmp_path / "g.sock"
    sock.bind(str(path))
    sock.listen(socket.SOMAXCONN)
    return Listener(sock, BOUND, str(path))


def read_all(sock: socket.socket) -> bytes:
    """Until EOF (or a reset: a request that came after the gate's read)."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            got += chunk
    return got


def refused_client(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError):  # refused before the request went out
            s.sendall(REQUEST)
        return read_all(s)


def echoed(sock: socket.socket, data: bytes) -> bytes:
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(len(data) - len(got))
        assert chunk, f"EOF after {got!r}"
        got += chunk
    return got


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_flood_is_refused_by_the_table_and_counted(tmp_path: Path) -> None:
    """300 peers of one uid: Python decides the first ones (a turn at most)
    and the gate refuses the rest for the lease; every peer reads the answer
    and is counted exactly once, in a decision or in a count."""
    decision = Decision(refuse=True)
    total = 300

    async def main() -> None:
        lst = listener(tmp_path)
        gate = UnixGate(lst, Echo, decision)  # type: ignore[arg-type]
        answers = await asyncio.gather(
            *(asyncio.to_thread(refused_client, lst.address) for _ in range(total))
        )
        assert set(answers) == {FRAME}
        # Counts alone reach the loop every 50 ms at most.
        await wait_for(lambda: len(decision.asked) + sum(decision.counted.values()) == total)
        gate.close()
        lst.close()

    asyncio.run(main())
    me = (os.getuid(), os.getgid())
    assert set(decision.asked) == {me} and set(decision.counted) == {me}
    assert len(decision.asked) <= PEERS_SLICE
    assert sum(decision.counted.values()) >= total - PEERS_SLICE


def test_allowed_peers_are_served(tmp_path: Path) -> None:
    decision = Decision(refuse=False)

    def client(path: str, i: int) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"ping %d" % i)
            return echoed(s, b"ping %d" % i)

    async def main() -> None:
        lst = listener(tmp_path)
        gate = UnixGate(lst, Echo, decision)  # type: ignore[arg-type]
        got = await asyncio.gather(*(asyncio.to_thread(client, lst.address, i) for i in range(20)))
        assert got == [b"ping %d" % i for i in range(20)]
        gate.close()
        lst.close()

    asyncio.run(main())
    assert decision.asked == [(os.getuid(), os.getgid())] * 20
    assert not decision.counted


def test_close_serves_the_peers_accepted_but_not_taken(tmp_path: Path) -> None:
    """The loop is busy while the gate accepts 10 peers; the gate closes
    before the loop took them: they are served all the same."""
    decision = Decision(refuse=False)
    clients: list[socket.socket] = []

    async def main() -> None:
        lst = listener(tmp_path)
        gate = UnixGate(lst, Echo, decision)  # type: ignore[arg-type]
        for i in range(10):
            s = socket.socket(socket.AF_UNIX)
            s.connect(lst.address)
            s.sendall(b"%d" % i)
            clients.append(s)
        time.sleep(0.3)  # blocks the loop: the gate's threads accept meanwhile
        gate.close()
        lst.close()
        for i, s in enumerate(clients):
            s.settimeout(5)
            assert await asyncio.to_thread(echoed, s, b"%d" % i) == b"%d" % i
            s.close()

    asyncio.run(main())
    assert len(decision.asked) == 10
