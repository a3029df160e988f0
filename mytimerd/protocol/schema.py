"""The schema types: what a method's request and answer may be, how a value
is checked, and the :class:`Interface` (methods and events) they make up.

An interface is built from the library's own description (its CDDL, see
:mod:`.interfaces`) and drives request validation in the daemon,
``mytimerd.describe``, the commands and options of ``mytimerctl`` and the
method tables in the docs. Validation mirrors the library's decoder where that
is safe (every key may be missing and then takes the library's zero value;
unknown keys are refused) and is stricter where the library is not safe (types
are exact, integers must fit int64, a delay must fit the library's
millisecond clock).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Final

from . import cbor
from .errors import DaemonError
from .record import Record, field

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

#: Largest |delayMs| accepted (about 31.7 years). The real library's clock
#: overflows, and aborts the whole process, near 9.2e12 ms.
DELAY_MS_LIMIT: Final = 10**12

JSONValue = Any


class Type:
    """A value type in a schema."""

    def check(self, value: object, path: str) -> None:
        """Raise InvalidParameter if ``value`` does not have this type."""
        raise NotImplementedError

    def to_json(self) -> dict[str, JSONValue]:
        """A JSON-able description (served by mytimerd.describe)."""
        raise NotImplementedError

    def cddl(self) -> str:
        """The type in CDDL notation, for documentation."""
        raise NotImplementedError


def invalid(path: str, message: str) -> DaemonError:
    """An InvalidParameter error for the value at ``path``."""
    return DaemonError("InvalidParameter", f"{path}: {message}")


def _got(value: object) -> str:
    return f"got {cbor.type_name(value)}"


class Text(Type, Record):
    """A UTF-8 text string."""

    def check(self, value: object, path: str) -> None:
        if type(value) is not str:
            raise invalid(path, f"expected a text string, {_got(value)}")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "text"}

    def cddl(self) -> str:
        return "tstr"


class Bool(Type, Record):
    """true or false."""

    def check(self, value: object, path: str) -> None:
        if type(value) is not bool:
            raise invalid(path, f"expected a boolean, {_got(value)}")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "bool"}

    def cddl(self) -> str:
        return "bool"


class Int(Type, Record):
    """An integer within [lo, hi] (int64 unless narrowed)."""

    lo: int = INT64_MIN
    hi: int = INT64_MAX

    def check(self, value: object, path: str) -> None:
        if type(value) is not int:
            raise invalid(path, f"expected an integer, {_got(value)}")
        if not self.lo <= value <= self.hi:
            raise invalid(path, f"{value} is out of range [{self.lo}, {self.hi}]")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "int", "min": self.lo, "max": self.hi}

    def cddl(self) -> str:
        return "int"


class Array(Type, Record):
    """A definite-length array of one item type."""

    item: Type

    def check(self, value: object, path: str) -> None:
        if type(value) is not list:
            raise invalid(path, f"expected an array, {_got(value)}")
        for i, element in enumerate(value):
            self.item.check(element, f"{path}[{i}]")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "array", "items": self.item.to_json()}

    def cddl(self) -> str:
        return f"[* {self.item.cddl()}]"


class Enum(Type, Record):
    """One of a few text values (nim-ffi sends enums as text)."""

    name: str
    choices: tuple[str, ...]

    def check(self, value: object, path: str) -> None:
        if type(value) is not str or value not in self.choices:
            shown = repr(value).replace("'", '"') if type(value) is str else cbor.type_name(value)
            raise invalid(path, f"expected one of {', '.join(self.choices)}, got {shown}")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "enum", "typeName": self.name, "choices": list(self.choices)}

    def cddl(self) -> str:
        return " / ".join(f'"{c}"' for c in self.choices)


class Null(Type, Record):
    """Nothing: a response that carries no value."""

    def check(self, value: object, path: str) -> None:
        if value is not None:
            raise invalid(path, f"expected null, {_got(value)}")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "null"}

    def cddl(self) -> str:
        return "nil"


class Any_(Type, Record):
    """Any value (daemon responses whose shape is documented in prose)."""

    def check(self, value: object, path: str) -> None:
        return None

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "any"}

    def cddl(self) -> str:
        return "any"


class Field(Record):
    """One key of a map.

    ``option`` marks the library's optional values (``? key: T / null``): null
    or undefined mean "absent". Every key may be left out; the library then
    uses ``default``. ``cli`` overrides the mytimerctl option name. ``holds``
    marks milliseconds for which the library holds the call.
    """

    name: str
    type: Type
    doc: str
    default: JSONValue = None
    option: bool = False
    cli: str | None = None
    holds: bool = False


class Struct(Type, Record):
    """A map with known text keys."""

    name: str
    fields: tuple[Field, ...]
    doc: str = ""

    @functools.cached_property
    def by_name(self) -> Mapping[str, Field]:
        """The fields by key."""
        return {f.name: f for f in self.fields}

    def check(self, value: object, path: str) -> None:
        if type(value) is not dict:
            raise invalid(path or "request", f"expected a map ({self.name}), {_got(value)}")
        prefix = f"{path}." if path else ""
        for key, item in value.items():
            spec = self.by_name.get(key)
            if spec is None:
                known = ", ".join(f.name for f in self.fields) or "no keys"
                raise invalid(path or "request", f"unknown key {key!r} ({self.name} has: {known})")
            if item is None or item is cbor.UNDEFINED:
                if spec.option:
                    continue
                raise invalid(prefix + key, f"{_got(item)[4:]} is not allowed here (not optional)")
            spec.type.check(item, prefix + key)

    def to_json(self) -> dict[str, JSONValue]:
        # A field is its type's description plus its wire key ("name") and
        # doc; a type's own name and doc are "typeName" and "typeDoc", so the
        # two never collide.
        return {
            "type": "map",
            "typeName": self.name,
            "typeDoc": self.doc,
            "fields": [
                {
                    **f.type.to_json(),
                    "name": f.name,
                    "doc": f.doc,
                    "optional": f.option,
                    "default": f.default,
                }
                for f in self.fields
            ],
        }

    def cddl(self) -> str:
        return self.name

    def cddl_rule(self) -> str:
        """``Name = { key: type, ? opt: type / null }``."""
        parts = [
            f"{'? ' if f.option else ''}{f.name}: {f.type.cddl()}{' / null' if f.option else ''}"
            for f in self.fields
        ]
        return f"{self.name} = {{ {', '.join(parts)} }}"


#: The request of a proc without parameters.
EMPTY: Final = Struct("Empty", (), "No parameters: send an empty map (a0).")

Check = Callable[[dict[str, Any]], None]


class Method(Record):
    """One callable method.

    ``library`` methods go to the library's entry point of that name (on the
    context; ``static`` ones without it); the others are answered by the
    daemon. ``example`` is a request used in help texts.
    """

    name: str
    doc: str
    request: Struct
    response: Type
    library: bool
    example: dict[str, JSONValue] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    static: bool = False

    def validate(self, payload: bytes, max_items: int = cbor.MAX_ITEMS) -> dict[str, Any]:
        """The decoded request; raises DaemonError unless ``payload`` is an
        acceptable request of at most ``max_items`` CBOR data items."""
        if payload == b"\xa0":  # `{}`: every key may be missing
            return {}
        try:
            value = cbor.loads(payload, max_items)
        except cbor.CBORError as exc:
            raise DaemonError("InvalidCBOR", str(exc)) from None
        self.request.check(value, "")
        assert isinstance(value, dict)
        for check in self.checks:
            check(value)
        return value

    @functools.cached_property
    def held_paths(self) -> tuple[tuple[str, ...], ...]:
        """Key paths of the request's fields that make the library hold the
        call (``holds``), through nested maps (not arrays)."""
        out: list[tuple[str, ...]] = []

        def walk(struct: Struct, prefix: tuple[str, ...]) -> None:
            for f in struct.fields:
                if f.holds:
                    out.append((*prefix, f.name))
                elif isinstance(f.type, Struct):
                    walk(f.type, (*prefix, f.name))

        walk(self.request, ())
        return tuple(out)

    def to_json(self) -> dict[str, JSONValue]:
        """A JSON-able description (served by mytimerd.describe)."""
        return {
            "name": self.name,
            "doc": self.doc,
            "handler": ("static" if self.static else "library") if self.library else "daemon",
            "request": self.request.to_json(),
            "response": self.response.to_json(),
            "example": self.example,
        }


class Event(Record):
    """An event the library fires: its name and the shape of its payload."""

    name: str
    doc: str
    payload: Type

    def to_json(self) -> dict[str, JSONValue]:
        """A JSON-able description (served by mytimerd.describe)."""
        return {"name": self.name, "doc": self.doc, "payload": self.payload.to_json()}


class Interface(Record):
    """A library's whole interface plus the daemon's own methods."""

    #: Where it came from (a bundled generation or a --schema file).
    source: str
    methods: tuple[Method, ...]
    events: tuple[Event, ...]
    #: The library's name: the prefix of its symbols.
    name: str = "my_timer"
    #: The request of its constructor (``<name>_create``).
    constructor: Struct = EMPTY

    @functools.cached_property
    def by_name(self) -> Mapping[bytes, Method]:
        """The methods by (encoded) name."""
        return {m.name.encode(): m for m in self.methods}

    @property
    def library_methods(self) -> tuple[Method, ...]:
        """The methods the library answers."""
        return tuple(m for m in self.methods if m.library)

    def lookup(self, name: bytes) -> Method:
        """The method called ``name``, or DaemonError UnknownMethod."""
        method = self.by_name.get(name)
        if method is None:
            shown = name.decode("utf-8", "backslashreplace")
            names = ", ".join(m.name for m in self.methods)
            raise DaemonError("UnknownMethod", f"no method {shown!r} (try: {names})")
        return method
