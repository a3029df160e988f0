"""Fixtures for the integration tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds about 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mti"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
