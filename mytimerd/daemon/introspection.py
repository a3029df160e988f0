"""The daemon's answers about itself: ``mytimerd.describe``, ``mytimerd.ping``
and ``mytimerd.stats``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from ..protocol import errors

if TYPE_CHECKING:
    from .server import Server


def describe(server: Server) -> dict[str, Any]:
    """The mytimerd.describe answer."""
    library = server.library
    return {
        "daemon": {"name": "mytimerd", "version": __version__},
        "library": {
            "path": library.path,
            "version": server.library_version,
            "generation": library.generation,
        },
        "timerName": server.config.name,
        "interface": server.interface.source,
        "methods": [
            {**m.to_json(), "available": m.name not in library.unavailable}
            for m in server.interface.methods
        ],
        "events": [
            {**e.to_json(), "delivered": e.name not in library.unheard}
            for e in server.interface.events
        ],
        "limits": server.limits.to_json(),
        "errors": {errors.PREFIX + k: v for k, v in errors.CATALOGUE.items()},
        "listeners": [{"name": x.name, "address": x.address} for x in server.listeners],
    }


def ping(server: Server) -> dict[str, Any]:
    """The mytimerd.ping answer."""
    healthy, why = server.health_verdict()
    answered = server.health.last_answered
    return {
        "healthy": healthy,
        "status": why,
        "uptimeSeconds": server.stats.uptime(),
        "library": {
            "lastProbeAgoSeconds": None if answered is None else server.clock() - answered,
            "submitBlockedSeconds": server.library.status().in_call_seconds,
            "inFlight": len(server.pending),
        },
    }


def stats(server: Server) -> dict[str, Any]:
    """The mytimerd.stats answer."""
    return server.stats.snapshot(
        len(server.connections),
        len(server.pending),
        server.library.status(),
        held={
            "calls": len(server.held),
            "bytes": server.held_bytes,
            "bufferedBytes": server.buffered_bytes,
        },
        events=server.events.snapshot(),
        stale_warnings=server.library.stale_warnings(),
    )
