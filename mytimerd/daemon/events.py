"""Library events over the wire: who subscribed to what, and the fan-out.

``mytimerd.subscribe`` turns a connection into an event stream: one RET_OK
that acknowledges the subscription, then one RET_OK frame per event whose
body is the library's event body, byte for byte. A subscriber whose socket
is full has its events queued, at most ``--max-subscriber-queue``; past that
it gets a final ``SlowSubscriber`` error and is cut off, so it holds no
memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ..protocol import wire
from ..protocol.errors import DaemonError
from ..protocol.schema import Interface
from .connection import Connection

log = logging.getLogger("mytimerd")


class EventHub:
    """The subscribers of one interface's events."""

    def __init__(self, interface: Interface, max_queue: int) -> None:
        self.interface = interface
        self.max_queue = max_queue
        self._names = [e.name for e in interface.events]
        # Event name -> its subscribers.
        self._subscribers: dict[str, set[Connection]] = {name: set() for name in self._names}
        self.published: Counter[str] = Counter()
        self.cut_off = 0

    def subscribe(self, conn: Connection, request: dict[str, Any]) -> list[str]:
        """Subscribe ``conn`` to the events named (all when none are); the
        names it now receives. Raises InvalidParameter for an unknown name."""
        wanted = request.get("events") or self._names
        unknown = [n for n in wanted if n not in self._subscribers]
        if unknown:
            known = ", ".join(self._names) or "none"
            raise DaemonError(
                "InvalidParameter", f"events: no event {unknown[0]!r} (this library has: {known})"
            )
        names = list(dict.fromkeys(wanted))
        for name in names:
            self._subscribers[name].add(conn)
        conn.subscribed = True
        return names

    def drop(self, conn: Connection) -> None:
        """``conn`` is gone."""
        if conn.subscribed:
            for subscribers in self._subscribers.values():
                subscribers.discard(conn)

    def publish(self, index: int, body: bytes) -> None:
        """The library fired event number ``index``: send it to its subscribers."""
        if not 0 <= index < len(self._names):
            return
        name = self._names[index]
        self.published[name] += 1
        subscribers = self._subscribers[name]
        if not subscribers:
            return
        frame = wire.encode_response(wire.RET_OK, body)
        slow = [conn for conn in subscribers if not conn.push_event(frame, self.max_queue)]
        for conn in slow:
            self.cut_off += 1
            self.drop(conn)
            err = DaemonError(
                "SlowSubscriber",
                f"more than {self.max_queue} events waited for you to read them "
                f"(--max-subscriber-queue); subscribe again and read faster",
            )
            log.warning(
                "cut off slow subscriber %s",
                conn.peer,
                extra={"ERROR": err.name, "PEER": conn.peer},
            )
            conn.cut_off(wire.encode_response(wire.RET_ERR, err.body()))

    def snapshot(self) -> dict[str, Any]:
        """For mytimerd.stats."""
        return {
            "published": dict(self.published),
            "subscribers": {name: len(s) for name, s in self._subscribers.items()},
            "cutOff": self.cut_off,
        }
