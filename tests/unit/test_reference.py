"""The documents' generated reference tables match the code's tables."""

from pathlib import Path

import pytest

from mytimerd import reference

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"


@pytest.mark.parametrize("path", [README, PROTOCOL], ids=lambda p: p.name)
def test_reference_blocks_are_current(path: Path) -> None:
    text = path.read_text()
    rendered = reference.render(text, reference.DOCUMENTS[path.name])
    assert rendered == text, f"run: python -m mytimerd.reference {path.relative_to(ROOT)}"


def test_render_accepts_a_document_with_only_some_blocks() -> None:
    text = "intro\n<!-- generated:errors -->\nold\n<!-- end:errors -->\noutro\n"
    rendered = reference.render(text)
    assert rendered.startswith("intro\n<!-- generated:errors -->\n| error | meaning |")
    assert rendered.endswith("<!-- end:errors -->\noutro\n")
    assert "<!-- generated:limits -->" not in rendered


def test_render_refuses_a_document_without_any_block() -> None:
    with pytest.raises(ValueError, match="no generated block"):
        reference.render("no markers here\n")


def test_render_refuses_a_missing_required_block() -> None:
    text = "<!-- generated:errors -->\n<!-- end:errors -->\n"
    with pytest.raises(ValueError, match="'limits'"):
        reference.render(text, ("errors", "limits"))
