"""Events and the 0.3 library through real daemons of both generations:
``mytimerctl watch``, the subscription iterators of both clients, ``lib-version``,
``schedule --priority``."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import cbor2
import pytest

from mytimerd.client import AsyncClient, CallTimeout, Client, DaemonCallError, ctl
from mytimerd.client.ctl.render import to_json
from mytimerd.client.events import Event
from mytimerd.protocol import wire

from .conftest import Daemon, start_daemon, stop_daemon
from .test_ctl import run
from .test_ctl_io import MYTIMERCTL


@pytest.fixture(params=["0.2", "0.3"])
def both(request: pytest.FixtureRequest) -> Daemon:
    """The module's daemon of each generation."""
    name = "daemon" if request.param == "0.2" else "daemon03"
    daemon: Daemon = request.getfixturevalue(name)
    return daemon


def _subscribers(address: str, event: str = "on_echo_fired") -> int:
    with Client(address) as c:
        count: int = c.stats()["events"]["subscribers"].get(event, 0)
        return count


def _wait_for_subscribers(address: str, count: int, event: str = "on_echo_fired") -> None:
    deadline = time.monotonic() + 10
    while _subscribers(address, event) != count:
        assert time.monotonic() < deadline, f"never {count} subscribers to {event}"
        time.sleep(0.02)


def _fire(address: str, generation: str) -> list[str]:
    """Calls that fire events: an echo (both generations) and a schedule (0.3 fires
    on_job_scheduled); the events' names in order."""
    with Client(address) as c:
        c.echo("hello \x1b[31mred")
        if generation == "0.3":
            c.schedule("backup", max_attempts=1, priority="high")
            return ["on_echo_fired", "on_job_scheduled"]
        c.schedule("backup", max_attempts=1, priority=2)
    return ["on_echo_fired"]


def _generation(d: Daemon) -> str:
    with Client(d.address) as c:
        generation: str = c.describe()["library"]["generation"]
        return generation


def _raw_subscriber(d: Daemon) -> socket.socket:
    """A subscription spoken on a bare socket, acknowledged."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(d.path))
    sock.sendall(wire.encode_request("mytimerd.subscribe", b"\xa0"))
    return sock


def _raw_bodies(sock: socket.socket, count: int) -> list[bytes]:
    """The bodies of the first ``count`` frames after the acknowledgement."""
    parser = wire.ResponseParser(1 << 20)
    frames: list[wire.Response] = []
    sock.settimeout(10)
    while len(frames) < count + 1:
        frames += parser.feed(sock.recv(65536))
    assert all(f.ret == wire.RET_OK for f in frames)
    return [f.body for f in frames[1 : count + 1]]


# --- mytimerctl watch ------------------------------------------------------------------


class Watch:
    """``mytimerctl watch`` running in the background, its output read line by line."""

    def __init__(self, d: Daemon, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [*MYTIMERCTL, "--unix", str(d.path), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buffer = b""

    def lines(self, count: int, seconds: float = 10) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + seconds
        while self._buffer.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {self._buffer!r} in {seconds} s"
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"watch ended: {self.finish()}"
                self._buffer += chunk
        lines = self._buffer.decode().split("\n")
        return lines[:count]

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit status and stderr."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err.decode()


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    started: list[Watch] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_watch_prints_events_fired_meanwhile(
    both: Daemon, watches: list[Watch], as_json: bool
) -> None:
    generation = _generation(both)
    watch = Watch(both, *(["--json"] if as_json else []), "watch")
    watches.append(watch)
    _wait_for_subscribers(both.address, 1)
    with Client(both.address) as c:
        reference = c.subscribe()  # what the library sent, for comparison
        names = _fire(both.address, generation)
        events = [next(reference) for _ in names]
        reference.close()
    lines = watch.lines(len(names))
    assert [e.name for e in events] == names
    if as_json:
        assert [json.loads(line) for line in lines] == [to_json(cbor2.loads(e.raw)) for e in events]
        assert json.loads(lines[0]) == {
            "eventType": "on_echo_fired",
            "payload": {"message": "hello \x1b[31mred", "echoCount": 1},
        }
    else:
        # One line per event, the escape shown as in other human output.
        assert lines[0] == 'on_echo_fired {"message": "hello \\x1b[31mred", "echoCount": 1}'
        if generation == "0.3":
            assert lines[1].startswith('on_job_scheduled {"jobId": "mytimerd:backup"')
    code, err = watch.interrupt()
    assert (code, err) == (130, "")  # Ctrl-C: quietly


def test_watch_chosen_events_only(daemon03: Daemon, watches: list[Watch]) -> None:
    watch = Watch(daemon03, "watch", "on_job_scheduled")
    watches.append(watch)
    _wait_for_subscribers(daemon03.address, 1, "on_job_scheduled")
    _fire(daemon03.address, "0.3")
    assert watch.lines(1)[0].startswith("on_job_scheduled ")
    _fire(daemon03.address, "0.3")
    assert all(line.startswith("on_job_scheduled ") for line in watch.lines(2))
    assert watch.interrupt()[0] == 130


def test_watch_an_unknown_event(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """The 0.2 library has no on_job_scheduled: the daemon's InvalidParameter, exit 5."""
    code, out, err = run(capsys, "--unix", str(daemon.path), "watch", "on_job_scheduled")
    assert (code, out) == (ctl.EXIT_DAEMON_ERROR, "")
    assert err.startswith(
        "mytimerctl: mytimerd.InvalidParameter: events: no event 'on_job_scheduled'"
    )


def test_watch_cut_off_as_a_slow_subscriber(sock_dir: object, watches: list[Watch]) -> None:
    """A watch whose output nobody reads falls behind: the daemon cuts it off,
    and it says so (exit 5) once its output is read."""
    from pathlib import Path

    assert isinstance(sock_dir, Path)
    d = start_daemon(sock_dir, "--max-subscriber-queue", "4")
    try:
        watch = Watch(d, "watch")
        watches.append(watch)
        _wait_for_subscribers(d.address, 1)
        with Client(d.address) as c:
            for _ in range(300):  # fills the pipe, the socket, then the daemon's queue
                c.echo("x" * 4000)
            assert c.stats()["events"]["cutOff"] == 1
        code, err = watch.finish()  # reads the output: the watch goes on, then ends
        assert code == ctl.EXIT_DAEMON_ERROR
        assert err.startswith("mytimerctl: mytimerd.SlowSubscriber: ")
        assert "hint: the daemon cut this watch off" in err
    finally:
        stop_daemon(d)


# --- the subscription iterators ----------------------------------------------------------


def test_iterators_of_both_clients_get_the_bodies_byte_for_byte(both: Daemon) -> None:
    generation = _generation(both)
    raw = _raw_subscriber(both)
    with Client(both.address) as c:
        blocking = c.subscribe()
        assert blocking.events == (
            ["on_echo_fired", "on_job_scheduled"] if generation == "0.3" else ["on_echo_fired"]
        )

        async def receive() -> list[Event]:
            async with AsyncClient(both.address) as ac, ac.subscribe() as subscription:
                await asyncio.to_thread(_fire, both.address, generation)
                got = []
                async for event in subscription:
                    got.append(event)
                    if len(got) == len(names):
                        break
                return got

        names = ["on_echo_fired", "on_job_scheduled"] if generation == "0.3" else ["on_echo_fired"]
        from_async = asyncio.run(receive())
        from_blocking = [next(blocking) for _ in names]
        # The client's own calls keep working beside its subscription.
        assert c.echo("after")["echoed"] == "after"
        assert next(blocking).payload == {"message": "after", "echoCount": 1}
        blocking.close()
    expected = _raw_bodies(raw, len(names))
    raw.close()
    assert [e.raw for e in from_blocking] == [e.raw for e in from_async] == expected
    assert [e.name for e in from_blocking] == names
    assert from_blocking[0].payload == {"message": "hello \x1b[31mred", "echoCount": 1}
    assert from_blocking[0].payload == cbor2.loads(expected[0])["payload"]


def test_waiting_for_events_has_no_timeout_unless_given(daemon: Daemon) -> None:
    with Client(daemon.address, timeout=0.1) as c, c.subscribe() as events:
        assert events.timeout is None  # not the client's 0.1 s
        time.sleep(0.3)
        c.echo("late")
        assert next(events).payload["message"] == "late"
    with Client(daemon.address) as c, c.subscribe(timeout=0.2) as events:
        with pytest.raises(CallTimeout):
            next(events)
        c.echo("then")  # the stream is intact after a timeout
        assert next(events).payload["message"] == "then"


def test_async_timeout_keeps_the_stream(daemon: Daemon) -> None:
    async def main() -> str:
        async with AsyncClient(daemon.address) as c, c.subscribe(timeout=0.2) as events:
            with pytest.raises(CallTimeout):
                await events.__anext__()
            await c.echo("then")
            event = await events.__anext__()
            message: str = event.payload["message"]
            return message

    assert asyncio.run(main()) == "then"


def test_a_quiet_subscription_outlives_the_idle_timeout(sock_dir: object) -> None:
    from pathlib import Path

    assert isinstance(sock_dir, Path)
    d = start_daemon(sock_dir, "--idle-timeout", "0.5")
    try:
        with Client(d.address) as c, c.subscribe(timeout=10) as events:
            time.sleep(2.5)  # the daemon looks for idle connections every second
            c.echo("still here")
            assert next(events).payload["message"] == "still here"
    finally:
        stop_daemon(d)


def test_subscribing_to_an_unknown_event(daemon: Daemon) -> None:
    with Client(daemon.address) as c:
        with pytest.raises(DaemonCallError) as caught:
            c.subscribe(["on_job_scheduled"])
        assert caught.value.name == "InvalidParameter"
        assert c.ping()["healthy"]

    async def main() -> None:
        async with AsyncClient(daemon.address) as c:
            with pytest.raises(DaemonCallError) as caught:
                async for _ in c.subscribe(["nope"]):
                    pass
            assert caught.value.name == "InvalidParameter"

    asyncio.run(main())


def test_iterators_close_their_connection(daemon: Daemon) -> None:
    with Client(daemon.address) as c:
        with c.subscribe():
            _wait_for_subscribers(daemon.address, 1)
        _wait_for_subscribers(daemon.address, 0)
        subscription = c.subscribe()
        _wait_for_subscribers(daemon.address, 1)
        c.echo("one")
        for event in subscription:
            assert event.name == "on_echo_fired"
            break
        del subscription  # left by break: closed once it is garbage
        _wait_for_subscribers(daemon.address, 0)

    async def main() -> None:
        async with AsyncClient(daemon.address) as c:
            async with c.subscribe() as events:
                assert events.events == ["on_echo_fired"]
                await asyncio.to_thread(_wait_for_subscribers, daemon.address, 1)
            await asyncio.to_thread(_wait_for_subscribers, daemon.address, 0)

    asyncio.run(main())


def test_a_subscription_cut_off_raises_slow_subscriber(sock_dir: object) -> None:
    from pathlib import Path

    assert isinstance(sock_dir, Path)
    d = start_daemon(sock_dir, "--max-subscriber-queue", "4")
    try:
        with Client(d.address) as c:
            events = c.subscribe()
            events._client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[union-attr]
            for _ in range(300):
                c.echo("x" * 4000)
            with pytest.raises(DaemonCallError) as caught:
                for _ in events:
                    pass
            assert caught.value.name == "SlowSubscriber"
            assert list(events) == []  # closed: iterating ends
    finally:
        stop_daemon(d)


# --- the 0.3 library's own methods through mytimerctl and the clients -----------------------


def test_lib_version_on_both_generations(
    daemon: Daemon, daemon03: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for spelling in ("lib-version", "lib_version"):
        assert run(capsys, "--unix", str(daemon03.path), spelling) == (
            0,
            "nim-timer v0.1.0\n",
            "",
        )
    code, out, err = run(capsys, "--unix", str(daemon.path), "lib-version")
    assert (code, out) == (ctl.EXIT_DAEMON_ERROR, "")
    assert err.startswith("mytimerctl: mytimerd.UnknownMethod: no method 'lib_version'")
    with Client(daemon03.address) as c:
        assert c.lib_version() == "nim-timer v0.1.0"
    with Client(daemon.address) as c, pytest.raises(DaemonCallError) as caught:
        c.lib_version()
    assert caught.value.name == "UnknownMethod"


def test_schedule_priority_on_both_generations(
    daemon: Daemon, daemon03: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["schedule", "--job", "j", "--max-attempts", "1", "--priority"]
    code, out, err = run(capsys, "--unix", str(daemon03.path), "--json", *argv, "high")
    assert (code, err) == (0, "")
    assert json.loads(out)["priority"] == "high"
    code, out, err = run(capsys, "--unix", str(daemon03.path), *argv, "low")
    assert code == 0 and "priority:           low" in out
    # 0.2 takes an integer, and refuses a choice (its daemon's schema wants an int).
    assert run(capsys, "--unix", str(daemon.path), *argv, "2")[0] == 0
    code, _, err = run(capsys, "--unix", str(daemon.path), *argv, "high")
    assert code == ctl.EXIT_DAEMON_ERROR and "mytimerd.InvalidParameter: job.priority" in err
    with Client(daemon03.address) as c:
        assert c.schedule("j", max_attempts=1, priority="normal")["priority"] == "normal"
