"""Fail-over between several addresses (issue 20 item 2), with real daemons.

The clients move to the next address when one refuses the connection or when a
request never left; a call that may have reached a daemon is never sent again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mytimerd.client import AsyncClient, Client, ConnectError, ConnectionLost, resolve_addresses
from mytimerd.client.core import Dialer, NotSent
from mytimerd.protocol.address import TcpAddress, UnixAddress

from .conftest import Daemon, start_daemon, stop_daemon
from .test_ctl import run


@pytest.fixture
def pair(sock_dir: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """Two real daemons, named "a" and "b", each on its own socket and port."""
    (sock_dir / "a").mkdir()
    (sock_dir / "b").mkdir()
    a = start_daemon(sock_dir / "a", "--name", "a")
    try:
        b = start_daemon(sock_dir / "b", "--name", "b")
    except BaseException:
        stop_daemon(a)
        raise
    yield a, b
    stop_daemon(a)
    stop_daemon(b)


def _echo_calls(d: Daemon) -> int:
    """How many echo calls ``d`` answered."""
    with Client(d.address) as c:
        calls: int = c.stats()["calls"].get("echo", {}).get("ok", 0)
        return calls


# --- addresses -----------------------------------------------------------------------


def test_addresses_as_a_list_as_text_and_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = UnixAddress("/x,y.sock"), TcpAddress("h", 9099)
    assert resolve_addresses("unix:/x,y.sock,tcp:h:9099") == [a, b]
    assert resolve_addresses(["unix:/x,y.sock", b]) == [a, b]
    monkeypatch.setenv("MYTIMER_ADDRESS", "unix:/x,y.sock, tcp:h:9099")
    assert resolve_addresses() == [a, b]
    monkeypatch.setenv("MYTIMER_ADDRESS", "unix:/x,tcp:nope")
    with pytest.raises(ValueError, match="MYTIMER_ADDRESS"):
        resolve_addresses()
    with pytest.raises(ValueError, match="empty"):
        resolve_addresses([])


def test_the_dialer_starts_where_it_last_connected_and_moves_on_after_a_request_never_left() -> (
    None
):
    a, b, c = UnixAddress("/a"), UnixAddress("/b"), UnixAddress("/c")
    dialer = Dialer([a, b, c])
    assert list(dialer.round()) == [a, b, c]
    dialer.connected(b)
    assert list(dialer.round()) == [b, c, a]
    dialer.not_sent(b, 1, NotSent())
    assert list(dialer.round()) == [c, a, b]
    dialer.not_sent(c, 3, NotSent())  # once per address beyond the first try
    with pytest.raises(ConnectionLost, match="connection is closed"):
        dialer.not_sent(a, 4, NotSent())


# --- the first address is dead -------------------------------------------------------


def test_a_dead_first_address_is_passed_over(pair: tuple[Daemon, Daemon], sock_dir: Path) -> None:
    _, b = pair
    dead = f"unix:{sock_dir}/nobody.sock"
    with Client([dead, b.address]) as c:
        assert c.echo("x")["timerName"] == "b"
        assert c.address == UnixAddress(str(b.path))

    async def run_async() -> str:
        async with AsyncClient(f"{dead},{b.tcp}") as ac:
            return (await ac.echo("y"))["timerName"]

    assert asyncio.run(run_async()) == "b"


def test_no_address_accepts_lists_every_attempt(sock_dir: Path) -> None:
    with pytest.raises(ConnectError) as info, Client([f"unix:{sock_dir}/1", f"unix:{sock_dir}/2"]):
        pass
    assert [str(a) for a, _ in info.value.attempts] == [f"unix:{sock_dir}/1", f"unix:{sock_dir}/2"]


def test_mytimerctl_fails_over_with_repeated_options_and_the_environment(
    pair: tuple[Daemon, Daemon],
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, b = pair
    code, out, _ = run(
        capsys, "--unix", str(sock_dir / "dead.sock"), "--unix", str(b.path), "echo", "hi"
    )
    assert code == 0 and "timerName: b" in out
    dead_port = b.port + 1 if b.port < 65535 else b.port - 1
    code, out, _ = run(
        capsys,
        "--tcp",
        "127.0.0.1",
        str(dead_port),
        "--tcp",
        "127.0.0.1",
        str(b.port),
        "echo",
        "hi",
    )
    assert code == 0 and "timerName: b" in out
    monkeypatch.setenv("MYTIMER_ADDRESS", f"unix:{sock_dir}/dead.sock,{b.address}")
    code, out, _ = run(capsys, "echo", "hi")
    assert code == 0 and "timerName: b" in out


# --- the first daemon closes before the request left ---------------------------------


@pytest.mark.parametrize("look", [True, False], ids=["look", "no-look"])
def test_blocking_client_moves_on_when_the_first_daemon_went_away_idle(
    pair: tuple[Daemon, Daemon], look: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to "a", which stops while the connection is idle: the call goes to "b".

    Without the look at the idle connection the send itself fails (EPIPE)
    before one byte left: the request is sent again, at the next address.
    """
    a, b = pair
    if not look:
        monkeypatch.setattr(Client, "_closed_while_idle", lambda self: False)
    with Client([a.address, b.address]) as c:
        assert c.echo("first")["timerName"] == "a"
        stop_daemon(a)
        assert c.echo("second")["timerName"] == "b"
        assert c.echo("third")["timerName"] == "b"  # it stays where it landed
    assert _echo_calls(b) == 2


def test_async_client_moves_on_when_the_first_daemon_went_away_idle(
    pair: tuple[Daemon, Daemon],
) -> None:
    a, b = pair

    async def scenario() -> list[str]:
        async with AsyncClient([a.address, b.address]) as c:
            names = [(await c.echo("first"))["timerName"]]
            stop_daemon(a)  # blocks the loop: the reader cannot see the close first
            answers = await asyncio.gather(*(c.echo(str(i)) for i in range(5)))
            return names + [x["timerName"] for x in answers]

    assert asyncio.run(scenario()) == ["a"] + ["b"] * 5
    assert _echo_calls(b) == 5


# --- the first daemon dies after the request left ------------------------------------


def _kill_soon(d: Daemon, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(d.proc.pid, signal.SIGKILL))
    timer.start()
    return timer


def test_a_call_that_may_have_arrived_is_not_sent_to_the_next_daemon(
    pair: tuple[Daemon, Daemon],
) -> None:
    """ "a" holds the echo (its delay) and is killed: ConnectionLost, and "b" never saw it."""
    a, b = pair
    with Client([a.address, b.address]) as c:
        killer = _kill_soon(a, 0.5)
        with pytest.raises(ConnectionLost):
            c.echo("held", delay_ms=5000)
        killer.join()
        a.proc.wait()  # dead, its listening sockets closed
        assert _echo_calls(b) == 0
        assert c.echo("next")["timerName"] == "b"  # a later call fails over
    assert _echo_calls(b) == 1


def test_async_calls_that_may_have_arrived_are_not_sent_to_the_next_daemon(
    pair: tuple[Daemon, Daemon],
) -> None:
    a, b = pair

    async def scenario() -> None:
        async with AsyncClient([a.tcp, b.tcp]) as c:
            killer = _kill_soon(a, 0.5)
            results = await asyncio.gather(
                *(c.echo(str(i), delay_ms=5000) for i in range(3)), return_exceptions=True
            )
            killer.join()
            a.proc.wait()  # dead, its listening sockets closed
            assert all(isinstance(r, ConnectionLost) for r in results), results
            assert _echo_calls(b) == 0
            assert (await c.echo("next"))["timerName"] == "b"

    asyncio.run(scenario())
    assert _echo_calls(b) == 1
