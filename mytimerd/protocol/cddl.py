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

A description is operator input (``--schema``): :func:`read` and :func:`parse`
bound what it may cost (a regular file, :data:`MAX_BYTES`, UTF-8,
:data:`MAX_NESTING`, :data:`PARSE_SECONDS`) and refuse, with a
:class:`CDDLError`, procs whose kind contradicts the ABI's fixed entry points
(:data:`ENTRY_POINTS`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from .record import Record
from .schema import Any_, Bool, Enum, Int, Null, Text, Type

if TYPE_CHECKING:
    from cddlparser import ast

#: The kinds of proc a client may call.
CALLABLE_KINDS: Final = ("ffi", "ffiStatic")

#: Largest description accepted (the generated ones are a few kB).
MAX_BYTES: Final = 1 << 20
#: Deepest bracket nesting accepted in a description's text; the parser
#: recurses per level (and hits Python's recursion limit near 300).
MAX_NESTING: Final = 64
#: Longest a description may take to parse (1 MiB of generated CDDL takes
#: about 1.5 s).
PARSE_SECONDS: Final = 10.0
#: Most schema nodes one method's request or answer may expand to (describe
#: spells each out; rules used many times at many levels multiply).
MAX_TYPE_NODES: Final = 10_000
#: Longest library name (the glue's MT_MAX_PREFIX; a test keeps them equal).
MAX_NAME: Final = 64
#: The library's name: the prefix of every symbol (``my_timer``, ``echo``).
#: This module's patterns are strings, compiled (and cached by re) at first
#: use: compiled at import they cost every start a quarter of a millisecond,
#: and a start with the bundled descriptions never uses them.
NAME: Final = rf"^[A-Za-z][A-Za-z0-9_]{{0,{MAX_NAME - 1}}}$"
#: The ABI's fixed entry points (``<name>_<entry>``) and the one kind a
#: description may give each (None: no proc may be named so). The glue binds
#: them by these names; binding one as a method would crash the daemon
#: (the constructor) or end its context (the destructor).
ENTRY_POINTS: Final[dict[str, str | None]] = {
    "create": "ctor",
    "destroy": "dtor",
    "add_event_listener": None,
    "remove_event_listener": None,
}

_PROC: Final = r"^(?P<proc>[A-Za-z0-9_]+)-(?P<part>request|response)$"
_KIND: Final = r"\((ffi|ffiStatic|ctor|dtor)\)"
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


def is_name(text: str) -> bool:
    """Whether ``text`` is a library name (see :data:`NAME`)."""
    return re.match(NAME, text) is not None


class CDDLError(ValueError):
    """The description cannot be used; ``str()`` says where and why."""


class ArrayOf(Record):
    """``[* T]``, before references are resolved."""

    item: Spec


#: A type as the CDDL writes it: a schema type, the name of another rule, or
#: an array of either.
Spec = Type | str | ArrayOf


class Field(Record):
    """One key of a map as the CDDL writes it: ``optional`` for ``T / nil``."""

    name: str
    type: Spec
    optional: bool


class MapRule(Record):
    """A map type, before references are resolved."""

    name: str
    fields: tuple[Field, ...]


class Proc(Record):
    """One proc: its name (without the prefix), kind, request and response rules."""

    name: str
    kind: str
    doc: str
    request: str | None
    response: Spec | None


class Description(Record):
    """What a CDDL file says: its type rules and its procs, in file order."""

    prefix: str
    maps: dict[str, MapRule]
    aliases: dict[str, Spec]
    procs: tuple[Proc, ...]

    @property
    def constructor(self) -> Proc:
        """The (ctor) proc, ``create`` (:func:`check_kinds` makes sure there is one)."""
        return next(p for p in self.procs if p.kind == "ctor")


class _ProcParts:
    """What the rules of one proc say, gathered as they come."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.doc: list[str] = []
        self.request: str | None = None
        self.response: Spec | None = None


def read(path: Path) -> str:
    """The text of the description file ``path``, within the bounds; raise
    :class:`CDDLError` (or OSError when it cannot be opened)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise CDDLError(f"{kind}: a description must be a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise CDDLError(f"larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CDDLError(f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _check_nesting(text: str) -> None:
    """Refuse brackets nested deeper than :data:`MAX_NESTING` (outside
    comments and strings) before the recursive parser sees them."""
    depth = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        in_string = False  # CDDL text literals end on their line
        for char in line:
            if in_string:
                in_string = char != '"'
            elif char == ";":
                break
            elif char == '"':
                in_string = True
            elif char in "{[(":
                depth += 1
                if depth > MAX_NESTING:
                    raise CDDLError(f"line {line_no}: nested deeper than {MAX_NESTING} levels")
            elif char in "}])":
                depth = max(0, depth - 1)  # stray closers must not buy depth


class _TooSlow(Exception):
    """The parse time bound has passed."""


@contextlib.contextmanager
def _time_bound(seconds: float) -> Iterator[None]:
    """Raise :class:`_TooSlow` in the block after ``seconds``. Only the main
    thread receives signals, so elsewhere the block runs unbounded (the daemon
    reads its description on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    expired = False

    def expire(signum: int, frame: FrameType | None) -> None:
        nonlocal expired
        expired = True
        # Raise only inside the parser's own code: code the parse merely
        # interrupted (a gc callback, a __del__, an unraisable hook) would
        # swallow the exception or report it as unraisable.
        if frame is not None and frame.f_globals.get("__name__", "").startswith("cddlparser"):
            raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    # The timer repeats until it lands in the parser's code.
    signal.setitimer(signal.ITIMER_REAL, seconds, min(seconds, 0.05))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if expired:  # the block ended anyway, but too late
        raise _TooSlow


def parse(
    text: str, library: str | None = None, time_limit: float = PARSE_SECONDS
) -> Description:
    """Parse a nim-ffi CDDL description; raise :class:`CDDLError`.

    ``library`` is the library's name (its symbol prefix); by default the prefix
    all procs share. Parsing stops with an error after ``time_limit`` seconds.
    """
    # Imported here: the bundled descriptions come compiled
    # (:mod:`._descriptions`), so a default start never loads the parser.
    import cddlparser
    from cddlparser import ast

    _check_nesting(text)
    started = time.monotonic()
    try:
        with _time_bound(time_limit):
            tree = cddlparser.parse(text)
    except cddlparser.ParserError as exc:
        raise CDDLError(f"not valid CDDL: {exc}") from None
    except RecursionError:
        raise CDDLError("nested too deeply to parse") from None
    except _TooSlow:
        raise CDDLError(
            f"parsing took longer than {time_limit:g} s (after {time.monotonic() - started:.1f} s)"
        ) from None
    maps: dict[str, MapRule] = {}
    aliases: dict[str, Spec] = {}
    parts: dict[str, _ProcParts] = {}
    for rule in tree.rules:
        name = rule.name.name
        if not isinstance(rule.type, ast.Type):
            raise CDDLError(f"{name}: group rules are not supported")
        proc = re.match(_PROC, name)
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
            kind = re.search(_KIND, comment)
            if kind and comment.startswith(f"{proc['proc']} "):
                if entry.kind not in (None, kind[1]):
                    both = f"({entry.kind}) and ({kind[1]})"
                    raise CDDLError(f"proc {proc['proc']} is marked both {both}")
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
    prefix = _prefix(parts, library)
    procs = []
    for full, entry in parts.items():
        if entry.kind is None:
            raise CDDLError(f"proc {full} has no (ffi)/(ffiStatic)/(ctor)/(dtor) comment")
        short = full[len(prefix) + 1 :] if prefix else full
        procs.append(Proc(short, entry.kind, " ".join(entry.doc), entry.request, entry.response))
    return Description(prefix, maps, aliases, tuple(procs))


def _prefix(parts: dict[str, _ProcParts], name: str | None) -> str:
    """The library's name: ``name``, which every proc must start with, or
    the prefix all procs share (the constructor and destructor are always
    there)."""
    if name is not None:
        for full in parts:
            if not full.startswith(f"{name}_"):
                raise CDDLError(f"proc {full} does not belong to library {name!r} ({name}_...)")
        return name
    common = min(parts, default="")
    for full in parts:
        while not full.startswith(common):
            common = common[:-1]
    prefix = common[: common.rfind("_")] if "_" in common else ""
    if parts and not is_name(prefix):
        raise CDDLError(
            f"the procs share no library name ({prefix!r}): every proc must be <name>_<proc>"
        )
    return prefix


def check_kinds(description: Description) -> None:
    """Every ABI entry point has its one kind, and there is exactly one
    constructor and one destructor, the ABI's; raise :class:`CDDLError`."""
    prefix, procs = description.prefix, description.procs
    for proc in procs:
        if proc.name in ENTRY_POINTS and ENTRY_POINTS[proc.name] != proc.kind:
            wanted = ENTRY_POINTS[proc.name]
            raise CDDLError(
                f"{prefix}_{proc.name} is marked ({proc.kind}), but it is the ABI's "
                + (f"({wanted}) entry point" if wanted else "listener entry point, not a proc")
            )
        if proc.kind in ("ctor", "dtor") and ENTRY_POINTS.get(proc.name) != proc.kind:
            entry = next(e for e, k in ENTRY_POINTS.items() if k == proc.kind)
            raise CDDLError(
                f"{prefix}_{proc.name} is marked ({proc.kind}), but the ABI's "
                f"({proc.kind}) is {prefix}_{entry}"
            )
    for entry in ("create", "destroy"):
        if not any(p.name == entry for p in procs):
            raise CDDLError(f"no {prefix}_{entry} ({ENTRY_POINTS[entry]}) in the description")


def _single(node: ast.Type) -> ast.CDDLNode:
    types = node.types
    return types[0] if len(types) == 1 else node


def _fields(node: ast.Map, where: str) -> tuple[Field, ...]:
    from cddlparser import ast

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
    from cddlparser import ast

    return isinstance(node, ast.Typename) and node.name in ("nil", "null")


def _type_of(node: ast.Type, where: str) -> Spec:
    """A schema type, or what refers to rules to resolve later."""
    from cddlparser import ast

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
