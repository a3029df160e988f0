"""mytimerd serving real clients: vectors, concurrency, order, both timings."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest

from mytimerd.protocol import wire
from tests.support import callers
from tests.support.daemon import Daemon, TcpAddress, UnixAddress, WireClient, free_tcp_port

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "abi-vectors.json").read_text()
)
LIBRARY_ACCEPTS = [c for c in VECTORS["calls"] if "ok_hex" in c or "err_text" in c]


def echo(message: str, delay_ms: int) -> bytes:
    return cbor2.dumps({"req": {"message": message, "delayMs": delay_ms}})


@pytest.fixture(
    params=[
        ("async", "uvloop", "auto"),
        ("handoff", "uvloop", "auto"),
        ("async", "asyncio", "thread"),
        ("handoff", "asyncio", "thread"),
    ],
    ids=lambda p: "-".join(p),
)
def timed_daemon(request: pytest.FixtureRequest, daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon whose library delivers results after, or (handoff) before, the
    call returns; on either event loop, calling directly or from the submitter."""
    timing, loop, submit = request.param
    return daemon_factory(
        "--name",
        "demo",
        "--event-loop",
        loop,
        "--submit",
        submit,
        env={"MY_TIMER_SUBMIT_MODE": timing},
    )


@pytest.mark.parametrize("call", LIBRARY_ACCEPTS, ids=lambda c: c["name"])
def test_spec_vectors_through_the_daemon(timed_daemon: Daemon, call: dict[str, str]) -> None:
    """RET_OK bodies and library error texts arrive byte for byte, in both timings."""
    with timed_daemon.client() as c:
        resp = c.call(call["method"], bytes.fromhex(call["request_hex"]))
    if "ok_hex" in call:
        assert resp == wire.Response(0, bytes.fromhex(call["ok_hex"]))
    elif call["request_hex"] == "" or "as text" in call["name"]:
        # The daemon refuses these before the library sees them.
        assert resp.ret == 1 and resp.body.startswith(b"mytimerd.")
    else:
        assert resp == wire.Response(1, call["err_text"].encode())


def test_unix_tcp4_and_tcp6_at_once(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    """Self-bound unix, IPv4 and IPv6 listeners all serve the same context."""
    p4, p6 = free_tcp_port(), free_tcp_port("::1")
    d = daemon_factory("--tcp", "127.0.0.1", str(p4), "--tcp", "::1", str(p6), "--name", "x")
    for address in (d.address, TcpAddress("127.0.0.1", p4), TcpAddress("::1", p6)):
        with d.client() if address == d.address else WireClient(address) as c:
            assert c.call_value("echo", {"req": {"message": "m"}}) == {
                "echoed": "m",
                "timerName": "x",
            }


def test_pipelined_calls_run_concurrently_and_answer_in_order(timed_daemon: Daemon) -> None:
    """A slow echo first does not hold back the library, only the answer order."""
    with timed_daemon.client() as c:
        start = time.monotonic()
        c.request("echo", echo("slow", 300))
        for i in range(50):
            c.request("echo", echo(f"fast{i}", 0))
        c.request("version")
        answers = [c.recv() for _ in range(52)]
        elapsed = time.monotonic() - start
    assert cbor2.loads(answers[0].body)["echoed"] == "slow"
    assert [cbor2.loads(a.body)["echoed"] for a in answers[1:51]] == [f"fast{i}" for i in range(50)]
    assert cbor2.loads(answers[51].body) == "nim-timer v0.1.0"
    assert 0.3 <= elapsed < 2.0


def test_a_lone_client_answered_on_the_spot(timed_daemon: Daemon) -> None:
    """One client calling alone, whose answers the daemon waits for (and
    whose ``{}`` calls take the glue's quick path): one call at a time, then
    pipelined ``{}`` calls around calls of other kinds, in one read and cut
    across reads, are answered right and in order, and counted once each."""
    version = wire.encode_request("version", b"\xa0")
    empty_echo = wire.encode_request("echo", b"\xa0")  # {}: every key may be missing
    with timed_daemon.client() as c:
        for _ in range(100):
            assert c.call("version") == wire.Response(0, cbor2.dumps("nim-timer v0.1.0"))
        burst = (
            version * 5
            + wire.encode_request("echo", echo("held", 50))
            + version * 3
            + empty_echo
            + wire.encode_request("mytimerd.ping", b"\xa0")
            + version
        )
        cut = len(version) * 7 + 3  # in the middle of a frame
        c.send(burst[:cut])
        time.sleep(0.05)
        c.send(burst[cut:])
        answers = [c.recv() for _ in range(12)]
        stats = c.call_value("mytimerd.stats")
    values = [cbor2.loads(a.body) for a in answers]
    assert all(a.ret == wire.RET_OK for a in answers), answers
    assert values[:5] == ["nim-timer v0.1.0"] * 5
    assert values[5]["echoed"] == "held"
    assert values[6:9] == ["nim-timer v0.1.0"] * 3
    assert values[9]["echoed"] == ""
    assert values[10]["healthy"] is True
    assert values[11] == "nim-timer v0.1.0"
    assert isinstance(stats, dict)
    assert stats["calls"]["version"]["ok"] == 100 + 9
    assert stats["calls"]["echo"]["ok"] == 2
    assert stats["inFlight"] == 0 and stats["held"]["calls"] == stats["held"]["bytes"] == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_client_joining_a_lone_caller_is_served_at_once(
    daemon_factory: Callable[..., Daemon], loop: str
) -> None:
    """While one client calls alone as fast as it can (its next requests
    read ahead by the callback that answered the last), on either loop,
    another client's calls are answered within milliseconds and every
    answer of both is right. (The bounds on one read-ahead, which this
    Python caller seldom reaches as it is often slower than the wait, are
    tested in test_read_ahead_memory.py.)"""
    d = daemon_factory("--event-loop", loop)
    address = d.address
    assert isinstance(address, UnixAddress)
    lone = subprocess.Popen(
        callers.command(address, 1, 3),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    latencies = []
    with d.client() as c:
        for _ in range(200):
            started = time.perf_counter()
            assert c.call("version") == wire.Response(0, cbor2.dumps("nim-timer v0.1.0"))
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
    out, _ = lone.communicate(timeout=30)
    assert lone.returncode == 0
    latencies.sort()
    print(
        f"lone client: {int(out)} calls in 3 s; bystander p50 "
        f"{latencies[100] * 1e3:.2f} ms, p99 {latencies[198] * 1e3:.2f} ms, "
        f"max {latencies[-1] * 1e3:.2f} ms"
    )
    assert int(out) > 1000
    assert latencies[198] < 0.1, latencies[-5:]


def test_64_echoes_of_100ms_on_64_connections_finish_together(daemon: Daemon) -> None:
    """64 simultaneous 100 ms echoes take about 100 ms, not 6.4 s."""
    clients = [daemon.client() for _ in range(64)]
    start = time.monotonic()
    for i, c in enumerate(clients):
        c.request("echo", echo(str(i), 100))
    replies = [cbor2.loads(c.recv().body)["echoed"] for c in clients]
    elapsed = time.monotonic() - start
    for c in clients:
        c.close()
    assert replies == [str(i) for i in range(64)]
    assert elapsed < 1.0, elapsed


def test_many_clients_in_threads(daemon: Daemon) -> None:
    """Concurrent clients each get their own answers."""
    errors: list[str] = []

    def work(n: int) -> None:
        try:
            with daemon.client() as c:
                for i in range(50):
                    got = c.call_value("echo", {"req": {"message": f"{n}-{i}"}})
                    if got != {"echoed": f"{n}-{i}", "timerName": "demo"}:
                        errors.append(repr(got))
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_client_vanishing_mid_frame_or_with_calls_in_flight_costs_nothing(
    daemon: Daemon,
) -> None:
    """Half frames and abandoned calls leave no connection or call behind."""
    for _ in range(20):
        c = daemon.client()
        c.send(wire.encode_request("echo", echo("x", 0))[:9])
        c.close()
        c = daemon.client()
        c.request("echo", echo("bye", 200))
        c.request("version")
        c.close()
    deadline = time.monotonic() + 5
    with daemon.client() as c:
        while True:
            stats = c.call_value("mytimerd.stats")
            assert isinstance(stats, dict)
            if stats["connections"]["open"] == 1 and stats["inFlight"] == 0:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
        assert c.call_value("version") == "nim-timer v0.1.0"


def test_half_closed_client_still_gets_its_answers(daemon: Daemon) -> None:
    """A client that shuts down its write side after pipelining reads every answer."""
    with daemon.client() as c:
        c.request("echo", echo("a", 100))
        c.request("version")
        c.sock.shutdown(socket.SHUT_WR)
        assert cbor2.loads(c.recv().body)["echoed"] == "a"
        assert cbor2.loads(c.recv().body) == "nim-timer v0.1.0"
        assert c.at_eof()


def test_daemon_methods(daemon: Daemon) -> None:
    """describe, ping and stats answer with the documented shapes."""
    with daemon.client() as c:
        c.call_value("version")
        desc = c.call_value("mytimerd.describe")
        ping = c.call_value("mytimerd.ping")
        stats = c.call_value("mytimerd.stats")
    assert isinstance(desc, dict) and isinstance(ping, dict) and isinstance(stats, dict)
    assert desc["library"]["version"] == "nim-timer v0.1.0"
    assert desc["timerName"] == "demo"
    assert [m["name"] for m in desc["methods"]] == [
        "echo",
        "version",
        "complex",
        "schedule",
        "mytimerd.describe",
        "mytimerd.ping",
        "mytimerd.stats",
        "mytimerd.subscribe",
    ]
    assert all(m["available"] for m in desc["methods"])
    assert desc["interface"].endswith("my_timer-0.2.cddl")
    assert [e["name"] for e in desc["events"]] == ["on_echo_fired"]
    echo_req = desc["methods"][0]["request"]["fields"][0]
    assert [f["name"] for f in echo_req["fields"]] == ["message", "delayMs"]
    assert desc["limits"]["maxPayload"] == 1 << 20
    assert "mytimerd.Timeout" in desc["errors"]
    assert ping["healthy"] is True and ping["status"] == "ok"
    assert stats["calls"]["version"]["ok"] >= 1
    assert stats["latencyMs"]["version"]["count"] >= 1
    assert stats["connections"]["open"] == 1


def test_sigterm_drains_in_flight_calls(daemon_factory: Callable[..., Daemon]) -> None:
    """SIGTERM: the in-flight echo is answered, new connections refused, exit 0."""
    d = daemon_factory()
    c = d.client()
    c.request("echo", echo("drain", 700))
    time.sleep(0.1)
    d.send_signal(15)
    reply = c.recv()
    assert reply.ret == 0 and cbor2.loads(reply.body)["echoed"] == "drain"
    assert d.proc.wait(10) == 0
    assert not Path(d.address.path).exists()  # type: ignore[union-attr]
    assert "stopping: 1 calls in flight" in d.log()


def test_drain_deadline_answers_timeout(daemon_factory: Callable[..., Daemon]) -> None:
    """Calls still running at the drain deadline are answered Timeout: they were
    started, so ShuttingDown ("not started, send it again") would be wrong."""
    d = daemon_factory("--drain-timeout", "0.3")
    c = d.client()
    c.request("echo", echo("late", 5000))
    time.sleep(0.1)
    start = time.monotonic()
    d.send_signal(2)
    reply = c.recv()
    assert reply.ret == 1
    assert reply.body.startswith(b"mytimerd.Timeout: the daemon stopped before")
    assert d.proc.wait(10) == 0
    assert time.monotonic() - start < 5


def test_sighup_is_logged_and_not_fatal(daemon_factory: Callable[..., Daemon]) -> None:
    """SIGHUP (what operators send to reload) keeps the daemon serving."""
    d = daemon_factory()
    c = d.client()
    c.request("echo", echo("across the hangup", 300))
    time.sleep(0.1)
    d.send_signal(1)
    reply = c.recv()
    assert reply.ret == 0 and cbor2.loads(reply.body)["echoed"] == "across the hangup"
    assert c.call("version").ret == 0
    assert d.proc.poll() is None
    assert "SIGHUP: nothing to reload" in d.log()
    assert d.stop() == 0
