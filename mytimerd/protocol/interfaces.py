"""Interfaces built from CDDL descriptions plus the overlay.

The descriptions of libmy_timer's two nim-ffi generations are bundled
(``descriptions/my_timer-0.2.cddl`` with ``_cbor`` symbols,
``descriptions/my_timer-0.3.cddl`` without); the daemon takes the one for the
symbol generation of the library it loads, or the file ``--schema`` names
(any nim-ffi library's).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from . import cbor, cddl, overlay
from .schema import (
    EMPTY,
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
#: The library served without configuration.
DEFAULT_LIBRARY: Final = "my_timer"
#: Symbol generation -> bundled description of :data:`DEFAULT_LIBRARY`.
BUNDLED: Final = {
    "0.2": DESCRIPTIONS / "my_timer-0.2.cddl",
    "0.3": DESCRIPTIONS / "my_timer-0.3.cddl",
}
#: Liveness probes the daemon picks by itself, in order of preference: a
#: version call on the context proves the context's thread answers; the
#: static one only that the library is loaded.
PROBE_METHODS: Final = ("version", "lib_version")


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
        # The rules being resolved, outermost first: a rule met again is a cycle.
        self._open: list[str] = []

    def resolve(self, spec: cddl.Spec, where: str) -> Type:
        if isinstance(spec, cddl.ArrayOf):
            return Array(self.resolve(spec.item, where))
        if isinstance(spec, str):
            if spec in self.description.maps:
                return self.struct(spec)
            if spec in self.description.aliases:
                with self._opened(spec):
                    return self.resolve(self.description.aliases[spec], spec)
            raise cddl.CDDLError(f"{where}: no rule named {spec!r}")
        return spec

    @contextlib.contextmanager
    def _opened(self, name: str) -> Iterator[None]:
        if name in self._open:
            chain = " -> ".join([*self._open[self._open.index(name) :], name])
            raise cddl.CDDLError(f"recursive rule {chain}: requests must be finite")
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()

    def struct(self, name: str) -> Struct:
        known = self.structs.get(name)
        if known is not None:
            return known
        with self._opened(name):
            return self._new_struct(name)

    def _new_struct(self, name: str) -> Struct:
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
        request = self.resolve(proc.request, proc.name) if proc.request else EMPTY
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


def _measure(type_: Type, where: str) -> None:
    """Refuse a type nested deeper than the CBOR decoder accepts, or one that
    spells out to more than :data:`cddl.MAX_TYPE_NODES` nodes."""
    sizes: dict[int, tuple[int, int]] = {}

    def walk(t: Type) -> tuple[int, int]:  # (height, nodes)
        known = sizes.get(id(t))
        if known is not None:
            return known
        children: list[Type] = []
        if isinstance(t, Struct):
            children = [f.type for f in t.fields]
        elif isinstance(t, Array):
            children = [t.item]
        below = [walk(c) for c in children]
        result = (1 + max((h for h, _ in below), default=0), 1 + sum(n for _, n in below))
        sizes[id(t)] = result
        return result

    height, nodes = walk(type_)
    if height > cbor.MAX_DEPTH:
        raise cddl.CDDLError(
            f"{where}: nested {height} levels deep; requests may nest {cbor.MAX_DEPTH}"
        )
    if nodes > cddl.MAX_TYPE_NODES:
        raise cddl.CDDLError(
            f"{where}: spells out to {nodes} types, more than {cddl.MAX_TYPE_NODES}"
        )


def build(text: str, source: str, name: str | None = None) -> Interface:
    """The interface a CDDL description (``text``, from ``source``) describes;
    ``name``: the library's name (default: the prefix its procs share)."""
    return _interface(cddl.parse(text, name), source)


def _interface(description: cddl.Description, source: str) -> Interface:
    """The interface of a parsed description (from ``source``)."""
    builder = _Builder(description)
    methods = [builder.method(p) for p in description.procs if p.kind in cddl.CALLABLE_KINDS]
    cddl.check_kinds(description)
    ctor = description.constructor
    constructor = builder.resolve(ctor.request, ctor.name) if ctor.request else EMPTY
    if not isinstance(constructor, Struct):
        raise cddl.CDDLError(f"{ctor.name}: the request must be a map")
    for method in methods:
        _measure(method.request, method.name)
        _measure(method.response, f"{method.name} (answer)")
    _measure(constructor, ctor.name)
    methods += [
        Method(
            name,
            doc,
            Struct(f"{name}-request", fields, "") if fields else EMPTY,
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
    return Interface(
        source, tuple(methods), tuple(events), name=description.prefix, constructor=constructor
    )


def load(path: Path, name: str | None = None) -> Interface:
    """The interface of the CDDL file ``path`` (read within
    :func:`cddl.read`'s bounds); raise OSError or CDDLError."""
    return build(cddl.read(path), str(path), name)


def bundled_path(generation: str, name: str = DEFAULT_LIBRARY) -> Path:
    """The bundled description of library ``name`` for a symbol generation;
    raise LookupError if none is bundled."""
    path = DESCRIPTIONS / f"{name}-{generation}.cddl"
    if not path.is_file():
        raise LookupError(f"no description of {name} {generation} is bundled")
    return path


def bundled(generation: str, name: str = DEFAULT_LIBRARY) -> Interface:
    """The bundled interface of library ``name`` for a symbol generation
    ("0.2" or "0.3"); raise LookupError if none is bundled.

    The build compiles the bundled descriptions (:mod:`.compile_descriptions`);
    a file whose text is not the compiled one is parsed."""
    # One cache entry however the name is given (``bundled("0.2")`` at import,
    # the daemon's ``bundled("0.2", "my_timer")``): one build per start.
    return _bundled(generation, name)


@functools.cache
def _bundled(generation: str, name: str) -> Interface:
    path = bundled_path(generation, name)
    text = cddl.read(path)
    from ._descriptions import COMPILED

    compiled = COMPILED.get(path.name)
    if compiled is None or compiled[0] != text or compiled[1].prefix != name:
        return build(text, str(path), name)
    return _interface(compiled[1], str(path))


def kind(method: Method) -> str:
    """How a description marks a library method: ``ffi`` (a method, called
    with the context) or ``ffiStatic`` (a static call, without it)."""
    return "ffiStatic" if method.static else "ffi"


def symbol(name: str, method: str, generation: str) -> str:
    """The entry point of ``method`` in library ``name`` of a symbol
    generation (0.2's CBOR-ABI names end in ``_cbor``)."""
    return f"{name}_{method}{'_cbor' if generation == '0.2' else ''}"


def kind_contradiction(interface: Interface, generation: str) -> str | None:
    """What makes the proc kinds of ``interface`` wrong for a library of this
    symbol generation with the interface's name, or None if nothing known does.

    A static call and a method take different arguments (no context first)
    and the symbol table cannot tell them apart: calling one as the other
    crashes the daemon. What is known: nim-ffi's 0.2 generation has no static
    calls; and a library whose description is bundled for its name and
    generation has that description's kinds (a newer build may add procs:
    only the procs both describe are compared). Any other library's kinds
    are trusted as its description marks them.
    """
    methods = interface.library_methods
    if generation == "0.2":
        for method in methods:
            if method.static:
                return (
                    f"{interface.source} marks {symbol(interface.name, method.name, generation)} "
                    "(ffiStatic), but the library is of nim-ffi's 0.2 symbol generation "
                    "(names ending in _cbor), which has no static calls"
                )
    try:
        reference = bundled(generation, interface.name)
    except LookupError:
        return None
    if reference is interface:
        return None
    for method in methods:
        known = reference.by_name.get(method.name.encode())
        if known is None or not known.library or known.static == method.static:
            continue
        return (
            f"{interface.source} marks {symbol(interface.name, method.name, generation)} "
            f"({kind(method)}), but the bundled description of {interface.name} {generation} "
            f"({reference.source}) marks it ({kind(known)}); a static call and a method take "
            "different arguments, so calling it as described would crash the daemon"
        )
    return None


def probe_method(interface: Interface, named: str | None = None) -> str:
    """The library method the liveness probe calls with ``{}``: ``named``,
    which the interface must have, or the first of :data:`PROBE_METHODS` it
    has; raise LookupError."""
    if named is not None:
        method = interface.by_name.get(named.encode())
        if method is None or not method.library:
            known = ", ".join(m.name for m in interface.library_methods)
            raise LookupError(f"the library has no method {named!r} (it has: {known})")
        return named
    for candidate in PROBE_METHODS:
        if candidate.encode() in interface.by_name:
            return candidate
    raise LookupError(
        "the description offers no version method to probe the library with; "
        "name a cheap method that takes {} with --probe-method"
    )


#: The generation the project was built against: the table of the client,
#: mytimerctl and the docs.
DEFAULT: Final[Interface] = bundled("0.2")
#: Shorthands for :data:`DEFAULT`'s table.
METHODS: Final = DEFAULT.methods
BY_NAME: Final = DEFAULT.by_name
LIBRARY_METHODS: Final = DEFAULT.library_methods
lookup: Final = DEFAULT.lookup
