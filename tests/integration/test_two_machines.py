"""Two "machines": the daemon and a client in separate network namespaces.

The namespaces (mt-srv-<rand>, mt-cli-<rand>) are joined by a veth pair whose
/30 addresses exist only inside them; nothing leaves this machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.helpers import clean_env, wait_until
from tests.support.certs import Issued, make_pki
from tests.support.daemon import mytimerd_command

REPO = Path(__file__).resolve().parents[2]
PORT = 9099

CLIENT = textwrap.dedent(
    """
    import sys, cbor2
    from mytimerd.protocol import wire
    from tests.support.daemon import TcpAddress, WireClient
    with WireClient(TcpAddress(sys.argv[1], int(sys.argv[2])), timeout=5) as c:
        v = c.call("version")
        assert v.ret == wire.RET_OK, v
        print(cbor2.loads(v.body))
        e = c.call("echo", cbor2.dumps({"req": {"message": "across namespaces", "delayMs": 5}}))
        assert e.ret == wire.RET_OK, e
        print(cbor2.loads(e.body))
    """
)


@dataclass
class Net:
    """Two namespaces joined by a veth pair."""

    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str


def ip(*args: str) -> None:
    """Run ``ip ARGS``; fail with its stderr."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"


@pytest.fixture
def two_machines() -> Iterator[Net]:
    """Create the namespaces and the veth; always delete them afterwards."""
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    tag = secrets.token_hex(3)
    octet = secrets.randbelow(250) + 1
    net = Net(f"mt-srv-{tag}", f"mt-cli-{tag}", f"10.203.{octet}.1", f"10.203.{octet}.2")
    created: list[str] = []
    try:
        for ns in (net.server_ns, net.client_ns):
            ip("netns", "add", ns)
            created.append(ns)
        # Created in the server namespace with its peer in the client namespace:
        # the veth never exists in the machine's own network stack.
        ip(
            "-n",
            net.server_ns,
            "link",
            "add",
            "veth-srv",
            "type",
            "veth",
            "peer",
            "name",
            "veth-cli",
            "netns",
            net.client_ns,
        )
        for ns, dev, addr in (
            (net.server_ns, "veth-srv", net.server_ip),
            (net.client_ns, "veth-cli", net.client_ip),
        ):
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield net
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert tag not in left, f"namespaces left behind: {left}"


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@contextlib.contextmanager
def server_daemon(net: Net, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """mytimerd in the server namespace, ready; it must exit 0 on SIGTERM."""
    with open(log, "wb") as err:
        daemon = subprocess.Popen(
            in_ns(net.server_ns, *mytimerd_command(*args)),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=clean_env(),
            cwd=REPO,
        )
    try:
        wait_until(
            lambda: daemon.poll() is not None or "ready: serving" in log.read_text(),
            15,
            "the daemon in the server namespace to be ready",
        )
        assert daemon.poll() is None, log.read_text()
        yield daemon
        daemon.terminate()
        assert daemon.wait(20) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def client_run(net: Net, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A Python client ``script`` with ``args``, run in the client namespace."""
    return subprocess.run(
        in_ns(net.client_ns, sys.executable, "-c", script, *args),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=clean_env(),
    )


def test_client_in_other_namespace(two_machines: Net, tmp_path: Path) -> None:
    """A daemon in one network namespace serves a raw client in another over the veth."""
    net = two_machines
    log = tmp_path / "daemon.log"
    with server_daemon(net, log, "--name", "server-box", "--tcp", net.server_ip, str(PORT)):
        r = client_run(net, CLIENT, net.server_ip, str(PORT))
        assert r.returncode == 0, f"{r.stderr}\n--- daemon:\n{log.read_text()}"
        assert r.stdout.splitlines() == [
            "nim-timer v0.1.0",
            "{'echoed': 'across namespaces', 'timerName': 'server-box'}",
        ]
        # The client namespace has no loopback daemon: the answer came over the veth.
        r = client_run(net, CLIENT, "127.0.0.1", str(PORT))
        assert r.returncode != 0 and "ConnectionRefusedError" in r.stderr, r.stderr
        assert "is plaintext on a non-loopback address" in log.read_text()


TLS_CLIENT = textwrap.dedent(
    """
    import socket, ssl, sys, cbor2
    from mytimerd.protocol import wire
    host, port, ca, cert, key = sys.argv[1:6]
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(wire.encode_request("version", b"\\xa0"))
            parser = wire.ResponseParser()
            answers = []
            while not answers:
                answers = parser.feed(s.recv(65536))
            print(s.version(), cbor2.loads(answers[0].body))
    """
)


def test_mutual_tls_between_namespaces(two_machines: Net, tmp_path: Path) -> None:
    """The second scenario of the original example, encrypted and authenticated."""
    net = two_machines
    pki = make_pki(tmp_path, server_ips=(net.server_ip,))
    log = tmp_path / "daemon.log"
    with server_daemon(net, log, "--tcp", net.server_ip, str(PORT), *pki.daemon_args()):

        def client(cert: Issued) -> subprocess.CompletedProcess[str]:
            argv = [net.server_ip, str(PORT), str(pki.ca.pem), str(cert.cert), str(cert.key)]
            return client_run(net, TLS_CLIENT, *argv)

        r = client(pki.alice)
        assert r.returncode == 0, f"{r.stderr}\n--- daemon:\n{log.read_text()}"
        assert r.stdout.split(" ", 1)[1].strip() == "nim-timer v0.1.0"
        assert r.stdout.startswith("TLSv1."), r.stdout
        refused = client(pki.stranger)  # a certificate from another CA
        assert refused.returncode != 0 and "UNKNOWN_CA" in refused.stderr, refused.stderr
        assert "plaintext" not in log.read_text()
