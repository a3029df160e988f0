"""Restarts no client notices: connections handed over through the file
descriptor store (tests/support/fdstore.py plays systemd).

A raw-frame client (the original example's framing, no reconnect logic)
keeps one connection across restarts; what it sent in part, what was in
flight and its subscription carry over; a state that cannot be trusted
closes the connections instead of misreading them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from mytimerd.daemon import handover
from mytimerd.protocol import wire
from tests.support.daemon import TcpAddress, UnixAddress, WireClient
from tests.support.fdstore import FakeSystemd

VERSION = wire.encode_request("version", b"\xa0")


def echo(message: str, delay_ms: int = 0) -> bytes:
    """An echo request frame."""
    return wire.encode_request(
        "echo", cbor2.dumps({"req": {"message": message, "delayMs": delay_ms}})
    )


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    """A fake systemd with room for 64 descriptors and a running instance."""
    fake = FakeSystemd(tmp_path, capacity=64)
    try:
        fake.start()
        yield fake
    finally:
        fake.close()


def client(systemd: FakeSystemd) -> WireClient:
    """A raw-frame connection to the unix socket."""
    return WireClient(UnixAddress(str(systemd.path)))


def test_a_connection_survives_restarts_with_a_frame_sent_in_part(systemd: FakeSystemd) -> None:
    c = client(systemd)
    assert c.call("version").ret == wire.RET_OK
    tcp = WireClient(TcpAddress("127.0.0.1", systemd.tcp_port))
    assert tcp.call("version").ret == wire.RET_OK
    for n in range(3):
        c.send(VERSION[:5])  # half a frame: the next instance reads the rest
        pause = systemd.restart()
        c.send(VERSION[5:])
        assert c.recv().ret == wire.RET_OK, f"restart {n}"
        assert c.call("version").ret == wire.RET_OK
        assert tcp.call("version").ret == wire.RET_OK
        assert pause < 10
    log = systemd.log()
    assert log.count("handed 2 connections to systemd's file descriptor store") == 3, log
    assert log.count("took back 2 connections") == 3, log
    # Taken out of the store at once: a crash now must not resume them twice.
    assert systemd.names() == []


def test_calls_in_flight_and_pipelined_are_all_answered(systemd: FakeSystemd) -> None:
    c = client(systemd)
    c.send(b"".join(echo(f"m{i}", 30) for i in range(100)))
    time.sleep(0.05)
    systemd.restart()
    answers = [c.recv() for _ in range(100)]
    assert [a.ret for a in answers] == [wire.RET_OK] * 100
    assert [cbor2.loads(a.body)["echoed"] for a in answers] == [f"m{i}" for i in range(100)]


def test_a_subscriber_gets_the_events_of_the_next_instance(systemd: FakeSystemd) -> None:
    sub = client(systemd)
    assert sub.call("mytimerd.subscribe").ret == wire.RET_OK
    systemd.restart()
    with client(systemd) as caller:
        assert caller.call("echo", cbor2.dumps({"req": {"message": "after", "delayMs": 0}}))
    event = sub.recv()
    assert event.ret == wire.RET_OK
    assert cbor2.loads(event.body) == {
        "eventType": "on_echo_fired",
        "payload": {"message": "after", "echoCount": 1},
    }
    # Still an event stream: a call ends it, as on any subscribed connection.
    sub.request("version")
    assert b"Subscribed" in sub.recv().body


def closed(c: WireClient, timeout: float) -> bool:
    """Whether the daemon ends ``c`` within ``timeout`` (False: still open)."""
    try:
        return c.at_eof(timeout)
    except TimeoutError:
        return False


def state_memfd(data: bytes) -> int:
    """A memfd holding ``data``."""
    fd = os.memfd_create("tampered")
    os.write(fd, data)
    return fd


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (b"garbage", "shorter than the header"),
        (handover.encode([], "0")[:-1] + b"\xff", "does not match its checksum"),
        (handover.encode([], "0").replace(b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", 1), "format 2"),
        (None, "no state was stored"),
    ],
    ids=["garbage", "checksum", "other-format", "missing"],
)
def test_a_state_that_cannot_be_trusted_closes_the_connections(
    systemd: FakeSystemd, state: bytes | None, why: str
) -> None:
    c = client(systemd)
    c.send(VERSION[:7])
    assert systemd.stop() == 0
    if state is None:
        systemd.replace(handover.STATE_NAME, -1)
        systemd.store = [e for e in systemd.store if e[1] != handover.STATE_NAME]
    else:
        systemd.replace(handover.STATE_NAME, state_memfd(state))
    systemd.start()
    assert c.at_eof(), "a connection without a trusted state must be closed"
    assert why in systemd.log()
    assert "closed 1 connections from systemd's file descriptor store" in systemd.log()
    with client(systemd) as fresh:  # and the daemon serves
        assert fresh.call("version").ret == wire.RET_OK


def test_a_crash_after_taking_them_back_closes_them(systemd: FakeSystemd) -> None:
    c = client(systemd)
    systemd.restart()
    assert systemd.proc is not None
    systemd.proc.send_signal(signal.SIGKILL)
    systemd.proc.wait()
    assert c.at_eof(), "nobody holds the socket any more: the client must see the end"


def test_a_new_instance_with_fewer_connections_takes_back_what_it_may(
    systemd: FakeSystemd,
) -> None:
    clients = [client(systemd) for _ in range(4)]
    for c in clients:
        assert c.call("version").ret == wire.RET_OK
    assert systemd.stop() == 0
    systemd.start("--max-connections", "2")
    ended = [closed(c, 0.5) for c in clients]
    assert sorted(ended) == [False, False, True, True]
    for c, gone in zip(clients, ended, strict=True):
        if not gone:
            assert c.call("version").ret == wire.RET_OK
    assert "took back 2 connections" in systemd.log()


@pytest.mark.parametrize("capacity", [0, 1])
def test_without_room_for_a_hand_over_the_daemon_drains_as_before(
    tmp_path: Path, capacity: int
) -> None:
    fake = FakeSystemd(tmp_path, capacity=capacity)
    try:
        fake.start()
        c = client(fake)
        assert c.call("version").ret == wire.RET_OK
        fake.restart()
        assert c.at_eof()
        assert "FDSTORE=1" not in "\n".join(fake.messages)
    finally:
        fake.close()


def test_a_client_that_hung_up_in_the_store_is_simply_gone(systemd: FakeSystemd) -> None:
    keep, leave = client(systemd), client(systemd)
    assert keep.call("version").ret == wire.RET_OK
    assert systemd.stop() == 0
    leave.sock.shutdown(socket.SHUT_RDWR)
    leave.close()
    systemd.start()
    assert keep.call("version").ret == wire.RET_OK


def test_a_client_that_does_not_read_delays_the_hand_over_by_linger_at_most(
    systemd: FakeSystemd,
) -> None:
    """An attacker fills its socket with answers it never reads: it cannot
    hold the hand-over hostage (it is drained after --linger) and the
    bystander's connection is resumed."""
    bystander = client(systemd)
    attacker = client(systemd)
    attacker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    describe = wire.encode_request("mytimerd.describe", b"\xa0")
    attacker.sock.settimeout(0.2)
    with contextlib.suppress(TimeoutError, BlockingIOError):
        for _ in range(2000):  # until the daemon stops reading it (backpressure)
            attacker.send(describe * 8)
    began = time.monotonic()
    assert systemd.stop() == 0
    stopped = time.monotonic() - began
    systemd.start()
    assert bystander.call("version").ret == wire.RET_OK
    assert stopped < 1.0 + 1.5, f"the stop took {stopped:.2f} s (--linger is 1 s)"
    log = systemd.log()
    assert "took back 1 connections" in log, log
