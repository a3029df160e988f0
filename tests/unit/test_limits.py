"""The limits table (mytimerd/protocol/limits.py): FIELDS pairs each field
of Limits with its option, unit and doc by position, so a field added
without its _limit() (or out of order) must not go unnoticed."""

from __future__ import annotations

import pytest
from mytimerd._glue import lib

from mytimerd.protocol.limits import FIELDS, Limits


def test_each_field_has_its_own_option_and_default() -> None:
    defaults = Limits()
    assert [f.name for f in FIELDS] == list(Limits._fields)
    for f in FIELDS:
        assert f.option == "--" + f.name.replace("_", "-")
        assert f.default == getattr(defaults, f.name)
        assert f.type in ("int", "float")
        assert isinstance(f.default, int if f.type == "int" else float), f.name
        assert f.unit and f.doc


def test_limits_is_a_frozen_record() -> None:
    limits = Limits(max_payload=5)
    assert limits == Limits(max_payload=5) != Limits()
    assert hash(limits) == hash(Limits(max_payload=5))
    with pytest.raises(AttributeError):
        limits.max_payload = 6  # type: ignore[misc]


def test_helps_state_the_glues_own_figures() -> None:
    """Two helps state a time that the glue's C fixes at build time (the
    sans-IO protocol layer does not load the glue to ask it): a change to
    either constant must change the help too."""
    docs = {f.name: f.doc for f in FIELDS}
    assert f"{lib.MT_BUSY_SLICE_NS // 1000} us of a turn" in docs["lane_slots"]
    assert f"down to {lib.MT_READ_AHEAD_MIN_NS // 1000} us" in docs["read_ahead_wait"]
