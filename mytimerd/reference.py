"""The documents' reference tables, generated from the one method, limit and
error tables so the documentation cannot drift from the code.

A document holds any of the blocks in :data:`BLOCKS` between
``<!-- generated:NAME -->`` and ``<!-- end:NAME -->`` markers.
``python -m mytimerd.reference README.md docs/protocol.md`` rewrites them in
place; a test fails when they are stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

from .protocol import errors, interfaces, schema
from .protocol.limits import FIELDS, Limits


def methods_table() -> str:
    """Markdown: every method, its request and what it answers."""
    rows = ["| method | request | answer |", "|---|---|---|"]
    for m in interfaces.METHODS:
        if m.request.fields:
            request = (
                "`{ " + ", ".join(f"{f.name}: {f.type.cddl()}" for f in m.request.fields) + " }`"
            )
        else:
            request = "`{}` (a0)"
        rows.append(f"| `{m.name}` | {request} | {m.doc} |")
    structs = []
    seen = set()
    for m in interfaces.METHODS:
        for f in m.request.fields:
            if isinstance(f.type, schema.Struct) and f.type.name not in seen:
                seen.add(f.type.name)
                for g in f.type.fields:
                    inner = g.type.item if isinstance(g.type, schema.Array) else g.type
                    if isinstance(inner, schema.Struct) and inner.name not in seen:
                        seen.add(inner.name)
                        structs.append(inner.cddl_rule())
                structs.append(f.type.cddl_rule())
    return "\n".join([*rows, "", "```cddl", *structs, "```"])


def limits_table() -> str:
    """Markdown: every limit with its option and default."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    defaults = Limits()
    for f in FIELDS:
        value = getattr(defaults, f.name)
        rows.append(f"| `{f.option}` | {value} {f.unit} | {f.doc} |")
    return "\n".join(rows)


def errors_table() -> str:
    """Markdown: every daemon error name and its meaning."""
    rows = ["| error | meaning |", "|---|---|"]
    rows += [f"| `{errors.PREFIX}{n}` | {d} |" for n, d in errors.CATALOGUE.items()]
    return "\n".join(rows)


BLOCKS = {"methods": methods_table, "limits": limits_table, "errors": errors_table}

#: The blocks each of the repository's documents must hold, by file name.
#: README.md keeps all three, as it always has; docs/protocol.md documents the
#: wire, where the limits (daemon options) do not belong.
DOCUMENTS: dict[str, tuple[str, ...]] = {
    "README.md": ("methods", "limits", "errors"),
    "protocol.md": ("methods", "errors"),
}


def render(text: str, require: Iterable[str] = ()) -> str:
    """``text`` with every generated block it holds brought up to date.

    A document need not hold every block (docs/protocol.md has no limits
    table), but it must hold at least one, and every block named in
    ``require``: a marker lost in an edit then fails loudly instead of
    leaving a table silently unmaintained.
    """
    require = tuple(require)
    unknown = set(require) - BLOCKS.keys()
    if unknown:
        raise ValueError(f"no such generated block: {', '.join(sorted(unknown))}")
    found = []
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.DOTALL)
        match = pattern.search(text)
        if match is None:
            continue
        found.append(name)
        text = text[: match.end(1)] + make() + "\n" + text[match.start(2) :]
    missing = [name for name in require if name not in found]
    if missing:
        raise ValueError(f"no generated block {missing[0]!r}")
    if not found:
        raise ValueError(f"no generated block (expected one of: {', '.join(BLOCKS)})")
    return text


def main() -> int:
    """Rewrite the generated blocks of the files named on the command line."""
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(render(path.read_text(), DOCUMENTS.get(path.name, ())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
