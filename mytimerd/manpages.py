"""Manual pages mytimerd(8) and mytimerctl(1), generated from the argparse
parsers that print ``--help`` (so both always say the same thing).

``python -m mytimerd.manpages DIR`` writes ``DIR/mytimerd.8`` and
``DIR/mytimerctl.1``. The date on the pages is ``$SOURCE_DATE_EPOCH`` (set by
Debian's build tools) or today.

Layout: NAME and SYNOPSIS from the parser, DESCRIPTION from its description,
OPTIONS from its argument groups, one COMMANDS subsection per subcommand
(mytimerctl), then every ``heading:`` section of the epilog (methods, errors,
exit status, examples, ...) as a section of its own.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import __version__

#: A line of an epilog that starts a section, e.g. "exit status:".
_HEADING = re.compile(r"^([A-Za-z].*):\s*$")
#: Two or more spaces inside an indented line separate a term from its text.
_COLUMNS = re.compile(r"^(\S.*?)\s{2,}(\S.*)$")
#: Sections kept verbatim (lines of shell), not reflowed.
_VERBATIM = ("examples", "install")


@dataclass(frozen=True)
class Page:
    """One manual page: which parser, and where it goes."""

    name: str
    section: int
    manual: str
    see_also: tuple[str, ...]


PAGES: tuple[Page, ...] = (
    Page("mytimerd", 8, "System Administration", ("mytimerctl(1)", "systemd.socket(5)")),
    Page("mytimerctl", 1, "User Commands", ("mytimerd(8)",)),
)


def escape(text: str) -> str:
    """Text made safe for roff: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _bold_invocation(invocation: str) -> str:
    """'--tcp HOST PORT' -> bold option names, italic metavars."""
    parts = []
    for item in invocation.split(", "):
        words = item.split(" ")
        shown = [f"\\fB{escape(words[0])}\\fR"] + [f"\\fI{escape(w)}\\fR" for w in words[1:]]
        parts.append(" ".join(shown))
    return ", ".join(parts)


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    usage = usage.removeprefix("usage: ")
    return " ".join(usage.split())


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split())


def _paragraphs(text: str) -> list[str]:
    out = [".PP"]
    for para in text.strip().split("\n\n"):
        if len(out) > 1:
            out.append(".PP")
        out.append(escape(" ".join(para.split())))
    return out


def _action_lines(
    formatter: argparse.HelpFormatter, actions: Sequence[argparse.Action]
) -> list[str]:
    out: list[str] = []
    for action in actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        out += [".TP", _bold_invocation(invocation)]
        help_text = formatter._expand_help(action) if action.help else ""
        out.append(escape(" ".join(help_text.split())) if help_text else "\\&")
    return out


def _groups(
    parser: argparse.ArgumentParser, skip: frozenset[tuple[str, ...]] = frozenset()
) -> Iterator[tuple[str, list[argparse.Action]]]:
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if tuple(a.option_strings) not in skip or not a.option_strings
        ]
        if actions:
            yield group.title or "options", actions


def _epilog_sections(epilog: str) -> Iterator[tuple[str | None, list[str]]]:
    """Split an epilog into (heading or None, lines) by its 'heading:' lines."""
    heading: str | None = None
    lines: list[str] = []
    previous = ""
    for line in epilog.splitlines():
        m = _HEADING.match(line)
        starts_text = line.strip() and not line.startswith(" ") and not previous.strip()
        if m and not line.startswith(" "):
            if lines or heading is not None:
                yield heading, lines
            heading, lines = m.group(1), []
        elif starts_text and heading is not None:
            # unindented text after a blank line ends the section
            yield heading, lines
            heading, lines = None, [line]
        else:
            lines.append(line)
        previous = line
    if lines or heading is not None:
        yield heading, lines


def _section_body(heading: str | None, lines: list[str]) -> list[str]:
    """roff for one epilog section: verbatim, a term list, or paragraphs."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    while lines and not lines[0].strip():
        lines = lines[1:]
    if not lines:
        return []
    if heading is not None and heading.lower() in _VERBATIM:
        return [".PP", ".RS 4", ".nf", *(escape(line.strip()) for line in lines), ".fi", ".RE"]
    indented = [line.strip() for line in lines if line.strip()]
    if all(line.startswith("  ") for line in lines if line.strip()) and all(
        _COLUMNS.match(line) for line in indented
    ):
        out: list[str] = []
        for line in indented:
            m = _COLUMNS.match(line)
            assert m is not None
            out += [".TP", f"\\fB{escape(m.group(1))}\\fR", escape(m.group(2))]
        return out
    return _paragraphs("\n".join(lines))


def _epilog(epilog: str | None, level: str = ".SH") -> list[str]:
    out: list[str] = []
    for heading, lines in _epilog_sections(epilog or ""):
        body = _section_body(heading, lines)
        if not body:
            continue
        if heading is not None:
            # "errors (RET_ERR bodies ...)": the parenthesis becomes a first paragraph
            title, _, note = heading.partition(" (")
            title = title.upper() if level == ".SH" else title.capitalize()
            out.append(f'{level} "{escape(title)}"')
            if note:
                note = note.removesuffix(")")
                out += _paragraphs(note[:1].upper() + note[1:] + ".")
        out += body
    return out


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser, str | None]]:
    """(name, help, parser, the name it is an alias of or None) per command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            first: dict[int, str] = {}
            for name, sub in action.choices.items():
                alias_of = first.setdefault(id(sub), name)
                yield name, helps.get(name, ""), sub, None if alias_of == name else alias_of


def render(parser: argparse.ArgumentParser, page: Page, date: str) -> str:
    """The whole page, in roff (man macros)."""
    formatter = parser._get_formatter()
    description = parser.description or ""
    out = [
        f".\\\" Generated by mytimerd.manpages from {page.name}'s argument parser; do not edit.",
        f'.TH "{page.name.upper()}" "{page.section}" "{date}" '
        f'"mytimerd {escape(__version__)}" "{page.manual}"',
        ".nh",
        ".SH NAME",
        f"{escape(page.name)} \\- {escape(_first_paragraph(description))}",
        ".SH SYNOPSIS",
        ".ad l",
        escape(_usage(parser)),
        ".ad",
        ".SH DESCRIPTION",
        *_paragraphs(description),
        ".SH OPTIONS",
    ]
    top_level: set[tuple[str, ...]] = set()
    for title, actions in _groups(parser):
        if title not in ("options", "optional arguments", "positional arguments"):
            out.append(f'.SS "{escape(title.capitalize())}"')
        out += _action_lines(formatter, actions)
        top_level |= {tuple(a.option_strings) for a in actions if a.option_strings}

    commands = list(_subcommands(parser))
    if commands:
        out += [
            ".SH COMMANDS",
            ".PP",
            escape(
                "Every command also takes the options above (before or after its name) "
                "and -h, --help."
            ),
        ]
        for name, _help, sub, alias_of in commands:
            out += [f'.SS "{escape(page.name)} {escape(name)}"', ".PP"]
            if alias_of is not None:  # described once, under its first name
                out.append(escape(f"Another name for {page.name} {alias_of}."))
                continue
            sub_formatter = sub._get_formatter()
            out.append(f"\\fB{escape(_usage(sub))}\\fR")
            out += _paragraphs(sub.description or _help)
            for _title, actions in _groups(sub, skip=frozenset(top_level)):
                out += _action_lines(sub_formatter, actions)
            for heading, lines in _epilog_sections(sub.epilog or ""):
                # exit codes are the same for every command: shown once, below
                if heading is not None and heading.lower() in ("examples", "install"):
                    out += [f".PP\n{escape(heading.capitalize())}:", *_section_body(heading, lines)]

    out += _epilog(parser.epilog)
    out += ['.SH "SEE ALSO"', ", ".join(_see_also(page.see_also))]
    return "\n".join(out) + "\n"


def _see_also(refs: Sequence[str]) -> Iterator[str]:
    for ref in refs:
        name, section = ref.rstrip(")").split("(")
        yield f"\\fB{escape(name)}\\fR({section})"


@contextmanager
def _system_defaults() -> Iterator[None]:
    """Defaults shown in the pages are the system ones (/run/mytimerd.sock),
    whoever builds them: XDG_RUNTIME_DIR is what makes them per user."""
    saved = os.environ.pop("XDG_RUNTIME_DIR", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["XDG_RUNTIME_DIR"] = saved


def parsers() -> dict[str, argparse.ArgumentParser]:
    """The parsers behind ``mytimerd --help`` and ``mytimerctl --help``."""
    from .client.ctl.parser import build_parser as ctl_parser
    from .daemon.cli import build_parser as daemon_parser

    with _system_defaults():
        return {"mytimerd": daemon_parser(), "mytimerctl": ctl_parser()}


def page_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC)
    )
    return when.strftime("%Y-%m-%d")


def write_pages(directory: Path) -> list[Path]:
    """Write every page into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    built = parsers()
    written = []
    for page in PAGES:
        path = directory / f"{page.name}.{page.section}"
        path.write_text(render(built[page.name], page, page_date()), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m mytimerd.manpages DIR", file=sys.stderr)
        return 2
    for path in write_pages(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
