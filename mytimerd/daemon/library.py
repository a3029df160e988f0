"""The one libmy_timer context the daemon serves, behind the C glue.

Python never runs on a library thread: calls are queued to the glue's
submitter thread, results are queued by a C callback and announced on an
eventfd (:attr:`Library.fd`) that the event loop watches; :meth:`drain`
collects them in batches.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cbor2

from .._glue import ffi, lib
from ..protocol.schema import LIBRARY_METHODS

#: The library built from native/ and shipped inside the package.
BUNDLED_LIBRARY: Final = Path(__file__).resolve().parents[1] / "_lib" / "libmy_timer.so"

_RECORD: Final = struct.Struct("=QiI")
_ERR_LEN: Final = 512


class LibraryLoadError(Exception):
    """The library could not be loaded or its context not created."""


@dataclass(frozen=True, slots=True)
class Status:
    """What the glue knows about the library right now."""

    in_call_seconds: float
    queued: int
    submitted: int
    completed: int
    stale_warnings: int


class Library:
    """A loaded libmy_timer build with its one context."""

    def __init__(
        self, path: Path | str, name: str, create_timeout: float = 5.0, direct: bool = False
    ) -> None:
        """Load ``path``, bind every library method, create the context ``name``.

        Returns once the library has confirmed the context, so calls made after
        this run against the named timer. ``direct`` makes calls on the
        caller's thread instead of the submitter thread: only for libraries
        whose calls never block (the bundled one).
        """
        self.path = str(path)
        err = ffi.new("char[]", _ERR_LEN)
        host = lib.mt_open(self.path.encode(), err, _ERR_LEN)
        if host == ffi.NULL:
            raise LibraryLoadError(ffi.string(err).decode(errors="replace"))
        self._host = host
        self.slots: dict[str, int] = {}
        missing = []
        for method in LIBRARY_METHODS:
            slot = lib.mt_bind(host, method.name.encode())
            if slot < 0:
                missing.append(method.name)
            self.slots[method.name] = slot
        if missing:
            raise LibraryLoadError(f"{self.path} lacks the entry points for: {', '.join(missing)}")
        request = cbor2.dumps({"config": {"name": name}})
        self.direct = direct
        timeout_ms = int(create_timeout * 1000)
        if lib.mt_create(host, request, len(request), timeout_ms, direct, err, _ERR_LEN):
            raise LibraryLoadError(ffi.string(err).decode(errors="replace"))
        self.fd: int = lib.mt_fd(host)
        self._cap = 1 << 18
        self._buf = ffi.new("uint8_t[]", self._cap)
        self._closed = False

    def submit(self, slot: int, call_id: int, payload: bytes) -> bool:
        """Queue a call; False if the library is shutting down."""
        return lib.mt_submit(self._host, slot, call_id, payload, len(payload)) == 0  # type: ignore[no-any-return]

    def drain(self) -> list[tuple[int, int, bytes]]:
        """Every result waiting now, as (call id, ret, body), in completion order."""
        out: list[tuple[int, int, bytes]] = []
        unpack = _RECORD.unpack_from
        while True:
            used = lib.mt_drain(self._host, self._buf, self._cap)
            if used == 0:
                return out
            if used < 0:  # one result larger than the buffer
                self._cap = max(-used, self._cap * 2)
                self._buf = ffi.new("uint8_t[]", self._cap)
                continue
            data = ffi.buffer(self._buf, used)[:]
            pos = 0
            while pos < used:
                call_id, ret, size = unpack(data, pos)
                start = pos + 16
                pos = start + size
                out.append((call_id, ret, data[start:pos]))

    def status(self) -> Status:
        """The glue's counters and how long the current library call has run."""
        st = ffi.new("mt_status *")
        lib.mt_get_status(self._host, st)
        return Status(st.in_call_ns / 1e9, st.queued, st.submitted, st.completed, st.stale_warnings)

    def shutdown(self, timeout: float) -> str:
        """Destroy the context, waiting at most ``timeout`` seconds.

        Returns ``"destroyed"``, ``"library error"`` or ``"timed out"``; the
        library cannot be used afterwards.
        """
        if self._closed:
            return "destroyed"
        self._closed = True
        rc = lib.mt_shutdown(self._host, int(timeout * 1000))
        return {0: "destroyed", 1: "library error"}.get(rc, "timed out")
