"""Hand-over: client connections kept across a restart in systemd's file
descriptor store.

When the daemon stops and a store is configured (``--fd-store-max``,
systemd's ``FileDescriptorStoreMax=``, 2 at least), every plaintext
connection is made quiet (nothing more is read, what was read is
answered); then the store gets two descriptors, whatever the number of
connections:

- the *carrier* (name :data:`CONN_NAME`): one end of a socketpair whose
  queue holds every connection's socket, in flight (``SCM_RIGHTS``
  messages sent and never received). The kernel keeps a socket in flight
  alive for as long as the socket that queues it lives, and systemd holds
  that one. Storing each connection on its own would cost systemd 252's
  PID 1 time quadratic in their number (it compares each descriptor it
  stores with every one it holds: 2,000 took 2.4 s) and would need a soft
  LimitNOFILE= twice their number at the next start;
- the *state* (name :data:`STATE_NAME`): a sealed memfd with what the next
  instance must know of each connection: the bytes of a frame read only in
  part, the events owed to a subscriber and its subscription.

systemd passes both back to the next instance with the listening sockets;
it receives the connections from the carrier and resumes each where it
stopped. A connection is known by its socket's inode, which the kernel
keeps for as long as the socket lives, whoever holds it.

This module is the state's format (sans-IO) and the two system-facing steps
(storing, taking back); the server decides what to keep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

import cbor2

from ..protocol.record import Record

log = logging.getLogger("mytimerd")

#: FDNAME of the carrier of the client connections.
CONN_NAME: Final = "mytimerd-conns"
#: FDNAME of the memfd with their state.
STATE_NAME: Final = "mytimerd-state"
#: The names this daemon gives what it stores (never listeners).
NAMES: Final = frozenset({CONN_NAME, STATE_NAME})
#: The state's format; an instance refuses any other (its connections are
#: closed, never misread).
FORMAT: Final = 1
_MAGIC: Final = b"mytimerd-handover\n"
# magic, format, body length, SHA-256 of the body
_HEAD: Final = struct.Struct(f"!{len(_MAGIC)}sII32s")
#: Descriptors in one message: the kernel passes at most 253 (SCM_MAX_FD).
BATCH: Final = 250
#: What the store must hold for a hand-over: the carrier and the state.
STORE_NEEDS: Final = 2


#: Bytes of events owed to subscribers that one state carries at most; a
#: subscriber whose events do not fit is drained instead (it ends).
MAX_OWED: Final = 64 << 20


class Store(Record):
    """Where connections go when the daemon stops: systemd's store."""

    #: ``notify(message, fds)``: one sd_notify message with descriptors.
    notify: Callable[[str, list[int]], bool]


def state_limit(max_connections: int, max_buffered_bytes: int) -> int:
    """The largest state an instance with these limits writes: frames read
    in part, events owed, and a little per connection."""
    return max_buffered_bytes + MAX_OWED + 256 * max_connections + 4096


class HandoverError(Exception):
    """A stored state cannot be used; ``str()`` says why."""


class Resume(Record):
    """What the next instance needs to resume one connection."""

    #: The socket's inode (``fstat().st_ino``): which stored socket this is.
    inode: int
    #: Bytes received that are not a whole frame yet.
    received: bytes = b""
    #: Bytes owed to the client that were not written yet (events).
    owed: bytes = b""
    #: The events it subscribed to (None: not a subscriber).
    events: tuple[str, ...] | None = None


def encode(resumes: Iterable[Resume], daemon_version: str) -> bytes:
    """The state for ``resumes``: a checked header and a CBOR body."""
    import hashlib  # late: only a hand-over needs it (start-up time)

    body = cbor2.dumps(
        {
            "daemon": daemon_version,
            "connections": [
                [r.inode, r.received, r.owed, None if r.events is None else list(r.events)]
                for r in resumes
            ],
        }
    )
    return _HEAD.pack(_MAGIC, FORMAT, len(body), hashlib.sha256(body).digest()) + body


def decode(data: bytes) -> tuple[str, dict[int, Resume]]:
    """(the writer's daemon version, resumes by inode) from :func:`encode`'s
    output; raise :class:`HandoverError` for anything else."""
    import hashlib

    if len(data) < _HEAD.size:
        raise HandoverError(f"{len(data)} bytes: shorter than the header")
    magic, fmt, length, digest = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise HandoverError("not a mytimerd hand-over state")
    if fmt != FORMAT:
        raise HandoverError(f"format {fmt}, this daemon reads format {FORMAT} only")
    body = data[_HEAD.size :]
    if len(body) != length:
        raise HandoverError(f"body of {len(body)} bytes, the header says {length}")
    if hashlib.sha256(body).digest() != digest:
        raise HandoverError("the body does not match its checksum")
    try:
        value = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise HandoverError(f"the body is not CBOR: {exc}") from None
    return _parse(value)


def _parse(value: Any) -> tuple[str, dict[int, Resume]]:
    if not isinstance(value, dict) or set(value) != {"daemon", "connections"}:
        raise HandoverError("the body is not a map of daemon and connections")
    version, items = value["daemon"], value["connections"]
    if not isinstance(version, str) or not isinstance(items, list):
        raise HandoverError("daemon must be text and connections an array")
    out: dict[int, Resume] = {}
    for n, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) == 4
            and type(item[0]) is int
            and item[0] > 0
            and isinstance(item[1], bytes)
            and isinstance(item[2], bytes)
            and (
                item[3] is None
                or (isinstance(item[3], list) and all(isinstance(e, str) for e in item[3]))
            )
        ):
            raise HandoverError(f"connection {n} is not [inode, received, owed, events]")
        if item[0] in out:
            raise HandoverError(f"connection {n}: inode {item[0]} listed twice")
        events = None if item[3] is None else tuple(item[3])
        out[item[0]] = Resume(item[0], item[1], item[2], events)
    return version, out


def inode_of(fd: int) -> int:
    """The inode of the socket ``fd``: the key of its :class:`Resume`."""
    return os.fstat(fd).st_ino


def store(notify: Callable[[str, list[int]], bool], conn_fds: list[int], state: bytes) -> int:
    """Put ``conn_fds`` (in the carrier) and then ``state`` (in a sealed
    memfd) into the store; return how many connections went in: all, or
    none. The state goes last: a store without it makes the next instance
    close what it finds, never guess. ``notify(message, fds)`` sends one
    sd_notify message."""
    import socket  # late: only the hand-over needs it here

    keep, carrier = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        keep.settimeout(1.0)  # a full queue fails the hand-over, never hangs it
        for start in range(0, len(conn_fds), BATCH):
            socket.send_fds(keep, [b"c"], conn_fds[start : start + BATCH])
        keep.close()  # the carrier alone holds them now
        # FDPOLL=0: the carrier's peer is closed, which systemd's polling
        # would take for a connection gone and drop it, and all with it.
        if not notify(f"FDSTORE=1\nFDNAME={CONN_NAME}\nFDPOLL=0", [carrier.fileno()]):
            return 0
    except OSError as exc:  # ETOOMANYREFS, a full queue: nothing is handed over
        log.error("cannot queue the connections for the hand-over: %s", exc)
        return 0
    finally:
        keep.close()
        carrier.close()
    try:
        fd = _sealed_memfd(state)
    except OSError as exc:  # no memory, or memfd_create filtered out
        log.error("cannot write the state of the hand-over: %s", exc)
        return 0
    try:
        if not notify(f"FDSTORE=1\nFDNAME={STATE_NAME}", [fd]):
            return 0
    finally:
        os.close(fd)
    return len(conn_fds)


def unload(carrier: int, limit: int) -> list[int]:
    """The connections queued in a stored carrier (closed here), ``limit``
    at most: any more are closed."""
    import socket

    out: list[int] = []
    sock = socket.socket(fileno=carrier)
    try:
        sock.setblocking(False)
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(sock, 1, BATCH + 3, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EMFILE: what is left stays queued and closes with it
                log.error("cannot take every connection out of the carrier: %s", exc)
                break
            if not fds:
                break  # EOF: nothing more queued
            for fd in fds:
                if len(out) < limit:
                    out.append(fd)
                else:
                    os.close(fd)
    finally:
        sock.close()
    return out


def _sealed_memfd(data: bytes) -> int:
    """A memfd holding ``data`` that nobody can change any more."""
    fd = os.memfd_create(STATE_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        import fcntl  # late: only the hand-over needs it

        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state(fd: int, limit: int) -> bytes:
    """The contents of a stored state memfd, at most ``limit`` bytes;
    closes ``fd``."""
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise HandoverError(f"{size} bytes, more than the {limit} it may take")
        chunks = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise HandoverError(f"cannot read it: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
