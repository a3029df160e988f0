"""What the server needs from a library: the seam between the daemon and
the nim-ffi library it serves (libmy_timer by default).

:class:`~mytimerd.daemon.host.LibraryHost` implements it with the real
library behind the C glue; the tests implement it with a fake, so the server
is tested in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Protocol

from ..protocol.record import Record

if TYPE_CHECKING:  # the lane's module needs Result from this one
    from .lane import Lane

#: A finished call as the library answered it: (call id, ret code, body).
#: Events come the same way, with ids from :data:`EVENT_ID_BASE` on.
Result = tuple[int, int, bytes]

#: Ids of events: EVENT_ID_BASE + the event's index in the interface. Call
#: ids count up from 1 and liveness probes down from 2**64 - 1.
EVENT_ID_BASE: Final = 1 << 63


class LibraryLoadError(Exception):
    """The library could not be loaded or its context not created."""


class DescriptionMismatch(LibraryLoadError):
    """The description and the library's symbol table disagree on what an
    entry point is (a method that is really the constructor, say): the
    operator's description is wrong, so it is a usage error."""


class Status(Record):
    """What the host knows about the library right now.

    ``in_call_seconds``: how long the current library call has been running
    (0 if none); the counters are totals since start-up.
    """

    in_call_seconds: float
    queued: int
    submitted: int
    completed: int
    stale_warnings: int
    events: int = 0


class Library(Protocol):
    """One library context, called asynchronously.

    Calls are submitted with an id; results come back through :meth:`results`
    once :attr:`fd` is readable, in completion order.
    """

    #: Where the library was loaded from (shown by describe and the journal).
    path: str
    #: True when calls are made on the caller's thread (see ``--submit``).
    direct: bool
    #: The nim-ffi symbol generation: "0.2" or "0.3".
    generation: str
    #: A descriptor that becomes readable when results are waiting.
    fd: int
    #: Methods of the interface the library lacks.
    unavailable: frozenset[str]
    #: Events of the interface the library would not let the daemon hear.
    unheard: frozenset[str]

    def submit(self, method: str, call_id: int, payload: bytes) -> bool:
        """Start ``method`` with the CBOR ``payload``; False if shutting down."""
        ...

    def call(self, method: str, call_id: int, payload: bytes, wait: bool) -> bytes | bool:
        """:meth:`submit`, and with ``wait`` the answer at once when the
        library gives it within a few microseconds: its response frame (the
        wire's), so that the caller answers in the same turn of the loop.
        True: the answer comes later through :meth:`results`; False:
        shutting down."""
        ...

    def quicken(self, names: Iterable[str]) -> list[str]:
        """Let :meth:`quick` serve calls of these methods with ``{}``; the
        ones it will serve (perhaps none)."""
        ...

    def quick(
        self, data: bytes, first_id: int, wait: bool
    ) -> tuple[int, bytes, list[tuple[str, int, float]]]:
        """Make the calls of the request frames at the start of ``data``
        that name a method of :meth:`quicken` with ``{}`` (the byte a0) as
        their payload, as :meth:`call` makes them with ``wait`` (ids
        ``first_id`` on), up to the first other frame and after no call
        whose answer comes later: the bytes of ``data`` they took, the
        response frames of those answered, and (method, ret, seconds) of
        each call made, in order; ret -1: the last one's answer comes
        through :meth:`results`."""
        ...

    def lane(self, slots: int) -> Lane | None:
        """A lane serving :meth:`quicken`'s methods in C for up to ``slots``
        connections (:mod:`.lane`), or None."""
        ...

    def results(self) -> list[Result]:
        """Every result waiting now; empty when none is."""
        ...

    def status(self) -> Status:
        """Counters and how long the current call has been running."""
        ...

    def stale_warnings(self) -> dict[str, int]:
        """RET_STALE_WARN callbacks so far, by method."""
        ...

    def shutdown(self, timeout: float) -> str:
        """Destroy the context within ``timeout`` seconds; say how it went."""
        ...
