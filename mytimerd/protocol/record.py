"""Frozen records: what ``@dataclass(frozen=True)`` makes, from methods
written once.

``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``,
``__hash__``, ``__setattr__`` and ``__delattr__`` as source text and
compiles it whenever the class is created, that is at every start: about
half a millisecond a class, 20 ms of the 115 ms a socket-activated daemon
took to answer its first call (issue 21). A :class:`Record` behaves the
same with the methods below, compiled once into this module's ``.pyc``:

- its fields are its annotations, in order, after its bases' (``ClassVar``
  ones excepted); a class attribute of the same name is the field's default,
  and :func:`field` gives one made anew for each record;
- ``__init__`` takes them by position or by name;
- two records are equal when they are of the same class and their fields
  are; the hash is that of the fields; the repr is ``Name(field=value, ...)``;
- fields cannot be assigned or deleted once the record is made (a
  ``functools.cached_property`` still works: it bypasses ``__setattr__``).

``typing.dataclass_transform`` tells type checkers all this, so a record's
constructor is checked like a dataclass's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast, dataclass_transform

__all__ = ["Fields", "Record", "field", "replace"]

T = TypeVar("T")
R = TypeVar("R", bound="Record")


class _Factory:
    """The default of a :func:`field`: ``make()`` gives each record its own."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is ``default_factory()``, called for each record
    that is not given one (as :func:`dataclasses.field`)."""
    return cast(T, _Factory(default_factory))


_MISSING: Any = object()


class Fields:
    """Equality, hash and repr by the fields named in ``_fields``, in order
    (as a dataclass's): for :class:`Record` and for classes that write
    their own ``__init__`` (wire's frames, made once per request)."""

    __slots__ = ()

    #: The fields, in order.
    _fields: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Fields)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({shown})"


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record(Fields):
    """Base of the frozen records (see the module's documentation)."""

    #: Field -> default (a _Factory for a field()).
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = inspect.get_annotations(cls)
        names = [n for n, kind in own.items() if not str(kind).startswith("ClassVar")]
        cls._fields = (*cls._fields, *(n for n in names if n not in cls._fields))
        defaults = dict(cls._defaults)
        for name in names:
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], _Factory):
                    delattr(cls, name)  # as dataclasses: no class attribute for a factory
        cls._defaults = defaults

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self._fields
        if len(args) > len(names):
            kind = type(self).__name__
            raise TypeError(f"{kind}() takes {len(names)} arguments but {len(args)} were given")
        # Straight into __dict__: __setattr__ refuses.
        values = self.__dict__
        values.update(zip(names, args, strict=False))
        for name in names[len(args) :]:
            if name in kwargs:
                values[name] = kwargs.pop(name)
                continue
            default = self._defaults.get(name, _MISSING)
            if default is _MISSING:
                raise TypeError(f"{type(self).__name__}() missing required argument: {name!r}")
            values[name] = default.make() if isinstance(default, _Factory) else default
        if kwargs:
            name = next(iter(kwargs))
            why = "multiple values for" if name in names else "an unexpected keyword"
            raise TypeError(f"{type(self).__name__}() got {why} argument {name!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")


def replace(record: R, /, **changes: Any) -> R:
    """A copy of ``record`` with ``changes`` to its fields (as :func:`dataclasses.replace`)."""
    return type(record)(**{**{name: getattr(record, name) for name in record._fields}, **changes})
