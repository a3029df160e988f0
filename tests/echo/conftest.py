"""Fixtures for libecho (native/echo): build on demand, load with cffi (ABI mode).

``ECHO_NATIVE_VARIANT=asan|tsan`` makes every fixture load the sanitizer
build instead of the release one (test_sanitizers.py reruns the suite that
way, in a python subprocess with the sanitizer runtime preloaded).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import cffi
import pytest

from tests.support.ffi_host import Host, Sink, cffi_region
from tests.support.native import REPO_ROOT, TESTS_BUILD

ECHO_DIR = REPO_ROOT / "native" / "echo"
ECHO_BUILD = ECHO_DIR / "build"
VECTORS_DIR = REPO_ROOT / "tests" / "vectors"
GENERATIONS = ("0.2", "0.3")
VARIANT = os.environ.get("ECHO_NATIVE_VARIANT", "release")
# timing bounds for the release build; sanitizer reruns multiply them
SLACK = float(os.environ.get("ECHO_TIMING_SLACK", "1"))

HEADERS = {"0.2": ECHO_DIR / "include" / "echo_cbor.h", "0.3": ECHO_DIR / "include" / "echo.h"}
SUFFIX = {"0.2": "_cbor", "0.3": ""}
#: request envelope names (the CDDL's, and the error texts')
REQ_TYPE = {
    "version": "EchoVersionReq",
    "shout": "EchoShoutReq",
    "lib_version": "EchoLibVersionReq",
    "shout_anon": "EchoShoutAnonReq",
}

_build_lock = threading.Lock()
_built: dict[tuple[str, str], Path] = {}


def lib_path(generation: str, variant: str = "release") -> Path:
    name = "libecho.so" if generation == "0.2" else "libecho-0.3.so"
    return ECHO_BUILD / name if variant == "release" else ECHO_BUILD / variant / name


def stress_path(generation: str, variant: str) -> Path:
    return ECHO_BUILD / variant / ("stress" if generation == "0.2" else "stress-0.3")


def build_echo(generation: str, variant: str = "release") -> Path:
    """``make -C native/echo GENERATION=<g> <variant>`` once per process (and
    serialized across processes); returns the library's absolute path."""
    if generation not in GENERATIONS or variant not in ("release", "asan", "tsan"):
        raise ValueError(f"no such build: {generation} {variant}")
    with _build_lock:
        key = (generation, variant)
        if key not in _built:
            TESTS_BUILD.mkdir(parents=True, exist_ok=True)
            cmd = ["make", "-C", str(ECHO_DIR), f"GENERATION={generation}", variant]
            with open(TESTS_BUILD / ".echo-make.lock", "w") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
            path = lib_path(generation, variant)
            if not path.is_file():
                raise RuntimeError(f"make succeeded but {path} is missing")
            _built[key] = path
        return _built[key]


def load_vectors(generation: str) -> dict[str, Any]:
    path = VECTORS_DIR / f"echo-vectors-{generation}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def expectation(call: dict[str, Any]) -> tuple[str, bytes]:
    """How a recorded call's final answer is compared: ``ok`` (exact CBOR),
    ``err`` (exact text) or ``prefix``: the real library's empty detail
    (unknown keys), which libecho extends with a detail naming the key, as
    native/ does (native/ABI.md, hazards)."""
    if "ok_hex" in call:
        return "ok", bytes.fromhex(call["ok_hex"])
    text: str = call["err_text"]
    if text.startswith("CBOR decode failed for ") and text.endswith(": "):
        return "prefix", text.encode()
    return "err", text.encode()


def write_vector_file(generation: str, path: Path) -> int:
    """The vectors in the line format of native/echo/tests/stress.c; returns
    how many calls it holds."""
    data = load_vectors(generation)
    lines = [f"create {data['create']['request_hex']}"]
    for c in data["calls"]:
        mode, want = expectation(c)
        lines.append(
            f"call {c['method']} {int(bool(c.get('static')))} {c['ret']} "
            f"{c['request_hex'] or '-'} {mode} {want.hex() or '-'}"
        )
    path.write_text("\n".join(lines) + "\n")
    return len(data["calls"])


def declarations(header: Path) -> str:
    """The header's CFFI region and ECHO_API prototypes, for cffi's cdef()."""
    protos = [
        " ".join(d.split()) for d in re.findall(r"^ECHO_API\s+([^;]+;)", header.read_text(), re.M)
    ]
    return cffi_region(header) + "\n".join(protos)


class Echo(Host):
    """One generation of libecho, loaded, with the callback dispatcher."""

    def __init__(self, path: Path, generation: str) -> None:
        self.path = path
        self.generation = generation
        ffi = cffi.FFI()
        ffi.cdef(declarations(HEADERS[generation]))
        super().__init__(ffi, slack=SLACK, default_timeout=10.0)
        self.lib = ffi.dlopen(str(path))

    def fn(self, method: str) -> Any:
        """A context method or create by its generation's symbol name."""
        return getattr(self.lib, f"echo_{method}{SUFFIX[self.generation]}")

    def create(self, payload: bytes) -> tuple[Any, Sink]:
        ud, s = self.sink()
        return self.fn("create")(payload, len(payload), self.cb, ud), s

    def create_prefix(self, prefix: str) -> Any:
        """A context with ``prefix``, its create callback awaited."""
        ctx, s = self.create(cbor2.dumps({"config": {"prefix": prefix}}))
        assert ctx != self.ffi.NULL, s.results
        assert s.wait()[0].code == 0
        return ctx

    def call(self, method: str, ctx: Any, payload: bytes) -> tuple[int, Sink]:
        ud, s = self.sink()
        return self.fn(method)(ctx, self.cb, ud, payload, len(payload)), s

    def static_call(self, method: str, payload: bytes) -> tuple[int, Sink]:
        """A 0.3 static call (no context): echo_<method>(cb, ud, req, len)."""
        ud, s = self.sink()
        return getattr(self.lib, f"echo_{method}")(self.cb, ud, payload, len(payload)), s


_loaded: dict[str, Echo] = {}


def echo_lib(generation: str) -> Echo:
    """The library of ``generation`` in this run's variant, built and loaded once."""
    if generation not in _loaded:
        _loaded[generation] = Echo(build_echo(generation, VARIANT), generation)
    return _loaded[generation]


@pytest.fixture(params=GENERATIONS)
def echo(request: pytest.FixtureRequest) -> Echo:
    """Each test that takes it runs against both generations."""
    return echo_lib(request.param)


@pytest.fixture
def ctx(echo: Echo) -> Iterator[Any]:
    """A context with the vectors' prefix "demo"; destroyed after the test."""
    c = echo.create_prefix("demo")
    yield c
    assert echo.lib.echo_destroy(c) == 0


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """Environment changes for one test (libecho reads it at create)."""
    saved = dict(os.environ)
    yield os.environ  # type: ignore[misc]
    os.environ.clear()
    os.environ.update(saved)


def shout_req(text: str | bytes) -> bytes:
    return cbor2.dumps({"req": {"text": text}})


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout * SLACK
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.001)
    return predicate()
