"""The host side of a nim-ffi CBOR library under test, loaded with cffi (ABI
mode): shared by tests/native (libmy_timer) and tests/echo (libecho).

Every call gets its own userData handle; the one callback both libraries are
given dispatches by it to that call's Sink, so a test waits on the answers of
exactly the call it made.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RET_STALE_WARN = 3


def cffi_region(header: Path) -> str:
    """The header's CFFI-BEGIN..CFFI-END region (typedef and RET_* defines)."""
    text = header.read_text()
    m = re.search(r"/\* CFFI-BEGIN \*/(.*)/\* CFFI-END \*/", text, re.S)
    assert m, f"CFFI region missing from {header}"
    return m.group(1)


@dataclass
class Result:
    code: int
    body: bytes
    thread: int
    at: float  # time.monotonic() when it was delivered


@dataclass
class Sink:
    """Collects the callbacks delivered for one userData handle. Waits last
    ``timeout`` (``default_timeout`` if not given) times ``slack``."""

    slack: float = 1.0
    default_timeout: float = 5.0
    results: list[Result] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def _wait_for(self, done: Callable[[], bool], timeout: float | None) -> bool:
        limit = (self.default_timeout if timeout is None else timeout) * self.slack
        with self.cond:
            return self.cond.wait_for(done, limit)

    def wait(self, n: int = 1, timeout: float | None = None) -> list[Result]:
        ok = self._wait_for(lambda: len(self.results) >= n, timeout)
        assert ok, f"expected {n} callbacks, got {self.results}"
        return list(self.results)

    def wait_final(self, timeout: float | None = None) -> list[Result]:
        """Waits for a final callback (code != RET_STALE_WARN); returns them all."""
        ok = self._wait_for(lambda: any(r.code != RET_STALE_WARN for r in self.results), timeout)
        assert ok, f"no final callback, got {self.results}"
        return list(self.results)


class Host:
    """A library's cffi handle and the callback dispatcher keyed by userData.

    ``hooks`` run (with code and body) before a callback is recorded, so
    waiters see their effects; ``order`` is (handle, code) in delivery order;
    ``overlaps`` counts callbacks that ran while another one did.
    """

    def __init__(self, ffi: Any, slack: float = 1.0, default_timeout: float = 5.0) -> None:
        self.ffi = ffi
        self._slack = slack
        self._default_timeout = default_timeout
        self._sinks: dict[int, Sink] = {}
        self._next = 1
        self._mu = threading.Lock()
        self.order: list[tuple[int, int]] = []
        self.active = 0
        self.overlaps = 0
        self.hooks: dict[int, Callable[[int, bytes], None]] = {}

        def _cb(code: int, msg: Any, length: int, ud: Any) -> None:
            handle = int(self.ffi.cast("uintptr_t", ud))
            body = bytes(self.ffi.buffer(msg, length)) if length else b""
            with self._mu:
                self.active += 1
                if self.active > 1:
                    self.overlaps += 1
                sink = self._sinks.get(handle)
                self.order.append((handle, code))
            hook = self.hooks.get(handle)
            if hook is not None:
                hook(code, body)
            if sink is not None:
                with sink.cond:
                    sink.results.append(Result(code, body, threading.get_ident(), time.monotonic()))
                    sink.cond.notify_all()
            with self._mu:
                self.active -= 1

        # kept referenced for the life of the library (cffi frees it otherwise)
        self.cb = self.ffi.callback("void(int, const char *, size_t, void *)")(_cb)

    def sink(self) -> tuple[Any, Sink]:
        """A fresh (userData, Sink) pair."""
        with self._mu:
            h = self._next
            self._next += 1
            s = Sink(self._slack, self._default_timeout)
            self._sinks[h] = s
        return self.ffi.cast("void *", h), s

    def handle(self, ud: Any) -> int:
        return int(self.ffi.cast("uintptr_t", ud))
