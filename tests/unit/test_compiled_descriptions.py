"""The bundled descriptions come compiled (mytimerd/protocol/_descriptions.py,
written by the build from descriptions/*.cddl): the module is exactly what the
.cddl files give, a default start never imports the CDDL parser, and a
bundled file whose text differs from the compiled one is parsed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mytimerd.protocol import _descriptions, cddl, compile_descriptions, interfaces


def test_the_compiled_module_is_what_the_cddl_files_give() -> None:
    assert compile_descriptions.OUTPUT.read_text() == compile_descriptions.source(), (
        "stale: run python -m mytimerd.protocol.compile_descriptions (or rebuild)"
    )


def test_every_bundled_file_is_compiled_and_equal_to_its_parse() -> None:
    files = sorted(p.name for p in interfaces.DESCRIPTIONS.glob("*.cddl"))
    assert sorted(_descriptions.COMPILED) == files
    for path in interfaces.DESCRIPTIONS.glob("*.cddl"):
        text, description = _descriptions.COMPILED[path.name]
        assert text == path.read_text()
        assert description == cddl.parse(text, path.stem.rsplit("-", 1)[0])


@pytest.mark.parametrize("generation", ["0.2", "0.3"])
def test_the_compiled_interface_equals_the_parsed_one(generation: str) -> None:
    path = interfaces.BUNDLED[generation]
    assert interfaces.bundled(generation) == interfaces.load(path, interfaces.DEFAULT_LIBRARY)


def test_check_mode_reports_a_stale_module(tmp_path: Path) -> None:
    stale = tmp_path / "_descriptions.py"
    stale.write_text("COMPILED = {}\n")
    assert compile_descriptions.main(["--check", "--output", str(stale)]) == 1
    assert compile_descriptions.main(["--check"]) == 0


def test_a_changed_bundled_file_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    text, description = _descriptions.COMPILED["my_timer-0.3.cddl"]
    # The compiled entry no longer matches the file's text: bundled() must parse.
    monkeypatch.setitem(_descriptions.COMPILED, "my_timer-0.3.cddl", (text + " ", description))
    calls: list[str] = []
    real = cddl.parse

    def spy(text: str, library: str | None = None, time_limit: float = 10.0) -> cddl.Description:
        calls.append(text)
        return real(text, library, time_limit)

    monkeypatch.setattr(cddl, "parse", spy)
    interfaces._bundled.cache_clear()
    try:
        assert interfaces.bundled("0.3").name == "my_timer"
        assert calls == [text]
    finally:
        interfaces._bundled.cache_clear()


def test_a_default_start_does_not_import_the_parser() -> None:
    code = (
        "import sys, mytimerd.daemon.cli as c; c.interfaces.bundled('0.3'); "
        "print('cddlparser' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
