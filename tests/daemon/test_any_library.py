"""mytimerd serving a nim-ffi library that is not libmy_timer: libecho
(native/echo), both generations, from its own description (--schema), with
its constructor's request from --config/--config-file and the liveness probe
the description offers; and describe exact enough to build every request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

import mytimerd
from mytimerd.protocol import wire
from tests.echo.conftest import ECHO_DIR, build_echo, load_vectors
from tests.support.daemon import Daemon, start_daemon

SCHEMAS = {g: ECHO_DIR / f"echo-{g}.cddl" for g in ("0.2", "0.3")}
TIMER_LIBS = Path(mytimerd.__file__).resolve().parent / "_lib"

#: Vectors the daemon's own strict validation refuses before the library sees
#: them (docs/protocol.md), by the words of their names, with the error it
#: answers instead: CBOR it does not accept (empty, truncated, trailing
#: bytes, indefinite lengths) and requests its schema refuses (unknown keys,
#: wrong types). Every other vector must come back byte for byte.
DAEMON_REFUSES = {
    "mytimerd.InvalidCBOR": ("empty payload", "truncated", "trailing bytes", "indefinite-length"),
    "mytimerd.InvalidParameter": (
        "unknown key",
        "wrong case",
        "is an integer",
        "is a byte string",
        "is null",
        "is an array",
        "is a text string",
        "payload null",
    ),
}


def echo_args(generation: str, *extra: str) -> list[str]:
    """Options serving libecho of ``generation`` with prefix "demo" (the vectors')."""
    return [
        "--library",
        str(build_echo(generation)),
        "--schema",
        str(SCHEMAS[generation]),
        "--config",
        "prefix=demo",
        *extra,
    ]


@pytest.fixture(scope="module")
def echo_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Daemon]]:
    """One daemon per libecho generation."""
    started = {}
    for generation in SCHEMAS:
        folder = tmp_path_factory.mktemp(f"echo{generation}")
        started[generation] = start_daemon(folder, echo_args(generation))
    yield started
    for d in started.values():
        assert d.stop() == 0, d.log()


def refused_as(name: str) -> str | None:
    """The daemon error a vector called ``name`` gets, None if it reaches the library."""
    return next((e for e, words in DAEMON_REFUSES.items() if any(w in name for w in words)), None)


def vector_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(g, call) for g in SCHEMAS for call in load_vectors(g)["calls"]]


@pytest.mark.parametrize(("generation", "call"), vector_cases(), ids=lambda x: str(x)[:70])
def test_every_echo_vector_through_the_daemon(
    echo_daemons: dict[str, Daemon], generation: str, call: dict[str, Any]
) -> None:
    with echo_daemons[generation].client() as c:
        answer = c.call(call["method"], bytes.fromhex(call["request_hex"]))
    error = refused_as(call["name"])
    if error is not None:
        assert answer.ret == wire.RET_ERR and answer.body.startswith(f"{error}: ".encode())
    elif "ok_hex" in call:
        assert answer == wire.Response(wire.RET_OK, bytes.fromhex(call["ok_hex"]))
    else:
        assert answer == wire.Response(wire.RET_ERR, call["err_text"].encode())


def test_most_echo_vectors_reach_the_library() -> None:
    """The refusal table stays narrow: the library's own (business) errors and
    most answers come from the library."""
    calls = [c for _, c in vector_cases()]
    business = [c for c in calls if not c.get("err_text", "CBOR").startswith("CBOR")]
    assert business and all(refused_as(c["name"]) is None for c in business)
    reached = [c for c in calls if refused_as(c["name"]) is None]
    assert len(reached) >= 30
    assert {c["method"] for c in reached} == {"version", "shout", "lib_version", "shout_anon"}


def test_echo_is_described_as_itself(echo_daemons: dict[str, Daemon]) -> None:
    with echo_daemons["0.3"].client() as c:
        described = c.call_value("mytimerd.describe")
        ping = c.call_value("mytimerd.ping")
    assert isinstance(described, dict) and isinstance(ping, dict) and ping["healthy"]
    assert described["library"]["name"] == "echo"
    assert described["library"]["version"] == "nim-echo v0.1.0"
    assert described["library"]["probeMethod"] == "version"
    assert described["timerName"] is None
    assert described["constructor"]["request"] == {"config": {"prefix": "demo"}}
    assert described["events"] == []
    names = [m["name"] for m in described["methods"] if m["handler"] != "daemon"]
    assert names == ["shout", "version", "lib_version", "shout_anon"]


def sample(schema: dict[str, Any]) -> Any:
    """A value of a type as mytimerd.describe spells it, from describe alone."""
    kind = schema["type"]
    if kind == "map":
        return {f["name"]: sample(f) for f in schema["fields"]}
    if kind == "array":
        return [sample(schema["items"])]
    if kind == "int":
        return max(schema["min"], min(schema["max"], 1))
    return {"text": "x", "bool": True, "null": None, "any": 0}.get(
        kind, schema.get("choices", [None])[-1]
    )


@pytest.mark.parametrize("which", ["my_timer 0.2", "my_timer 0.3", "echo 0.2", "echo 0.3"])
def test_a_request_built_from_describe_is_accepted(
    daemon_factory: Callable[..., Daemon], which: str
) -> None:
    """Every library method of every description, called with a request made
    from the running daemon's describe answer only, is answered RET_OK."""
    library, generation = which.split()
    if library == "echo":
        d = daemon_factory(*echo_args(generation))
    else:
        so = "libmy_timer.so" if generation == "0.2" else "libmy_timer-0.3.so"
        d = daemon_factory("--library", str(TIMER_LIBS / so))
    with d.client() as c:
        described = c.call_value("mytimerd.describe")
        assert isinstance(described, dict)
        methods = [m for m in described["methods"] if m["handler"] != "daemon"]
        assert methods
        for method in methods:
            request = sample(method["request"])
            answer = c.call(method["name"], cbor2.dumps(request))
            assert answer.ret == wire.RET_OK, (method["name"], request, answer.body)


def run_mytimerd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mytimerd expected to exit at start-up."""
    return subprocess.run(
        [sys.executable, "-m", "mytimerd", "--unix", str(tmp_path / "s"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_constructor_from_a_config_file(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    toml = tmp_path / "echo.toml"
    toml.write_text('[config]\nprefix = "from-file"\n')
    d = daemon_factory(
        "--library",
        str(build_echo("0.2")),
        "--schema",
        str(SCHEMAS["0.2"]),
        "--config-file",
        str(toml),
        "--probe-method",
        "shout",
    )
    with d.client() as c:
        assert c.call_value("shout", {"req": {"text": "a"}}) == {
            "shouted": "from-file: A",
            "prefix": "from-file",
        }
        described = c.call_value("mytimerd.describe")
    assert isinstance(described, dict) and described["library"]["probeMethod"] == "shout"


def test_config_overrides_the_file_and_json_files_work(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    file = tmp_path / "echo.json"
    file.write_text(json.dumps({"config": {"prefix": "file"}}))
    d = daemon_factory(*echo_args("0.3", "--config-file", str(file), "--config", "prefix=flag"))
    with d.client() as c:
        assert c.call_value("shout", {"req": {"text": "b"}})["prefix"] == "flag"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--name", "x"], "config has no key 'name' (it has: prefix)"),
        (["--config", "prefix"], "expected KEY=VALUE"),
        (["--config", "colour=red"], "config has no key 'colour'"),
        (["--config", "config=3"], "config: expected a map"),
        (["--probe-method", "nope"], "--probe-method: the library has no method 'nope'"),
        (["--library-name", "my_timer"], "does not belong to library 'my_timer'"),
        (["--library-name", "1x"], "expected a symbol prefix"),
    ],
)
def test_wrong_library_options_are_usage_errors(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    done = run_mytimerd(tmp_path, *echo_args("0.2"), *extra)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_config_file_that_is_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[config\n")
    done = run_mytimerd(tmp_path, *echo_args("0.2", "--config-file", str(bad)))
    assert done.returncode == 2, done.stderr
    assert "--config-file" in done.stderr and "not valid TOML" in done.stderr


def test_another_library_needs_its_description(tmp_path: Path) -> None:
    done = run_mytimerd(tmp_path, "--library", str(build_echo("0.2")), "--library-name", "echo")
    assert done.returncode == 2
    assert "no description of echo 0.2 is bundled; give its description with --schema" in (
        done.stderr
    )


def test_the_wrong_library_for_a_description(tmp_path: Path) -> None:
    """libmy_timer with echo's description: no echo_ symbols, exit 4."""
    done = run_mytimerd(
        tmp_path, "--library", str(TIMER_LIBS / "libmy_timer.so"), "--schema", str(SCHEMAS["0.2"])
    )
    assert done.returncode == 4
    assert "not a nim-ffi CBOR-ABI library named echo (no echo_create_cbor/echo_create" in (
        done.stderr
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("create", "my_timer_create is marked (ffi), but it is the ABI's (ctor) entry point"),
        ("destroy", "my_timer_destroy is marked (ffi), but it is the ABI's (dtor) entry point"),
    ],
)
def test_a_lifecycle_entry_point_marked_as_a_method_is_refused(
    tmp_path: Path, entry: str, message: str
) -> None:
    """The issue's crash (create as a method: SIGSEGV on the first call) and
    lost context (destroy as a method) are refused at start."""
    text = (TIMER_LIBS.parent / "protocol" / "descriptions" / "my_timer-0.3.cddl").read_text()
    kind = "ctor" if entry == "create" else "dtor"
    schema = tmp_path / "lying.cddl"
    schema.write_text(text.replace(f"; my_timer_{entry} ({kind})", f"; my_timer_{entry} (ffi)"))
    done = run_mytimerd(
        tmp_path, "--library", str(TIMER_LIBS / "libmy_timer-0.3.so"), "--schema", str(schema)
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
