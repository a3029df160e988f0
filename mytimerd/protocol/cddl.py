"""The library's interface, read from the CDDL that nim-ffi generates for it.

nim-ffi writes one rule per type, one request envelope per proc, and a
``<prefix>_<proc>-request`` / ``-response`` pair per proc, preceded by a
comment naming its kind: ``(ffi)`` (a method on the context),
``(ffiStatic)`` (a call without a context), ``(ctor)`` or ``(dtor)``. The
grammar is parsed by cddlparser (RFC 8610); this module turns the rules it
uses (maps, ``[* T]`` arrays, ``T / nil`` options, text-literal enums, the
prelude types and references) into the schema types.

Every key is optional, as in the library's decoder (the CDDL writes them all
as required); ``T / nil`` keys also accept null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import cddlparser
from cddlparser import ast

from .schema import Any_, Bool, Enum, Int, Null, Text, Type

#: The kinds of proc a client may call.
CALLABLE_KINDS: Final = ("ffi", "ffiStatic")

_PROC: Final = re.compile(r"^(?P<proc>[A-Za-z0-9_]+)-(?P<part>request|response)$")
_KIND: Final = re.compile(r"\((ffi|ffiStatic|ctor|dtor)\)")
_PRELUDE: Final[dict[str, Type]] = {
    "tstr": Text(),
    "text": Text(),
    "int": Int(),
    "uint": Int(lo=0),
    "nint": Int(hi=-1),
    "bool": Bool(),
    "nil": Null(),
    "null": Null(),
    "any": Any_(),
}


class CDDLError(ValueError):
    """The description cannot be used; ``str()`` says where and why."""


@dataclass(frozen=True)
class ArrayOf:
    """``[* T]``, before references are resolved."""

    item: Spec


#: A type as the CDDL writes it: a schema type, the name of another rule, or
#: an array of either.
Spec = Type | str | ArrayOf


@dataclass(frozen=True)
class Field:
    """One key of a map as the CDDL writes it: ``optional`` for ``T / nil``."""

    name: str
    type: Spec
    optional: bool


@dataclass(frozen=True)
class MapRule:
    """A map type, before references are resolved."""

    name: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class Proc:
    """One proc: its name (without the prefix), kind, request and response rules."""

    name: str
    kind: str
    doc: str
    request: str | None
    response: Spec | None


@dataclass(frozen=True)
class Description:
    """What a CDDL file says: its type rules and its procs, in file order."""

    prefix: str
    maps: dict[str, MapRule]
    aliases: dict[str, Spec]
    procs: tuple[Proc, ...]


@dataclass
class _ProcParts:
    kind: str | None = None
    doc: list[str] = field(default_factory=list)
    request: str | None = None
    response: Spec | None = None


def parse(text: str) -> Description:
    """Parse a nim-ffi CDDL description; raise :class:`CDDLError`."""
    try:
        tree = cddlparser.parse(text)
    except cddlparser.ParserError as exc:
        raise CDDLError(f"not valid CDDL: {exc}") from None
    maps: dict[str, MapRule] = {}
    aliases: dict[str, Spec] = {}
    parts: dict[str, _ProcParts] = {}
    for rule in tree.rules:
        name = rule.name.name
        if not isinstance(rule.type, ast.Type):
            raise CDDLError(f"{name}: group rules are not supported")
        proc = _PROC.match(name)
        if proc is None:
            body = _single(rule.type)
            if isinstance(body, ast.Map):
                maps[name] = MapRule(name, _fields(body, name))
            else:
                aliases[name] = _type_of(rule.type, name)
            continue
        entry = parts.setdefault(proc["proc"], _ProcParts())
        for token in rule.name.comments or ():
            comment = token.literal.lstrip("; ").strip()
            kind = _KIND.search(comment)
            if kind and comment.startswith(f"{proc['proc']} "):
                entry.kind = kind[1]
            elif comment and not comment.startswith("─"):
                entry.doc.append(comment)
        spec = _type_of(rule.type, name)
        if proc["part"] == "request":
            if not isinstance(spec, str):
                raise CDDLError(f"{name} must name a map rule")
            entry.request = spec
        else:
            entry.response = spec
    # Procs are named <prefix>_<proc>; the prefix is what all of them share
    # (the constructor and destructor are always there).
    common = min(parts, default="")
    for full in parts:
        while not full.startswith(common):
            common = common[:-1]
    prefix = common[: common.rfind("_")] if "_" in common else ""
    procs = []
    for full, entry in parts.items():
        if entry.kind is None:
            raise CDDLError(f"proc {full} has no (ffi)/(ffiStatic)/(ctor)/(dtor) comment")
        short = full[len(prefix) + 1 :] if prefix else full
        procs.append(Proc(short, entry.kind, " ".join(entry.doc), entry.request, entry.response))
    return Description(prefix, maps, aliases, tuple(procs))


def _single(node: ast.Type) -> ast.CDDLNode:
    types = node.types
    return types[0] if len(types) == 1 else node


def _fields(node: ast.Map, where: str) -> tuple[Field, ...]:
    out = []
    for choice in node.groupChoices:
        for entry in choice.groupEntries:
            key = entry.key
            if key is None or not isinstance(key.type, ast.Typename):
                raise CDDLError(f"{where}: only bare-word keys are supported")
            type_ = entry.type
            assert isinstance(type_, ast.Type)
            choices = type_.types
            optional = len(choices) == 2 and _is_nil(choices[1])
            base = ast.Type([choices[0]]) if optional else type_
            out.append(Field(key.type.name, _type_of(base, f"{where}.{key.type.name}"), optional))
    return tuple(out)


def _is_nil(node: ast.CDDLNode) -> bool:
    return isinstance(node, ast.Typename) and node.name in ("nil", "null")


def _type_of(node: ast.Type, where: str) -> Spec:
    """A schema type, or what refers to rules to resolve later."""
    choices = node.types
    texts = [c.value for c in choices if isinstance(c, ast.Value) and c.type == "text"]
    if choices and len(texts) == len(choices):
        return Enum(where, tuple(texts))
    if len(choices) != 1:
        raise CDDLError(f"{where}: only `T / nil` choices and text enums are supported")
    single = choices[0]
    if isinstance(single, ast.Typename):
        return _PRELUDE.get(single.name, single.name)
    if isinstance(single, ast.Array):
        entries = [e for c in single.groupChoices for e in c.groupEntries]
        if len(entries) != 1 or entries[0].occurrence is None:
            raise CDDLError(f"{where}: only `[* T]` arrays are supported")
        item = entries[0].type
        assert isinstance(item, ast.Type)
        return ArrayOf(_type_of(item, f"{where}[]"))
    if isinstance(single, ast.Map):
        raise CDDLError(f"{where}: inline maps are not supported; name the map in a rule")
    raise CDDLError(f"{where}: unsupported CDDL construct {type(single).__name__}")
