"""Build helpers for the native libmy_timer and its test doubles.

Used by tests/native and by the daemon's tests. Each artifact is built at
most once per process; builds from several processes are serialized with a
file lock (and make itself writes outputs atomically).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
NATIVE_DIR: Path = REPO_ROOT / "native"
NATIVE_BUILD: Path = NATIVE_DIR / "build"
TESTS_BUILD: Path = REPO_ROOT / "tests" / "build"
HEADER: Path = NATIVE_DIR / "include" / "my_timer_cbor.h"

_VARIANTS: dict[str, tuple[str, Path]] = {
    "release": ("release", NATIVE_BUILD / "libmy_timer.so"),
    "asan": ("asan", NATIVE_BUILD / "asan" / "libmy_timer.so"),
    "tsan": ("tsan", NATIVE_BUILD / "tsan" / "libmy_timer.so"),
}

_lock = threading.Lock()
_built: dict[str, Path] = {}


def _locked_run(cmd: list[str], lock_name: str) -> None:
    """Run ``cmd`` while holding an inter-process lock file; raise on failure."""
    TESTS_BUILD.mkdir(parents=True, exist_ok=True)
    with open(TESTS_BUILD / f".{lock_name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"build failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")


def make_native(target: str) -> None:
    """Run ``make -C native <target>`` (serialized across processes)."""
    _locked_run(["make", "-C", str(NATIVE_DIR), target], "native-make")


def build_native(variant: str = "release") -> Path:
    """Build libmy_timer (``release``, ``asan`` or ``tsan``) and return the .so path.

    ``make -C native`` runs once per process and variant; the returned path
    is absolute.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(_VARIANTS)}")
    with _lock:
        if variant not in _built:
            target, path = _VARIANTS[variant]
            make_native(target)
            if not path.is_file():
                raise RuntimeError(f"make succeeded but {path} is missing")
            _built[variant] = path
        return _built[variant]


def build_stuck_double() -> Path:
    """Compile tests/doubles/stuck_timer.c into tests/build/ and return the .so path.

    The double's behaviour is controlled at run time by the file named in the
    ``STUCK_TIMER_CONTROL`` environment variable (see the source).
    """
    with _lock:
        if "stuck" not in _built:
            src = REPO_ROOT / "tests" / "doubles" / "stuck_timer.c"
            out = TESTS_BUILD / "libstuck_timer.so"
            TESTS_BUILD.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f"{out.name}.tmp.{os.getpid()}")
            _locked_run(
                [
                    "gcc",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-O1",
                    "-g",
                    "-shared",
                    "-fPIC",
                    "-pthread",
                    str(src),
                    "-o",
                    str(tmp),
                ],
                "stuck-double",
            )
            tmp.replace(out)
            _built["stuck"] = out
        return _built["stuck"]
