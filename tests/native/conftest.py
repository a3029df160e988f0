"""Fixtures for the native libmy_timer tests: build once, load via cffi (ABI mode)."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cffi
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.ffi_host import Host, Sink, cffi_region
from tests.support.native import HEADER, NATIVE_DIR, build_native, make_native

# Timing bounds are the spec's; sanitizer reruns multiply them (slower code).
SLACK = float(os.environ.get("MYTIMER_TIMING_SLACK", "1"))


def assert_together(t0: float, delivered: list[float]) -> None:
    """Echoes of 100 ms all made at ``t0`` (``delivered``: monotonic times
    of their answers) ran at once: none answered before its delay, and the
    last within 350 ms. One after another they would take 6.4 s, and fewer
    than 22 at a time 400 ms or more; the margin is for a stalled machine
    (CI saw 217 ms, with one answer 98 ms after the first)."""
    assert min(delivered) - t0 >= 0.100
    assert max(delivered) - t0 < 0.350 * SLACK


SPEC_DIR = Path(__file__).resolve().parents[1] / "vectors"

# The nim-ffi 0.3 generation (make -C native GENERATION=0.3): its header, and
# its library per variant, built from the same sources with -DMT_GENERATION=3.
HEADER_03 = NATIVE_DIR / "include" / "my_timer.h"
_BUILT_03: dict[str, Path] = {}
_BUILD_03_LOCK = threading.Lock()


def build_native_03(variant: str = "release") -> Path:
    """Build libmy_timer-0.3.so (release, asan or tsan) once per process."""
    paths = {
        "release": NATIVE_DIR / "build" / "libmy_timer-0.3.so",
        "asan": NATIVE_DIR / "build" / "asan" / "libmy_timer-0.3.so",
        "tsan": NATIVE_DIR / "build" / "tsan" / "libmy_timer-0.3.so",
    }
    with _BUILD_03_LOCK:
        if variant not in _BUILT_03:
            make_native(f"{variant}-0.3")  # -> make GENERATION=0.3 <variant>
            assert paths[variant].is_file(), paths[variant]
            _BUILT_03[variant] = paths[variant]
        return _BUILT_03[variant]


def prototypes(header: Path = HEADER, count: int = 8) -> str:
    """The header's MY_TIMER_API function declarations, without the macro."""
    decls = re.findall(r"^MY_TIMER_API\s+([^;]+;)", header.read_text(), re.M)
    assert len(decls) == count, decls
    return "\n".join(" ".join(d.split()) for d in decls)


class Native(Host):
    """libmy_timer of one generation, loaded, with the callback dispatcher."""

    def __init__(self, path: Path, generation: str = "0.2") -> None:
        self.generation = generation
        # 0.2: my_timer_echo_cbor, ...; 0.3: my_timer_echo, ... + my_timer_lib_version
        self.suffix = "_cbor" if generation == "0.2" else ""
        header, count = (HEADER, 8) if generation == "0.2" else (HEADER_03, 9)
        ffi = cffi.FFI()
        ffi.cdef(cffi_region(header) + prototypes(header, count))
        super().__init__(ffi)
        self.lib = ffi.dlopen(str(path))

    def create(self, name: str | None = "demo", payload: bytes | None = None) -> tuple[Any, Sink]:
        import cbor2

        if payload is None:
            payload = cbor2.dumps({"config": {"name": name}})
        ud, s = self.sink()
        ctx = getattr(self.lib, f"my_timer_create{self.suffix}")(payload, len(payload), self.cb, ud)
        return ctx, s

    def call(self, method: str, ctx: Any, payload: bytes) -> tuple[int, Sink]:
        ud, s = self.sink()
        fn = getattr(self.lib, f"my_timer_{method}{self.suffix}")
        rc = fn(ctx, self.cb, ud, payload, len(payload))
        return rc, s

    def static_call(self, method: str, payload: bytes) -> tuple[int, Sink]:
        """A 0.3 static call (no context): my_timer_<method>(cb, ud, req, len)."""
        ud, s = self.sink()
        rc = getattr(self.lib, f"my_timer_{method}")(self.cb, ud, payload, len(payload))
        return rc, s


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    path = SPEC_DIR / "abi-vectors.json"
    if not path.is_file():
        pytest.fail(f"ABI vectors missing: {path.resolve()} (they belong in tests/vectors/)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def so_path() -> Path:
    # MYTIMER_NATIVE_VARIANT=asan|tsan reruns these tests against a sanitizer
    # build (in a subprocess with the sanitizer runtime preloaded; see
    # test_sanitizers_fuzz.py).
    return build_native(os.environ.get("MYTIMER_NATIVE_VARIANT", "release"))


@pytest.fixture(scope="session")
def native(so_path: Path) -> Native:
    return Native(so_path)


@pytest.fixture(scope="session")
def vectors03() -> dict[str, Any]:
    path = SPEC_DIR / "abi-vectors-0.3.json"
    if not path.is_file():
        pytest.fail(f"0.3 ABI vectors missing: {path.resolve()}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def so_path03() -> Path:
    # MYTIMER_NATIVE_VARIANT applies to the 0.3 build as well
    return build_native_03(os.environ.get("MYTIMER_NATIVE_VARIANT", "release"))


@pytest.fixture(scope="session")
def native03(so_path03: Path) -> Native:
    return Native(so_path03, "0.3")


@pytest.fixture
def ctx03(native03: Native) -> Iterator[Any]:
    c, s = native03.create("demo")
    assert c != native03.ffi.NULL
    assert s.wait(1)[0].code == 0
    yield c
    assert native03.lib.my_timer_destroy(c) == 0


@pytest.fixture
def ctx(native: Native) -> Iterator[Any]:
    c, s = native.create("demo")
    assert c != native.ffi.NULL
    r = s.wait(1)[0]
    assert r.code == 0
    yield c
    assert native.lib.my_timer_destroy(c) == 0
