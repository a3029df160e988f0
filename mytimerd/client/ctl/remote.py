"""The commands of a library other than libmy_timer, from its daemon's describe, and their cache.

A daemon serving another nim-ffi library (``mytimerd --library libecho.so
--schema echo.cddl``) answers ``mytimerd.describe`` with its methods and
events, every map field named by its wire key. :func:`interface_of` turns
that answer into the :class:`~mytimerd.protocol.schema.Interface` that
:func:`.commands.build_commands` builds libmy_timer's commands from, so the
same option-building logic serves both.

The answer is cached per address (:func:`cache_path`: one file per address
list under ``$XDG_CACHE_HOME/mytimerd/`` or ``~/.cache/mytimerd/``), stored
with its :attr:`~mytimerd.client.described.Described.digest`. A cache file
that is too large, not JSON, of another shape or whose content does not match
its digest is ignored (and replaced by the next fetch). Converting never
fails, whatever the answer holds: what it cannot read becomes ``any``, which
no option gives (``mytimerctl call`` still does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeGuard

from ...protocol.address import Address, UnixAddress
from ...protocol.schema import (
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
from ..described import Described
from .commands import COMMANDS, EXTRA_COMMANDS, Command, build_commands

#: The library name of libmy_timer in a describe answer: its commands are the bundled ones.
TIMER_LIBRARY: Final = "my_timer"

#: A cache file larger than this is not read, an answer larger than this is not stored.
MAX_CACHE_BYTES: Final = 1 << 20

#: Types nested deeper than this in a describe answer are read as ``any``.
MAX_DEPTH: Final = 16

#: The version of the cache file's layout (a file of another version is ignored).
CACHE_FORMAT: Final = 1


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _type(node: object, depth: int = 0) -> Type:
    """The schema type a describe answer's type description stands for."""
    if not isinstance(node, Mapping) or depth > MAX_DEPTH:
        return Any_()
    kind = node.get("type")
    if kind == "map":
        return _struct(node, depth)
    if kind == "array":
        return Array(_type(node.get("items"), depth + 1))
    if kind == "text":
        return Text()
    if kind == "bool":
        return Bool()
    if kind == "int":
        lo, hi = node.get("min"), node.get("max")
        if _integer(lo) and _integer(hi) and lo <= hi:
            return Int(lo, hi)
        return Int()
    if kind == "enum":
        choices = node.get("choices")
        names = tuple(c for c in choices if isinstance(c, str)) if isinstance(choices, list) else ()
        return Enum(_text(node.get("typeName"), "enum"), names) if names else Any_()
    if kind == "null":
        return Null()
    return Any_()


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _struct(node: Mapping[str, Any], depth: int) -> Struct:
    fields = node.get("fields")
    out: dict[str, Field] = {}
    for item in fields if isinstance(fields, list) else ():
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            continue
        out.setdefault(
            item["name"],
            Field(
                item["name"],
                _type(item, depth + 1),
                _text(item.get("doc")),
                _json_or_none(item.get("default")),
                option=item.get("optional") is True,
            ),
        )
    name, doc = _text(node.get("typeName"), "map"), _text(node.get("typeDoc"))
    return Struct(name, tuple(out.values()), doc)


def _json_or_none(value: object) -> object:
    """A field's default, kept if help texts can show it as JSON (else None)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def _example(request: Type) -> dict[str, Any]:
    """An example request built from the request's schema (describe gives none)."""
    value = _sample(request)
    return value if isinstance(value, dict) else {}


def _sample(kind: Type, depth: int = 0) -> object:
    """A value of ``kind`` for a help text's example (None: leave the key out)."""
    if isinstance(kind, Struct):
        if depth > MAX_DEPTH:
            return None
        values = {f.name: _sample(f.type, depth + 1) for f in kind.fields}
        return {k: v for k, v in values.items() if v is not None}
    if isinstance(kind, Text):
        return "hi"
    if isinstance(kind, Int):
        return max(kind.lo, min(kind.hi, 1))
    if isinstance(kind, Bool):
        return True
    if isinstance(kind, Enum):
        return kind.choices[0]
    if isinstance(kind, Array):
        item = _sample(kind.item, depth + 1)
        return None if item is None else [item]
    return None


def interface_of(answer: Mapping[str, Any], source: str = "mytimerd.describe") -> Interface:
    """The interface a describe ``answer`` describes (its methods and events); never fails."""
    methods = []
    seen: set[str] = set()
    entries = answer.get("methods")
    for m in entries if isinstance(entries, list) else ():
        if not isinstance(m, Mapping) or not isinstance(m.get("name"), str) or m["name"] in seen:
            continue
        seen.add(m["name"])
        request = _type(m.get("request"))
        handler = m.get("handler")
        example = m.get("example")
        methods.append(
            Method(
                m["name"],
                _text(m.get("doc")),
                request if isinstance(request, Struct) else Struct("Empty", ()),
                _type(m.get("response")),
                library=handler != "daemon",
                example=example if isinstance(example, dict) and example else _example(request),
                static=handler == "static",
            )
        )
    events = answer.get("events")
    described_events = tuple(
        Event(e["name"], _text(e.get("doc")), _type(e.get("payload")))
        for e in (events if isinstance(events, list) else ())
        if isinstance(e, Mapping) and isinstance(e.get("name"), str)
    )
    return Interface(source, tuple(methods), described_events, name=library_name(answer))


def library_name(answer: Mapping[str, Any]) -> str:
    """The served library's name in a describe ``answer`` ("" if it names none)."""
    library = answer.get("library")
    return _text(library.get("name")) if isinstance(library, Mapping) else ""


@dataclass(frozen=True)
class Table:
    """The commands of the library a daemon serves, from its describe answer."""

    #: The library's name (its symbol prefix, e.g. ``echo``).
    library: str
    commands: tuple[Command, ...]
    #: The description's digest (:attr:`Described.digest`).
    digest: str
    #: Whether it was read from the cache (it may be stale) rather than fetched now.
    cached: bool

    @property
    def timer(self) -> bool:
        """Whether these are libmy_timer's bundled commands."""
        return self.library == TIMER_LIBRARY

    @property
    def by_name(self) -> Mapping[str, Command]:
        """The commands by name and alias."""
        return {name: c for c in self.commands for name in (c.name, *c.aliases)}

    def knows(self, word: str | None) -> bool:
        """Whether ``word`` is one of its commands (or ``call``, ``completion``)."""
        return word in self.by_name or word in EXTRA_COMMANDS


#: libmy_timer's commands, from the bundled descriptions: no daemon needed.
TIMER: Final = Table(TIMER_LIBRARY, COMMANDS, "", cached=False)


def _digest(answer: Mapping[str, Any]) -> str:
    """The description's digest ("" if it has none: nested too deep to hash)."""
    try:
        return Described(answer).digest
    except (TypeError, ValueError, RecursionError):
        return ""


def table_of(answer: Mapping[str, Any], cached: bool) -> Table:
    """The command table of a describe ``answer`` (the bundled one for libmy_timer)."""
    name = library_name(answer)
    digest = _digest(answer)
    if name == TIMER_LIBRARY:
        return Table(TIMER_LIBRARY, COMMANDS, digest, cached)
    commands = build_commands([("", interface_of(answer))])
    return Table(name or "the served library", commands, digest, cached)


# --- the cache -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mytimerd``, or ``~/.cache/mytimerd``."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "mytimerd"


def address_key(addresses: Sequence[Address]) -> str:
    """The text the cache is kept under: the addresses, unix paths made absolute."""
    return ",".join(
        f"unix:{os.path.abspath(a.path)}" if isinstance(a, UnixAddress) else str(a)
        for a in addresses
    )


def cache_path(addresses: Sequence[Address]) -> Path:
    """The cache file for the daemon at ``addresses`` (named by a hash of :func:`address_key`)."""
    digest = hashlib.sha256(address_key(addresses).encode("utf-8", "surrogateescape"))
    return cache_dir() / f"describe-{digest.hexdigest()[:32]}.json"


def _kept(answer: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a describe answer: what the commands are built from."""
    return {
        "library": {"name": library_name(answer)},
        "methods": answer.get("methods"),
        "events": answer.get("events"),
    }


def load(addresses: Sequence[Address]) -> dict[str, Any] | None:
    """The cached describe answer for ``addresses``; None if there is none usable."""
    try:
        with cache_path(addresses).open("rb") as f:
            data = f.read(MAX_CACHE_BYTES + 1)
    except (OSError, ValueError):
        return None
    if len(data) > MAX_CACHE_BYTES:
        return None
    try:
        stored = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT:
        return None
    answer = stored.get("describe")
    if not isinstance(answer, dict) or stored.get("address") != address_key(addresses):
        return None
    digest = _digest(answer)
    if not digest or digest != stored.get("digest"):
        return None  # edited or damaged: refetch
    return answer


def store(addresses: Sequence[Address], answer: Mapping[str, Any]) -> Path | None:
    """Keep ``answer`` for ``addresses`` (atomically); its path, or None if it was not kept.

    Nothing is kept if the answer is larger than :data:`MAX_CACHE_BYTES` or
    the cache directory cannot be written: mytimerctl then fetches again.
    """
    kept = _kept(answer)
    record = {
        "format": CACHE_FORMAT,
        "address": address_key(addresses),
        "digest": _digest(kept),
        "describe": kept,
    }
    try:
        data = json.dumps(record, ensure_ascii=True).encode()
    except (TypeError, ValueError, RecursionError):
        return None
    if len(data) > MAX_CACHE_BYTES:
        return None
    path = cache_path(addresses)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".describe-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except OSError:
        return None
    return path
