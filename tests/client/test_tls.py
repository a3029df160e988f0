"""TLS from the client side: mytimerctl's --tls options and tls: addresses, and
Client/AsyncClient with ssl=, against real TLS daemons (certificates made by
tests/support/certs.py). Every failure exits 3 with what failed, and a hint."""

from __future__ import annotations

import asyncio
import io
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mytimerd.client import AsyncClient, Client, ConnectError, TLSError, ctl
from mytimerd.protocol.address import TcpAddress, UnixAddress, parse_address
from tests.support.certs import PKI, Issued, make_pki

from .conftest import Daemon, start_daemon, stop_daemon

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run mytimerctl in-process; return (exit status, stdout, stderr with hints unwrapped)."""
    code = ctl.main(list(argv), stdin=io.StringIO(""))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """One PKI for the module."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_daemon(pki: PKI, *extra: str) -> Iterator[Daemon]:
    directory = Path(tempfile.mkdtemp(prefix="mtt"))
    running = start_daemon(directory, *pki.daemon_args(), *extra)
    yield running
    stop_daemon(running)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_daemon(pki: PKI) -> Iterator[Daemon]:
    """A daemon serving mutual TLS on its TCP port (its unix socket stays plain)."""
    yield from _tls_daemon(pki)


def tls_options(pki: PKI, cert: Issued | None = None, ca: Path | None = None) -> list[str]:
    """mytimerctl options: trust ``ca`` (default: the main CA), present ``cert`` (or none)."""
    options = ["--tls-ca", str(ca or pki.ca.pem)]
    if cert is not None:
        options += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    return options


def context(pki: PKI, cert: Issued | None = None, ca: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` (default: the main CA), presenting ``cert``."""
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca.pem))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


# --- addresses --------------------------------------------------------------------------


def test_tls_addresses_parse_and_print() -> None:
    assert parse_address("tls:h.example:9099") == TcpAddress("h.example", 9099, tls=True)
    assert parse_address("tls:[::1]:9") == TcpAddress("::1", 9, tls=True)
    assert str(TcpAddress("::1", 9, tls=True)) == "tls:[::1]:9"
    assert str(parse_address("tls:h:1")) == "tls:h:1"
    assert parse_address("tcp:h:1") == TcpAddress("h", 1)  # plaintext, as before
    with pytest.raises(ValueError, match="tls:host:port"):
        parse_address("tls:nohost")


# --- mytimerctl, accepted ---------------------------------------------------------------


@pytest.mark.parametrize("server_name", [["--tls-server-name", "localhost"], []])
def test_ctl_mutual_tls_by_address_env(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pki: PKI,
    tls_daemon: Daemon,
    server_name: list[str],
) -> None:
    """$MYTIMER_ADDRESS=tls:127.0.0.1:PORT; the certificate names localhost and 127.0.0.1."""
    monkeypatch.setenv("MYTIMER_ADDRESS", f"tls:127.0.0.1:{tls_daemon.port}")
    code, out, err = run(capsys, *tls_options(pki, pki.alice), *server_name, "version")
    assert (code, out, err) == (0, "nim-timer v0.1.0\n", "")


def test_ctl_mutual_tls_with_tcp_and_tls_options(
    capsys: pytest.CaptureFixture[str], pki: PKI, tls_daemon: Daemon
) -> None:
    """Any --tls-* option makes --tcp speak TLS; options may follow the command."""
    code, out, err = run(
        capsys,
        "--tcp",
        "127.0.0.1",
        str(tls_daemon.port),
        "echo",
        "hi",
        *tls_options(pki, pki.alice),
    )
    assert code == 0, err
    assert "echoed:    hi" in out


def test_ctl_tls_address_in_env_with_a_key_in_the_certificate_file(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pki: PKI,
    tls_daemon: Daemon,
    tmp_path: Path,
) -> None:
    """--tls-cert alone: its file holds the key too."""
    both = tmp_path / "alice.pem"
    both.write_bytes(pki.alice.cert.read_bytes() + pki.alice.key.read_bytes())
    monkeypatch.setenv("MYTIMER_ADDRESS", f"tls:localhost:{tls_daemon.port}")
    code, out, err = run(capsys, "--tls-ca", str(pki.ca.pem), "--tls-cert", str(both), "ping")
    assert code == 0, err
    assert "healthy: yes" in out


# --- mytimerctl, refused: exit 3, what failed, what to do -------------------------------


@pytest.mark.parametrize(
    ("case", "expected", "hint"),
    [
        (
            "untrusted server",
            "the daemon's certificate is not trusted",
            "--tls-ca FILE",
        ),
        (
            "name mismatch",
            "the daemon's certificate does not name 'elsewhere.example'",
            "--tls-server-name NAME",
        ),
        (
            "no client certificate",
            "the daemon refused the client certificate: it requires a client certificate "
            "and none was given (TLS alert: certificate required)",
            "--tls-cert FILE --tls-key FILE",
        ),
        (
            "another CA",
            "the daemon refused the client certificate: the client certificate is not "
            "issued by a CA the daemon trusts (TLS alert: unknown ca)",
            "--tls-client-ca",
        ),
        (
            "expired",
            "the daemon refused the client certificate: the client certificate has expired "
            "(TLS alert: certificate expired)",
            "has expired: renew it",
        ),
    ],
)
def test_ctl_tls_failures_exit_3_and_say_what_failed(
    capsys: pytest.CaptureFixture[str],
    pki: PKI,
    tls_daemon: Daemon,
    case: str,
    expected: str,
    hint: str,
) -> None:
    options = {
        "untrusted server": tls_options(pki, pki.alice, pki.other_ca.pem),
        "name mismatch": [*tls_options(pki, pki.alice), "--tls-server-name", "elsewhere.example"],
        "no client certificate": tls_options(pki),
        "another CA": tls_options(pki, pki.stranger),
        "expired": tls_options(pki, pki.expired),
    }[case]
    code, out, err = run(capsys, "--tcp", "127.0.0.1", str(tls_daemon.port), *options, "version")
    assert code == ctl.EXIT_UNREACHABLE == 3
    assert out == ""
    assert err.startswith(
        f"mytimerctl: TLS with the daemon at tls:127.0.0.1:{tls_daemon.port} failed: {expected}"
    ), err
    assert "hint: " in err and hint in err.partition("hint: ")[2], err
    assert "is mytimerd running" not in err


def test_ctl_tls_with_the_system_store_does_not_trust_a_private_ca(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tls_daemon: Daemon
) -> None:
    """--tls alone (or a tls: address alone) checks the daemon against the system's CAs."""
    code, _, err = run(capsys, "--tcp", "localhost", str(tls_daemon.port), "--tls", "version")
    assert code == 3 and "the daemon's certificate is not trusted" in err
    monkeypatch.setenv("MYTIMER_ADDRESS", f"tls:localhost:{tls_daemon.port}")
    code, _, err = run(capsys, "version")
    assert code == 3 and "the daemon's certificate is not trusted" in err


def test_ctl_plaintext_on_a_tls_port_suggests_tls(
    capsys: pytest.CaptureFixture[str], tls_daemon: Daemon
) -> None:
    code, out, err = run(capsys, "--tcp", "127.0.0.1", str(tls_daemon.port), "version")
    assert (code, out) == (3, "")
    assert (
        f"the daemon at tcp:127.0.0.1:{tls_daemon.port} hung up without an answer: "
        "that port speaks TLS, and this connection was plaintext"
    ) in err, err
    assert "use TLS: --tls" in err and f"tls:127.0.0.1:{tls_daemon.port}" in err


def test_ctl_tls_to_a_plaintext_port(
    capsys: pytest.CaptureFixture[str], pki: PKI, daemon: Daemon
) -> None:
    code, out, err = run(capsys, "--tcp", "127.0.0.1", str(daemon.port), "--tls", "version")
    assert (code, out) == (3, "")
    assert f"TLS with the daemon at tls:127.0.0.1:{daemon.port} failed: " in err
    assert "the peer does not speak TLS (" in err and "is it a plaintext port?" in err
    assert "that port serves plaintext: leave out --tls" in err


def test_ctl_certificate_not_allowed_is_a_clear_daemon_error(
    capsys: pytest.CaptureFixture[str], pki: PKI
) -> None:
    """--tls-allow: the handshake passes, the daemon answers PermissionDenied (exit 5)."""
    for running in _tls_daemon(pki, "--tls-allow", "bob"):
        code, _, err = run(
            capsys, "--tcp", "127.0.0.1", str(running.port), *tls_options(pki, pki.alice), "ping"
        )
        assert code == ctl.EXIT_DAEMON_ERROR == 5
        assert err.startswith(
            "mytimerctl: mytimerd.PermissionDenied: your certificate names alice, alice.example; "
            "the daemon admits only bob (--tls-allow)"
        ), err
        assert "hint: the daemon admits only client certificates that name what its " in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--unix", "/x.sock", "--tls"], "--tls needs a TCP address"),
        (["--unix", "/x.sock", "--tls-ca", "/ca"], "--tls-ca needs a TCP address"),
        (["--tcp", "h", "1", "--tls-key", "/k"], "--tls-key goes with --tls-cert"),
        (["--tcp", "h", "1", "--tls-ca", "/no/such/ca"], "--tls-ca /no/such/ca: cannot load it"),
        (["--tcp", "h", "1", "--tls-cert", "/no/cert"], "--tls-cert /no/cert: cannot load it"),
    ],
)
def test_ctl_tls_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, _, err = run(capsys, *argv, "version")
    assert code == ctl.EXIT_USAGE == 2
    assert expected in err, err


def test_ctl_tls_options_need_a_tcp_address_in_env_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYTIMER_ADDRESS", "unix:/run/x.sock")
    code, _, err = run(capsys, "--tls", "version")
    assert code == 2 and "unix:/run/x.sock is a unix socket, which is never TLS" in err


def test_ctl_help_and_completion_know_the_tls_options(capsys: pytest.CaptureFixture[str]) -> None:
    from .test_ctl import _complete

    flags = ["--tls", "--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name"]
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(flag in out for flag in flags) and "tls:host:port" in out
    code, out, _ = run(capsys, "version", "--help")
    assert code == 0 and all(flag in out for flag in flags)
    script = run(capsys, "completion", "bash")[1]
    assert set(_complete(script, ["mytimerctl", "--tls"])) == set(flags)
    assert set(_complete(script, ["mytimerctl", "ping", "--tls-"])) == set(flags[1:])
    here = str(Path(__file__).parent / "test_t")
    assert str(Path(__file__)) in _complete(script, ["mytimerctl", "--tls-ca", here])
    assert _complete(script, ["mytimerctl", "--tls-cert", "c", "--tls-key", here]) != []
    assert "localhost" in _complete(script, ["mytimerctl", "--tls-server-name", "local"])
    assert _complete(script, ["mytimerctl", "--tls-ca", "ca.pem", "pi"]) == ["ping"]
    zsh = run(capsys, "completion", "zsh")[1]
    assert all(f"--{flag[2:]}[" in zsh for flag in flags)


# --- the Python clients -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "server_hostname"), [("tls", None), ("tls", "localhost"), ("tcp", "localhost")]
)
def test_client_mutual_tls(
    pki: PKI, tls_daemon: Daemon, scheme: str, server_hostname: str | None
) -> None:
    """tls: with ssl=, or tcp: with ssl= (which turns TLS on)."""
    address = f"{scheme}:127.0.0.1:{tls_daemon.port}"
    ctx = context(pki, pki.alice)
    with Client(address, ssl=ctx, server_hostname=server_hostname, timeout=10) as c:
        assert c.version() == "nim-timer v0.1.0"
        assert c.echo("again")["echoed"] == "again"  # the same connection, past the tickets
        assert c.address == TcpAddress("127.0.0.1", tls_daemon.port, tls=True)

    async def go() -> list[str]:
        async with AsyncClient(address, ssl=ctx, server_hostname=server_hostname) as c:
            first = await asyncio.gather(*(c.echo(str(i)) for i in range(20)))
            await asyncio.sleep(0.05)
            later = await c.version()
            assert str(c.address) == f"tls:127.0.0.1:{tls_daemon.port}"
            return [r["echoed"] for r in first] + [later]

    assert asyncio.run(go()) == [str(i) for i in range(20)] + ["nim-timer v0.1.0"]


@pytest.mark.parametrize("client", ["blocking", "async"])
@pytest.mark.parametrize(
    ("case", "problem", "alert"),
    [
        ("untrusted", "untrusted", None),
        ("name", "name", None),
        ("no certificate", "client-certificate", "certificate required"),
        ("another CA", "client-certificate", "unknown ca"),
        ("expired", "client-certificate", "certificate expired"),
        ("plaintext port", "not-tls", None),
    ],
)
def test_client_tls_failures(
    pki: PKI,
    tls_daemon: Daemon,
    daemon: Daemon,
    client: str,
    case: str,
    problem: str,
    alert: str | None,
) -> None:
    port = daemon.port if case == "plaintext port" else tls_daemon.port
    ctx = {
        "untrusted": context(pki, pki.alice, pki.other_ca.pem),
        "name": context(pki, pki.alice),
        "no certificate": context(pki),
        "another CA": context(pki, pki.stranger),
        "expired": context(pki, pki.expired),
        "plaintext port": context(pki, pki.alice),
    }[case]
    name = "elsewhere.example" if case == "name" else None
    address = f"tls:127.0.0.1:{port}"

    def blocking() -> None:
        with Client(address, ssl=ctx, server_hostname=name, timeout=10) as c:
            c.version()

    async def asynchronous() -> None:
        async with AsyncClient(address, ssl=ctx, server_hostname=name, timeout=10) as c:
            await c.version()

    with pytest.raises(TLSError) as caught:
        blocking() if client == "blocking" else asyncio.run(asynchronous())
    assert isinstance(caught.value, ConnectError)  # a TLS failure is a failure to connect
    assert (caught.value.problem, caught.value.alert) == (problem, alert)
    assert str(caught.value).startswith(f"TLS with tls:127.0.0.1:{port} failed: ")


def test_client_tls_address_defaults_to_the_system_store(tls_daemon: Daemon) -> None:
    """tls: without ssl=: ssl.create_default_context(), which does not know the test CA."""
    with pytest.raises(TLSError) as caught, Client(f"tls:localhost:{tls_daemon.port}") as c:
        c.version()
    assert caught.value.problem == "untrusted"


def test_client_tls_settings_need_a_tcp_address(pki: PKI, sock_dir: Path) -> None:
    with pytest.raises(ValueError, match="unix socket, which is not TLS"):
        Client(f"unix:{sock_dir}/x.sock", ssl=context(pki))
    with pytest.raises(ValueError, match="server_hostname= needs a TCP address"):
        AsyncClient(UnixAddress("/x.sock"), server_hostname="h")
    with pytest.raises(TypeError, match=r"ssl must be an ssl\.SSLContext"):
        Client("tls:h:1", ssl=True)  # type: ignore[arg-type]
    assert Client("tcp:h:1", ssl=context(pki)).addresses == [TcpAddress("h", 1, tls=True)]
    assert Client("tcp:h:1").addresses == [TcpAddress("h", 1)]
