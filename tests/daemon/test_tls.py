"""TLS and mutual TLS on TCP listeners, with certificates made by the tests.

Each refused client gets the right error while the daemon keeps serving the
others; failed handshakes are counted and logged.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest

from mytimerd.protocol import wire
from tests.support.certs import PKI, Issued, make_pki
from tests.support.daemon import Daemon, free_tcp_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """One PKI for the module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_context(pki: PKI, cert: Issued | None, ca: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` (default: the main CA), presenting ``cert``."""
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca.pem))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def tls_call(
    port: int, ctx: ssl.SSLContext, method: str = "version", server_hostname: str = "localhost"
) -> wire.Response:
    """One call over TLS; raises what the TLS layer or the socket raises."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as s,
    ):
        s.sendall(wire.encode_request(method, b"\xa0"))
        parser = wire.ResponseParser()
        while True:
            data = s.recv(65536)
            if not data:
                raise EOFError("the daemon closed without an answer")
            answers = parser.feed(data)
            if answers:
                return answers[0]


def failure(call: Callable[[], object]) -> str:
    """The text of the exception ``call`` raises (it must raise)."""
    try:
        call()
    except (OSError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("the call succeeded")


def tls_args(pki: PKI, *extra: str) -> list[str]:
    """Options for a mutual-TLS daemon."""
    return [*pki.daemon_args(), *extra]


def start_tls(daemon_factory: Callable[..., Daemon], pki: PKI, *extra: str) -> tuple[Daemon, int]:
    """A daemon with a unix socket (plain) and a TLS TCP port."""
    port = free_tcp_port()
    d = daemon_factory("--tcp", "127.0.0.1", str(port), *tls_args(pki, *extra))
    return d, port


def stats(d: Daemon) -> dict[str, object]:
    """The daemon's stats, over its plain unix socket."""
    with d.client() as c:
        value = c.call_value("mytimerd.stats")
    assert isinstance(value, dict)
    return value


def test_mutual_tls_is_served_and_unix_stays_plain(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    d, port = start_tls(daemon_factory, pki)
    answer = tls_call(port, client_context(pki, pki.alice))
    assert answer.ret == wire.RET_OK and cbor2.loads(answer.body).startswith("nim-timer")
    with d.client() as c:  # the unix socket needs no TLS
        assert c.call("version").ret == wire.RET_OK


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("no certificate", "CERTIFICATE_REQUIRED"),
        ("another CA", "UNKNOWN_CA"),
        ("expired", "CERTIFICATE_EXPIRED"),
    ],
)
def test_bad_client_certificates_are_refused(
    daemon_factory: Callable[..., Daemon], pki: PKI, who: str, expected: str, event_loop: str
) -> None:
    """The client hears why (the TLS alert), the daemon counts and logs it."""
    d, port = start_tls(daemon_factory, pki, "--event-loop", event_loop)
    cert = {"no certificate": None, "another CA": pki.stranger, "expired": pki.expired}[who]
    text = failure(lambda: tls_call(port, client_context(pki, cert)))
    assert expected in text.upper().replace(" ", "_"), text
    assert tls_call(port, client_context(pki, pki.alice)).ret == wire.RET_OK  # still serving
    connections = stats(d)["connections"]
    assert isinstance(connections, dict) and connections["tlsHandshakeFailures"] == 1
    assert "refused (connection) from ip:127.0.0.1: TLSHandshake: TLS handshake failed" in d.log()


def test_the_server_certificate_is_checked_by_the_client(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    _, port = start_tls(daemon_factory, pki)
    untrusted = failure(lambda: tls_call(port, client_context(pki, pki.alice, pki.other_ca.pem)))
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted
    wrong_name = failure(
        lambda: tls_call(port, client_context(pki, pki.alice), server_hostname="elsewhere")
    )
    assert "CERTIFICATE_VERIFY_FAILED" in wrong_name and "mismatch" in wrong_name


def test_tls_allow_admits_only_the_names_listed(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    d, port = start_tls(daemon_factory, pki, "--tls-allow", "bob", "--tls-allow", "carol.example")
    answer = tls_call(port, client_context(pki, pki.alice))
    assert answer.ret == wire.RET_ERR
    assert answer.body == (
        b"mytimerd.PermissionDenied: your certificate names alice, alice.example; "
        b"the daemon admits only bob, carol.example (--tls-allow)"
    )
    with d.client() as c:  # still serving
        assert c.call("version").ret == wire.RET_OK
    assert d.stop() == 0
    _, port2 = start_tls(daemon_factory, pki, "--tls-allow", "alice.example")  # a DNS SAN
    assert tls_call(port2, client_context(pki, pki.alice)).ret == wire.RET_OK


def test_plaintext_client_on_a_tls_port(daemon_factory: Callable[..., Daemon], pki: PKI) -> None:
    d, port = start_tls(daemon_factory, pki)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(wire.encode_request("version", b"\xa0"))
        assert s.recv(100) == b""  # no answer in plaintext: the handshake failed
    assert tls_call(port, client_context(pki, pki.alice)).ret == wire.RET_OK
    deadline = time.monotonic() + 5
    refused = "refused (connection) from ip:127.0.0.1: TLSHandshake: TLS handshake failed"
    while refused not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)


def test_tls_client_on_a_plaintext_port(daemon_factory: Callable[..., Daemon], pki: PKI) -> None:
    port = free_tcp_port()
    d = daemon_factory("--tcp", "127.0.0.1", str(port))
    text = failure(lambda: tls_call(port, client_context(pki, pki.alice)))
    assert "WRONG_VERSION_NUMBER" in text or "record layer failure" in text, text
    with d.client() as c:
        assert c.call("version").ret == wire.RET_OK


def test_a_stalled_handshake_is_bounded(daemon_factory: Callable[..., Daemon], pki: PKI) -> None:
    d, port = start_tls(daemon_factory, pki, "--tls-handshake-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as stalled:
        started = time.monotonic()
        assert tls_call(port, client_context(pki, pki.alice)).ret == wire.RET_OK
        assert stalled.recv(100) == b""  # closed by the daemon
        assert 0.4 < time.monotonic() - started < 3.0
    connections = stats(d)["connections"]
    assert isinstance(connections, dict) and connections["tlsHandshakeFailures"] == 1
    assert "no handshake within 0.5 s (--tls-handshake-timeout)" in d.log()


def test_tls_under_socket_activation(tmp_path: Path, pki: PKI) -> None:
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            sys.executable,
            "-m",
            "mytimerd",
            *tls_args(pki),
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # the first connection starts the daemon
            try:
                answer = tls_call(port, client_context(pki, pki.alice))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer.ret == wire.RET_OK
    finally:
        proc.terminate()
        proc.wait(20)


def test_bad_tls_options_are_refused_at_start(tmp_path: Path, pki: PKI) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mytimerd", "--unix", str(tmp_path / "t.sock"), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    only_cert = run("--tls-cert", str(pki.server.cert))
    assert only_cert.returncode == 2 and "--tls-cert and --tls-key go together" in only_cert.stderr
    allow = run(
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--tls-allow", "x"
    )
    assert allow.returncode == 2 and "--tls-allow needs --tls-client-ca" in allow.stderr
    wrong_key = run("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.alice.key))
    assert wrong_key.returncode == 3, wrong_key.stderr
    assert "cannot load the certificate" in wrong_key.stderr


def test_plaintext_on_a_public_address_is_a_warning(daemon_factory: Callable[..., Daemon]) -> None:
    port = free_tcp_port("0.0.0.0")
    d = daemon_factory("--tcp", "0.0.0.0", str(port))
    assert f"tcp:0.0.0.0:{port} is plaintext on a non-loopback address" in d.log()
    loopback = daemon_factory("--tcp", "127.0.0.1", str(free_tcp_port()))
    assert "plaintext on a non-loopback" not in loopback.log()


def test_a_tls_subscriber_is_a_peer_by_its_certificate(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    d, port = start_tls(daemon_factory, pki)
    ctx = client_context(pki, pki.alice)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(wire.encode_request("mytimerd.subscribe", b"\xa0"))
        parser = wire.ResponseParser()
        answers: list[wire.Response] = []
        while not answers:
            answers += parser.feed(s.recv(65536))
        assert answers[0].ret == wire.RET_OK
        budgets = stats(d)["budgets"]
        assert isinstance(budgets, dict)
        (top,) = budgets["max-subscribers"]["top"]
        assert top["peer"].startswith("cert:")  # mutual TLS: the certificate is the peer
        with d.client() as c:
            c.call_value("echo", {"req": {"message": "over TLS"}})
        while len(answers) < 2:
            answers += parser.feed(s.recv(65536))
        assert cbor2.loads(answers[1].body)["payload"]["message"] == "over TLS"


def test_a_lone_tls_client_read_ahead_is_answered_right(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    """A TLS client calling alone (its next requests read ahead from the TCP
    socket and decrypted by the TLS layer): one call at a time, then
    requests cut across TLS records and reads, all answered right and in
    order; then it closes with close_notify and the daemon sees it."""
    d, port = start_tls(daemon_factory, pki)
    version = wire.encode_request("version", b"\xa0")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_context(pki, pki.alice).wrap_socket(raw, server_hostname="localhost") as s,
    ):
        parser = wire.ResponseParser()

        def answers(n: int) -> list[wire.Response]:
            got: list[wire.Response] = []
            while len(got) < n:
                data = s.recv(65536)
                assert data, "the daemon closed"
                got += parser.feed(data)
            return got

        for _ in range(300):
            s.sendall(version)
            assert answers(1) == [wire.Response(0, cbor2.dumps("nim-timer v0.1.0"))]
        burst = version * 3 + wire.encode_request(
            "echo", cbor2.dumps({"req": {"message": "cut", "delayMs": 0}})
        )
        for i in range(0, len(burst), 7):  # a TLS record every 7 bytes
            s.sendall(burst[i : i + 7])
        got = answers(4)
        s.unwrap()
    assert [a.ret for a in got] == [0] * 4
    assert cbor2.loads(got[3].body)["echoed"] == "cut"
    deadline = time.monotonic() + 5
    while open_connections(d) != 1 and time.monotonic() < deadline:  # stats' own alone
        time.sleep(0.05)
    assert open_connections(d) == 1


def open_connections(d: Daemon) -> object:
    """Connections open now, counted over the plain unix socket (that one included)."""
    connections = stats(d)["connections"]
    assert isinstance(connections, dict)
    return connections["open"]


def test_tls_quick_calls_are_served_in_the_lane_a_share_per_certificate(
    daemon_factory: Callable[..., Daemon], pki: PKI
) -> None:
    """TLS connections making quick calls are served in C on their session
    (mytimerd.stats' lane), every answer exact, and on the same session as
    before and after: a call the lane does not serve in between, and the
    end (close_notify) are Python's. --lane-slots 4: the client certificate
    (the peer) takes 1 place, whatever the connections it opens; a plain
    client on the unix socket still gets one."""
    d, port = start_tls(daemon_factory, pki, "--lane-slots", "4")
    ctx = client_context(pki, pki.alice)
    version = wire.encode_request("version", b"\xa0")
    ok = wire.encode_response(wire.RET_OK, cbor2.dumps("nim-timer v0.1.0"))
    before = stats(d)["lane"]
    assert isinstance(before, dict)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw1,
        ctx.wrap_socket(raw1, server_hostname="localhost") as s1,
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw2,
        ctx.wrap_socket(raw2, server_hostname="localhost") as s2,
        d.client() as plain,
    ):

        def call(s: ssl.SSLSocket, request: bytes, want: bytes) -> None:
            s.sendall(request)
            got = b""
            while len(got) < len(want):
                data = s.recv(len(want) - len(got))
                assert data, "the daemon closed"
                got += data
            assert got == want

        seen = []
        for _ in range(100):  # in turn: neither calls alone
            call(s1, version, ok)
            call(s2, version, ok)
            assert plain.call("version").ret == wire.RET_OK
            lane = stats(d)["lane"]
            assert isinstance(lane, dict)
            seen.append(lane["connections"])
        assert max(seen) == 2, seen  # one of alice's and the unix client
        echo = wire.encode_request("echo", cbor2.dumps({"req": {"message": "m", "delayMs": 0}}))
        s1.sendall(echo)
        parser = wire.ResponseParser()
        answers: list[wire.Response] = []
        while not answers:
            answers = parser.feed(s1.recv(65536))
        assert cbor2.loads(answers[0].body)["echoed"] == "m"
        for _ in range(50):
            call(s1, version, ok)
        s1.unwrap()
    after = stats(d)["lane"]
    assert isinstance(after, dict)
    assert after["calls"] - before["calls"] >= 150, after
    assert "Traceback" not in d.log()
