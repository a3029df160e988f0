"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, start_daemon

#: The observed ABI vectors and CDDL, kept in the repository (tests/vectors/).
SPEC_DIR = Path(__file__).resolve().parent / "vectors"


def require(condition: bool, why: str) -> None:
    """Skip on a developer machine, fail in CI: CI must run every test."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI lacks a prerequisite: {why}")
    pytest.skip(why)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start mytimerd processes; each is stopped (or killed) after the test."""
    started: list[Daemon] = []

    def start(*args: str, **kwargs: Any) -> Daemon:
        d = start_daemon(tmp_path, args, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """One daemon on a unix socket, timer named "demo" like the spec's vectors."""
    return daemon_factory("--name", "demo")
