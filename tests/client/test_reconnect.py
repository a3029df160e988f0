"""Event streams that reconnect (issue 19 item 3): a real daemon restarted on the same socket.

``Client.subscribe()``, ``AsyncClient.subscribe()`` and ``mytimerctl watch``
subscribe again when the connection ends, and say so (a :class:`Gap` in the
stream, a line on stderr); ``reconnect=False`` / ``--no-reconnect`` end the
stream as before; ``SlowSubscriber`` and refusals are never retried.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mytimerd.client import (
    AsyncClient,
    CallTimeout,
    Client,
    ConnectionLost,
    DaemonCallError,
    Event,
    Gap,
    TLSError,
)
from mytimerd.client.events import GAP, Resubscriber
from mytimerd.protocol.address import TcpAddress

from .conftest import Daemon, restart_daemon, start_daemon, stop_daemon
from .test_ctl_io import MYTIMERCTL


@pytest.fixture
def restartable(sock_dir: Path) -> Iterator[list[Daemon]]:
    """A real daemon for one test; the list's last item is the one running after restarts."""
    running = [start_daemon(sock_dir, "--name", "first")]
    yield running
    stop_daemon(running[-1])


def _restart(running: list[Daemon], name: str) -> None:
    running.append(restart_daemon(running[-1], "--name", name))


def _echo(d: Daemon, message: str) -> None:
    with Client(d.address) as c:
        c.echo(message)


# --- the decisions, without I/O ------------------------------------------------------


def test_what_ends_a_stream_and_what_starts_a_gap() -> None:
    lost = ConnectionLost(None, "the daemon closed the connection")
    slow = DaemonCallError("mytimerd.subscribe", "SlowSubscriber", "too slow")
    stopping = DaemonCallError("mytimerd.subscribe", "ShuttingDown", "stopping")
    off = Resubscriber(enabled=False)
    assert not off.lost(lost)
    on = Resubscriber(enabled=True)
    assert not on.lost(slow)
    assert on.began is None
    assert on.lost(stopping) and on.began is not None
    refused = DaemonCallError("mytimerd.subscribe", "InvalidParameter", "no such event")
    assert not on.retry(refused)
    assert not on.retry(TLSError(TcpAddress("h", 1), "untrusted"))
    assert on.retry(lost)
    pauses = [on.pause() for _ in range(10)]
    assert 0.05 <= pauses[0] <= 0.1 and max(pauses) <= 5.0 and pauses[-1] >= 2.5
    gap = on.resubscribed(None)
    assert isinstance(gap, Event) and gap.name == GAP and gap.began <= gap.ended
    assert gap.payload["reason"] == "mytimerd.ShuttingDown: stopping" and on.began is None


# --- Client.subscribe() and AsyncClient.subscribe() ----------------------------------


def test_blocking_subscription_comes_back_after_a_restart(restartable: list[Daemon]) -> None:
    d = restartable[-1]
    with Client(d.address).subscribe(["on_echo_fired"], timeout=30) as events:
        _echo(d, "before")
        assert next(events).payload["message"] == "before"
        before = time.time()
        _restart(restartable, "second")
        gap = next(events)
        assert isinstance(gap, Gap), gap
        assert before <= gap.began <= gap.ended <= time.time()
        assert gap.payload["address"] == restartable[-1].address
        _echo(restartable[-1], "after")
        assert next(events).payload["message"] == "after"


def test_async_subscription_comes_back_after_a_restart(restartable: list[Daemon]) -> None:
    async def scenario() -> None:
        d = restartable[-1]
        async with AsyncClient(d.address).subscribe(["on_echo_fired"], timeout=30) as events:
            _echo(d, "before")
            assert (await anext(events)).payload["message"] == "before"
            _restart(restartable, "second")  # blocks the loop: the close is seen later
            gap = await anext(events)
            assert isinstance(gap, Gap) and gap.began <= gap.ended
            _echo(restartable[-1], "after")
            assert (await anext(events)).payload["message"] == "after"

    asyncio.run(scenario())


def test_a_subscription_waits_for_a_daemon_that_is_away(restartable: list[Daemon]) -> None:
    """The daemon is down for a while: attempts fail (no socket) until it is back;
    a wait bounded by ``timeout`` raises CallTimeout and the stream goes on."""
    d = restartable[-1]
    with Client(d.address).subscribe(timeout=0.5) as events:
        stop_daemon(d)
        with pytest.raises(CallTimeout):
            next(events)
        restartable.append(start_daemon(d.path.parent, "--name", "back", port=d.port))
        events.timeout = 30
        gap = next(events)
        assert isinstance(gap, Gap) and gap.ended - gap.began >= 0.5


@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_no_reconnect_ends_the_stream_as_before(restartable: list[Daemon], kind: str) -> None:
    d = restartable[-1]
    ended = (ConnectionLost, DaemonCallError)
    if kind == "blocking":
        with Client(d.address).subscribe(reconnect=False) as events:
            _restart(restartable, "second")
            with pytest.raises(ended):
                next(events)
        return

    async def scenario() -> None:
        async with AsyncClient(d.address).subscribe(reconnect=False) as events:
            _restart(restartable, "second")
            with pytest.raises(ended):
                await anext(events)

    asyncio.run(scenario())


def test_a_refused_resubscription_ends_the_stream(sock_dir: Path) -> None:
    """The new daemon's library lacks the event (0.2 has no on_job_scheduled): the
    refusal ends the stream instead of being retried for ever."""
    from .conftest import LIB03

    running = [start_daemon(sock_dir, "--library", str(LIB03))]
    try:
        with Client(running[0].address).subscribe(["on_job_scheduled"]) as events:
            running.append(restart_daemon(running[0]))
            with pytest.raises(DaemonCallError) as info:
                next(events)
            assert info.value.name == "InvalidParameter"
    finally:
        stop_daemon(running[-1])


# --- mytimerctl watch ----------------------------------------------------------------


def _watch(d: Daemon, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*MYTIMERCTL, "--unix", str(d.path), "watch", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_subscribed(d: Daemon) -> None:
    deadline = time.monotonic() + 15
    while True:
        with Client(d.address) as c:
            if c.stats()["events"]["subscribers"].get("on_echo_fired", 0):
                return
        assert time.monotonic() < deadline, "watch never subscribed"
        time.sleep(0.05)


def test_watch_reconnects_and_says_so_on_stderr(restartable: list[Daemon]) -> None:
    proc = _watch(restartable[-1])
    try:
        _wait_subscribed(restartable[-1])
        _restart(restartable, "second")
        _wait_subscribed(restartable[-1])
        _echo(restartable[-1], "after the restart")
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("on_echo_fired ") and "after the restart" in line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    text = err.decode()
    assert "watch: subscribed again to the daemon at unix:" in text, text
    assert " were missed (the connection ended: " in text


def test_watch_no_reconnect_exits_when_the_connection_ends(restartable: list[Daemon]) -> None:
    proc = _watch(restartable[-1], "--no-reconnect")
    _wait_subscribed(restartable[-1])
    _restart(restartable, "second")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode in (3, 5), err
    assert b"subscribed again" not in err
