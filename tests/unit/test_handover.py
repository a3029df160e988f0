"""The hand-over state's format: what one instance writes, the next reads,
and anything else is refused with a reason, never misread."""

from __future__ import annotations

import contextlib
import os
import socket
import struct

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mytimerd.daemon import handover
from mytimerd.daemon.handover import HandoverError, Resume

RESUMES = [
    Resume(11, b"\x00\x00\x00\x07vers", b"", None),
    Resume(12, b"", b"\x00\x00\x00\x00\x00\x00\x00\x01\xa0", ("on_echo_fired",)),
    Resume(13),
]


def test_round_trip() -> None:
    version, resumes = handover.decode(handover.encode(RESUMES, "1.2.3"))
    assert version == "1.2.3"
    assert resumes == {r.inode: r for r in RESUMES}


def framed(body: bytes) -> bytes:
    """``body`` behind a correct header: what decode then reads is the body."""
    import hashlib

    digest = hashlib.sha256(body).digest()
    magic = b"mytimerd-handover\n"
    return struct.pack("!18sII32s", magic, handover.FORMAT, len(body), digest) + body


def body_of(value: object) -> bytes:
    """A state with a correct header around any CBOR ``value``."""
    return framed(cbor2.dumps(value))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "shorter than the header"),
        (b"x" * 100, "not a mytimerd hand-over state"),
        (handover.encode(RESUMES, "1")[:-1], "the header says"),
        (handover.encode(RESUMES, "1") + b"\x00", "the header says"),
        (handover.encode(RESUMES, "1")[:-1] + b"\x00", "checksum"),
        (body_of([1, 2]), "not a map of daemon and connections"),
        (body_of({"daemon": 1, "connections": []}), "daemon must be text"),
        (body_of({"daemon": "1", "connections": [[0, b"", b"", None]]}), "connection 0"),
        (body_of({"daemon": "1", "connections": [[1, "text", b"", None]]}), "connection 0"),
        (body_of({"daemon": "1", "connections": [[1, b"", b"", [1]]]}), "connection 0"),
        (body_of({"daemon": "1", "connections": [[True, b"", b"", None]]}), "connection 0"),
        (
            body_of({"daemon": "1", "connections": [[5, b"", b"", None], [5, b"", b"", None]]}),
            "inode 5 listed twice",
        ),
    ],
)
def test_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(HandoverError, match=why):
        handover.decode(data)


def test_another_format_is_refused() -> None:
    data = bytearray(handover.encode(RESUMES, "1"))
    struct.pack_into("!I", data, 18, handover.FORMAT + 1)
    with pytest.raises(HandoverError, match=f"format {handover.FORMAT + 1}"):
        handover.decode(bytes(data))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_never_misread(data: bytes) -> None:
    with pytest.raises(HandoverError):
        handover.decode(data)


@given(st.binary(max_size=200))
def test_any_cbor_body_is_read_or_refused(body: bytes) -> None:
    # Read, or refused with HandoverError: never another exception.
    with contextlib.suppress(HandoverError):
        handover.decode(framed(body))


def test_one_carrier_holds_every_connection_and_the_state_goes_last_sealed() -> None:
    sent: list[tuple[str, list[int]]] = []

    def notify(message: str, fds: list[int]) -> bool:
        sent.append((message, [os.dup(fd) for fd in fds]))
        return True

    pairs = [socket.socketpair() for _ in range(handover.BATCH * 2 + 3)]
    conns = [a.fileno() for a, _ in pairs]
    inodes = [handover.inode_of(fd) for fd in conns]
    assert handover.store(notify, conns, b"state") == len(conns)
    for a, _ in pairs:
        a.close()  # the carrier keeps them alive
    assert [m for m, _ in sent] == [
        f"FDSTORE=1\nFDNAME={handover.CONN_NAME}\nFDPOLL=0",
        f"FDSTORE=1\nFDNAME={handover.STATE_NAME}",
    ]
    assert [len(fds) for _, fds in sent] == [1, 1]
    state = sent[1][1][0]
    with pytest.raises(PermissionError):  # sealed: nobody can change it
        os.pwrite(state, b"X", 0)
    assert handover.read_state(state, 100) == b"state"
    back = handover.unload(sent[0][1][0], limit=len(conns) - 3)
    assert [handover.inode_of(fd) for fd in back] == inodes[:-3]
    # The connections live: the client end of the first still talks to it.
    pairs[0][1].sendall(b"x")
    assert os.read(back[0], 1) == b"x"
    for fd in back:
        os.close(fd)
    # ... and the three past the limit were closed.
    for _, b in pairs[-3:]:
        assert b.recv(1) == b""
    for _, b in pairs:
        b.close()


def test_a_refused_notification_stores_nothing() -> None:
    assert handover.store(lambda m, fds: False, [0], b"state") == 0


def test_a_state_larger_than_the_limit_is_not_read() -> None:
    fd = os.memfd_create("big")
    os.write(fd, b"x" * 101)
    with pytest.raises(HandoverError, match="101 bytes, more than the 100"):
        handover.read_state(fd, 100)


def test_a_state_that_cannot_be_written_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> int:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refuse)
    sent: list[str] = []

    def notify(message: str, fds: list[int]) -> bool:
        sent.append(message)
        return True

    a, b = socket.socketpair()
    with a, b:
        assert handover.store(notify, [a.fileno()], b"s") == 0
    assert sent == [f"FDSTORE=1\nFDNAME={handover.CONN_NAME}\nFDPOLL=0"]  # the carrier only
