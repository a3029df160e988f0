"""`mytimerctl stats --format openmetrics|prometheus`, read back by prometheus_client."""

from __future__ import annotations

import io

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import (
    text_string_to_metric_families as prometheus_text_to_metric_families,
)

from mytimerd.client import Client, ctl
from mytimerd.client.ctl.commands import STATS_FORMATS
from mytimerd.client.metrics import FORMATS, exposition

from .conftest import Daemon


def parse_openmetrics(text: str) -> list[Metric]:
    """prometheus_client's OpenMetrics parser (which carries no annotations), typed."""
    return list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def stats_output(daemon: Daemon, form: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = ctl.main(["--unix", str(daemon.path), "stats", "--format", form], stdin=io.StringIO())
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return out


def test_real_stats_as_openmetrics(capsys: pytest.CaptureFixture[str], own_daemon: Daemon) -> None:
    with Client(own_daemon.address) as c:
        for _ in range(3):
            c.version()
        c.echo("x", delay_ms=20)
        with pytest.raises(Exception, match="job name must not be empty"):
            c.schedule()
        with pytest.raises(Exception, match="InvalidParameter"):
            c.call("echo", {"req": {"delayMs": "soon"}})
    text = stats_output(own_daemon, "openmetrics", capsys)
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    types = {name: f.type for name, f in families.items()}
    assert types == {
        "mytimerd_uptime_seconds": "gauge",
        "mytimerd_connections_open": "gauge",
        "mytimerd_connections": "counter",
        "mytimerd_connections_refused": "counter",
        "mytimerd_connections_idle_closed": "counter",
        "mytimerd_in_flight_calls": "gauge",
        "mytimerd_held_calls": "gauge",
        "mytimerd_held_bytes": "gauge",
        "mytimerd_late_results": "counter",
        "mytimerd_library_queued_calls": "counter",
        "mytimerd_library_submitted_calls": "counter",
        "mytimerd_library_completed_calls": "counter",
        "mytimerd_library_stale_warnings": "counter",
        "mytimerd_calls": "counter",
        "mytimerd_errors": "counter",
        "mytimerd_call_latency_seconds": "gauge",
        "mytimerd_call_latency_max_seconds": "gauge",
        "mytimerd_call_latency_samples": "gauge",
        "mytimerd_loop_max_stall_seconds": "gauge",
        "mytimerd_budget_used": "gauge",
        "mytimerd_budget_limit": "gauge",
        "mytimerd_budget_per_peer_limit": "gauge",
    }
    assert families["mytimerd_uptime_seconds"].unit == "seconds"
    used = {s.labels["budget"]: s.value for s in families["mytimerd_budget_used"].samples}
    assert set(used) >= {"max-held-calls", "max-subscribers", "max-tls-handshakes"}
    samples: Samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("mytimerd_calls_total", (("method", "version"), ("outcome", "ok")))] == 3
    assert samples[("mytimerd_calls_total", (("method", "echo"), ("outcome", "ok")))] == 1
    schedule_failed = (
        "mytimerd_calls_total",
        (("method", "schedule"), ("outcome", "library_error")),
    )
    assert samples[schedule_failed] == 1
    echo_refused = ("mytimerd_calls_total", (("method", "echo"), ("outcome", "daemon_error")))
    assert samples[echo_refused] == 1
    assert samples[("mytimerd_errors_total", (("name", "InvalidParameter"),))] == 1
    assert samples[("mytimerd_connections_total", ())] >= 1
    assert samples[("mytimerd_connections_open", ())] >= 1  # the one asking
    assert samples[("mytimerd_uptime_seconds", ())] > 0
    assert samples[("mytimerd_in_flight_calls", ())] == 0  # the echo is long answered
    assert samples[("mytimerd_held_bytes", ())] == 0
    echo_p50 = samples[("mytimerd_call_latency_seconds", (("method", "echo"), ("quantile", "0.5")))]
    assert 0.02 <= echo_p50 < 1  # seconds, not milliseconds
    assert samples[("mytimerd_call_latency_samples", (("method", "version"),))] == 3
    assert samples[("mytimerd_library_submitted_calls_total", ())] >= 4


def test_real_stats_in_the_prometheus_text_format(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    """The format node_exporter's textfile collector reads: counters keep their type."""
    with Client(daemon.address) as c:
        c.version()
    text = stats_output(daemon, "prometheus", capsys)
    families = {f.name: f for f in prometheus_text_to_metric_families(text)}
    assert families["mytimerd_calls"].type == "counter"
    assert "# TYPE mytimerd_calls_total counter" in text
    assert any(
        s.name == "mytimerd_calls_total" and s.labels == {"method": "version", "outcome": "ok"}
        for s in families["mytimerd_calls"].samples
    )
    assert "# EOF" not in text


def test_json_and_format_are_exclusive(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    argv = ["--unix", str(daemon.path), "--json", "stats", "--format", "openmetrics"]
    assert ctl.main(argv, stdin=io.StringIO()) == ctl.EXIT_USAGE
    assert "either --json or --format" in capsys.readouterr().err


def test_stats_of_another_shape_give_what_they_carry() -> None:
    """A daemon of another version: unknown outcomes get a label, missing values no sample."""
    text = exposition(
        {"calls": {"echo": {"ok": 2, "cancelledByClient": 1, "odd": "x"}}, "connections": []}
    )
    families = {f.name: f for f in parse_openmetrics(text)}
    calls = {s.labels["outcome"]: s.value for s in families["mytimerd_calls"].samples}
    assert calls == {"ok": 2, "cancelled_by_client": 1}
    assert "mytimerd_uptime_seconds" not in families
    with pytest.raises(ValueError, match="no metrics format"):
        exposition({}, "xml")


def test_the_command_offers_every_metrics_format() -> None:
    assert ("human", *FORMATS) == STATS_FORMATS
