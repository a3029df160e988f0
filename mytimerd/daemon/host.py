"""The library host: the one real libmy_timer context, behind the C glue.

Python never runs on a library thread: calls are queued to the glue's
submitter thread, results are queued by a C callback and announced on an
eventfd (:attr:`LibraryHost.fd`) that the event loop watches;
:meth:`LibraryHost.results` collects them in batches.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Final

import cbor2

from .._glue import ffi, lib
from ..protocol.interfaces import LIBRARY_METHODS
from .library import LibraryLoadError, Result, Status

#: The library built from native/ and shipped inside the package.
BUNDLED_LIBRARY: Final = Path(__file__).resolve().parents[1] / "_lib" / "libmy_timer.so"

_RECORD: Final = struct.Struct("=QiI")
_ERR_LEN: Final = 512


class LibraryHost:
    """A loaded libmy_timer build with its one context (a :class:`Library`)."""

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
        # Method name -> the glue's index for it.
        self._methods: dict[str, int] = {}
        missing = []
        for method in LIBRARY_METHODS:
            index = lib.mt_bind(host, method.name.encode())
            if index < 0:
                missing.append(method.name)
            self._methods[method.name] = index
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

    def submit(self, method: str, call_id: int, payload: bytes) -> bool:
        """Queue a call; False if the library is shutting down."""
        index = self._methods[method]
        return lib.mt_submit(self._host, index, call_id, payload, len(payload)) == 0  # type: ignore[no-any-return]

    def results(self) -> list[Result]:
        """Every result waiting now, as (call id, ret, body), in completion order."""
        out: list[Result] = []
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
