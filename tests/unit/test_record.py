"""Record (mytimerd/protocol/record.py) behaves as @dataclass(frozen=True)
does: each test makes the same class both ways and compares them."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import pytest

from mytimerd.protocol.record import Record, field, replace


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)
    origin: ClassVar[int] = 0


class RPoint(Record):
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    origin: ClassVar[int] = 0


class RPoint3(RPoint):
    z: int = 0


ARGS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, 2), {}),
    ((1,), {"y": 2}),
    ((), {"x": 1, "tags": ["a"]}),
    ((1, 2, ["a", "b"]), {}),
]


@pytest.mark.parametrize(("args", "kwargs"), ARGS)
def test_init_and_repr_are_the_dataclass_ones(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    d, r = Point(*args, **kwargs), RPoint(*args, **kwargs)
    assert (r.x, r.y, r.tags) == (d.x, d.y, d.tags)
    assert repr(r) == repr(d).replace("Point(", "RPoint(", 1)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, [], 4), {}), ((1,), {"x": 1}), ((1,), {"w": 1}), ((), {"y": 1})],
)
def test_bad_arguments_are_a_type_error_as_for_the_dataclass(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError):
        Point(*args, **kwargs)
    with pytest.raises(TypeError):
        RPoint(*args, **kwargs)


def test_a_factory_default_is_made_for_each_record() -> None:
    a, b = RPoint(1), RPoint(1)
    assert a.tags == [] and a.tags is not b.tags
    assert "tags" not in RPoint.__dict__ and RPoint.__dict__["y"] == 0  # as dataclasses leave them


def test_equality_and_hash_are_by_class_and_fields() -> None:
    assert RPoint(1, 2) == RPoint(1, 2) and RPoint(1, 2) != RPoint(1, 3)
    assert RPoint(1) != RPoint3(1) and RPoint3(1) != RPoint(1)  # same fields, other class
    assert RPoint(1) != (1, 0, []) and RPoint(1) != Point(1)
    hashable, dhashable = RPoint(1, 2, ("a",)), Point(1, 2, ("a",))  # type: ignore[arg-type]
    assert hash(hashable) == hash(RPoint(1, 2, ("a",))) == hash(dhashable)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hash(RPoint(1))  # a list field, as the dataclass's
    with pytest.raises(TypeError):
        hash(Point(1))


def test_fields_cannot_be_assigned_or_deleted() -> None:
    r = RPoint(1)
    with pytest.raises(AttributeError, match="cannot assign to field 'x'"):
        r.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="cannot delete field 'x'"):
        del r.x
    with pytest.raises(AttributeError):
        r.other = 1
    assert r.x == 1


def test_a_subclass_adds_its_fields_after_its_bases() -> None:
    r = RPoint3(1, 2, [], 3)
    assert (r.x, r.y, r.tags, r.z) == (1, 2, [], 3)
    assert repr(r) == "RPoint3(x=1, y=2, tags=[], z=3)"


class Sized(Record):
    items: tuple[int, ...]

    @functools.cached_property
    def total(self) -> int:
        return sum(self.items)


def test_a_cached_property_works_and_is_not_a_field() -> None:
    s = Sized((1, 2))
    assert s.total == 3 and s.total == 3
    assert s == Sized((1, 2)) and repr(s) == "Sized(items=(1, 2))"


def test_replace_is_dataclasses_replace() -> None:
    r = RPoint(1, 2, ["a"])
    assert replace(r, y=5) == RPoint(1, 5, ["a"])
    assert repr(replace(r, y=5)) == repr(dataclasses.replace(Point(1, 2, ["a"]), y=5)).replace(
        "Point(", "RPoint(", 1
    )
    with pytest.raises(TypeError):
        replace(r, w=1)
