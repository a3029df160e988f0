"""The daemon's answers about itself: ``mytimerd.describe``, ``mytimerd.ping``
and ``mytimerd.stats``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from ..protocol import errors
from .looplag import WINDOW
from .shares import holders

if TYPE_CHECKING:
    from .server import Server


def describe(server: Server) -> dict[str, Any]:
    """The mytimerd.describe answer. Every schema in it names each map key
    by its wire key (``name``); types name themselves ``typeName``."""
    library = server.library
    config = server.config
    return {
        "daemon": {"name": "mytimerd", "version": __version__},
        "library": {
            "name": server.interface.name,
            "path": library.path,
            "version": server.library_version,
            "generation": library.generation,
            "probeMethod": config.probe_method,
        },
        "timerName": config.name,
        "constructor": {
            "request": dict(config.constructor),
            "schema": server.interface.constructor.to_json(),
        },
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
    """The mytimerd.ping answer: the library's health, and whether a shared
    budget is nearly exhausted (``degraded``, with the reasons)."""
    healthy, why = server.health_verdict()
    answered = server.health.last_answered
    reasons = server.degraded()
    # "accepting" comes first, so that its bytes open the answer's map: a
    # balancer's health check matches them (docs/scale-out.md).
    return {
        "accepting": server.accepting(),
        "healthy": healthy,
        "status": why,
        "draining": server.announced_drain or server.draining,
        "degraded": bool(reasons),
        "degradedReasons": reasons,
        "uptimeSeconds": server.stats.uptime(),
        "library": {
            "lastProbeAgoSeconds": None if answered is None else server.clock() - answered,
            "submitBlockedSeconds": server.library.status().in_call_seconds,
            "inFlight": len(server.pending),
        },
    }


def stats(server: Server) -> dict[str, Any]:
    """The mytimerd.stats answer."""
    ledger = server.ledger
    stall, what = server.loop_lag.longest()
    return server.stats.snapshot(
        {"open": len(server.connections), "handshaking": server.admission.handshakes.total},
        len(server.pending),
        server.library.status(),
        held={
            "calls": len(ledger),
            "bytes": ledger.bytes.total,
            "bufferedBytes": ledger.buffered.total,
        },
        events=server.events.snapshot(),
        stale_warnings=server.library.stale_warnings(),
        extra={
            "budgets": holders(server.budgets),
            "loop": {"maxStallMs": stall * 1000, "maxStallWhat": what, "windowSeconds": WINDOW},
            "lane": server.lane_snapshot(),
        },
    )
