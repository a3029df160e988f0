"""Socket hand-over (systemd-socket-activate) and self-bound sockets, real processes.

``systemd-socket-activate`` (without ``--accept``) opens the sockets, waits for
the first connection attempt on any of them, then execs the command with
LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set, the sockets at fd 3, 4, ... in the
order of ``-l``. ``start_daemon``'s readiness loop makes that first connection.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mytimerd.protocol import wire
from tests.conftest import require
from tests.integration.helpers import (
    VERSION_BODY,
    clean_env,
    connect_refused,
    ipv6_loopback,
    run_daemon_to_exit,
    stale_unix_socket,
    wait_until,
)
from tests.support.daemon import (
    Daemon,
    TcpAddress,
    UnixAddress,
    WireClient,
    free_tcp_port,
    mytimerd_command,
)

Factory = Callable[..., Daemon]


def socket_activate(*options: str) -> list[str]:
    """systemd-socket-activate OPTIONS mytimerd (skip/fail when it is missing)."""
    tool = shutil.which("systemd-socket-activate")
    require(tool is not None, "systemd-socket-activate is not installed")
    assert tool is not None
    return [tool, *options, *mytimerd_command()]


def assert_version(address: UnixAddress | TcpAddress) -> None:
    """``version`` on ``address`` answers RET_OK with the spec's exact body."""
    with WireClient(address) as c:
        resp = c.call("version")
    assert resp == wire.Response(wire.RET_OK, VERSION_BODY), resp


def listeners(address: UnixAddress | TcpAddress) -> list[dict[str, Any]]:
    """``mytimerd.describe``'s listeners, as reported over ``address``."""
    with WireClient(address) as c:
        desc = c.call_value("mytimerd.describe")
    assert isinstance(desc, dict)
    return sorted(desc["listeners"], key=lambda x: x["name"])


# ---------------------------------------------------------------------------
# hand-over


def test_handover_unix_and_tcp_with_names(daemon_factory: Factory, sock_dir: Path) -> None:
    """One daemon handed a unix and a TCP socket serves both and names them in describe;
    after SIGTERM it exits 0 and leaves the handed unix path alone."""
    path = sock_dir / "handed.sock"
    port = free_tcp_port()
    cmd = socket_activate("-l", str(path), "-l", f"127.0.0.1:{port}", "--fdname=local:network")
    d = daemon_factory(command=cmd, address=UnixAddress(str(path)))
    tcp = TcpAddress("127.0.0.1", port)
    assert_version(UnixAddress(str(path)))
    assert_version(tcp)
    expected = [
        {"name": "local", "address": f"unix:{path}"},
        {"name": "network", "address": f"tcp:127.0.0.1:{port}"},
    ]
    assert listeners(UnixAddress(str(path))) == expected
    assert listeners(tcp) == expected
    assert d.stop(signal.SIGTERM) == 0, d.log()
    assert path.is_socket(), "the daemon unlinked a unix socket it was handed"


def test_handover_ipv6(daemon_factory: Factory) -> None:
    """A TCP socket on [::1] handed over is served and described as tcp:[::1]:PORT."""
    require(ipv6_loopback(), "no IPv6 loopback (::1)")
    port = free_tcp_port("::1")
    address = TcpAddress("::1", port)
    d = daemon_factory(
        command=socket_activate("-l", f"[::1]:{port}", "--fdname=v6"), address=address
    )
    assert_version(address)
    assert listeners(address) == [{"name": "v6", "address": f"tcp:[::1]:{port}"}]
    assert d.stop() == 0, d.log()


def test_handover_datagram_refused(sock_dir: Path, tmp_path: Path) -> None:
    """A datagram socket handed over is refused: exit status 3, message names the problem."""
    path = sock_dir / "dgram.sock"
    log = tmp_path / "dgram.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            socket_activate("--datagram", "-l", str(path), "--fdname=dg"),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=clean_env(),
        )
    try:
        wait_until(path.exists, 10, "systemd-socket-activate to bind the datagram socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"wake up", str(path))  # the first datagram starts the daemon
        status = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert status == 3, text
    assert "SOCK_DGRAM" in text and "stream sockets only" in text and "'dg'" in text, text


# ---------------------------------------------------------------------------
# self-bind


def test_stale_socket_replaced(daemon_factory: Factory, sock_dir: Path) -> None:
    """A unix socket file nobody listens on is replaced by the daemon's own socket."""
    path = sock_dir / "stale.sock"
    stale_unix_socket(path)
    assert connect_refused(path)
    d = daemon_factory("--unix", str(path), address=UnixAddress(str(path)))
    assert_version(UnixAddress(str(path)))
    assert listeners(UnixAddress(str(path))) == [{"name": "bound", "address": f"unix:{path}"}]
    assert d.stop() == 0, d.log()


def test_live_socket_refused(sock_dir: Path) -> None:
    """A unix path another server listens on is refused (exit 3) and left working."""
    path = sock_dir / "live.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen()
    try:
        result = run_daemon_to_exit(["--unix", str(path)])
        assert result.returncode == 3, result.stderr
        assert f"another server is listening on {path}" in result.stderr
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))  # still the other server's socket
        conn, _ = other.accept()
        conn.close()
    finally:
        other.close()


def test_regular_file_refused(sock_dir: Path) -> None:
    """A regular file at the --unix path is refused (exit 3) and not touched."""
    path = sock_dir / "not-a-socket"
    path.write_text("precious\n")
    result = run_daemon_to_exit(["--unix", str(path)])
    assert result.returncode == 3, result.stderr
    assert f"{path} exists and is not a socket" in result.stderr
    assert path.read_text() == "precious\n"


def test_bound_socket_removed_on_exit(daemon_factory: Factory, sock_dir: Path) -> None:
    """The daemon unlinks the unix socket it bound itself when it stops."""
    path = sock_dir / "own.sock"
    d = daemon_factory("--unix", str(path), address=UnixAddress(str(path)))
    assert path.is_socket()
    assert d.stop(signal.SIGTERM) == 0, d.log()
    assert not path.exists()


def test_bind_tcp_ipv6(daemon_factory: Factory) -> None:
    """``--tcp ::1 PORT`` listens on the IPv6 loopback."""
    require(ipv6_loopback(), "no IPv6 loopback (::1)")
    port = free_tcp_port("::1")
    address = TcpAddress("::1", port)
    d = daemon_factory("--tcp", "::1", str(port), address=address)
    assert_version(address)
    assert listeners(address) == [{"name": "bound", "address": f"tcp:[::1]:{port}"}]
    assert d.stop() == 0, d.log()


def test_bind_two_unix_and_tcp(daemon_factory: Factory, sock_dir: Path) -> None:
    """Two --unix and one --tcp at once: all three serve, describe lists all three."""
    a, b = sock_dir / "a.sock", sock_dir / "b.sock"
    port = free_tcp_port()
    d = daemon_factory(
        "--unix",
        str(a),
        "--unix",
        str(b),
        "--tcp",
        "127.0.0.1",
        str(port),
        address=UnixAddress(str(a)),
    )
    addresses: list[UnixAddress | TcpAddress] = [
        UnixAddress(str(a)),
        UnixAddress(str(b)),
        TcpAddress("127.0.0.1", port),
    ]
    for address in addresses:
        assert_version(address)
    reported = {x["address"] for x in listeners(addresses[2])}
    assert reported == {f"unix:{a}", f"unix:{b}", f"tcp:127.0.0.1:{port}"}
    assert d.stop() == 0, d.log()
    assert not a.exists() and not b.exists()


def test_bind_failure_releases_earlier_sockets(sock_dir: Path) -> None:
    """When a later address cannot be bound, exit 3 and the earlier unix socket is removed."""
    good, bad = sock_dir / "good.sock", sock_dir / "bad"
    bad.write_text("x")
    result = run_daemon_to_exit(["--unix", str(good), "--unix", str(bad)])
    assert result.returncode == 3, result.stderr
    assert not good.exists(), "the daemon left its half-bound socket behind"


def test_handover_accepted_connection_refused(sock_dir: Path, tmp_path: Path) -> None:
    """With --accept (Accept=yes) the daemon is handed a connection, not a listening
    socket: it refuses with exit status 3 and says it needs Accept=no."""
    path = sock_dir / "accept.sock"
    log = tmp_path / "accept.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            socket_activate("--accept", "-l", str(path)),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=clean_env(),
        )
    try:
        wait_until(path.exists, 10, "systemd-socket-activate to bind")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            # systemd-socket-activate reports its per-connection child's exit status.
            wait_until(lambda: "died with code" in log.read_text(), 20, "the daemon to exit")
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text(errors="replace")
    assert "died with code 3" in text, text
    assert "is not listening" in text and "Accept=no" in text, text


def test_live_socket_with_full_backlog_refused(sock_dir: Path) -> None:
    """A live server that is not accepting (its backlog full, e.g. a hung instance) is
    still "another server": refused with exit 3 promptly, not a hang at start-up."""
    path = sock_dir / "busy.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(0)
    held: list[socket.socket] = []
    try:
        while True:  # fill the backlog: the next connect would block
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            held.append(c)
            try:
                c.connect(str(path))
            except BlockingIOError:
                break
        try:
            result = run_daemon_to_exit(["--unix", str(path)], timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "mytimerd hung for 5 s probing a unix socket whose listener does not accept"
            ) from None
        assert result.returncode == 3, result.stderr
        assert str(path) in result.stderr, result.stderr
        assert path.is_socket()
    finally:
        for c in held:
            c.close()
        other.close()


def test_tcp_port_in_use_refused(sock_dir: Path) -> None:
    """A TCP port another socket listens on: exit 3 naming the address, and the unix
    socket bound before it is removed again."""
    port = free_tcp_port()
    path = sock_dir / "first.sock"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        result = run_daemon_to_exit(["--unix", str(path), "--tcp", "127.0.0.1", str(port)])
    assert result.returncode == 3, result.stderr
    assert f"cannot listen on tcp:127.0.0.1:{port}: already in use" in result.stderr
    assert not path.exists()
