"""The ``mytimerd.stats`` answer as metrics a monitoring system scrapes.

:func:`stats_metrics` turns the answer into prometheus_client metric families
(counters for what only grows, gauges for the rest); :func:`exposition` writes
them in the OpenMetrics text format or in the Prometheus text format, the one
node_exporter's textfile collector reads. The formats are prometheus_client's
own, so they follow its rules for names, escaping and ``_total`` suffixes.

Every name starts with ``mytimerd_``. Latency percentiles are gauges over the
daemon's most recent calls (it keeps a window of samples per method), in
seconds as Prometheus wants. A value the answer does not carry (an older or a
newer daemon) is left out, not made up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from ..protocol.errors import PREFIX

#: The text formats :func:`exposition` writes.
FORMATS: Final = ("openmetrics", "prometheus")

#: The ``outcome`` label of each count of ``calls`` in the stats answer.
_OUTCOMES: Final = {"ok": "ok", "libraryErrors": "library_error", "daemonErrors": "daemon_error"}

#: The percentiles of ``latencyMs`` and their ``quantile`` labels.
_QUANTILES: Final = {"p50": "0.5", "p90": "0.9", "p99": "0.99"}


def _number(value: Any) -> float | None:
    """``value`` if it is a number (bool is not one), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _snake(name: str) -> str:
    """``idleClosed`` -> ``idle_closed`` (for labels from keys this version does not know)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _map(answer: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = answer.get(key)
    return value if isinstance(value, Mapping) else {}


def _gauge(name: str, doc: str, value: Any, unit: str = "") -> Iterator[GaugeMetricFamily]:
    number = _number(value)
    if number is not None:
        yield GaugeMetricFamily(name, doc, value=number, unit=unit)


def _counter(name: str, doc: str, value: Any) -> Iterator[CounterMetricFamily]:
    number = _number(value)
    if number is not None:
        yield CounterMetricFamily(name, doc, value=number)


def stats_metrics(stats: Mapping[str, Any]) -> list[Metric]:
    """The metric families for one ``mytimerd.stats`` answer."""
    metrics: list[Metric] = []
    connections = _map(stats, "connections")
    held = _map(stats, "held")
    library = _map(stats, "library")
    metrics += _gauge(
        "mytimerd_uptime_seconds",
        "Seconds since the daemon started.",
        stats.get("uptimeSeconds"),
        "seconds",
    )
    metrics += _gauge(
        "mytimerd_connections_open", "Client connections open now.", connections.get("open")
    )
    metrics += _counter(
        "mytimerd_connections", "Client connections accepted.", connections.get("total")
    )
    metrics += _counter(
        "mytimerd_connections_refused",
        "Connections answered TooManyConnections and closed.",
        connections.get("refused"),
    )
    metrics += _counter(
        "mytimerd_connections_idle_closed",
        "Connections closed after --idle-timeout without a call.",
        connections.get("idleClosed"),
    )
    metrics += _gauge(
        "mytimerd_in_flight_calls", "Calls received and not yet answered.", stats.get("inFlight")
    )
    metrics += _gauge(
        "mytimerd_held_calls",
        "Library calls submitted and not yet answered by the library (see --max-held-calls).",
        held.get("calls"),
    )
    metrics += _gauge(
        "mytimerd_held_bytes",
        "Request bytes of the held library calls (see --max-held-bytes).",
        held.get("bytes"),
        "bytes",
    )
    metrics += _counter(
        "mytimerd_late_results",
        "Library results that came after their call was answered Timeout.",
        stats.get("lateResults"),
    )
    # The library host's counters are totals since start-up.
    for key, name, doc in (
        ("queued", "mytimerd_library_queued_calls", "Calls queued for the library."),
        ("submitted", "mytimerd_library_submitted_calls", "Calls submitted to the library."),
        ("completed", "mytimerd_library_completed_calls", "Calls the library completed."),
        (
            "staleWarnings",
            "mytimerd_library_stale_warnings",
            "RET_STALE_WARN answers from the library (not final).",
        ),
    ):
        metrics += _counter(name, doc, library.get(key))

    calls = CounterMetricFamily(
        "mytimerd_calls", "Calls answered, by method and outcome.", labels=("method", "outcome")
    )
    for method, counts in _map(stats, "calls").items():
        if isinstance(counts, Mapping):
            for key, count in counts.items():
                number = _number(count)
                if number is not None:
                    calls.add_metric((str(method), _OUTCOMES.get(key, _snake(key))), number)
    metrics.append(calls)

    errors = CounterMetricFamily(
        "mytimerd_errors",
        "Daemon error answers (mytimerd.<name>), by name, refused connections included.",
        labels=("name",),
    )
    for error, count in _map(stats, "errors").items():
        number = _number(count)
        if number is not None:
            errors.add_metric((str(error).removeprefix(PREFIX),), number)
    metrics.append(errors)

    latency = GaugeMetricFamily(
        "mytimerd_call_latency_seconds",
        "Latency percentiles over each method's most recent calls.",
        labels=("method", "quantile"),
        unit="seconds",
    )
    latency_max = GaugeMetricFamily(
        "mytimerd_call_latency_max_seconds",
        "Longest latency among each method's most recent calls.",
        labels=("method",),
        unit="seconds",
    )
    samples = GaugeMetricFamily(
        "mytimerd_call_latency_samples",
        "Recent calls the latency percentiles are computed over, by method.",
        labels=("method",),
    )
    for method, stat in _map(stats, "latencyMs").items():
        if not isinstance(stat, Mapping):
            continue
        for key, quantile in _QUANTILES.items():
            ms = _number(stat.get(key))
            if ms is not None:
                latency.add_metric((str(method), quantile), ms / 1000)
        ms = _number(stat.get("max"))
        if ms is not None:
            latency_max.add_metric((str(method),), ms / 1000)
        count = _number(stat.get("count"))
        if count is not None:
            samples.add_metric((str(method),), count)
    metrics += [latency, latency_max, samples]
    metrics += _loop_and_budgets(stats)
    return metrics


def _loop_and_budgets(stats: Mapping[str, Any]) -> list[Metric]:
    """The event loop's longest recent stall, and each shared budget's use."""
    metrics: list[Metric] = []
    stall = _number(_map(stats, "loop").get("maxStallMs"))
    if stall is not None:
        metrics += _gauge(
            "mytimerd_loop_max_stall_seconds",
            "Longest stall of the daemon's event loop over the last minute.",
            stall / 1000,
            "seconds",
        )
    used = GaugeMetricFamily(
        "mytimerd_budget_used", "Use of each shared budget, in all.", labels=("budget",)
    )
    limit = GaugeMetricFamily(
        "mytimerd_budget_limit", "Each shared budget's global bound.", labels=("budget",)
    )
    share = GaugeMetricFamily(
        "mytimerd_budget_per_peer_limit", "Each shared budget's per-peer share.", labels=("budget",)
    )
    for name, budget in _map(stats, "budgets").items():
        if isinstance(budget, Mapping):
            for family, key in ((used, "total"), (limit, "limit"), (share, "perPeer")):
                number = _number(budget.get(key))
                if number is not None:
                    family.add_metric((str(name),), number)
    metrics += [used, limit, share]
    return metrics


class StatsCollector(Collector):
    """A prometheus_client collector serving one ``mytimerd.stats`` answer.

    Register it in a registry of your own to export the daemon's stats from
    a Python program (refresh it by registering a new one per scrape).
    """

    def __init__(self, stats: Mapping[str, Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """The metric families of the answer."""
        return iter(stats_metrics(self._stats))


def exposition(stats: Mapping[str, Any], form: str = "openmetrics") -> str:
    """The ``mytimerd.stats`` answer in the OpenMetrics or the Prometheus text format.

    ``form`` is one of :data:`FORMATS`; anything else is a ValueError.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    if form == "openmetrics":
        # prometheus_client's OpenMetrics writer carries no annotations (0.26).
        data: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    elif form == "prometheus":
        data = generate_latest(registry)
    else:
        raise ValueError(f"no metrics format {form!r} (known: {', '.join(FORMATS)})")
    return data.decode("utf-8")
