"""Both nim-ffi generations end to end through the daemon: every vector, the
static call, events byte for byte over mytimerd.subscribe, stale warnings.

The 0.2 generation is the bundled library; the 0.3 generation is its drop-in
built from the same sources (``make -C native GENERATION=0.3``), which the
package ships beside it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

import mytimerd
from mytimerd.protocol import wire
from tests.support.daemon import Daemon, start_daemon

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
LIBS = Path(mytimerd.__file__).resolve().parent / "_lib"
GENERATIONS = {
    "0.2": (LIBS / "libmy_timer.so", VECTORS / "abi-vectors.json"),
    "0.3": (LIBS / "libmy_timer-0.3.so", VECTORS / "abi-vectors-0.3.json"),
}


def cases() -> list[tuple[str, dict[str, Any]]]:
    """(generation, vector) for every vector the library answers."""
    out = []
    for generation, (_, path) in GENERATIONS.items():
        for call in json.loads(path.read_text())["calls"]:
            if "ok_hex" in call or "err_text" in call:
                out.append((generation, call))
    return out


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Daemon]]:
    """One daemon per generation, timer "demo" like the vectors."""
    started = {}
    for generation, (library, _) in GENERATIONS.items():
        folder = tmp_path_factory.mktemp(f"gen{generation}")
        started[generation] = start_daemon(
            folder, ["--name", "demo", "--library", str(library), "--timeout", "20"]
        )
    yield started
    for d in started.values():
        assert d.stop() == 0, d.log()


class Subscriber:
    """A connection subscribed to events, read by a thread."""

    def __init__(self, d: Daemon, events: list[str] | None = None) -> None:
        self.client = d.client()
        request = {} if events is None else {"events": events}
        ack = self.client.call("mytimerd.subscribe", cbor2.dumps(request))
        assert ack.ret == wire.RET_OK, ack
        self.subscribed = cbor2.loads(ack.body)["subscribed"]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.received.append(self.client.recv().body)
        except (OSError, EOFError, AssertionError):
            return

    def wait_for(self, count: int, seconds: float = 10) -> list[bytes]:
        """The first ``count`` events, waiting for them."""
        deadline = time.monotonic() + seconds
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received[:count]

    def close(self) -> None:
        """Unsubscribe by closing."""
        self.client.close()


@pytest.mark.parametrize(("generation", "call"), cases(), ids=lambda x: str(x)[:60])
def test_every_vector_through_the_daemon(
    daemons: dict[str, Daemon], generation: str, call: dict[str, Any]
) -> None:
    """Valid calls and business errors arrive byte for byte, events too; the
    daemon refuses what its schema refuses before the library sees it."""
    d = daemons[generation]
    subscriber = Subscriber(d)
    try:
        with d.client(timeout=20) as c:
            resp = c.call(call["method"], bytes.fromhex(call["request_hex"]))
        if "ok_hex" in call:
            assert resp == wire.Response(0, bytes.fromhex(call["ok_hex"]))
        elif resp.body.startswith(b"mytimerd."):
            # Refused by the daemon's schema: an unknown key, a wrong type.
            assert resp.ret == 1
            assert resp.body.startswith((b"mytimerd.InvalidParameter", b"mytimerd.InvalidCBOR"))
            refused_here = ("unknown key", "as ", "not a member", "empty payload")
            assert any(w in call["name"] for w in refused_here)
        else:
            assert resp == wire.Response(1, call["err_text"].encode())
        expected = [bytes.fromhex(e) for e in call.get("events", [])]
        assert subscriber.wait_for(len(expected)) == expected
    finally:
        subscriber.close()


def test_the_static_call_and_the_0_3_description(daemons: dict[str, Daemon]) -> None:
    with daemons["0.3"].client() as c:
        assert c.call_value("lib_version") == "nim-timer v0.1.0"
        described = c.call_value("mytimerd.describe")
    assert isinstance(described, dict)
    assert described["library"]["generation"] == "0.3"
    static = [m["name"] for m in described["methods"] if m["handler"] == "static"]
    assert static == ["lib_version"]
    assert [e["name"] for e in described["events"]] == ["on_echo_fired", "on_job_scheduled"]
    with daemons["0.2"].client() as c:
        assert c.call("lib_version").body.startswith(b"mytimerd.UnknownMethod")


def test_enums_are_checked_with_their_choices(daemons: dict[str, Daemon]) -> None:
    with daemons["0.3"].client() as c:
        answer = c.call("schedule", cbor2.dumps({"job": {"name": "j", "priority": "urgent"}}))
    assert answer.body == (
        b'mytimerd.InvalidParameter: job.priority: expected one of low, normal, high, got "urgent"'
    )


def test_many_subscribers_at_once(daemons: dict[str, Daemon]) -> None:
    d = daemons["0.2"]
    subscribers = [Subscriber(d, ["on_echo_fired"]) for _ in range(100)]
    try:
        with d.client() as c:
            for i in range(5):
                c.call_value("echo", {"req": {"message": f"m{i}"}})
        for s in subscribers:
            got = s.wait_for(5)
            assert [cbor2.loads(b)["payload"]["message"] for b in got] == [
                f"m{i}" for i in range(5)
            ]
    finally:
        for s in subscribers:
            s.close()


def test_a_slow_subscriber_is_cut_off(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory("--max-subscriber-queue", "8")
    slow = d.client()
    assert slow.call("mytimerd.subscribe", b"\xa0").ret == wire.RET_OK
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
    message = "x" * 4000
    with d.client() as c:
        for _ in range(300):  # fills the kernel buffers, then the daemon's queue
            c.call_value("echo", {"req": {"message": message}})
        stats = c.call_value("mytimerd.stats")
    assert isinstance(stats, dict) and stats["events"]["cutOff"] == 1
    assert stats["events"]["subscribers"]["on_echo_fired"] == 0
    assert "SlowSubscriber: more than 8 events waited for you" in d.log()
    slow.close()


def test_stale_warnings_are_counted_per_method(daemon_factory: Callable[..., Daemon]) -> None:
    library = GENERATIONS["0.3"][0]
    d = daemon_factory("--library", str(library), env={"MY_TIMER_STALE_WARN_MS": "100"})
    with d.client() as c:
        assert c.call_value("echo", {"req": {"message": "slow", "delayMs": 450}})
        stats = c.call_value("mytimerd.stats")
    assert isinstance(stats, dict)
    assert stats["library"]["staleWarningsByMethod"] == {"echo": 4}


def test_a_description_the_library_does_not_fully_have(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """--schema names a description with a method the library lacks: the
    daemon starts, describe shows it unavailable, calls get a clear error."""
    text = (
        GENERATIONS["0.3"][0]
        .parents[1]
        .joinpath("protocol", "descriptions", "my_timer-0.3.cddl")
        .read_text()
    )
    text += "\n; my_timer_frobnicate (ffi)\nmy_timer_frobnicate-request = MyTimerVersionReq\n"
    text += "my_timer_frobnicate-response = tstr\n"
    schema = tmp_path / "extended.cddl"
    schema.write_text(text)
    d = daemon_factory("--library", str(GENERATIONS["0.3"][0]), "--schema", str(schema))
    with d.client() as c:
        answer = c.call("frobnicate")
        described = c.call_value("mytimerd.describe")
        assert c.call_value("version") == "nim-timer v0.1.0"
    assert answer.ret == 1 and answer.body.startswith(b"mytimerd.MethodUnavailable: ")
    assert isinstance(described, dict) and described["interface"] == str(schema)
    unavailable = [m["name"] for m in described["methods"] if not m["available"]]
    assert unavailable == ["frobnicate"]
    assert "the library lacks frobnicate" in d.log()


def test_a_bad_schema_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cddl"
    bad.write_text("Broken = {")
    done = subprocess.run(
        [sys.executable, "-m", "mytimerd", "--unix", str(tmp_path / "s"), "--schema", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--schema" in done.stderr and "not valid CDDL" in done.stderr
