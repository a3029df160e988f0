"""Every daemon error name and every limit, against a real daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest

from mytimerd.protocol import wire
from mytimerd.protocol.limits import Limits
from tests.support.daemon import (
    Daemon,
    TcpAddress,
    WireClient,
    free_tcp_port,
    mytimerd_command,
    start_daemon,
)


def test_unknown_method(daemon: Daemon) -> None:
    with daemon.client() as c:
        resp = c.call("frobnicate")
        assert resp.ret == 1
        assert resp.body.startswith(
            b"mytimerd.UnknownMethod: no method 'frobnicate' (try: echo, version"
        )
        assert c.call_value("version") == "nim-timer v0.1.0"  # the connection lives on


def test_invalid_cbor_and_parameters_never_reach_the_library(daemon: Daemon) -> None:
    with daemon.client() as c:
        assert c.call("echo", b"") == wire.Response(
            1,
            b"mytimerd.InvalidCBOR: empty payload: expected one CBOR item (an empty request is a0)",
        )
        assert c.call("version", b"\xa0\xa0").body == (
            b"mytimerd.InvalidCBOR: trailing bytes: the item ends at byte 1 of a 2-byte payload"
        )
        bad = c.call("echo", cbor2.dumps({"req": {"message": "x", "delayMs": 9_300_000_000_000}}))
        assert bad.body.startswith(b"mytimerd.InvalidParameter: req.delayMs: 9300000000000 is out")
        sched = c.call("schedule", cbor2.dumps({"schedule": {"startAtMs": 2**63 - 1, "jitter": 9}}))
        assert sched.body.startswith(b"mytimerd.InvalidParameter: schedule.jitter:")
        stats = c.call_value("mytimerd.stats")
    assert isinstance(stats, dict)
    assert stats["errors"] == {"InvalidCBOR": 2, "InvalidParameter": 2}
    assert stats["calls"]["echo"]["daemonErrors"] == 2


def test_library_errors_pass_through_verbatim(daemon: Daemon) -> None:
    with daemon.client() as c:
        resp = c.call("schedule", cbor2.dumps({"job": {"name": ""}, "retry": {"maxAttempts": 1}}))
    assert resp == wire.Response(1, b"job name must not be empty")


def test_method_name_too_long_is_answered_and_closed(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory("--max-method-len", "17")
    with d.client() as c:
        assert c.call("mytimerd.describe").ret == 0  # 17 bytes: at the limit
        resp = c.call("x" * 18)
        assert resp.body == (
            b"mytimerd.MethodNameTooLong: method name of 18 bytes exceeds the limit of 17"
        )
        assert c.at_eof()


def test_frame_too_large_is_answered_without_reading_the_payload(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory("--max-payload", "64")
    with d.client() as c:
        assert c.call("echo", cbor2.dumps({"req": {"message": "y" * 48}})).ret == 0  # 64 bytes
        # Only the header: the answer must come without the 5 MB payload.
        c.send(wire.encode_request("echo", b"")[:-4] + (5_000_000).to_bytes(4, "big"))
        assert (
            c.recv().body
            == b"mytimerd.FrameTooLarge: payload of 5000000 bytes exceeds the limit of 64"
        )
        assert c.at_eof()


def test_default_payload_limit_is_one_mebibyte(daemon: Daemon) -> None:
    assert Limits().max_payload == 1048576
    message = "z" * (1048576 - 40)
    payload = cbor2.dumps({"req": {"message": message}})
    assert len(payload) <= 1048576
    with daemon.client() as c:
        assert c.call_value("echo", {"req": {"message": message}}) == {
            "echoed": message,
            "timerName": "demo",
        }
        c.send(wire.encode_request("echo", b"")[:-4] + (1048577).to_bytes(4, "big"))
        assert c.recv().body.startswith(b"mytimerd.FrameTooLarge: payload of 1048577 bytes")


def test_too_many_connections(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory("--max-connections", "2")
    a, b = d.client(), d.client()
    assert a.call("version").ret == 0 and b.call("version").ret == 0
    with d.client() as third:
        resp = third.call("version")
        assert resp.body == (
            b"mytimerd.TooManyConnections: the daemon has 2 connections open in all "
            b"(--max-connections 2); retry later"
        )
        assert third.at_eof()
    a.close()
    deadline = time.monotonic() + 5
    while True:  # the freed place is available again
        with d.client() as again:
            if again.call("version").ret == 0:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    b.close()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_too_many_connections_per_peer(
    daemon_factory: Callable[..., Daemon], transport: str, event_loop: str
) -> None:
    """One peer (a uid on unix, an address on TCP) cannot take every slot."""
    args = ["--max-connections-per-peer", "2", "--event-loop", event_loop]
    if transport == "tcp":
        port = free_tcp_port()
        address = TcpAddress("127.0.0.1", port)
        d = daemon_factory(*args, "--tcp", "127.0.0.1", str(port), address=address)
        peer = b"ip:127.0.0.1"
    else:
        d = daemon_factory(*args)
        peer = f"uid:{os.getuid()}".encode()
    a, b = d.client(), d.client()
    assert a.call("version").ret == 0 and b.call("version").ret == 0
    with d.client() as third:
        assert third.call("version").body == (
            b"mytimerd.TooManyConnections: " + peer + b" has 2 connections open, its share "
            b"(--max-connections-per-peer 2); other peers are not affected; retry later"
        )
    a.close()
    deadline = time.monotonic() + 5
    while True:  # the peer's freed place is available again
        with d.client() as again:
            if again.call("version").ret == 0:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    b.close()


def test_timeout(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory("--timeout", "0.3")
    with d.client() as c:
        start = time.monotonic()
        resp = c.call("echo", cbor2.dumps({"req": {"message": "slow", "delayMs": 2000}}))
        elapsed = time.monotonic() - start
        assert resp.body == b"mytimerd.Timeout: echo did not complete within 0.3 s (--timeout)"
        assert 0.3 <= elapsed < 1.5
        assert c.call_value("version") == "nim-timer v0.1.0"
        time.sleep(2)  # the late result is dropped, not delivered
        stats = c.call_value("mytimerd.stats")
    assert isinstance(stats, dict)
    assert stats["lateResults"] == 1 and stats["errors"]["Timeout"] == 1


def test_in_flight_limit_applies_backpressure(daemon_factory: Callable[..., Daemon]) -> None:
    """With --max-in-flight 2, ten pipelined 200 ms echoes run at most two at a time."""
    d = daemon_factory("--max-in-flight", "2")
    with d.client() as c, d.client() as observer:
        start = time.monotonic()
        for i in range(10):
            c.request("echo", cbor2.dumps({"req": {"message": str(i), "delayMs": 200}}))
        peak = 0
        while time.monotonic() - start < 0.6:
            stats = observer.call_value("mytimerd.stats")
            assert isinstance(stats, dict)
            peak = max(peak, stats["inFlight"])
            time.sleep(0.02)
        replies = [cbor2.loads(c.recv().body)["echoed"] for _ in range(10)]
        elapsed = time.monotonic() - start
    assert replies == [str(i) for i in range(10)]
    assert peak == 2
    assert elapsed >= 0.95  # five rounds of 200 ms


def test_limit_options_reject_nonsense(daemon_factory: Callable[..., Daemon]) -> None:
    import subprocess
    import sys

    for bad, why in (
        (["--max-payload", "0"], ""),
        (["--timeout", "-1"], ""),
        (["--tcp", "h", "port"], ""),
        (["--lane-slots", "1025"], "--lane-slots 1025: at most 1024"),
        (["--read-ahead-wait", "1001"], "--read-ahead-wait 1001: at most 1000"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "mytimerd", *bad], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2, (bad, proc.stderr)
        assert f"error: {why}" in proc.stderr, proc.stderr


def _client_from(port: int, source: str) -> WireClient:
    """A TCP client of 127.0.0.1:``port`` from the loopback address ``source``."""
    return WireClient(TcpAddress("127.0.0.1", port), source=source)


def test_descriptor_limit_refuses_answers_logs_and_recovers(tmp_path: Path) -> None:
    """Near RLIMIT_NOFILE connections are refused with an answer, counted and
    logged once (rate-limited), never closed silently; no peer takes more
    than half of the descriptors; freed descriptors are used again."""
    port = free_tcp_port()
    command = [
        "prlimit",
        "--nofile=128:128",
        *mytimerd_command("--tcp", "127.0.0.1", str(port)),
    ]
    d = start_daemon(tmp_path, command=command, address=TcpAddress("127.0.0.1", port))
    try:
        held: dict[str, list[WireClient]] = {}
        refused: list[bytes] = []
        for i in range(120):  # the budget is 128 - 32 reserved, minus what the daemon uses
            source = f"127.0.0.{2 + i % 4}"
            c = _client_from(port, source)
            reply = c.call("version")
            if reply.ret == 0:
                held.setdefault(source, []).append(c)
            else:
                refused.append(reply.body)
                c.close()
        total = sum(len(v) for v in held.values())
        assert 60 <= total <= 96, total
        assert max(len(v) for v in held.values()) <= 48  # half the budget at most
        assert refused and all(
            b.startswith(b"mytimerd.TooManyConnections: the daemon is at its descriptor limit")
            for b in refused
        )
        assert d.log().count("the daemon is at its descriptor limit") == 1  # rate-limited
        clients = [c for v in held.values() for c in v]
        for c in clients[:10]:
            c.close()
        deadline = time.monotonic() + 5
        while True:  # descriptors freed: served again
            with _client_from(port, "127.0.0.9") as again:
                if again.call("version").ret == 0:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with _client_from(port, "127.0.0.9") as c:
            stats = cbor2.loads(c.call("mytimerd.stats").body)
        assert stats["connections"]["refusedAtFdLimit"] >= len(refused)
        for c in clients[10:]:
            c.close()
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
