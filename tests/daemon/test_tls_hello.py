"""The ClientHello is read before OpenSSL sees it: a stalled or oversized
hello costs a few kB and is refused at once, and memory comes back after a
flood of them.

In memory: the pre-parser (:mod:`mytimerd.protocol.tlshello`) on real
ClientHellos cut up every way, and on what it must refuse; the TLS layer on a
fake transport. With a real daemon: the refusal reaches the client at once,
and the daemon's RSS per stalled connection and after the flood.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mytimerd.daemon import tlslayer
from mytimerd.daemon.tlslayer import HelloRefused, TLSLayer
from mytimerd.protocol import tlshello, wire
from mytimerd.protocol.limits import FIELDS
from mytimerd.protocol.tlshello import ClientHello, HelloReader
from tests.support.certs import PKI, make_pki
from tests.support.daemon import Daemon, free_tcp_port
from tests.support.hostile import rss_bytes

KB = 1000
MB = 1000 * 1000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """One PKI for the module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


# ClientHellos --------------------------------------------------------------------------


def client_for(pki: PKI) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A client-side TLS session on memory BIOs (alice's certificate)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    ctx.load_cert_chain(pki.alice.cert, pki.alice.key)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return ctx.wrap_bio(incoming, outgoing, server_hostname="localhost"), incoming, outgoing


def first_flight(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> bytes:
    """What a client sends first: its ClientHello, as OpenSSL frames it."""
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.fixture(scope="module")
def real_hello(pki: PKI) -> bytes:
    """A real ClientHello (one record)."""
    tls, _, outgoing = client_for(pki)
    return first_flight(tls, outgoing)


def record(payload: bytes, content_type: int = 22, version: int = 0x0301) -> bytes:
    """One TLS record."""
    return (
        bytes((content_type, version >> 8, version & 0xFF))
        + len(payload).to_bytes(2, "big")
        + (payload)
    )


def fragment(message: bytes, sizes: list[int], version: int = 0x0301) -> bytes:
    """``message`` in handshake records of ``sizes`` bytes (the last takes the rest)."""
    out, pos = b"", 0
    for size in [*sizes, len(message)]:
        if pos >= len(message):
            break
        out += record(message[pos : pos + size], version=version)
        pos += size
    return out


def hello_message(body_len: int) -> bytes:
    """A ClientHello handshake message with a body of ``body_len`` bytes (not a
    valid hello: the reader looks only at headers)."""
    return b"\x01" + body_len.to_bytes(3, "big") + b"\x03\x03" + bytes(body_len - 2)


#: A record header and a handshake header announcing the 131,396-byte
#: ClientHello OpenSSL would accept (its own limit), and nothing more.
OVERSIZED = bytes((22, 3, 1, 0x40, 0x00, 1)) + (131396).to_bytes(3, "big")


def feed_all(reader: HelloReader, chunks: list[bytes]) -> ClientHello:
    """Feed every chunk; the hello must complete on the last one, not before."""
    for chunk in chunks[:-1]:
        assert reader.feed(chunk) is None
    hello = reader.feed(chunks[-1])
    assert hello is not None
    return hello


def refusal(data: bytes, max_hello: int = 16384) -> HelloRefused:
    """The refusal feeding ``data`` (in one chunk) raises."""
    with pytest.raises(HelloRefused) as caught:
        HelloReader(max_hello).feed(data)
    return caught.value


# the pre-parser, in memory ------------------------------------------------------------------


def test_a_whole_hello_in_one_chunk(real_hello: bytes) -> None:
    hello = feed_all(HelloReader(), [real_hello])
    assert hello.message == real_hello[5:] and hello.record_version == 0x0301
    assert hello.rest == b""
    assert hello.records() == real_hello  # one record: re-framed as it came


def test_a_hello_byte_by_byte(real_hello: bytes) -> None:
    reader = HelloReader()
    hello = feed_all(reader, [real_hello[i : i + 1] for i in range(len(real_hello))])
    assert hello.records() == real_hello


def test_a_hello_split_across_records_completes_a_real_handshake(pki: PKI) -> None:
    """Records of 1, 2, 3 and 100 bytes (the handshake header itself is cut),
    fed byte by byte; OpenSSL reads the re-framed hello and the handshake
    completes: re-framing is invisible to TLS."""
    client, client_in, client_out = client_for(pki)
    flight = first_flight(client, client_out)
    cut = fragment(flight[5:], [1, 2, 3, 100])
    assert len(cut) == len(flight) + 4 * 5
    reader = HelloReader()
    hello = feed_all(reader, [cut[i : i + 1] for i in range(len(cut))])
    assert hello.message == flight[5:]
    assert hello.records() == flight

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server.cert, pki.server.key)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    server_in.write(hello.records())
    for _ in range(4):  # the flights go back and forth until both are done
        for tls in (server, client):
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
        client_in.write(server_out.read())
        server_in.write(client_out.read())
    server.write(b"ping")
    client_in.write(server_out.read())
    assert client.read() == b"ping"


def test_a_largest_hello_spans_two_records_and_what_follows_is_kept() -> None:
    message = hello_message(16384)  # 16,388 bytes: more than one record holds
    after = record(b"\x01", content_type=20, version=0x0303) + b"\x17\x03"  # CCS, a partial record
    wire_bytes = fragment(message, [16384], version=0x0303) + after
    hello = feed_all(HelloReader(16384), [wire_bytes])
    assert hello.message == message and hello.rest == after
    assert hello.records() == wire_bytes
    # Cut anywhere, the same hello comes out.
    for cut in (1, 5, 6, 9, 16388, 16389, 16394, len(wire_bytes) - len(after) - 1):
        reader = HelloReader(16384)
        assert reader.feed(wire_bytes[:cut]) is None
        assert reader.buffered <= 16384 + 4 + 5
        again = reader.feed(wire_bytes[cut:])
        assert again == hello, cut


def test_what_is_held_is_the_hello_not_its_framing() -> None:
    """One-byte records cost five bytes of framing each on the wire, none in
    memory."""
    message = hello_message(3000)
    cut = fragment(message, [1] * len(message))
    reader = HelloReader()
    held = 0
    for i in range(0, len(cut) - 1, 7):
        assert reader.feed(cut[i : min(i + 7, len(cut) - 1)]) is None
        held = max(held, reader.buffered)
    assert held <= len(message) + 4  # and a partial record header
    hello = reader.feed(cut[-1:])
    assert hello is not None and hello.message == message


def test_an_oversized_hello_is_refused_on_its_header() -> None:
    exc = refusal(OVERSIZED)
    assert str(exc) == "ClientHello of 131396 bytes announced; the limit is 16384 (--max-tls-hello)"
    assert exc.alert == tlshello.ILLEGAL_PARAMETER
    assert "limit is 1000" in str(refusal(record(hello_message(1001)), max_hello=1000))
    feed_all(HelloReader(1000), [record(hello_message(1000))])  # the limit itself is fine


@pytest.mark.parametrize(
    ("first", "says", "alert"),
    [
        (wire.encode_request("version", b"\xa0"), "a plaintext mytimerd request", None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "an HTTP request", None),
        (b"PRI * HTTP/2.0\r\n", "an HTTP/2 preface", None),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "an SSH client", None),
        (b"\x80\x2e\x01\x03\x01", "an SSL 2.0-format ClientHello", None),
        (b"\x15\x03\x03\x00\x02\x02\x28", "a TLS alert record before any ClientHello", 10),
        (b"\x17\x03\x03\x00\x10", "a TLS application_data record", 10),
        (b"\x16\x02\x00", "bytes that are not TLS", None),
        (b"\x00", "bytes that are not TLS (00)", None),
    ],
)
def test_what_is_not_a_handshake_record_is_refused_and_named(
    first: bytes, says: str, alert: int | None
) -> None:
    exc = refusal(first)
    assert says in str(exc) and exc.alert == alert, str(exc)


def test_the_first_byte_is_enough_to_refuse() -> None:
    for first in (b"\x00", b"G", b"S", b"\x15"):
        with pytest.raises(HelloRefused):
            HelloReader().feed(first)


def test_a_handshake_message_that_is_not_a_client_hello_is_refused() -> None:
    server_hello = b"\x02\x00\x00\x26" + bytes(0x26)
    exc = refusal(record(server_hello))
    assert "handshake message of type 2 where a ClientHello" in str(exc)
    assert exc.alert == tlshello.UNEXPECTED_MESSAGE
    # Refused on the type byte, before the length is in.
    with pytest.raises(HelloRefused):
        HelloReader().feed(record(server_hello)[:6])


@pytest.mark.parametrize(
    ("data", "says", "alert"),
    [
        (b"\x16\x03\x01\x40\x01", "a TLS record of 16385 bytes (the limit is 16384)", 22),
        (b"\x16\x03\x05\x00\x10", "unknown version 0x0305", 50),
        (b"\x16\x03\x01\x00\x00", "an empty handshake record", 10),
        (
            record(hello_message(100)[:50]) + record(b"\x01", content_type=21),
            "a TLS alert record in the middle of the ClientHello",
            10,
        ),
        (
            record(hello_message(100)[:50]) + b"\x16\x01",
            "a record that is not TLS",
            50,
        ),
        (
            record(hello_message(100) + b"\x14"),
            "more handshake data in the ClientHello's last record",
            10,
        ),
    ],
)
def test_malformed_records_are_refused(data: bytes, says: str, alert: int) -> None:
    exc = refusal(data)
    assert says in str(exc) and exc.alert == alert, str(exc)


def test_alert_records() -> None:
    assert tlshello.alert_record(47) == b"\x15\x03\x03\x00\x02\x02\x2f"


# the TLS layer on a fake transport -----------------------------------------------------------


class FakeTransport:
    """The TCP transport as the TLS layer uses it."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def run_layer(
    pki: PKI, chunks: list[bytes], max_hello: int = 16384
) -> tuple[FakeTransport, TLSLayer, list[BaseException | None]]:
    """A TLS layer fed ``chunks``; what it wrote, itself, and what done() got."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    raw = FakeTransport()
    results: list[BaseException | None] = []

    async def main() -> TLSLayer:
        layer = TLSLayer(
            raw,  # type: ignore[arg-type]
            ctx,
            asyncio.Protocol(),
            30.0,
            results.append,
            max_hello=max_hello,
        )
        for chunk in chunks:
            layer.data_received(chunk)
        return layer

    return raw, asyncio.run(main()), results


def test_the_layer_refuses_an_oversized_hello_with_an_alert(pki: PKI) -> None:
    raw, layer, results = run_layer(pki, [OVERSIZED[:3], OVERSIZED[3:]])
    assert raw.closed and raw.written == tlshello.alert_record(tlshello.ILLEGAL_PARAMETER)
    assert len(results) == 1 and isinstance(results[0], HelloRefused)
    assert layer.get_extra_info("ssl_object") is None  # OpenSSL never saw it
    _, _, small = run_layer(pki, [record(hello_message(600))], max_hello=512)
    assert "ClientHello of 600 bytes announced; the limit is 512" in str(small[0])


def test_the_layer_sends_nothing_to_a_plaintext_client(pki: PKI) -> None:
    raw, _, results = run_layer(pki, [wire.encode_request("version", b"\xa0")])
    assert raw.closed and raw.written == b""
    assert "plaintext mytimerd request" in str(results[0])


def test_the_layer_makes_no_ssl_object_before_the_hello_is_in(pki: PKI, real_hello: bytes) -> None:
    raw, layer, results = run_layer(pki, [real_hello[:-1]])
    assert layer.get_extra_info("ssl_object") is None and raw.written == b"" and not results
    raw, layer, results = run_layer(pki, [real_hello[:-1], real_hello[-1:]])
    assert isinstance(layer.get_extra_info("ssl_object"), ssl.SSLObject)
    assert raw.written.startswith(b"\x16\x03\x03")  # the ServerHello flight
    assert not results and not raw.closed


def test_heap_is_trimmed_once_after_a_flood_recedes() -> None:
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        return 1

    heap = tlslayer.HeapReturn(flood=8, delay=0.0, trim=trim)

    async def flood(size: int, left: int) -> None:
        for _ in range(size):
            heap.begin()
        for _ in range(size - left):
            heap.end()
        await asyncio.sleep(0.01)

    asyncio.run(flood(7, 0))  # not a flood
    assert trims == []
    asyncio.run(flood(20, 5))  # receded to a quarter
    assert trims == [0] and heap.peak == heap.live == 5
    asyncio.run(flood(0, -5))  # the rest end: no flood since the last trim
    assert trims == [0] and heap.live == 0


# a real daemon -----------------------------------------------------------------------------


def roomy_limits(n: int) -> list[str]:
    """Options that let one address hold ``n`` connections mid-handshake,
    for those of them this daemon has (global and per-peer caps)."""
    wanted = ("connections", "handshakes")
    args: list[str] = []
    for f in FIELDS:
        if f.option.startswith("--max-") and any(w in f.option for w in wanted):
            args += [f.option, str(n + 100)]
    return args


@pytest.fixture
def descriptors() -> Iterator[int]:
    """Raise this process's descriptor limit (the daemon inherits it); the
    limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_tls(daemon_factory: Callable[..., Daemon], pki: PKI, *extra: str) -> tuple[Daemon, int]:
    """A mutual-TLS daemon on a TCP port (and its unix socket)."""
    port = free_tcp_port()
    d = daemon_factory("--tcp", "127.0.0.1", str(port), *pki.daemon_args(), *extra)
    return d, port


def read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything the daemon sends until it closes (within ``timeout``)."""
    sock.settimeout(timeout)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            got += chunk
    return got


def open_fds(pid: int) -> int:
    """Descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def gone(pid: int, fds: int, timeout: float = 30.0) -> None:
    """Wait until process ``pid`` is back to ``fds`` descriptors (give or take)."""
    deadline = time.monotonic() + timeout
    while open_fds(pid) > fds + 2:
        assert time.monotonic() < deadline, f"{open_fds(pid) - fds} connections still open"
        time.sleep(0.05)


def settled_rss(pid: int, timeout: float = 20.0) -> int:
    """The daemon's RSS once it stops moving (three samples within 128 kB)."""
    samples = [rss_bytes(pid)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        samples.append(rss_bytes(pid))
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) < 128 * 1024:
            break
    return samples[-1]


def test_an_oversized_hello_is_refused_at_once(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    """Not after --tls-handshake-timeout: as soon as its header is in."""
    d, port = start_tls(daemon_factory, pki, "--tls-handshake-timeout", "30")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(OVERSIZED)
        assert read_to_eof(s, 5) == tlshello.alert_record(tlshello.ILLEGAL_PARAMETER)
        assert time.monotonic() - started < 2.0
    with d.client() as c:
        connections = c.call_value("mytimerd.stats")["connections"]  # type: ignore[index]
    assert connections["tlsHandshakeFailures"] == 1
    assert (
        "TLS handshake failed: ClientHello of 131396 bytes announced; the limit is 16384 "
        "(--max-tls-hello)" in d.log()
    )


def test_stalled_hellos_cost_a_few_kb_and_memory_comes_back(
    daemon_factory: Callable[..., Daemon], pki: PKI, descriptors: int
) -> None:
    """N connections each announce a ClientHello and stall.

    Oversized (131,396 bytes announced): every one is refused at once (before,
    each held 52-75 kB until the handshake timeout). Within the limit, header
    only: the reader holds nothing yet, so a connection costs what a plain TCP
    connection costs plus the layer and its timer, about 5 kB (before: 52 kB,
    OpenSSL's read buffer, SSL object and message buffer); bound 12 kB. Within
    the limit, 16,000 of its 16,380 bytes sent: the hello's bytes themselves
    and that same 5 kB, about 21 kB (before: 85 kB); bound 32 kB, which is the
    16 kB hello, the 5 kB, and room for buffer growth and RSS noise. After they
    close, RSS <= 1.2 x before + 20 MB (before: none of it came back).
    """
    n = min(2000, descriptors - 500)
    assert n >= 500, f"RLIMIT_NOFILE hard limit {descriptors} is too low for this test"
    d, port = start_tls(daemon_factory, pki, "--tls-handshake-timeout", "120", *roomy_limits(n))
    pid = d.proc.pid
    before = settled_rss(pid)
    fds = open_fds(pid)  # once settled: the start's own connections are gone

    def stall(data: bytes) -> list[socket.socket]:
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(data)
            socks.append(s)
        return socks

    # Oversized: refused at once, every one.
    started = time.monotonic()
    socks = stall(OVERSIZED)
    try:
        alert = tlshello.alert_record(tlshello.ILLEGAL_PARAMETER)
        assert all(read_to_eof(s, 10) == alert for s in socks)
        assert time.monotonic() - started < 60  # not 120 s: no handshake timeout
    finally:
        for s in socks:
            s.close()
    gone(pid, fds)

    header = record(hello_message(16380))  # a 16,384-byte record: the largest
    for label, data, bound in (
        ("header only", header[:9], 12 * KB),
        ("16,000 bytes of the hello", header[:16009], 32 * KB),
    ):
        socks = stall(data)
        try:
            deadline = time.monotonic() + 30
            while open_fds(pid) < fds + n:  # all accepted, none closed
                assert time.monotonic() < deadline, f"{label}: {open_fds(pid) - fds} of {n}"
                time.sleep(0.1)
            during = settled_rss(pid)
            per_connection = (during - before) / n
            print(
                f"{label}: {before / MB:.1f} MB -> {during / MB:.1f} MB with {n} stalled, "
                f"{per_connection / KB:.1f} kB each"
            )
            assert per_connection <= bound, f"{label}: {per_connection / KB:.1f} kB a connection"
            assert open_fds(pid) >= fds + n  # none timed out or was refused meanwhile
        finally:
            for s in socks:
                s.close()
        gone(pid, fds)

    deadline = time.monotonic() + 30
    while True:
        after = settled_rss(pid)
        if after <= 1.2 * before + 20 * MB:
            break
        assert time.monotonic() < deadline, (
            f"RSS {before / MB:.1f} MB before, {after / MB:.1f} MB after the flood"
        )
    print(f"after the flood: {after / MB:.1f} MB (bound {(1.2 * before + 20 * MB) / MB:.1f} MB)")
    with d.client() as c:  # still serving
        assert c.call("version").ret == wire.RET_OK
