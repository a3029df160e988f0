"""mytimerd(8) and mytimerctl(1) come from the parsers that print --help:
every option, command, method, error and exit status of --help is on the
page, and man renders the pages without a warning."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mytimerd import manpages
from mytimerd.client.ctl.parser import EXIT_CODES as CTL_EXIT_CODES
from mytimerd.daemon.cli import EXIT_CODES as DAEMON_EXIT_CODES
from mytimerd.protocol import errors, interfaces
from tests.packaging.conftest import cannot_run


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    written = manpages.write_pages(out)
    return {p.stem: p for p in written}


def render(page: Path) -> tuple[str, str]:
    """man's text of the page, and what man/groff warned about (as lintian checks)."""
    if shutil.which("man") is None:
        cannot_run("man not installed (apt install man-db)")
    env = {
        **os.environ,
        "LC_ALL": "C.UTF-8",
        "MANROFFSEQ": "",
        "MANWIDTH": "80",
        "MAN_KEEP_FORMATTING": "",
    }
    warn = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    text = subprocess.run(
        ["man", "-P", "cat", "-l", str(page)], capture_output=True, text=True, env=env, check=True
    )
    return re.sub(r".\x08", "", text.stdout), warn.stderr


def options(parser: argparse.ArgumentParser) -> set[str]:
    found = {s for a in parser._actions for s in a.option_strings}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                found |= options(sub)
    return found


def test_pages_render_without_warnings(pages: dict[str, Path]) -> None:
    for name, page in pages.items():
        text, warnings = render(page)
        assert warnings == "", f"{name}: {warnings}"
        assert text.startswith(name.upper()), text[:200]


@pytest.mark.parametrize("name", ["mytimerd", "mytimerctl"])
def test_every_option_of_help_is_on_the_page(pages: dict[str, Path], name: str) -> None:
    parser = manpages.parsers()[name]
    text, _ = render(pages[name])
    flat = " ".join(text.split())
    for option in sorted(options(parser)):
        assert re.search(rf"(^|[\s\[,]){re.escape(option)}([\s\],=]|$)", flat), option
    for action in parser._actions:  # and the help text of each top-level option
        if action.help and action.help != argparse.SUPPRESS and "%" not in action.help:
            assert " ".join(action.help.split()) in flat, action.help


def test_mytimerctl_page_has_every_command(pages: dict[str, Path]) -> None:
    text, _ = render(pages["mytimerctl"])
    parser = manpages.parsers()["mytimerctl"]
    commands = [
        name
        for a in parser._actions
        if isinstance(a, argparse._SubParsersAction)
        for name in a.choices
    ]
    assert len(commands) >= 8, commands
    for command in commands:
        assert f"mytimerctl {command}\n" in text, command
    flat = " ".join(text.split())
    for code, meaning in CTL_EXIT_CODES:
        assert f" {code} {' '.join(meaning.split())}" in flat, meaning


def test_mytimerd_page_has_methods_errors_exit_status(pages: dict[str, Path]) -> None:
    text, _ = render(pages["mytimerd"])
    flat = " ".join(text.split())
    for method in interfaces.METHODS:
        assert re.search(rf"^\s+{re.escape(method.name)}\b", text, re.M), method.name
    for name, meaning in errors.CATALOGUE.items():
        assert name in text and " ".join(meaning.split())[:40] in flat, name
    for code, meaning in DAEMON_EXIT_CODES:
        assert f" {code} {' '.join(meaning.split())}" in flat, meaning
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section


def test_pages_do_not_depend_on_who_builds_them(
    pages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's $XDG_RUNTIME_DIR must not leak into the shipped pages."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    again = manpages.write_pages(tmp_path)
    for page in again:
        assert "/run/user/4242" not in page.read_text()
        assert page.read_text() == pages[page.stem].read_text()


def test_command_line(tmp_path: Path) -> None:
    assert manpages.main([]) == 2
    assert manpages.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mytimerctl.1", "mytimerd.8"]
