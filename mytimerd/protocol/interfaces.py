"""Interfaces built from CDDL descriptions plus the overlay.

The descriptions of both nim-ffi generations are bundled
(``descriptions/my_timer-0.2.cddl`` with ``_cbor`` symbols,
``descriptions/my_timer-0.3.cddl`` without); the daemon takes the one for the
symbol generation of the library it loads, or the file ``--schema`` names.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Final

from . import cddl, overlay
from .schema import (
    Any_,
    Array,
    Bool,
    Enum,
    Event,
    Field,
    Int,
    Interface,
    Method,
    Null,
    Struct,
    Text,
    Type,
)

DESCRIPTIONS: Final = Path(__file__).resolve().parent / "descriptions"
#: Symbol generation -> bundled description.
BUNDLED: Final = {
    "0.2": DESCRIPTIONS / "my_timer-0.2.cddl",
    "0.3": DESCRIPTIONS / "my_timer-0.3.cddl",
}

_EMPTY: Final = Struct("Empty", (), "No parameters: send an empty map (a0).")


def zero(type_: Type) -> Any:
    """The value the library gives a missing key of this type."""
    if isinstance(type_, Text):
        return ""
    if isinstance(type_, Int):
        return 0 if type_.lo <= 0 <= type_.hi else type_.lo
    if isinstance(type_, Bool):
        return False
    if isinstance(type_, Array):
        return []
    if isinstance(type_, Enum):
        return type_.choices[0]
    if isinstance(type_, Struct):
        return {}
    return None


class _Builder:
    """Resolves a description's rules into schema types, once each."""

    def __init__(self, description: cddl.Description) -> None:
        self.description = description
        self.structs: dict[str, Struct] = {}

    def resolve(self, spec: cddl.Spec, where: str) -> Type:
        if isinstance(spec, cddl.ArrayOf):
            return Array(self.resolve(spec.item, where))
        if isinstance(spec, str):
            if spec in self.description.maps:
                return self.struct(spec)
            if spec in self.description.aliases:
                return self.resolve(self.description.aliases[spec], spec)
            raise cddl.CDDLError(f"{where}: no rule named {spec!r}")
        return spec

    def struct(self, name: str) -> Struct:
        known = self.structs.get(name)
        if known is not None:
            return known
        rule = self.description.maps[name]
        fields = []
        for f in rule.fields:
            notes = overlay.FIELDS.get(f"{name}.{f.name}", overlay.FieldNotes())
            type_ = self.resolve(f.type, f"{name}.{f.name}")
            if notes.range is not None and isinstance(type_, Int):
                type_ = Int(*notes.range)
            fields.append(
                Field(
                    f.name,
                    type_,
                    notes.doc,
                    zero(type_),
                    option=f.optional,
                    cli=notes.cli,
                    holds=notes.holds,
                )
            )
        struct = Struct(name, tuple(fields), overlay.TYPES.get(name, ""))
        self.structs[name] = struct
        return struct

    def method(self, proc: cddl.Proc) -> Method:
        notes = overlay.METHODS.get(proc.name, overlay.MethodNotes())
        request = self.resolve(proc.request, proc.name) if proc.request else _EMPTY
        if not isinstance(request, Struct):
            raise cddl.CDDLError(f"{proc.name}: the request must be a map")
        response = Null() if proc.response is None else self.resolve(proc.response, proc.name)
        return Method(
            proc.name,
            notes.doc or proc.doc or f"{self.description.prefix}_{proc.name}",
            request,
            response,
            library=True,
            example=dict(notes.example),
            checks=notes.checks,
            static=proc.kind == "ffiStatic",
        )


def build(text: str, source: str) -> Interface:
    """The interface a CDDL description (``text``, from ``source``) describes."""
    description = cddl.parse(text)
    builder = _Builder(description)
    methods = [builder.method(p) for p in description.procs if p.kind in cddl.CALLABLE_KINDS]
    methods += [
        Method(
            name,
            doc,
            Struct(f"{name}-request", fields, "") if fields else _EMPTY,
            Any_(),
            library=False,
        )
        for name, doc, fields in overlay.DAEMON_METHODS
    ]
    events = [
        Event(name, notes.doc, builder.struct(notes.payload))
        for name, notes in overlay.EVENTS.items()
        if notes.payload in description.maps
    ]
    return Interface(source, tuple(methods), tuple(events))


def load(path: Path) -> Interface:
    """The interface of the CDDL file ``path``; raise OSError or CDDLError."""
    return build(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def bundled(generation: str) -> Interface:
    """The bundled interface of a symbol generation ("0.2" or "0.3")."""
    return load(BUNDLED[generation])


#: The generation the project was built against: the table of the client,
#: mytimerctl and the docs.
DEFAULT: Final[Interface] = bundled("0.2")
#: Shorthands for :data:`DEFAULT`'s table.
METHODS: Final = DEFAULT.methods
BY_NAME: Final = DEFAULT.by_name
LIBRARY_METHODS: Final = DEFAULT.library_methods
lookup: Final = DEFAULT.lookup
