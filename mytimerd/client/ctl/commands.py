"""The command table of mytimerctl, derived from the library's descriptions.

mytimerctl does not know which library generation the daemon it will talk to
serves, so its commands are the **union** of the methods of both bundled
generations (:data:`GENERATIONS`): every method of either is a command, and
the daemon answers a method its library lacks with ``mytimerd.UnknownMethod``.
One :class:`Command` per method (daemon methods without their ``mytimerd.``
prefix, underscores as dashes: ``lib_version`` -> ``lib-version``, the other
spelling kept as an alias; ``mytimerd.subscribe`` is ``watch``), one
:class:`Param` per leaf field of its request, named after the field
(camelCase to kebab-case, or ``Field.cli``).

A field whose type differs between the generations takes what either
accepts: ``schedule --priority`` is an integer for 0.2 and one of ``low``,
``normal``, ``high`` for 0.3, so a value of digits is sent as an integer and
anything else must be one of the choices.

Building never fails, whatever a description holds: a field with no
command-line form (a value that is not text, an integer, a boolean, an enum or
an array of those, or of maps) is left to ``mytimerctl call METHOD JSON`` and
named in the command's help; a clashing option name is qualified by its path
(``--job-name``); a clashing command name is the full method name.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ...protocol import interfaces
from ...protocol.errors import PREFIX
from ...protocol.schema import Array, Bool, Enum, Field, Int, Interface, Method, Struct, Text, Type

PROG: Final = "mytimerctl"

#: The library generations whose methods are mytimerctl's commands.
GENERATIONS: Final = ("0.2", "0.3")

#: Commands whose name is not their method's.
COMMAND_NAMES: Final[Mapping[str, str]] = {"mytimerd.subscribe": "watch"}

#: Fields given as positional arguments rather than options, by command
#: (``echo MESSAGE``, ``watch [EVENT...]``); every other field is an option.
POSITIONAL: Final[Mapping[str, str]] = {"echo": "message", "watch": "event"}

#: Commands that are not methods.
EXTRA_COMMANDS: Final = ("call", "completion")

#: How ``stats --format`` prints the answer: for people, or for monitoring
#: (OpenMetrics, or the Prometheus text format node_exporter's textfile
#: collector reads); see :mod:`.metrics`.
STATS_FORMATS: Final = ("human", "openmetrics", "prometheus")

#: Options a command takes beyond its request's fields, with their choices.
EXTRA_OPTIONS: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = {
    "stats": {"--format": STATS_FORMATS},
}

#: Switches a command takes beyond its request's fields (``watch --no-reconnect``).
EXTRA_SWITCHES: Final[Mapping[str, tuple[str, ...]]] = {"watch": ("--no-reconnect",)}

#: A value of digits, sent as an integer where a field may be one.
_INTEGER: Final = re.compile(r"[-+]?[0-9]+\Z")


def kebab(name: str) -> str:
    """``maxAttempts`` -> ``max-attempts``, ``lib_version`` -> ``lib-version``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower().replace("_", "-")


def command_name(method: Method) -> str:
    """The command for ``method``: its name without the ``mytimerd.`` prefix, in kebab-case."""
    return COMMAND_NAMES.get(method.name) or kebab(method.name.removeprefix(PREFIX))


#: A leaf's value types by the generations that have them: ((Int(), ("0.2",)), ...).
Kinds = tuple[tuple[Type, tuple[str, ...]], ...]


def _choices(kind: Type) -> tuple[str, ...]:
    if isinstance(kind, Enum):
        return kind.choices
    if isinstance(kind, Bool):
        return ("true", "false")
    return ()


@dataclass(frozen=True)
class Param:
    """One command-line argument: a leaf value of a method's request.

    ``path`` is the chain of keys from the request map down to the value.
    A field that is an array becomes a repeatable option; an array of maps
    (complex's messages) takes one value per map and fills the map's first
    field (``element``). ``kinds`` are the types each value given may have,
    with the generations that have each (one, unless they differ).
    """

    path: tuple[str, ...]
    field: Field
    name: str
    positional: bool
    kinds: Kinds
    repeated: bool
    element: Struct | None
    #: What completion offers for the value beyond the kinds' choices (watch's event names).
    extra_choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The argparse destination (dotted, so it cannot clash with global options)."""
        return "param." + ".".join(self.path)

    @property
    def flag(self) -> str:
        """``--delay-ms``, or the metavar of a positional (``MESSAGE``)."""
        return self.name.upper() if self.positional else f"--{self.name}"

    @property
    def negative_flag(self) -> str:
        """``--no-flag`` of a boolean option."""
        return f"--no-{self.name}"

    @property
    def types(self) -> tuple[Type, ...]:
        return tuple(kind for kind, _ in self.kinds)

    @property
    def switch(self) -> bool:
        """A boolean option given as ``--flag`` / ``--no-flag`` (not an array's values)."""
        return not self.repeated and not self.positional and self.types == (Bool(),)

    @property
    def choices(self) -> tuple[str, ...]:
        """The values completion offers (enum choices, true/false, event names)."""
        if any(isinstance(kind, Text) for kind in self.types) and not self.extra_choices:
            return ()
        out = [c for kind in self.types for c in _choices(kind)] + list(self.extra_choices)
        return tuple(dict.fromkeys(out))

    @property
    def metavar(self) -> str:
        """The value's placeholder in help texts: ``N``, ``TEXT``, ``{low,normal,high}``."""
        if self.positional:
            return self.flag
        parts = []
        for kind in self.types:
            if isinstance(kind, Int):
                parts.append("N")
            elif isinstance(kind, Text):
                parts.append("TEXT")
            else:
                parts.append("{" + ",".join(_choices(kind)) + "}")
        return "|".join(dict.fromkeys(parts))

    def help(self) -> str:
        """The option's help text, from Field.doc, the types and the library's default."""
        text = self.field.doc or f"The request's {'.'.join(self.path)}."
        if len(self.kinds) > 1:
            forms = [f"{_kind_text(kind)} ({', '.join(gens)})" for kind, gens in self.kinds]
            text += f" Either {' or '.join(forms)}"
            if any(isinstance(kind, Int) for kind in self.types):
                text += ": a value of digits is sent as an integer, anything else as text"
            text += "."
        elif isinstance(self.types[0], Enum):
            text += f" One of: {', '.join(self.types[0].choices)}."
        element = self.element
        if element is not None:
            first = element.fields[0].name
            text += (
                f" Repeatable: each value becomes one {element.name} with {first}=VALUE"
                " (its other fields take the library's defaults)."
            )
        elif self.repeated and not self.positional:
            text += " Repeatable."
        if self.extra_choices:
            text += f" Known: {', '.join(self.extra_choices)}."
        if self.field.option:
            text += " Optional: absent unless given."
        elif self.switch:
            text += f" {self.negative_flag} sends false. Library default: false."
        elif not self.positional and len(self.kinds) == 1:
            text += f" Library default: {json.dumps(self.field.default)}."
        return text.replace("%", "%%")  # argparse formats help with %

    def parse(self, text: str) -> Any:
        """The value of one command-line argument; ValueError if none of the kinds takes it."""
        types = self.types
        ints = [kind for kind in types if isinstance(kind, Int)]
        if ints and _INTEGER.match(text.strip()):
            value = int(text, 10)
            if not any(i.lo <= value <= i.hi for i in ints):
                raise ValueError(f"{value} is out of range [{ints[0].lo}, {ints[0].hi}]")
            return value
        for kind in types:
            if isinstance(kind, Bool) and text in ("true", "false"):
                return text == "true"
            if isinstance(kind, Enum) and text in kind.choices:
                return text
        if any(isinstance(kind, Text) for kind in types):
            return text
        wanted = ["an integer" for _ in ints[:1]]
        choices = [c for kind in types for c in _choices(kind)]
        if choices:
            wanted.append(f"one of {', '.join(dict.fromkeys(choices))}")
        raise ValueError(f"{text!r} is not {' or '.join(wanted)}")

    def convert(self, values: Any) -> Any:
        """The request value for what argparse parsed."""
        element = self.element
        if element is not None:
            return [{element.fields[0].name: value} for value in values]
        return values

    def argv(self, value: Any) -> list[str]:
        """The arguments that give ``value`` (for generated examples)."""
        if self.switch:
            return [self.flag if value else self.negative_flag]
        element = self.element
        if element is not None:
            value = [item.get(element.fields[0].name, "") for item in value]
        items = value if isinstance(value, list) else [value]
        shown = [json.dumps(item) if isinstance(item, bool) else str(item) for item in items]
        if self.positional:
            return shown
        return [arg for item in shown for arg in (self.flag, item)]


def _kind_text(kind: Type) -> str:
    if isinstance(kind, Int):
        return "an integer"
    if isinstance(kind, Text):
        return "a text"
    if isinstance(kind, Bool):
        return "true or false"
    return f"one of {', '.join(_choices(kind))}"


@dataclass(frozen=True)
class Command:
    """A mytimerctl command for one method (as each generation that has it describes it)."""

    name: str
    method: Method
    params: tuple[Param, ...]
    #: The generations (or description sources) that have the method.
    generations: tuple[str, ...] = ()
    #: Another name the command answers to (``lib_version`` for ``lib-version``).
    aliases: tuple[str, ...] = ()
    #: Dotted paths of request fields no option gives (use ``call``).
    json_only: tuple[str, ...] = ()

    @property
    def options(self) -> Mapping[str, tuple[str, ...]]:
        """The command's options beyond its request's fields, with their choices."""
        return EXTRA_OPTIONS.get(self.name, {})

    @property
    def switches(self) -> tuple[str, ...]:
        """The command's switches beyond its request's fields."""
        return EXTRA_SWITCHES.get(self.name, ())

    def request(self, ns: argparse.Namespace) -> dict[str, Any]:
        """The request map for the parsed arguments; options not given are left out."""
        request: dict[str, Any] = {}
        for param in self.params:
            value = getattr(ns, param.dest, None)
            if value is None or (param.positional and param.repeated and not value):
                continue
            node = request
            for key in param.path[:-1]:
                node = node.setdefault(key, {})
            node[param.path[-1]] = param.convert(value)
        return request

    def example(self) -> list[str]:
        """The method's example request as mytimerctl arguments."""
        argv = [self.name]
        for param in self.params:
            value: Any = self.method.example
            for key in param.path:
                if not isinstance(value, dict) or key not in value:
                    break
                value = value[key]
            else:
                argv += param.argv(value)
        return argv


def _leaves(
    struct: Struct, path: tuple[str, ...], seen: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Field]]:
    for field in struct.fields:
        kind = field.type
        if isinstance(kind, Struct) and kind.fields and kind.name not in seen:
            yield from _leaves(kind, (*path, field.name), (*seen, struct.name))
        else:
            yield (*path, field.name), field


def _value_type(field: Field) -> tuple[Type | None, bool, Struct | None]:
    """(the type of each value given, repeated, the element map) of ``field``;
    None if it has no command-line form."""
    kind = field.type
    repeated = isinstance(kind, Array)
    element = None
    if isinstance(kind, Array):
        kind = kind.item
        if isinstance(kind, Struct) and kind.fields:
            element = kind
            kind = kind.fields[0].type  # each value fills the element map's first field
    if isinstance(kind, Text | Int | Bool | Enum):
        return kind, repeated, element
    return None, repeated, element


@dataclass
class _Leaf:
    """A leaf while merging the generations' descriptions of one method."""

    field: Field
    kinds: dict[Type, list[str]]
    repeated: bool
    element: Struct | None
    usable: bool


def _merge(methods: Sequence[tuple[str, Method]]) -> dict[tuple[str, ...], _Leaf]:
    leaves: dict[tuple[str, ...], _Leaf] = {}
    for generation, method in methods:
        for path, field in _leaves(method.request, ()):
            kind, repeated, element = _value_type(field)
            leaf = leaves.get(path)
            if leaf is None:
                leaf = leaves[path] = _Leaf(field, {}, repeated, element, True)
            if kind is None or leaf.repeated != repeated:
                leaf.usable = False
                continue
            leaf.kinds.setdefault(kind, []).append(generation)
    for leaf in leaves.values():
        types = list(leaf.kinds)
        # A boolean switch cannot also take a value; an element map must be one map.
        if not types or (len(types) > 1 and any(isinstance(t, Bool) for t in types)):
            leaf.usable = False
    return leaves


def build_command(
    method: Method | Sequence[tuple[str, Method]],
    name: str | None = None,
    events: Sequence[str] = (),
) -> Command:
    """The command for ``method``, or for one method as several generations
    describe it (``[(generation, method), ...]``). Never fails: a field
    with no command-line form is listed in ``json_only``."""
    methods = [("", method)] if isinstance(method, Method) else list(method)
    first = methods[0][1]
    name = name or command_name(first)
    params: list[Param] = []
    json_only: list[str] = []
    seen: set[str] = set()
    for path, leaf in _merge(methods).items():
        field = leaf.field
        options = [field.cli or kebab(field.name), "-".join(kebab(p) for p in path)]
        option = next((o for o in options if o not in seen and f"no-{o}" not in seen), None)
        if not leaf.usable or option is None:
            json_only.append(".".join(path))
            continue
        seen.add(option)
        kinds = tuple((kind, tuple(gens)) for kind, gens in leaf.kinds.items())
        if len(kinds) == 1 and isinstance(kinds[0][0], Bool) and not leaf.repeated:
            seen.add(f"no-{option}")
        positional = POSITIONAL.get(name) == option
        extra = tuple(events) if first.name == "mytimerd.subscribe" and path == ("events",) else ()
        params.append(
            Param(path, field, option, positional, kinds, leaf.repeated, leaf.element, extra)
        )
    generations = tuple(g for g, _ in methods if g)
    return Command(name, first, tuple(params), generations, (), tuple(json_only))


def build_commands(sources: Sequence[tuple[str, Interface]]) -> tuple[Command, ...]:
    """One command per method of any of the interfaces (labelled by generation or
    source), library methods first; never fails."""
    by_method: dict[str, list[tuple[str, Method]]] = {}
    for label, interface in sources:
        for method in interface.methods:
            by_method.setdefault(method.name, []).append((label, method))
    ordered = sorted(by_method.values(), key=lambda ms: not ms[0][1].library)
    events = list(dict.fromkeys(e.name for _, interface in sources for e in interface.events))
    taken: set[str] = set(EXTRA_COMMANDS)
    commands = []
    for methods in ordered:
        method = methods[0][1]
        name = next(
            (n for n in (command_name(method), method.name) if n not in taken and n.isprintable()),
            None,
        )
        if name is None or name.startswith("-"):
            continue  # reachable through `call` only
        taken.add(name)
        command = build_command(methods, name, events)
        plain = method.name.removeprefix(PREFIX)
        if plain != name and plain not in taken and method.name not in COMMAND_NAMES:
            taken.add(plain)
            command = Command(
                name,
                method,
                command.params,
                command.generations,
                (plain,),
                command.json_only,
            )
        commands.append(command)
    return tuple(commands)


def bundled_sources() -> tuple[tuple[str, Interface], ...]:
    """The bundled interfaces of :data:`GENERATIONS`, labelled by generation."""
    return tuple((g, interfaces.bundled(g)) for g in GENERATIONS)


COMMANDS: Final[tuple[Command, ...]] = build_commands(bundled_sources())
COMMANDS_BY_NAME: Final[Mapping[str, Command]] = {
    name: c for c in COMMANDS for name in (c.name, *c.aliases)
}
#: Every method name of the bundled generations (for ``call`` and its completion).
METHOD_NAMES: Final[tuple[str, ...]] = tuple(c.method.name for c in COMMANDS)
#: Every event name of the bundled generations (for ``watch`` and its completion).
EVENT_NAMES: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(e.name for _, i in bundled_sources() for e in i.events)
)
