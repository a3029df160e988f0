"""Compile the bundled descriptions (``descriptions/*.cddl``) into
:mod:`._descriptions`, so that a default start does not parse CDDL.

setup.py's build step runs ``python -m mytimerd.protocol.compile_descriptions``;
``--check`` exits 1 if the module on disk is not what the .cddl files give
(tests/unit/test_compiled_descriptions.py checks the same). The module holds,
per file, its text and what :func:`.cddl.parse` makes of it;
:func:`.interfaces.bundled` uses the latter only while the file on disk still
has that text, and parses the file otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from . import cddl

HERE: Final = Path(__file__).resolve().parent
DESCRIPTIONS: Final = HERE / "descriptions"
OUTPUT: Final = HERE / "_descriptions.py"

_HEADER: Final = '''\
# ruff: noqa: E501
"""The bundled descriptions, compiled: generated from descriptions/*.cddl by
``python -m mytimerd.protocol.compile_descriptions`` (setup.py's build step).
Do not edit; a test fails when this differs from what the .cddl files give."""

from __future__ import annotations

from typing import Final

from .cddl import ArrayOf, Description, Field, MapRule, Proc
from .schema import Any_, Bool, Enum, Int, Null, Text

__all__ = ["COMPILED"]
# Names the reprs below use.
_TYPES = (ArrayOf, Description, Field, MapRule, Proc, Any_, Bool, Enum, Int, Null, Text)

#: File name -> (its text, what cddl.parse makes of it).
COMPILED: Final[dict[str, tuple[str, Description]]] = {
'''


def source(folder: Path = DESCRIPTIONS) -> str:
    """The text of :mod:`._descriptions` for the .cddl files in ``folder``."""
    out = [_HEADER]
    for path in sorted(folder.glob("*.cddl")):
        text = path.read_text(encoding="utf-8")
        library = path.stem.rsplit("-", 1)[0]
        description = cddl.parse(text, library)
        out.append(f"    {path.name!r}: (\n        {text!r},\n        {description!r},\n    ),\n")
    out.append("}\n")
    return "".join(out)


def texts_unchanged(folder: Path = DESCRIPTIONS) -> bool:
    """Whether the compiled module holds exactly the texts of the .cddl files:
    then a build has nothing to do, and needs no CDDL parser (a build without
    isolation may run before cddlparser is installed). Whether the compiled
    form is what the parser gives is the test's job (``--check``)."""
    try:
        from ._descriptions import COMPILED
    except ImportError:
        return False
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.cddl"))}
    return texts == {name: text for name, (text, _) in COMPILED.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the module is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    if not args.check and args.output == OUTPUT and texts_unchanged():
        return 0
    wanted = source()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != wanted:
            print(f"{args.output} is stale: run {parser.prog}", file=sys.stderr)
            return 1
        return 0
    if current != wanted:  # rewrite only on change: keep mtimes (and .pyc) otherwise
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(wanted, encoding="utf-8")
        tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
