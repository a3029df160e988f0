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
from mytimerd.protocol import interfaces, wire
from tests.echo.conftest import ECHO_DIR, build_echo, load_vectors
from tests.support.daemon import Daemon, start_daemon
from tests.support.native import _locked_run

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


def timer_description(generation: str, old: str, new: str) -> str:
    """The bundled libmy_timer description of ``generation`` with ``old`` made ``new``."""
    text = interfaces.BUNDLED[generation].read_text()
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("generation", "old", "new", "message"),
    [
        (
            "0.3",
            "; my_timer_echo (ffi)",
            "; my_timer_echo (ffiStatic)",
            "marks my_timer_echo (ffiStatic), but the bundled description of my_timer 0.3 "
            f"({interfaces.BUNDLED['0.3']}) marks it (ffi)",
        ),
        (
            "0.3",
            "; my_timer_lib_version (ffiStatic)",
            "; my_timer_lib_version (ffi)",
            "marks my_timer_lib_version (ffi), but the bundled description of my_timer 0.3 "
            f"({interfaces.BUNDLED['0.3']}) marks it (ffiStatic)",
        ),
        (
            "0.2",
            "; my_timer_echo (ffi)",
            "; my_timer_echo (ffiStatic)",
            "marks my_timer_echo_cbor (ffiStatic), but the library is of nim-ffi's 0.2 "
            "symbol generation (names ending in _cbor), which has no static calls",
        ),
    ],
)
def test_a_proc_kind_the_library_contradicts_is_refused(
    tmp_path: Path, generation: str, old: str, new: str, message: str
) -> None:
    """A method described as a static call, or the reverse, crashed the daemon
    at the first call (SIGSEGV: the arguments are shifted by the context); a
    kind the 0.2 generation or libmy_timer's bundled description contradicts
    is refused at start."""
    schema = tmp_path / "swapped.cddl"
    schema.write_text(timer_description(generation, old, new))
    so = "libmy_timer.so" if generation == "0.2" else "libmy_timer-0.3.so"
    done = run_mytimerd(tmp_path, "--library", str(TIMER_LIBS / so), "--schema", str(schema))
    assert done.returncode == 2, done.stderr
    assert f"the description contradicts the library: {schema} {message}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_static_call_for_the_older_generation_is_refused(tmp_path: Path) -> None:
    """libmy_timer 0.3's description (lib_version is a static call) given for
    the 0.2 build, which has none."""
    done = run_mytimerd(
        tmp_path,
        "--library",
        str(TIMER_LIBS / "libmy_timer.so"),
        "--schema",
        str(interfaces.BUNDLED["0.3"]),
    )
    assert done.returncode == 2, done.stderr
    assert "marks my_timer_lib_version_cbor (ffiStatic), but the library is of nim-ffi's 0.2" in (
        done.stderr
    )


#: A library named acme whose extra entry points are aliases of its
#: constructor, destructor and listener registration: the symbol table knows
#: them for what they are, whatever a description calls them.
ALIASES_C = r"""
#include <stddef.h>
#include <stdint.h>

typedef void (*cb_t)(int, const char *, size_t, void *);

void *acme_create(const uint8_t *req, size_t len, cb_t cb, void *ud) {
    (void)req; (void)len; (void)cb; (void)ud;
    return NULL;
}
int acme_destroy(void *ctx) { (void)ctx; return 0; }
uint64_t acme_add_event_listener(void *ctx, const char *name, cb_t cb, void *ud) {
    (void)ctx; (void)name; (void)cb; (void)ud;
    return 0;
}
int acme_remove_event_listener(void *ctx, uint64_t id) { (void)ctx; (void)id; return 0; }
int acme_version(void *ctx, cb_t cb, void *ud, const uint8_t *req, size_t len) {
    (void)ctx; (void)cb; (void)ud; (void)req; (void)len;
    return 0;
}
void *acme_reset(const uint8_t *, size_t, cb_t, void *) __attribute__((alias("acme_create")));
int acme_close(void *) __attribute__((alias("acme_destroy")));
uint64_t acme_watch(void *, const char *, cb_t, void *)
    __attribute__((alias("acme_add_event_listener")));
int acme_unwatch(void *, uint64_t) __attribute__((alias("acme_remove_event_listener")));
"""


@pytest.fixture(scope="module")
def aliasing_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("aliases")
    src, out = folder / "acme.c", folder / "libacme.so"
    src.write_text(ALIASES_C)
    _locked_run(
        ["gcc", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", str(src), "-o", str(out)], "acme"
    )
    return out


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("reset", "ffi"),
        ("close", "ffi"),
        ("watch", "ffi"),
        ("unwatch", "ffi"),
        ("close", "ffiStatic"),
    ],
)
def test_a_method_whose_symbol_is_an_abi_entry_point_is_refused(
    tmp_path: Path, aliasing_library: Path, method: str, kind: str
) -> None:
    """The glue compares each method's symbol with the constructor's, the
    destructor's and the listener entry points': the same function under
    another name is refused at start (exit 2), before anything is called."""
    schema = tmp_path / "acme.cddl"
    schema.write_text(
        "Empty = { }\n"
        "; acme_create (ctor)\nacme_create-response = tstr\n"
        "; acme_version (ffi)\nacme_version-request = Empty\nacme_version-response = tstr\n"
        f"; acme_{method} ({kind})\nacme_{method}-request = Empty\n"
        f"acme_{method}-response = tstr\n"
        "; acme_destroy (dtor)\nacme_destroy-response = nil\n"
    )
    done = run_mytimerd(tmp_path, "--library", str(aliasing_library), "--schema", str(schema))
    assert done.returncode == 2, done.stderr
    assert (
        f"the description contradicts the library: the description makes acme_{method} a "
        f"method, but in {aliasing_library} that symbol is the constructor, the destructor "
        "or a listener entry point"
    ) in done.stderr
    assert "Traceback" not in done.stderr
