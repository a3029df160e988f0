"""The shipped services give systemd's file descriptor store and the
daemon the same size: what a hand-over needs (the carrier and the state)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mytimerd.daemon import handover

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.parametrize("unit", ["mytimerd.service", "mytimerd@.service"])
def test_store_size_matches(unit: str) -> None:
    text = (SYSTEMD / unit).read_text()
    store = re.findall(r"^FileDescriptorStoreMax=(\d+)$", text, re.M)
    exec_start = re.findall(r"^ExecStart=.*--fd-store-max (\d+)", text, re.M)
    assert store == exec_start == [str(handover.STORE_NEEDS)]
