"""Fixtures for the integration tests, and the run's closing "figures" section."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Figures the tests measured, (group, text) in the order recorded; the run
#: ends with them (pytest_terminal_summary), so CI's log has them without -s.
FIGURES: list[tuple[str, str]] = []


def record_figure(group: str, text: str) -> None:
    """Keep one measured figure for the closing "figures" section."""
    FIGURES.append((group, text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A "figures" section at the end of the run, if a test recorded any."""
    if not FIGURES:
        return
    terminalreporter.section("figures")
    for group, text in FIGURES:
        terminalreporter.write_line(f"[{group}] {text}")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds about 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mti"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
