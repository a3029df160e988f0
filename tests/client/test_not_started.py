"""A request the daemon answers ShuttingDown was not started: the clients send
it again, once, on a fresh connection (another daemon, or the next instance
on the same socket). Any other answer (Timeout: it may have run) stands."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import pytest

from mytimerd.client import AsyncClient, Client, DaemonCallError
from mytimerd.protocol import wire
from tests.client.conftest import Answer, FakeServer, canned
from tests.support.daemon import start_daemon


def first_answer(name: str) -> FakeServer:
    """A fake whose first request is answered ``mytimerd.<name>``, the rest as usual."""
    seen = [0]

    def handler(method: str, payload: bytes) -> Answer:
        seen[0] += 1
        if seen[0] == 1:
            return wire.RET_ERR, f"mytimerd.{name}: the daemon is stopping".encode()
        return canned(method, payload)

    return FakeServer(Path(tempfile.mkdtemp(prefix="mtn")) / "f.sock", handler=handler)


def test_shutting_down_is_sent_again_on_a_fresh_connection() -> None:
    fake = first_answer("ShuttingDown")
    try:
        with Client(fake.address) as c:
            assert c.version() == "nim-timer v0.1.0"
        assert fake.connections == 2 and len(fake.requests) == 2

        async def run() -> str:
            async with AsyncClient(fake.address) as ac:
                return await ac.version()

        assert asyncio.run(run()) == "nim-timer v0.1.0"  # the fake answers OK from now on
    finally:
        fake.stop()


@pytest.mark.parametrize("client", ["blocking", "async"])
def test_a_timeout_is_not_sent_again(client: str) -> None:
    fake = first_answer("Timeout")
    try:
        with pytest.raises(DaemonCallError) as info:
            if client == "blocking":
                with Client(fake.address) as c:
                    c.version()
            else:

                async def run() -> None:
                    async with AsyncClient(fake.address) as ac:
                        await ac.version()

                asyncio.run(run())
        assert info.value.name == "Timeout"
        assert fake.connections == 1 and len(fake.requests) == 1
    finally:
        fake.stop()


def test_calls_a_stopping_daemon_did_not_start_go_to_the_next(tmp_path: Path) -> None:
    """One connection to daemon A holds an echo and five versions queued
    behind it (--max-in-flight 1); A is stopped: the echo is answered by A,
    the five (ShuttingDown: not started) by daemon B."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = start_daemon(a_dir, ["--max-in-flight", "1"])
    b = start_daemon(b_dir)

    async def run() -> list[object]:
        async with AsyncClient([f"unix:{a.address.path}", f"unix:{b.address.path}"]) as ac:  # type: ignore[union-attr]
            echo = asyncio.ensure_future(ac.echo("held", delay_ms=400))
            await asyncio.sleep(0.05)
            versions = [asyncio.ensure_future(ac.version()) for _ in range(5)]
            await asyncio.sleep(0.05)
            a.send_signal(signal.SIGTERM)
            return await asyncio.gather(echo, *versions)

    try:
        _echo, *versions = asyncio.run(run())
        assert versions == ["nim-timer v0.1.0"] * 5
        assert a.proc.wait(10) == 0
        with Client(f"unix:{b.address.path}") as c:  # type: ignore[union-attr]
            calls = c.stats()["calls"]
        assert calls["version"]["ok"] == 5  # B answered the five A did not start
    finally:
        for d in (a, b):
            if d.proc.poll() is None:
                d.proc.kill()
