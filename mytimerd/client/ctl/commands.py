"""The command table of mytimerctl, derived from the method table.

One :class:`Command` per method of :data:`mytimerd.protocol.interfaces.METHODS`
(daemon methods without their ``mytimerd.`` prefix), one :class:`Param` per
leaf field of its request, named after the field (camelCase to kebab-case, or
``Field.cli``).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ...protocol.errors import PREFIX
from ...protocol.interfaces import METHODS
from ...protocol.schema import Array, Field, Int, Method, Struct, Text

PROG: Final = "mytimerctl"

#: Fields given as a positional argument rather than an option, by command.
#: The issue fixes ``echo MESSAGE``; every other field is an option.
POSITIONAL: Final[Mapping[str, str]] = {"echo": "message"}

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


def kebab(name: str) -> str:
    """``maxAttempts`` -> ``max-attempts``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()


def command_name(method: Method) -> str:
    """The command for ``method``: its name without the ``mytimerd.`` prefix."""
    return method.name.removeprefix(PREFIX)


@dataclass(frozen=True)
class Param:
    """One command-line argument: a leaf value of a method's request.

    ``path`` is the chain of keys from the request map down to the value.
    A field that is an array becomes a repeatable option; an array of maps
    (complex's messages) takes one text per map and fills the map's first field.
    """

    path: tuple[str, ...]
    field: Field
    name: str
    positional: bool
    #: The type each given value is parsed as.
    scalar: Text | Int

    @property
    def dest(self) -> str:
        """The argparse destination (dotted, so it cannot clash with global options)."""
        return "param." + ".".join(self.path)

    @property
    def flag(self) -> str:
        """``--delay-ms``, or the metavar of a positional (``MESSAGE``)."""
        return self.name.upper() if self.positional else f"--{self.name}"

    @property
    def repeated(self) -> bool:
        """Whether the option may be given several times (an array field)."""
        return isinstance(self.field.type, Array)

    @property
    def element(self) -> Struct | None:
        """The map each value of an array-of-maps option becomes, else None."""
        kind = self.field.type
        if isinstance(kind, Array) and isinstance(kind.item, Struct):
            return kind.item
        return None

    @property
    def metavar(self) -> str:
        """The value's placeholder in help texts."""
        if self.positional:
            return self.flag
        return "N" if isinstance(self.scalar, Int) else "TEXT"

    def help(self) -> str:
        """The option's help text, from Field.doc and the library's default."""
        text = self.field.doc
        element = self.element
        if element is not None:
            first = element.fields[0].name
            text += (
                f" Repeatable: each TEXT becomes one {element.name} with {first}=TEXT"
                " (its other fields take the library's defaults)."
            )
        elif self.repeated:
            text += " Repeatable."
        if self.field.option:
            text += " Optional: absent unless given."
        elif not self.positional:
            text += f" Library default: {json.dumps(self.field.default)}."
        return text.replace("%", "%%")  # argparse formats help with %

    def convert(self, values: Any) -> Any:
        """The request value for what argparse parsed."""
        element = self.element
        if element is not None:
            return [{element.fields[0].name: value} for value in values]
        return values

    def argv(self, value: Any) -> list[str]:
        """The arguments that give ``value`` (for generated examples)."""
        if self.positional:
            return [str(value)]
        element = self.element
        if element is not None:
            value = [item[element.fields[0].name] for item in value]
        items = value if isinstance(value, list) else [value]
        return [arg for item in items for arg in (self.flag, str(item))]


@dataclass(frozen=True)
class Command:
    """A mytimerctl command for one method of the table."""

    name: str
    method: Method
    params: tuple[Param, ...]

    @property
    def options(self) -> Mapping[str, tuple[str, ...]]:
        """The command's options beyond its request's fields, with their choices."""
        return EXTRA_OPTIONS.get(self.name, {})

    def request(self, ns: argparse.Namespace) -> dict[str, Any]:
        """The request map for the parsed arguments; options not given are left out."""
        request: dict[str, Any] = {}
        for param in self.params:
            value = getattr(ns, param.dest, None)
            if value is None:
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


def _leaves(struct: Struct, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Field]]:
    for field in struct.fields:
        if isinstance(field.type, Struct):
            yield from _leaves(field.type, (*path, field.name))
        else:
            yield (*path, field.name), field


def _scalar_type(path: tuple[str, ...], field: Field) -> Text | Int:
    """The type of each value given for ``field``; ValueError if it has no command-line form."""
    kind = field.type
    if isinstance(kind, Array):
        kind = kind.item
    if isinstance(kind, Struct) and kind.fields:
        # Each text given fills the element map's first field.
        kind = kind.fields[0].type
    if not isinstance(kind, Text | Int):
        raise ValueError(f"{'.'.join(path)}: no command-line form for {kind!r}")
    return kind


def build_command(method: Method) -> Command:
    """The command for ``method``; ValueError if a field has no command-line form
    or two fields get the same option name."""
    name = command_name(method)
    params: list[Param] = []
    seen: set[str] = set()
    for path, field in _leaves(method.request, ()):
        option = field.cli or kebab(field.name)
        if option in seen:
            raise ValueError(f"{name}: two fields map to --{option}")
        seen.add(option)
        positional = POSITIONAL.get(name) == option
        params.append(Param(path, field, option, positional, _scalar_type(path, field)))
    return Command(name, method, tuple(params))


COMMANDS: Final[tuple[Command, ...]] = tuple(build_command(m) for m in METHODS)
COMMANDS_BY_NAME: Final[Mapping[str, Command]] = {c.name: c for c in COMMANDS}
