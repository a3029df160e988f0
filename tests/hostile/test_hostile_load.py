"""Issue 10, "No client can starve the others": each attack against a real
daemon process on a unix socket, bounded in count and time, with the bound the
daemon promises asserted.

Every test prints the figures it measured (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest

from mytimerd.protocol import interfaces, wire
from mytimerd.protocol.address import Address, TcpAddress, UnixAddress
from mytimerd.protocol.limits import Limits
from tests.support.daemon import Daemon, free_tcp_port, mytimerd_command, start_daemon
from tests.support.hostile import (
    MIB,
    Bystander,
    NotifyRecorder,
    Pipeliner,
    RssSampler,
    call_once,
    clean_command,
    connect,
    cpu_seconds,
    echo_payload,
    error_name,
    longest_gap,
    many_items_payload,
    percentile,
    read_responses,
    rss_bytes,
    stats,
)

KNOWN_METHODS = {m.name for m in interfaces.METHODS}
VERSION_FRAME = wire.encode_request("version", b"\xa0")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds about 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mth"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hostile_daemon(sock_dir: Path) -> Iterator[Callable[..., Daemon]]:
    """Start mytimerd on ``sock_dir/d.sock`` with the given options (and extra
    environment); every daemon still running after the test is killed."""
    started: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Daemon:
        path = sock_dir / f"d{len(started)}.sock"
        d = start_daemon(
            sock_dir,
            address=UnixAddress(str(path)),
            command=clean_command(mytimerd_command(*args, "--unix", str(path)), env),
        )
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def report(name: str, **figures: Any) -> None:
    """Print the figures a test measured, one line."""
    shown = ", ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\n[hostile] {name}: {shown}")


def ms(seconds: float) -> str:
    """``seconds`` as milliseconds, for reports."""
    return f"{seconds * 1000:.1f}ms"


def mib(n: int) -> str:
    """``n`` bytes as MiB, for reports."""
    return f"{n / MIB:.1f}MiB"


# 1. held calls -----------------------------------------------------------------------------------

#: 127 echoes of 512 KiB fill the default --max-held-bytes (64 MiB). The
#: slack covers what is not the budget: allocator arenas, uvloop read buffers
#: (256 KiB a read), the frame being parsed and its copies, answers in
#: transport buffers. The glue frees its copy of a request once the library
#: has taken it, so the budget costs about 1 x 64 MiB of RSS (it cost 2 x
#: while the glue kept its copy until the answer). Measured: about 65 MiB
#: above baseline, reached in round 0 and flat after it; with the budget
#: lifted (--max-held-bytes 1 GiB), 8 rounds reach about 1 GiB above
#: baseline and the test fails.
HELD_BUDGET = 64 * MIB
HELD_SLACK = 40 * MIB


def test_held_calls_are_bounded_by_the_budget(hostile_daemon: Callable[..., Daemon]) -> None:
    """8 rounds of 128 pipelined echo(512 KiB, delayMs 10^12) then a disconnect,
    with --timeout 1 and the default held limits: the daemon's RSS stays under
    baseline + 64 MiB + 100 MiB, calls past the budget are answered Overloaded
    at once, and version and mytimerd.ping keep answering promptly."""
    # One peer may take the whole budget here: this is the global bound's test
    # (the per-peer shares have theirs in tests/hostile/test_matrix.py).
    d = hostile_daemon(
        "--timeout",
        "1",
        "--max-held-calls-per-peer",
        str(Limits().max_held_calls),
        "--max-held-bytes-per-peer",
        str(Limits().max_held_bytes),
    )
    message = "x" * (512 * 1024)
    # Warm up the path a 512 KiB echo takes (parser buffers, allocator) first.
    resp, _ = call_once(d.address, "echo", echo_payload(message, 0))
    assert resp.ret == wire.RET_OK
    baseline = rss_bytes(d.proc.pid)
    frame = wire.encode_request("echo", echo_payload(message, 3_600_000))  # --max-delay
    burst = frame * 128
    sampler = RssSampler(d.proc.pid)
    version = Bystander(d.address, "version", interval=0.02)
    ping = Bystander(d.address, "mytimerd.ping", interval=0.02)
    first: list[wire.Response] = []
    last: list[wire.Response] = []
    last_seconds = 0.0
    per_round: list[int] = []
    started = time.monotonic()
    try:
        for round_ in range(8):
            with connect(d.address, timeout=30) as sock:
                t0 = time.monotonic()
                sock.sendall(burst)
                if round_ == 0:  # the held calls time out after 1 s
                    first = read_responses(sock, 128, 10)
                elif round_ == 7:  # the budget is full: all refused at once
                    last = read_responses(sock, 128, 10)
                    last_seconds = time.monotonic() - t0
                # otherwise: disconnect with the calls just sent in flight
            per_round.append(rss_bytes(d.proc.pid))
    finally:
        attack_seconds = time.monotonic() - started
        peak = sampler.stop()
        version_lat = version.stop()
        ping_lat = ping.stop()
    after = stats(d.address)
    names_first = [error_name(r) for r in first]
    names_last = [error_name(r) for r in last]
    held = after["held"]
    assert isinstance(held, dict)
    report(
        "held calls",
        baseline=mib(baseline),
        peak=mib(peak),
        growth=mib(peak - baseline),
        ceiling=mib(baseline + HELD_BUDGET + HELD_SLACK),
        held=held,
        rss_after_each_round=[mib(n) for n in per_round],
        round0={n: names_first.count(n) for n in set(names_first)},
        round7={n: names_last.count(n) for n in set(names_last)},
        round7_answered_in=ms(last_seconds),
        version_p99=ms(percentile(version_lat, 0.99)),
        version_max=ms(max(version_lat)),
        ping_p99=ms(percentile(ping_lat, 0.99)),
        ping_max=ms(max(ping_lat)),
        attack=f"{attack_seconds:.1f}s",
    )
    assert peak < baseline + HELD_BUDGET + HELD_SLACK, (mib(baseline), mib(peak))
    # Round 0: the budget takes 127 calls (answered Timeout after 1 s), the rest
    # is refused; round 7: the budget is still full (the library still holds
    # them, after the Timeout answers and 7 disconnects): every call refused.
    assert len(first) == 128 and len(last) == 128
    assert set(names_first) == {"Timeout", "Overloaded"}, names_first
    assert 100 <= names_first.count("Timeout") <= 128
    assert names_last == ["Overloaded"] * 128
    assert last_seconds < 2.0
    assert held["bytes"] <= HELD_BUDGET and held["calls"] == names_first.count("Timeout")
    for name, lat, bystander in (("version", version_lat, version), ("ping", ping_lat, ping)):
        assert not bystander.failures, bystander.failures
        assert len(lat) >= 20, (name, len(lat))
        assert percentile(lat, 0.99) < 0.5 and max(lat) < 1.0, (name, ms(max(lat)))


# 2. worst-shape requests --------------------------------------------------------------------

WATCHDOG_USEC = 2_000_000  # the daemon pings every second


def test_worst_shape_requests_are_refused_cheaply(
    hostile_daemon: Callable[..., Daemon], sock_dir: Path
) -> None:
    """4 clients send 1 MiB ``complex`` requests of a million one-byte items
    without stopping for 6 s: each is refused InvalidCBOR naming --max-items, a
    bystander's version p99 stays under 500 ms and WATCHDOG=1 (every second,
    half of WATCHDOG_USEC=2 s) never misses for 2 s."""
    notify = NotifyRecorder(sock_dir / "notify.sock")
    try:
        d = hostile_daemon(
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        )
        frame = wire.encode_request("complex", many_items_payload(MIB))
        bystander = Bystander(d.address, "version", interval=0.01)
        time.sleep(0.3)
        start = time.monotonic()
        cpu_start = cpu_seconds(d.proc.pid)
        attackers = [Pipeliner(d.address, lambda i: frame, window=4) for _ in range(4)]
        time.sleep(6.0)
        results = [a.join(timeout=15) for a in attackers]
        end = time.monotonic()
        cpu = (cpu_seconds(d.proc.pid) - cpu_start) / (end - start)
        latencies = bystander.stop()
        for a in attackers:
            a.close()
        pings = notify.times("WATCHDOG=1", start, end)
        gap = longest_gap(pings, start, end)
    finally:
        notify.close()
    answers = [r for res in results for r in res.responses]
    report(
        "worst shape",
        requests=len(answers),
        per_second=f"{len(answers) / (end - start):.0f}",
        daemon_cpu=f"{cpu:.0%}",
        version_calls=len(latencies),
        version_p50=ms(percentile(latencies, 0.5)),
        version_p99=ms(percentile(latencies, 0.99)),
        version_max=ms(max(latencies)),
        watchdog_pings=len(pings),
        longest_watchdog_gap=f"{gap:.2f}s",
        first_refusal=answers[0].body[:100] if answers else None,
    )
    for resp in answers:
        assert error_name(resp) == "InvalidCBOR" and b"--max-items" in resp.body, resp.body[:200]
    for res in results:
        assert res.eof and not res.reset and res.send_error is None, res
        assert len(res.responses) == res.sent >= 5
    assert not bystander.failures, bystander.failures
    assert len(latencies) >= 50
    assert percentile(latencies, 0.99) < 0.5
    assert len(pings) >= 4 and gap < 2.0, (gap, pings)


# 3. stats keyed by known names -------------------------------------------------------------------


def random_name(rng: random.Random, length: int) -> bytes:
    """A method name nobody knows: ASCII letters half the time, any bytes otherwise."""
    if rng.random() < 0.5:
        return "".join(rng.choices(string.ascii_letters, k=length)).encode()
    return rng.randbytes(length)


def test_random_method_names_do_not_grow_the_stats(hostile_daemon: Callable[..., Daemon]) -> None:
    """20,000 requests with random 256-byte method names (UnknownMethod), 200
    frames too large (--max-payload 1024) and 50 names too long, each name
    random: mytimerd.stats stays under 16 KB and keys calls (and latencies)
    only by known method names and "(unknown)"."""
    d = hostile_daemon("--max-payload", "1024")
    rng = random.Random(10)
    names = [random_name(rng, 256) for _ in range(20_000)]
    per_conn = 5_000

    def frames(k: int) -> Callable[[int], bytes]:
        return lambda i: wire.encode_request(names[k * per_conn + i], b"\xa0")

    attackers = [
        Pipeliner(d.address, frames(k), max_requests=per_conn, window=512) for k in range(4)
    ]
    results = [a.join(timeout=30, stop=False) for a in attackers]
    for a in attackers:
        a.close()
    finals = []
    for i in range(250):
        name = random_name(rng, 256 if i < 200 else 300)
        with connect(d.address) as sock:
            # A payload length past --max-payload: answered without being read.
            sock.sendall(len(name).to_bytes(4, "big") + name + (2048).to_bytes(4, "big"))
            finals.extend(read_responses(sock, 1, 5))
    after = stats(d.address)
    calls = after["calls"]
    latency = after["latencyMs"]
    assert isinstance(calls, dict) and isinstance(latency, dict)
    report(
        "stats names",
        unknown_method_answers=sum(len(r.responses) for r in results),
        final_errors={
            n: [error_name(r) for r in finals].count(n)
            for n in ("FrameTooLarge", "MethodNameTooLong")
        },
        stats_bytes=after["_bytes"],
        calls_keys=sorted(calls),
        unknown=calls.get("(unknown)"),
    )
    for res in results:
        assert res.sent == per_conn and len(res.responses) == per_conn, res.sent
        assert {error_name(r) for r in res.responses} == {"UnknownMethod"}
    assert [error_name(r) for r in finals] == ["FrameTooLarge"] * 200 + ["MethodNameTooLong"] * 50
    size = after["_bytes"]
    assert isinstance(size, int) and size < 16_000
    assert set(calls) <= KNOWN_METHODS | {"(unknown)"}, sorted(calls)[:5]
    assert set(latency) <= KNOWN_METHODS | {"(unknown)"}, sorted(latency)[:5]
    assert calls["(unknown)"]["daemonErrors"] >= 20_250
    errors = after["errors"]
    assert isinstance(errors, dict)
    assert errors["UnknownMethod"] >= 20_000 and errors["FrameTooLarge"] >= 200


# 4. backpressure ---------------------------------------------------------------------------------

BACKPRESSURE_SLACK = 100 * MIB


def test_clients_that_do_not_read_are_held_back(hostile_daemon: Callable[..., Daemon]) -> None:
    """8 connections pipeline mytimerd.describe for 4 s without reading a byte:
    the daemon stops reading from them (each gets only as far as the socket
    buffers and --max-in-flight allow), its RSS stays under baseline + 100 MiB,
    and a bystander is served throughout."""
    d = hostile_daemon()
    baseline = rss_bytes(d.proc.pid)
    # 64 requests per write: the kernel's per-write overhead would otherwise
    # stop a non-reading client after ~120 tiny requests; this way each
    # connection pushes thousands before the socket buffers fill.
    describe = wire.encode_request("mytimerd.describe", b"\xa0") * 64
    describe_answer, _ = call_once(d.address, "mytimerd.describe")
    sampler = RssSampler(d.proc.pid)
    bystander = Bystander(d.address, "version", interval=0.01)
    attackers = [Pipeliner(d.address, lambda i: describe, read=False) for _ in range(8)]
    time.sleep(2.0)
    at_2s = [a.bytes_sent for a in attackers]
    cpu_2s = cpu_seconds(d.proc.pid)
    time.sleep(2.0)
    at_4s = [a.bytes_sent for a in attackers]
    cpu = (cpu_seconds(d.proc.pid) - cpu_2s) / 2.0
    peak = sampler.stop()
    latencies = bystander.stop()
    open_during = stats(d.address)["connections"]
    for a in attackers:
        a.close()
    report(
        "backpressure",
        baseline=mib(baseline),
        peak=mib(peak),
        growth=mib(peak - baseline),
        describe_answer_bytes=len(describe_answer.body),
        sent_per_conn_kib=[n // 1024 for n in at_4s],
        daemon_cpu_last_2s=f"{cpu:.0%}",
        version_calls=len(latencies),
        version_p99=ms(percentile(latencies, 0.99)),
        version_max=ms(max(latencies)),
        connections=open_during,
    )
    assert peak < baseline + BACKPRESSURE_SLACK
    # The daemon stopped reading: nothing more got through in the last 2 s, and
    # what did is a few socket buffers' worth, not 4 s of a pipelining client.
    assert at_2s == at_4s, (at_2s, at_4s)
    assert max(at_4s) < 4 * MIB
    assert not bystander.failures, bystander.failures
    assert len(latencies) >= 100
    assert percentile(latencies, 0.99) < 0.5


# 5. idle connections -----------------------------------------------------------------------------


def test_half_frames_do_not_keep_connections_open(hostile_daemon: Callable[..., Daemon]) -> None:
    """With --idle-timeout 1, 500 connections each holding half a frame (100 of
    them trickling one more byte of it every 0.25 s) are all closed within 3 s
    (EOF seen on each), stats count them in idleClosed, a client calling every
    0.2 s meanwhile stays connected, and new connections are served."""
    d = hostile_daemon("--idle-timeout", "1")
    # A frame announcing a 1000-byte payload, never completed.
    half = wire.encode_request("echo", b"\xa0" * 1000)[:20]
    socks: list[socket.socket] = []
    opened: list[float] = []
    closed: dict[int, float] = {}
    busy = Bystander(d.address, "version", interval=0.2)
    busy_started = time.monotonic()
    try:
        for _ in range(500):
            s = connect(d.address)
            s.sendall(half[:12])
            socks.append(s)
            opened.append(time.monotonic())
        for s in socks:
            s.setblocking(False)
        deadline = opened[-1] + 4.0
        next_trickle = time.monotonic()
        sent = dict.fromkeys(range(100), 12)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_trickle:  # slowloris: one byte at a time, never a frame
                for i in [i for i in sent if i not in closed and sent[i] < len(half)]:
                    try:
                        socks[i].send(half[sent[i] : sent[i] + 1])
                        sent[i] += 1
                    except OSError:
                        pass
                next_trickle = now + 0.25
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    data = s.recv(64)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                assert data == b"", data  # nothing is ever answered to half a frame
                closed[i] = time.monotonic()
            time.sleep(0.02)
        # The busy client lives through at least two idle sweeps past its
        # first second.
        time.sleep(max(0.0, busy_started + 3.0 - time.monotonic()))
        latencies = busy.stop()
        after = stats(d.address)
        resp, seconds = call_once(d.address, "version")
    finally:
        for s in socks:
            s.close()
    lifetimes = [closed[i] - opened[i] for i in closed]
    report(
        "idle",
        closed=len(closed),
        lifetime_min=f"{min(lifetimes):.2f}s" if lifetimes else None,
        lifetime_max=f"{max(lifetimes):.2f}s" if lifetimes else None,
        idle_closed=after["connections"],
        busy_calls=len(latencies),
        new_version=ms(seconds),
    )
    assert len(closed) == 500, f"{500 - len(closed)} connections still open after 4 s"
    assert max(lifetimes) < 3.0 and min(lifetimes) > 0.9
    connections = after["connections"]
    assert isinstance(connections, dict)
    assert connections["idleClosed"] >= 500
    assert not busy.failures, busy.failures  # the busy client was never closed
    assert len(latencies) >= 10
    assert resp.ret == wire.RET_OK and seconds < 1.0


# 6. connections per peer -------------------------------------------------------------------------


def open_and_classify(
    address: Address, count: int, source: str | None = None
) -> tuple[list[socket.socket], list[str]]:
    """Open ``count`` connections (kept open), then ask each for ``version``:
    "ok" if served, else the error name it got."""
    socks = [connect(address, timeout=5, source=source) for _ in range(count)]
    kinds = []
    for s in socks:
        with contextlib.suppress(OSError):  # a refused one may be closed already
            s.sendall(VERSION_FRAME)
        got = read_responses(s, 1, 5)
        if got and got[0].ret == wire.RET_OK:
            kinds.append("ok")
        else:
            kinds.append(str(error_name(got[0])) if got else "nothing")
    return socks, kinds


def test_one_peer_cannot_take_every_connection(
    hostile_daemon: Callable[..., Daemon],
) -> None:
    """--max-connections-per-peer 50: one unix peer opening 60 gets 50 served and
    10 TooManyConnections; a TCP client (another peer) is served meanwhile; on
    TCP, 127.0.0.1 is capped at 50 while 127.0.0.2 still connects."""
    port = free_tcp_port()
    tcp = TcpAddress("127.0.0.1", port)
    d = hostile_daemon("--max-connections-per-peer", "50", "--tcp", "127.0.0.1", str(port))
    held: list[socket.socket] = []
    try:
        socks, unix_kinds = open_and_classify(d.address, 60)
        held += socks
        resp, _ = call_once(tcp, "version")  # the unix peer is full; TCP is another
        tcp_served = resp.ret == wire.RET_OK
        socks, tcp_kinds = open_and_classify(tcp, 51)
        held += socks
        # The same listener from another source address is another peer.
        socks, other_src = open_and_classify(tcp, 3, "127.0.0.2")
        held += socks
    finally:
        for s in held:
            s.close()
    report(
        "per peer",
        unix={k: unix_kinds.count(k) for k in set(unix_kinds)},
        tcp_127_0_0_1={k: tcp_kinds.count(k) for k in set(tcp_kinds)},
        from_127_0_0_2=other_src,
    )
    assert unix_kinds.count("ok") == 50 and unix_kinds.count("TooManyConnections") == 10
    assert tcp_served
    assert tcp_kinds.count("ok") == 50 and tcp_kinds.count("TooManyConnections") == 1
    assert other_src == ["ok"] * 3


# 7. drain under load -----------------------------------------------------------------------------


def echo_frame(conn: int) -> Callable[[int], bytes]:
    """Frames of connection ``conn``: echo(its index, a delay of 0..20 ms)."""

    def frame(i: int) -> bytes:
        return wire.encode_request("echo", echo_payload(str(i), (i * 7 + conn) % 21))

    return frame


def check_in_order(responses: list[wire.Response], allow_shutting_down: bool) -> int:
    """Every response answers the request of its index (echo of ``str(i)``) or
    is ShuttingDown; return how many were ShuttingDown."""
    shutting = 0
    for i, resp in enumerate(responses):
        if resp.ret == wire.RET_OK:
            assert cbor2.loads(resp.body)["echoed"] == str(i), (i, resp)
        else:
            assert allow_shutting_down and error_name(resp) == "ShuttingDown", (i, resp)
            shutting += 1
    return shutting


#: Requests a batch client sends in one write, and the in-flight limit of the
#: drain test's daemon: most of each batch waits behind the limit, so a
#: SIGTERM almost always finds requests read but not started (the ones the
#: drain sheds).
BATCH = 64
DRAIN_IN_FLIGHT = 4


@dataclass
class BatchResult:
    """What one batch client saw: the answers to each batch it sent."""

    batches: list[list[wire.Response]] = field(default_factory=list)
    unexpected: list[wire.Response] = field(default_factory=list)
    eof: bool = False
    reset: bool = False
    error: str | None = None

    @property
    def sent(self) -> int:
        """Requests sent."""
        return BATCH * len(self.batches)

    @property
    def answered(self) -> int:
        """Answers received to the requests sent."""
        return sum(len(b) for b in self.batches)

    @property
    def shutting_down(self) -> int:
        """How many answers were ShuttingDown."""
        return sum(error_name(r) == "ShuttingDown" for b in self.batches for r in b)


class BatchClient:
    """A client that makes what the daemon read observable: it pipelines
    BATCH echo requests in one write (a few kB: one read takes all of it, so
    the daemon reads a batch whole or not at all), reads their answers, and
    only then sends the next batch. When the drain comes, the batch sent last
    was either read (then every request in it is answered, with its result or
    ShuttingDown) or not (then none is): any other count of answers means the
    daemon dropped a request it had read. It stops sending at the first
    ShuttingDown and reads to EOF."""

    def __init__(self, address: Address, conn: int) -> None:
        self.sock = connect(address, timeout=10)
        self.conn = conn
        self.result = BatchResult()
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"batch-{conn}", daemon=True)
        self._thread.start()

    def frames(self, batch: int) -> bytes:
        """Batch ``batch``: echo(its global index, a delay of 0..20 ms) each."""
        first = batch * BATCH
        return b"".join(echo_frame(self.conn)(first + i) for i in range(BATCH))

    def _run(self) -> None:
        res = self.result
        parser = wire.ResponseParser()
        stopping = False
        try:
            while not res.eof:
                if not stopping and (not res.batches or len(res.batches[-1]) == BATCH):
                    if len(res.batches) >= 2:
                        self.started.set()
                    self.sock.sendall(self.frames(len(res.batches)))
                    res.batches.append([])
                data = self.sock.recv(1 << 16)
                if not data:
                    res.eof = True
                    break
                for resp in parser.feed(data):
                    current = res.batches[-1]
                    if len(current) < BATCH:
                        current.append(resp)
                        stopping = stopping or error_name(resp) == "ShuttingDown"
                    else:  # no request of ours is waiting for it
                        res.unexpected.append(resp)
        except ConnectionResetError:
            res.reset = True
        except OSError as exc:  # a send error, or no answer for 10 s
            res.error = repr(exc)

    def join(self, timeout: float) -> BatchResult:
        """Wait for EOF (or an error) and return what was seen."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the connection did not end"
        return self.result

    def close(self) -> None:
        """Close the socket (the thread then ends)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.sock.close()


def check_batch(conn: int, index: int, answers: list[wire.Response]) -> None:
    """The answers to batch ``index`` of connection ``conn``, in request
    order: each its own echo, or ShuttingDown for that request and every one
    after it (those were waiting behind the in-flight limit)."""
    shutting = False
    for i, resp in enumerate(answers):
        where = (conn, index, i)
        if resp.ret == wire.RET_OK:
            assert not shutting, f"{where}: an answer after ShuttingDown"
            assert cbor2.loads(resp.body)["echoed"] == str(index * BATCH + i), (where, resp)
        else:
            assert error_name(resp) == "ShuttingDown", (where, resp)
            shutting = True


def test_sigterm_under_load_answers_what_it_read_and_exits(
    hostile_daemon: Callable[..., Daemon],
) -> None:
    """With --max-in-flight 4, 6 clients send batches of 64 pipelined echoes
    (delays 0..20 ms), each batch once the last is answered, and 2 more
    pipeline echoes without stopping; then SIGTERM. Every request the daemon
    read is answered, nothing dropped: each batch client gets exactly 64
    answers per batch, except that the batch sent last may get none (it was
    not read); each answer is its request's echo, or ShuttingDown from some
    point on; at least one ShuttingDown shows that the signal found requests
    waiting. The flooding clients get well formed answers in order. Every
    connection then reads a clean EOF (no ECONNRESET) and the daemon exits 0
    within 3 s (--drain-timeout 10)."""
    d = hostile_daemon("--drain-timeout", "10", "--max-in-flight", str(DRAIN_IN_FLIGHT))
    batchers: list[BatchClient] = []
    floods: list[Pipeliner] = []
    try:
        batchers = [BatchClient(d.address, k) for k in range(6)]
        floods = [
            Pipeliner(
                d.address,
                echo_frame(6 + k),
                stop_when=lambda r: error_name(r) == "ShuttingDown",
                half_close=False,
            )
            for k in range(2)
        ]
        for b in batchers:
            assert b.started.wait(10), "the load did not start"
        for f in floods:
            assert f.wait_responses(200, 10), "the load did not start"
        signalled = time.monotonic()
        d.send_signal(signal.SIGTERM)
        try:
            code: int | None = d.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        exited = time.monotonic() - signalled
        batched = [b.join(timeout=5) for b in batchers]
        flooded = [f.join(timeout=5) for f in floods]
    finally:
        for b in batchers:
            b.close()
        for f in floods:
            f.close()
    report(
        "drain",
        exit_code=code,
        exit_after=f"{exited:.2f}s",
        batch_clients=[
            {
                "sent": r.sent,
                "answered": r.answered,
                "last_batch": len(r.batches[-1]) if r.batches else None,
                "shuttingDown": r.shutting_down,
                "unexpected": len(r.unexpected),
                "eof": r.eof,
                "reset": r.reset,
                "error": r.error,
            }
            for r in batched
        ],
        flooding_clients=[
            {
                "sent": r.sent,
                "answered": len(r.responses),
                "shuttingDown": sum(error_name(x) == "ShuttingDown" for x in r.responses),
                "eof": r.eof,
                "reset": r.reset,
                "read_error": r.read_error,
                "send_error": r.send_error,
            }
            for r in flooded
        ],
    )
    for conn, r in enumerate(batched):
        assert not r.reset and r.error is None, (conn, r.error or "ECONNRESET on read")
        assert r.eof, f"connection {conn} was not closed"
        assert not r.unexpected, (conn, r.unexpected[:3])
        *done, last = r.batches
        assert [len(b) for b in done] == [BATCH] * len(done), (conn, [len(b) for b in done])
        # The batch sent last was read whole (all answered) or not at all.
        assert len(last) in (0, BATCH), (
            f"connection {conn}: {len(last)} of the {BATCH} requests of its last batch "
            "answered, then EOF: the daemon read that batch and dropped the rest"
        )
        for index, answers in enumerate(r.batches):
            check_batch(conn, index, answers)
    assert sum(r.shutting_down for r in batched) >= 1, "the drain shed nothing"
    for f_r in flooded:
        assert not f_r.reset and f_r.read_error is None, f_r.read_error or "ECONNRESET on read"
        assert f_r.eof, "the connection was not closed"
        assert len(f_r.responses) <= f_r.sent
        check_in_order(f_r.responses, allow_shutting_down=True)
    assert code == 0, d.log()[-2000:]
    assert exited < 3.0, d.log()[-2000:]


# 8. SIGHUP under load ----------------------------------------------------------------------------


def test_sighup_under_load_is_not_fatal(hostile_daemon: Callable[..., Daemon]) -> None:
    """4 connections pipeline echo (delays 0..20 ms) while the daemon gets 5
    SIGHUPs: answers keep coming after each one, every request is answered in
    order, nothing is reset, the daemon logs each SIGHUP and still exits 0 on
    SIGTERM once the load has stopped."""
    d = hostile_daemon()
    attackers = [Pipeliner(d.address, echo_frame(k), window=64) for k in range(4)]
    progress = []
    try:
        for a in attackers:
            assert a.wait_responses(100, 10), "the load did not start"
        for _ in range(5):
            before = [len(a.result.responses) for a in attackers]
            d.send_signal(signal.SIGHUP)
            assert all(a.wait_responses(b + 50, 5) for a, b in zip(attackers, before, strict=True))
            progress.append(sum(len(a.result.responses) for a in attackers) - sum(before))
            assert d.proc.poll() is None, d.log()
            time.sleep(0.2)
        results = [a.join(timeout=10) for a in attackers]
    finally:
        for a in attackers:
            a.close()
    report(
        "sighup",
        answered=[len(r.responses) for r in results],
        answered_after_each_hup=progress,
    )
    for r in results:
        assert r.eof and not r.reset and r.send_error is None
        assert len(r.responses) == r.sent
        check_in_order(r.responses, allow_shutting_down=False)
    assert d.proc.poll() is None
    hups = [line for line in d.log().splitlines() if "SIGHUP" in line]
    assert len(hups) == 5, d.log()[-2000:]
    assert d.stop() == 0, d.log()[-2000:]
