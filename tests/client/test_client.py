"""The Python client API: Client and AsyncClient, against a fake server and a real daemon."""

from __future__ import annotations

import asyncio
import inspect
import math
import pydoc
import time
from pathlib import Path
from typing import assert_type

import cbor2
import pytest

from mytimerd import client
from mytimerd.client import (
    AsyncClient,
    BadResponse,
    CallTimeout,
    Client,
    ConnectError,
    ConnectionLost,
    DaemonCallError,
    EchoResult,
    LibraryError,
    MytimerError,
    TransportError,
    aio,
    common,
    methods,
)
from mytimerd.protocol import interfaces, wire
from mytimerd.protocol.address import TcpAddress, UnixAddress
from mytimerd.protocol.interfaces import BY_NAME
from mytimerd.protocol.schema import Struct

from .conftest import Daemon, FakeServer, canned, err, ok, restart_daemon, stop_daemon

# --- addresses ----------------------------------------------------------------


def test_resolve_explicit_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYTIMER_ADDRESS", "tcp:example.org:1")
    assert client.resolve_addresses("unix:/x.sock") == [UnixAddress("/x.sock")]
    assert client.resolve_addresses(TcpAddress("::1", 5)) == [TcpAddress("::1", 5)]


def test_resolve_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYTIMER_ADDRESS", "tcp:[::1]:9099")
    assert client.resolve_addresses() == [TcpAddress("::1", 9099)]
    monkeypatch.setenv("MYTIMER_ADDRESS", "bogus")
    with pytest.raises(ValueError, match="MYTIMER_ADDRESS"):
        client.resolve_addresses()


def test_resolve_defaults_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYTIMER_ADDRESS", raising=False)
    monkeypatch.setattr(common, "default_client_paths", lambda: [Path("/a"), Path("/b")])
    assert client.resolve_addresses() == [UnixAddress("/a"), UnixAddress("/b")]


def test_tries_default_paths_in_order(
    fake: FakeServer, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MYTIMER_ADDRESS", raising=False)
    missing = sock_dir / "missing.sock"
    monkeypatch.setattr(common, "default_client_paths", lambda: [missing, fake.path])
    with Client() as c:
        assert c.version() == "nim-timer v0.1.0"
        assert c.address == UnixAddress(str(fake.path))


def test_connect_error_lists_every_address(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [sock_dir / "a.sock", sock_dir / "b.sock"]
    monkeypatch.delenv("MYTIMER_ADDRESS", raising=False)
    monkeypatch.setattr(common, "default_client_paths", lambda: paths)
    with pytest.raises(ConnectError) as info:
        Client().version()
    assert [a for a, _ in info.value.attempts] == [UnixAddress(str(p)) for p in paths]
    assert "No such file or directory" in str(info.value)
    assert isinstance(info.value, TransportError)
    assert isinstance(info.value, MytimerError)


def test_connect_refused_tcp() -> None:
    with pytest.raises(ConnectError, match="refused"):
        Client("tcp:127.0.0.1:1", connect_timeout=2).version()


# --- requests -------------------------------------------------------------------


def test_typed_methods_send_schema_requests(fake: FakeServer) -> None:
    with Client(fake.address) as c:
        assert c.echo("hi", delay_ms=3) == {"echoed": "hi", "timerName": "fake"}
        c.call("complex", client.complex_request())
        c.complex(["a", {"message": "b", "delayMs": 2}], tags=["t"], note="", retries=None)
        assert c.schedule("j", max_attempts=2, retry_on=["x"])["jobId"] == "fake:j"
        c.schedule("k")
    assert fake.requests == [
        ("echo", {"req": {"message": "hi", "delayMs": 3}}),
        ("complex", {}),  # a sub-map with nothing in it is left out, as in mytimerctl
        (
            "complex",
            {
                "req": {
                    "messages": [{"message": "a"}, {"message": "b", "delayMs": 2}],
                    "tags": ["t"],
                    "note": "",
                }
            },
        ),
        ("schedule", {"job": {"name": "j"}, "retry": {"maxAttempts": 2, "retryOn": ["x"]}}),
        ("schedule", {"job": {"name": "k"}}),
    ]


def test_typed_requests_follow_the_method_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The typed methods' requests come from the table: every argument of every
    typed method is a field of it, and a table with other nesting gives other maps."""
    for name, attr in vars(methods.TypedMethods).items():
        if isinstance(attr, methods.TypedCall):
            leaves = attr.shape.leaves  # resolves every argument, or LookupError
            assert {a for a, _, _ in leaves} == set(attr.shape.names), name
    paths = {a: p for a, p, _ in methods.TypedMethods.schedule.shape.leaves}
    assert paths["job"] == ("job", "name") and paths["jitter"] == ("schedule", "jitter")
    text = (
        interfaces.BUNDLED["0.2"]
        .read_text()
        .replace(
            "MyTimerEchoReq = { req: EchoRequest }", "MyTimerEchoReq = { request: EchoRequest }"
        )
    )
    other = interfaces.build(text, "renamed")
    monkeypatch.setattr(methods, "table_method", lambda name: other.by_name[name.encode()])
    shape = methods.RequestShape("echo", ("message", "delay_ms"))
    assert shape.build({"message": "x", "delay_ms": 3}) == {
        "request": {"message": "x", "delayMs": 3}
    }


def _leaf_names(struct: Struct) -> set[str]:
    names: set[str] = set()
    for f in struct.fields:
        names |= _leaf_names(f.type) if isinstance(f.type, Struct) else {f.name}
    return names


@pytest.mark.parametrize("cls", [Client, AsyncClient])
@pytest.mark.parametrize("method", ["echo", "complex", "schedule"])
def test_typed_methods_cover_schema(cls: type, method: str) -> None:
    """Each typed method takes one argument per leaf field of the request, and ``timeout``."""
    signature = inspect.signature(getattr(cls, method))
    assert signature.parameters["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    params = set(signature.parameters) - {"self", "timeout"}
    fields = _leaf_names(BY_NAME[method.encode()].request)
    camel = {"".join(w.title() if i else w for i, w in enumerate(p.split("_"))) for p in params}
    # schedule's job name is the ``job`` argument, as on the command line (--job).
    assert camel == (fields - {"name"} | {"job"} if method == "schedule" else fields)


TYPED = ("version", "echo", "complex", "schedule", "describe", "ping", "stats")


@pytest.mark.parametrize("method", TYPED)
def test_typed_methods_are_defined_once(method: str) -> None:
    """Both clients inherit the same definition, which documents itself for help()."""
    assert method not in vars(Client) and method not in vars(AsyncClient)
    shared = getattr(Client, method)
    assert shared is getattr(AsyncClient, method)
    help_text = pydoc.render_doc(Client)
    assert shared.__doc__ and shared.__doc__.splitlines()[0] in help_text
    signature = inspect.signature(shared)
    assert next(iter(signature.parameters)) == "self"
    for cls in (Client, AsyncClient):
        bound = getattr(cls("unix:/x.sock"), method)
        assert inspect.iscoroutinefunction(bound) == (cls is AsyncClient)
        assert bound.__doc__ == shared.__doc__
        assert list(inspect.signature(bound).parameters) == list(signature.parameters)[1:]


def test_typed_methods_on_both_clients(fake: FakeServer) -> None:
    with Client(fake.address) as c:
        # assert_type: `mypy tests/client` checks the descriptor types each client's methods.
        assert assert_type(c.echo("a"), EchoResult)["echoed"] == "a"
        assert assert_type(c.version(), str) == "nim-timer v0.1.0"
        assert Client.echo(c, "b")["echoed"] == "b"  # like an unbound method

    async def run() -> None:
        async with AsyncClient(fake.address) as ac:
            assert assert_type(await ac.echo("c", delay_ms=1), EchoResult)["echoed"] == "c"
            assert assert_type(await ac.version(), str) == "nim-timer v0.1.0"

    asyncio.run(run())
    assert [r for m, r in fake.requests if m == "echo"] == [
        {"req": {"message": "a", "delayMs": 0}},
        {"req": {"message": "b", "delayMs": 0}},
        {"req": {"message": "c", "delayMs": 1}},
    ]


# --- errors -----------------------------------------------------------------------


def test_library_and_daemon_errors_are_distinct(fake: FakeServer) -> None:
    with Client(fake.address) as c:
        with pytest.raises(LibraryError) as lib:
            c.schedule("")
        assert lib.value.message == "job name must not be empty"
        assert lib.value.method == "schedule"
        with pytest.raises(DaemonCallError) as daemon:
            c.call("frobnicate")
        assert daemon.value.name == "UnknownMethod"
        assert str(daemon.value).startswith("mytimerd.UnknownMethod: no method")
        assert c.version() == "nim-timer v0.1.0"  # errors leave the connection usable
    assert fake.connections == 1
    assert not isinstance(lib.value, DaemonCallError)
    assert isinstance(lib.value, MytimerError) and isinstance(daemon.value, MytimerError)


def test_call_raw_returns_body_bytes(fake: FakeServer) -> None:
    with Client(fake.address) as c:
        assert c.call_raw("version", b"\xa0") == cbor2.dumps("nim-timer v0.1.0")
        assert c.call_raw(b"version", b"\xa0", timeout=5) == cbor2.dumps("nim-timer v0.1.0")


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ((7, b""), "unknown result code 7"),
        ((wire.RET_OK, b"\xa1"), "not valid CBOR"),
        ((wire.RET_OK, b"\xa0\x00"), "1 bytes after"),
    ],
)
def test_bad_responses(fake: FakeServer, answer: tuple[int, bytes], match: str) -> None:
    fake.handler = lambda method, payload: answer
    with Client(fake.address) as c, pytest.raises(BadResponse, match=match):
        c.version()


def test_oversized_response_is_refused(fake: FakeServer) -> None:
    fake.greeting = (1 << 30).to_bytes(8, "big")  # RET_OK, then a 1 GiB body length
    fake.handler = lambda method, payload: None
    with Client(fake.address) as c, pytest.raises(BadResponse, match="exceeds the limit"):
        c.version()


def test_default_request_is_an_empty_map_and_none_is_null(fake: FakeServer) -> None:
    fake.handler = lambda method, payload: (wire.RET_OK, payload)  # answers the request back
    with Client(fake.address) as c:
        assert c.call("version") == {}
        assert c.call("echo", None) is None
        assert c.call_raw("echo", b"\xf6") == b"\xf6"


def test_timeout_closes_connection_and_next_call_reconnects(fake: FakeServer) -> None:
    """The late answer would be out of step with the next call: the stream is dropped."""
    with Client(fake.address, timeout=5) as c:
        fake.delay = 0.3
        with pytest.raises(CallTimeout) as info:
            c.call("echo", client.echo_request("late"), timeout=0.05)
        assert info.value.seconds == 0.05
        fake.delay = 0
        assert c.echo("next")["echoed"] == "next"
    assert fake.connections == 2


def test_connection_lost_then_reconnect(fake: FakeServer) -> None:
    fake.handler = lambda method, payload: None if method == "echo" else canned(method, payload)
    with Client(fake.address) as c:
        with pytest.raises(ConnectionLost, match="closed the connection"):
            c.echo("x")
        assert c.version() == "nim-timer v0.1.0"
    assert fake.connections == 2


def test_early_answer_is_the_first_calls(fake: FakeServer) -> None:
    """A daemon refusing a connection answers before any request."""
    fake.greeting = wire.encode_response(
        wire.RET_ERR, b"mytimerd.TooManyConnections: the daemon serves 1 connections"
    )
    fake.handler = lambda method, payload: None
    with Client(fake.address) as c, pytest.raises(DaemonCallError) as info:
        c.version()
    assert info.value.name == "TooManyConnections"

    async def run() -> None:
        async with AsyncClient(fake.address) as ac:
            with pytest.raises(DaemonCallError, match="TooManyConnections"):
                await ac.version()

    asyncio.run(run())


def test_answer_before_close_beats_broken_pipe(fake: FakeServer) -> None:
    """A daemon that answers and closes at once: its answer is shown, not EPIPE."""
    fake.greeting = wire.encode_response(wire.RET_ERR, b"mytimerd.ShuttingDown: stopping")
    fake.close_after_greeting = True
    for _ in range(20):
        c = Client(fake.address)
        c.connect()
        time.sleep(0.01)  # let the fake close first, so that sending may fail
        with pytest.raises(DaemonCallError) as info:
            c.version()
        assert info.value.name == "ShuttingDown"
        c.close()


# --- AsyncClient against the fake -------------------------------------------------


def test_async_pipelines_on_one_connection(fake: FakeServer) -> None:
    async def run() -> list[str]:
        async with AsyncClient(fake.address) as c:
            answers = await asyncio.gather(*(c.echo(str(i)) for i in range(200)))
            return [a["echoed"] for a in answers]

    assert asyncio.run(run()) == [str(i) for i in range(200)]
    assert fake.connections == 1


def test_async_timeout_moves_next_calls_to_a_new_connection(fake: FakeServer) -> None:
    async def run() -> None:
        async with AsyncClient(fake.address, timeout=5) as c:
            fake.delay = 0.2
            with pytest.raises(CallTimeout):
                await c.call("echo", client.echo_request("late"), timeout=0.05)
            fake.delay = 0
            assert (await c.echo("next"))["echoed"] == "next"

    asyncio.run(run())
    assert fake.connections == 2


def test_async_cancelled_call_moves_next_calls_to_a_new_connection(fake: FakeServer) -> None:
    """A call cancelled from outside (here by wait_for) leaves a late answer too."""

    async def run() -> None:
        async with AsyncClient(fake.address, timeout=5) as c:
            fake.delay = 0.3
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.echo("late"), 0.05)
            fake.delay = 0
            start = time.monotonic()
            assert (await c.echo("next"))["echoed"] == "next"
            assert time.monotonic() - start < 0.2

    asyncio.run(run())
    assert fake.connections == 2


def test_async_connection_lost_fails_every_pending_call(fake: FakeServer) -> None:
    # The fake hangs up on the last request, so no write can race its close.
    fake.handler = lambda method, payload: None if method == "echo" else ok("v")
    fake.delay = 0.05

    async def run() -> None:
        async with AsyncClient(fake.address) as c:
            first = asyncio.gather(c.version(), c.echo("x"), return_exceptions=True)
            late = asyncio.gather(c.version(), return_exceptions=True)
            results = [*await first, *await late]
            assert results[0] == "v"
            assert all(isinstance(r, ConnectionLost) for r in results[1:]), results
            assert await c.version() == "v"  # reconnects

    asyncio.run(run())
    assert fake.connections == 2


def test_async_errors_and_raw(fake: FakeServer) -> None:
    fake.handler = lambda method, payload: (
        err("boom") if method == "echo" else canned(method, payload)
    )

    async def run() -> None:
        async with AsyncClient(fake.address) as c:
            with pytest.raises(LibraryError, match="boom"):
                await c.echo("x")
            with pytest.raises(DaemonCallError) as info:
                await c.call("nope")
            assert info.value.name == "UnknownMethod"
            assert await c.call_raw("version", b"\xa0") == cbor2.dumps("nim-timer v0.1.0")

    asyncio.run(run())


def test_async_connect_error(sock_dir: Path) -> None:
    async def run() -> None:
        with pytest.raises(ConnectError, match="No such file"):
            await AsyncClient(f"unix:{sock_dir / 'none.sock'}").version()

    asyncio.run(run())


def test_async_close_fails_waiting_calls(fake: FakeServer) -> None:
    fake.delay = 1

    async def run() -> None:
        c = AsyncClient(fake.address)
        pending = asyncio.create_task(c.version())
        await asyncio.sleep(0.1)
        await c.close()
        with pytest.raises(ConnectionLost, match="client closed"):
            await pending

    asyncio.run(run())


# --- against the real daemon --------------------------------------------------------


def test_real_typed_methods(daemon: Daemon) -> None:
    with Client(daemon.address) as c:
        assert c.version() == "nim-timer v0.1.0"
        assert c.echo("hello", delay_ms=5) == {"echoed": "hello", "timerName": "mytimerd"}
        assert c.complex() == {
            "summary": "received 0 messages, note=<none>, retries=0",
            "itemCount": 0,
            "hasNote": False,
        }
        assert c.complex(["a", "b"], tags=["t1", "t2"], note="n", retries=3) == {
            "summary": "received 2 messages, note=n, retries=3",
            "itemCount": 2,
            "hasNote": True,
        }
        assert c.schedule(
            "j",
            payload=["p"],
            priority=1,
            max_attempts=3,
            backoff_ms=100,
            retry_on=["timeout"],
            start_at_ms=1000,
            interval_ms=250,
            jitter=5,
        ) == {
            "jobId": "mytimerd:j",
            "willRunCount": 240,
            "firstRunAtMs": 1005,
            "effectiveBackoffMs": 100,
        }


def test_real_errors(daemon: Daemon) -> None:
    with Client(daemon.address) as c:
        with pytest.raises(LibraryError, match=r"^job name must not be empty$"):
            c.schedule()
        with pytest.raises(LibraryError, match="maxAttempts must be positive"):
            c.schedule("j")
        with pytest.raises(DaemonCallError) as info:
            c.call("echo", {"req": {"delayMs": "5"}})
        assert info.value.name == "InvalidParameter"
        assert info.value.message.startswith("req.delayMs")
        with pytest.raises(DaemonCallError) as unknown:
            c.call_raw("frobnicate", b"\xa0")
        assert unknown.value.name == "UnknownMethod"


def test_real_daemon_methods(daemon: Daemon) -> None:
    with Client(daemon.tcp) as c:
        described = c.describe()
        assert described["timerName"] == "mytimerd"
        assert {m["name"] for m in described["methods"]} >= {"version", "mytimerd.ping"}
        assert c.ping()["healthy"] is True
        stats = c.stats()
        assert stats["uptimeSeconds"] > 0
        assert stats["connections"]["open"] >= 1


def test_real_async_pipelining_runs_concurrently(daemon: Daemon) -> None:
    """Three echoes of 300, 300 and 150 ms pipelined on one connection take ~300 ms."""

    async def run() -> tuple[list[str], float]:
        async with AsyncClient(daemon.address) as c:
            start = time.monotonic()
            answers = await asyncio.gather(c.echo("a", 300), c.echo("b", 300), c.echo("c", 150))
            return [a["echoed"] for a in answers], time.monotonic() - start

    echoed, elapsed = asyncio.run(run())
    assert echoed == ["a", "b", "c"]
    assert elapsed < 0.7  # one after another would take 750 ms


def test_real_async_many_calls(daemon: Daemon) -> None:
    async def run() -> None:
        async with AsyncClient(daemon.tcp) as c:
            answers = await asyncio.gather(*(c.echo(f"m{i}") for i in range(300)))
            assert [a["echoed"] for a in answers] == [f"m{i}" for i in range(300)]
            assert (await c.stats())["connections"]["open"] >= 1

    asyncio.run(run())


def test_real_timeout(daemon: Daemon) -> None:
    with Client(daemon.address) as c:
        with pytest.raises(CallTimeout):
            c.call("echo", client.echo_request("slow", 500), timeout=0.1)
        assert c.echo("after")["echoed"] == "after"


def test_real_timeout_does_not_delay_the_next_call(daemon: Daemon) -> None:
    """After a CallTimeout the next call is answered at once, with its own answer.

    The daemon answers a connection in order, so on the timed-out call's
    connection the next answer would wait for the slow one (and could be taken
    for it): the client must have left that connection.
    """
    with Client(daemon.address, timeout=0.2) as c:
        with pytest.raises(CallTimeout):
            c.echo("slow", delay_ms=2000)
        c.timeout = 5  # a next call stuck behind the slow one would show as slow, not time out
        start = time.monotonic()
        assert c.version() == "nim-timer v0.1.0"
        assert time.monotonic() - start < 1.0
        assert c.echo("fast")["echoed"] == "fast"
        assert c.echo("fast again", delay_ms=1)["echoed"] == "fast again"


def test_real_async_timeout_does_not_delay_the_next_call(daemon: Daemon) -> None:
    """The same for AsyncClient, whose next call would queue behind the late answer."""

    async def run() -> None:
        async with AsyncClient(daemon.address, timeout=0.2) as c:
            with pytest.raises(CallTimeout):
                await c.echo("slow", delay_ms=2000)
            c.timeout = 5
            start = time.monotonic()
            assert await c.version() == "nim-timer v0.1.0"
            assert time.monotonic() - start < 1.0
            assert (await c.echo("fast"))["echoed"] == "fast"
            assert (await c.echo("fast again", delay_ms=1))["echoed"] == "fast again"

    asyncio.run(run())


def test_real_async_timeout_spares_calls_pipelined_with_it(daemon: Daemon) -> None:
    """A timeout moves new calls to a new connection; calls already sent keep waiting."""

    async def run() -> None:
        async with AsyncClient(daemon.address, timeout=5) as c:
            slow_request = client.echo_request("slow", 1000)
            slow = asyncio.create_task(c.call("echo", slow_request, timeout=0.2))
            behind = asyncio.create_task(c.echo("behind", delay_ms=10))
            with pytest.raises(CallTimeout):
                await slow
            start = time.monotonic()
            assert (await c.echo("fresh"))["echoed"] == "fresh"
            assert time.monotonic() - start < 0.5
            assert not behind.done()  # still owed on the old connection, after the slow answer
            assert (await behind)["echoed"] == "behind"
            assert (await c.echo("last"))["echoed"] == "last"

    asyncio.run(run())


def test_async_close_also_closes_a_connection_left_after_a_timeout(fake: FakeServer) -> None:
    """A call still waiting on the connection a timeout left fails when the client closes."""
    fake.delay = 0.5

    async def run() -> None:
        c = AsyncClient(fake.address, timeout=5)
        slow = asyncio.create_task(c.call("version", timeout=0.05))
        waiting = asyncio.create_task(c.version())
        with pytest.raises(CallTimeout):
            await slow
        await c.close()
        with pytest.raises(ConnectionLost, match="client closed"):
            await waiting

    asyncio.run(run())


def test_real_daemon_stopping_drops_connection(own_daemon: Daemon) -> None:
    c = Client(own_daemon.address)
    assert c.echo("x")["timerName"] == "own"
    stop_daemon(own_daemon)
    with pytest.raises(TransportError):
        c.version()


# --- timeout= on every call, and what None and 0 mean ----------------------------------


def test_real_every_call_takes_timeout(daemon: Daemon) -> None:
    """Typed and generic calls take ``timeout=``; it overrides the client's, both ways."""
    slow = client.echo_request("slow", 2000)
    with Client(daemon.address, timeout=5) as c:
        for call in (
            lambda: c.echo("slow", delay_ms=2000, timeout=0.2),
            lambda: c.call("echo", slow, timeout=0.2),
            lambda: c.call_raw("echo", cbor2.dumps(slow), timeout=0.2),
        ):
            start = time.monotonic()
            with pytest.raises(CallTimeout) as info:
                call()
            assert info.value.seconds == 0.2
            assert time.monotonic() - start < 1.5
        assert assert_type(c.version(timeout=1), str) == "nim-timer v0.1.0"
        assert assert_type(c.echo("x", timeout=None), EchoResult)["echoed"] == "x"
    with Client(daemon.address, timeout=0.1) as c:
        # None and 0 lift the client's limit for this call.
        assert c.echo("a", delay_ms=300, timeout=None)["echoed"] == "a"
        assert c.echo("b", delay_ms=300, timeout=0)["echoed"] == "b"
        with pytest.raises(TypeError, match="timeout"):
            c.echo("c", timeout="soon")  # type: ignore[arg-type]

    async def run() -> None:
        async with AsyncClient(daemon.address, timeout=5) as ac:
            with pytest.raises(CallTimeout):
                await ac.echo("slow", delay_ms=2000, timeout=0.2)
            with pytest.raises(CallTimeout):
                await ac.call("echo", slow, timeout=0.2)
            with pytest.raises(CallTimeout):
                await ac.call_raw("echo", cbor2.dumps(slow), timeout=0.2)
            echoed = await ac.echo("x", delay_ms=1, timeout=1)
            assert assert_type(echoed, EchoResult)["echoed"] == "x"
            ac.timeout = 0.1
            assert (await ac.echo("y", delay_ms=300, timeout=0))["echoed"] == "y"

    asyncio.run(run())


def test_real_zero_means_no_limit_in_both_clients(daemon: Daemon) -> None:
    """``timeout=0`` waits as long as it takes, as ``mytimerctl --timeout 0`` does."""
    with Client(daemon.address, timeout=0, connect_timeout=0) as c:
        assert c.timeout is None and c.connect_timeout is None
        assert c.echo("slow", delay_ms=300)["echoed"] == "slow"

    async def run() -> str:
        async with AsyncClient(daemon.address, timeout=0, connect_timeout=0) as ac:
            return (await ac.echo("slow", delay_ms=300))["echoed"]

    assert asyncio.run(run()) == "slow"


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf])
def test_negative_or_non_finite_timeouts_are_refused(bad: float) -> None:
    for cls in (Client, AsyncClient):
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds >= 0"):
            cls("unix:/x.sock", timeout=bad)
        with pytest.raises(ValueError, match="connect_timeout"):
            cls("unix:/x.sock", connect_timeout=bad)
    c = Client("unix:/x.sock")
    with pytest.raises(ValueError):
        c.timeout = bad
    with pytest.raises(ValueError):
        c.version(timeout=bad)


# --- a request that never left is sent again; one that may have arrived is not -----------


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_real_blocking_client_survives_a_daemon_restart(own_daemon: Daemon, transport: str) -> None:
    """The daemon closed the idle connection when it stopped: the next call uses a new one."""
    address = own_daemon.address if transport == "unix" else own_daemon.tcp
    with Client(address) as c:
        assert c.echo("before")["timerName"] == "own"
        new = restart_daemon(own_daemon, "--name", "new")
        try:
            assert c.echo("after")["timerName"] == "new"
            assert c.stats()["calls"]["echo"]["ok"] == 1  # sent once, to the new daemon
        finally:
            stop_daemon(new)


def test_real_blocking_client_resends_a_request_the_kernel_refused(
    own_daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon closes between the client's look at the idle connection and its send.

    The look is skipped here, so the send itself meets the closed connection:
    EPIPE before one byte left, so the request is sent again on a fresh one.
    """
    monkeypatch.setattr(Client, "_closed_while_idle", lambda self: False)
    with Client(own_daemon.address) as c:
        assert c.version() == "nim-timer v0.1.0"
        new = restart_daemon(own_daemon, "--name", "new")
        try:
            assert c.echo("after")["timerName"] == "new"
        finally:
            stop_daemon(new)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("look", [True, False], ids=["look", "no-look"])
def test_real_async_client_survives_a_daemon_restart(
    own_daemon: Daemon, transport: str, look: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart blocks the event loop, so the reader task cannot see the close first.

    With ``look`` the client asks the kernel before writing to an idle
    connection; without it (the close races the write) a unix write fails
    before one byte left and is sent again. A TCP write succeeds into the
    kernel, so without the look it may not be sent again: ConnectionLost.
    """
    if not look:

        async def no_look(self: object) -> None:
            return None

        monkeypatch.setattr(aio._Connection, "catch_up", no_look)
    address = own_daemon.address if transport == "unix" else own_daemon.tcp

    async def run() -> None:
        async with AsyncClient(address) as c:
            assert (await c.echo("before"))["timerName"] == "own"
            new = restart_daemon(own_daemon, "--name", "new")  # blocks the loop
            try:
                if look or transport == "unix":
                    assert (await c.echo("after"))["timerName"] == "new"
                    answers = await asyncio.gather(*(c.echo(str(i)) for i in range(20)))
                    assert [a["echoed"] for a in answers] == [str(i) for i in range(20)]
                else:
                    with pytest.raises(ConnectionLost):
                        await c.echo("after")
                    assert (await c.echo("again"))["timerName"] == "new"
            finally:
                stop_daemon(new)

    asyncio.run(run())


def test_a_request_that_may_have_arrived_is_not_sent_again(fake: FakeServer) -> None:
    """The fake reads the request and hangs up without answering: ConnectionLost, sent once."""
    fake.handler = lambda method, payload: None
    with Client(fake.address) as c, pytest.raises(ConnectionLost):
        c.echo("once")

    async def run() -> None:
        async with AsyncClient(fake.address) as ac:
            with pytest.raises(ConnectionLost):
                await ac.echo("once more")

    asyncio.run(run())
    assert [r for m, r in fake.requests] == [
        {"req": {"message": "once", "delayMs": 0}},
        {"req": {"message": "once more", "delayMs": 0}},
    ]


def test_a_daemon_closing_every_connection_is_reported_not_looped_on(fake: FakeServer) -> None:
    """Sent again once only: a peer that closes every connection at once is ConnectionLost."""
    fake.close_after_greeting = True
    fake.greeting = b""
    with Client(fake.address) as c, pytest.raises(ConnectionLost):
        c.version()
    assert fake.connections <= 3  # the first, one retry, (and the context manager's own)


# --- one event loop per AsyncClient -------------------------------------------------------


def test_real_async_client_used_from_a_second_loop_fails_at_once(daemon: Daemon) -> None:
    c = AsyncClient(daemon.address)

    async def call() -> str:
        return await c.version()

    assert asyncio.run(call()) == "nim-timer v0.1.0"
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="belongs to another event loop"):
        asyncio.run(call())
    assert time.monotonic() - start < 1.0


def test_real_async_client_closed_in_its_loop_may_serve_another(daemon: Daemon) -> None:
    c = AsyncClient(daemon.address)

    async def call() -> str:
        async with c:
            return await c.version()

    assert asyncio.run(call()) == asyncio.run(call()) == "nim-timer v0.1.0"
