"""The library host: the one real context of a nim-ffi library (libmy_timer
by default), behind the C glue, which binds its symbols by the library's name.

Python never runs on a library thread: calls are queued to the glue's
submitter thread, results are queued by a C callback and announced on an
eventfd (:attr:`LibraryHost.fd`) that the event loop watches;
:meth:`LibraryHost.results` collects them in batches. A call whose answer
usually comes within microseconds may be waited for instead
(:meth:`LibraryHost.call`, :meth:`LibraryHost.quick`, which also reads the
frames of calls with ``{}`` in C): the callback hands the answer over
directly and the loop answers in the same turn, with no wake-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import cbor2

from .._glue import ffi, lib
from ..protocol.interfaces import DEFAULT_LIBRARY, PROBE_METHODS, kind_contradiction
from ..protocol.schema import Interface
from .lane import LANE_ID_BASE, Lane
from .library import EVENT_ID_BASE, DescriptionMismatch, LibraryLoadError, Result, Status
from .records import unpack_records

#: The library built from native/ and shipped inside the package (0.2
#: generation), and its 0.3-generation twin; calls to them never block.
BUNDLED_LIBRARY: Final = Path(__file__).resolve().parents[1] / "_lib" / "libmy_timer.so"
BUNDLED_LIBRARIES: Final = (BUNDLED_LIBRARY, BUNDLED_LIBRARY.with_name("libmy_timer-0.3.so"))

_ERR_LEN: Final = 512
#: How long :meth:`LibraryHost.call` may wait for an answer, at most (the
#: glue's MT_INLINE_WAIT_NS, which the lane keeps to too: see glue.h).
INLINE_WAIT_NS: Final[int] = lib.MT_INLINE_WAIT_NS
#: Answers :meth:`LibraryHost.call` returns at once are at most this large
#: (a larger one comes through :meth:`LibraryHost.results`), and so are the
#: answers of one :meth:`LibraryHost.quick` together.
_INLINE_CAP: Final = 1 << 16
#: Calls one :meth:`LibraryHost.quick` makes, at most.
_QUICK_CALLS: Final = 64


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
        self._frame = ffi.new("uint8_t[]", _INLINE_CAP)
        self._quick_calls = ffi.new("mt_quick_call[]", _QUICK_CALLS)
        self._quick_out = ffi.new("int64_t *")
        self._quick_n = ffi.new("int *")
        # The glue's method numbers -> names, for what quick() made.
        self._names: list[str] = []
        self._quick_n_methods = 0
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
        ``probe`` (the liveness probe) is required. Refused
        (:class:`DescriptionMismatch`): proc kinds that contradict what is
        known of the library, before anything is bound (a static call in the
        0.2 generation, a kind its bundled description gives otherwise:
        :func:`~mytimerd.protocol.interfaces.kind_contradiction`); a method
        whose symbol is the constructor, the destructor or a
        listener entry point. Returns once the library has confirmed
        the context. ``direct`` makes calls on the caller's thread instead of
        the submitter thread: only for libraries whose calls never block (the
        bundled one).
        """
        contradiction = kind_contradiction(interface, self.generation)
        if contradiction is not None:
            raise DescriptionMismatch(contradiction)
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
                self._names.append(method.name)
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

    def call(self, method: str, call_id: int, payload: bytes, wait: bool) -> bytes | bool:
        """Make a call; with ``wait``, when the method's calls usually answer
        within :data:`INLINE_WAIT_NS`, wait for this one's answer (twice the
        usual time at most) and return its response frame. True: the answer
        comes through :meth:`results`; False: the library is shutting down."""
        used: int = lib.mt_call(
            self._host,
            self._methods[method],
            call_id,
            payload,
            len(payload),
            INLINE_WAIT_NS if wait else 0,
            self._frame,
            _INLINE_CAP,
        )
        if used > 0:
            frame: bytes = ffi.buffer(self._frame, used)[:]
            return frame
        return used == 0

    def quicken(self, names: Iterable[str]) -> list[str]:
        """Let :meth:`quick` serve these methods, as many as the glue takes
        (``MT_QUICK_METHODS``, names of ``MT_QUICK_NAME`` bytes at most); the
        ones it serves. The caller checked that ``{}`` is a valid request
        of each."""
        served = [
            name
            for name in names
            if name in self._methods
            and lib.mt_quick_add(self._host, name.encode(), self._methods[name]) == 0
        ]
        self._quick_n_methods += len(served)
        return served

    def quick(
        self, data: bytes, first_id: int, wait: bool
    ) -> tuple[int, bytes, list[tuple[str, int, float]]]:
        """Make the calls of the request frames at the start of ``data`` that
        :meth:`quicken` named with ``{}`` (a0) as their payload, as
        :meth:`call` makes them with ``wait`` (ids from ``first_id`` on):
        the bytes of ``data`` they took, the response frames of those
        answered, and (method, ret, seconds) of each call made in order; a
        ret of -1: the last call's answer comes through :meth:`results`."""
        calls = self._quick_calls
        n = self._quick_n
        used = lib.mt_quick(
            self._host,
            data,
            len(data),
            first_id,
            INLINE_WAIT_NS if wait else 0,
            self._frame,
            _INLINE_CAP,
            self._quick_out,
            calls,
            _QUICK_CALLS,
            n,
        )
        names = self._names
        made = []
        for i in range(n[0]):  # a loop, not a comprehension: no function made per call
            c = calls[i]
            made.append((names[c.method], c.ret, c.ns / 1e9))
        size = self._quick_out[0]
        return used, ffi.buffer(self._frame, size)[:] if size else b"", made

    def lane(self, slots: int) -> Lane | None:
        """The lane for the methods :meth:`quicken` named, with room for
        ``slots`` connections (see :mod:`.lane`); None when none is served
        or the glue cannot make one."""
        if not self._quick_n_methods or slots < 1:
            return None
        handle = lib.mt_lane_new(self._host, slots, LANE_ID_BASE)
        return None if handle == ffi.NULL else Lane(handle, self._names, slots)

    def results(self) -> list[Result]:
        """Every result waiting now, as (call id, ret, body), in completion order.

        One mt_drain_more per wake-up when the buffer holds them all: it says
        when it left the queue empty (and the eventfd re-armed), so there is no
        last call (an eventfd read, a lock) just to learn that nothing is left."""
        out: list[Result] = []
        more = self._more
        while True:
            used = lib.mt_drain_more(self._host, self._buf, self._cap, more)
            if used < 0:  # one result larger than the buffer
                self._cap = max(-used, self._cap * 2)
                self._buf = ffi.new("uint8_t[]", self._cap)
                continue
            if used:
                unpack_records(ffi.buffer(self._buf, used)[:], out)
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
