"""The library host: the one real context of a nim-ffi library (libmy_timer
by default), behind the C glue, which binds its symbols by the library's name.

Python never runs on a library thread: calls are queued to the glue's
submitter thread, results are queued by a C callback and announced on an
eventfd (:attr:`LibraryHost.fd`) that the event loop watches;
:meth:`LibraryHost.results` collects them in batches.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import cbor2

from .._glue import ffi, lib
from ..protocol.interfaces import DEFAULT_LIBRARY, PROBE_METHODS
from ..protocol.schema import Interface
from .library import EVENT_ID_BASE, DescriptionMismatch, LibraryLoadError, Result, Status

#: The library built from native/ and shipped inside the package (0.2
#: generation), and its 0.3-generation twin; calls to them never block.
BUNDLED_LIBRARY: Final = Path(__file__).resolve().parents[1] / "_lib" / "libmy_timer.so"
BUNDLED_LIBRARIES: Final = (BUNDLED_LIBRARY, BUNDLED_LIBRARY.with_name("libmy_timer-0.3.so"))

_RECORD: Final = struct.Struct("=QiI")
_ERR_LEN: Final = 512


class LibraryHost:
    """A loaded nim-ffi library with its one context (a :class:`Library`)."""

    def __init__(self, path: Path | str, name: str = DEFAULT_LIBRARY) -> None:
        """Load ``path``, the library called ``name`` (its symbols are
        ``<name>_...``); :attr:`generation` tells which nim-ffi symbol
        generation it is ("0.2": names with ``_cbor``, "0.3": without)."""
        self.path = str(path)
        self.name = name
        self._err = ffi.new("char[]", _ERR_LEN)
        host = lib.mt_open(self.path.encode(), name.encode(), self._err, _ERR_LEN)
        if host == ffi.NULL:
            raise LibraryLoadError(ffi.string(self._err).decode(errors="replace"))
        self._host = host
        self.generation = f"0.{lib.mt_generation(host)}"
        # Method name -> the glue's index for it.
        self._methods: dict[str, int] = {}
        self.unavailable: frozenset[str] = frozenset()
        self.direct = False
        self.fd = -1
        self._cap = 1 << 18
        self._buf = ffi.new("uint8_t[]", self._cap)
        #: mt_drain_more's out-parameter: 1 while results are left to drain.
        self._more = ffi.new("int *")
        self._closed = False

    def start(
        self,
        interface: Interface,
        constructor: Mapping[str, Any],
        probe: str = PROBE_METHODS[0],
        create_timeout: float = 5.0,
        direct: bool = False,
    ) -> None:
        """Bind the interface's methods one by one, create the context with
        the request ``constructor``, and listen to the interface's events.

        A method the library lacks is left :attr:`unavailable`; only
        ``probe`` (the liveness probe) is required. A method whose symbol is
        the constructor, the destructor or a listener entry point is refused
        (:class:`DescriptionMismatch`). Returns once the library has confirmed
        the context. ``direct`` makes calls on the caller's thread instead of
        the submitter thread: only for libraries whose calls never block (the
        bundled one).
        """
        host = self._host
        missing = set()
        for method in interface.library_methods:
            bind = lib.mt_bind_static if method.static else lib.mt_bind
            index = bind(host, method.name.encode())
            if index == -2:
                raise DescriptionMismatch(
                    f"the description makes {self.name}_{method.name} a method, but in "
                    f"{self.path} that symbol is the constructor, the destructor or a "
                    "listener entry point"
                )
            if index == -3:
                raise LibraryLoadError(
                    f"{interface.source} describes more than {lib.MT_MAX_METHODS} methods"
                )
            if index < 0:
                missing.add(method.name)
            else:
                self._methods[method.name] = index
        if probe not in self._methods:
            raise LibraryLoadError(
                f"{self.path} lacks {self.name}_{probe}, which the liveness probe needs"
            )
        self.unavailable = frozenset(missing)
        request = cbor2.dumps(constructor)
        self.direct = direct
        timeout_ms = int(create_timeout * 1000)
        if lib.mt_create(host, request, len(request), timeout_ms, direct, self._err, _ERR_LEN):
            raise LibraryLoadError(ffi.string(self._err).decode(errors="replace"))
        self.fd = lib.mt_fd(host)
        unheard = [
            e.name
            for i, e in enumerate(interface.events)
            if lib.mt_listen(host, e.name.encode(), EVENT_ID_BASE + i) != 0
        ]
        #: Events the library would not let the daemon listen to.
        self.unheard = frozenset(unheard)

    def stale_warnings(self) -> dict[str, int]:
        """RET_STALE_WARN callbacks so far, by method (those with any)."""
        counts = {name: lib.mt_stale(self._host, i) for name, i in self._methods.items()}
        return {name: n for name, n in counts.items() if n}

    def submit(self, method: str, call_id: int, payload: bytes) -> bool:
        """Queue a call; False if the library is shutting down."""
        index = self._methods[method]
        return lib.mt_submit(self._host, index, call_id, payload, len(payload)) == 0  # type: ignore[no-any-return]

    def results(self) -> list[Result]:
        """Every result waiting now, as (call id, ret, body), in completion order.

        One mt_drain_more per wake-up when the buffer holds them all: it says
        when it left the queue empty (and the eventfd re-armed), so there is no
        last call (an eventfd read, a lock) just to learn that nothing is left."""
        out: list[Result] = []
        unpack = _RECORD.unpack_from
        more = self._more
        while True:
            used = lib.mt_drain_more(self._host, self._buf, self._cap, more)
            if used < 0:  # one result larger than the buffer
                self._cap = max(-used, self._cap * 2)
                self._buf = ffi.new("uint8_t[]", self._cap)
                continue
            if used:
                data = ffi.buffer(self._buf, used)[:]
                pos = 0
                while pos < used:
                    call_id, ret, size = unpack(data, pos)
                    start = pos + 16
                    pos = start + size
                    out.append((call_id, ret, data[start:pos]))
            if not more[0]:
                return out

    def status(self) -> Status:
        """The glue's counters and how long the current library call has run."""
        st = ffi.new("mt_status *")
        lib.mt_get_status(self._host, st)
        return Status(
            st.in_call_ns / 1e9, st.queued, st.submitted, st.completed, st.stale_warnings, st.events
        )

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
