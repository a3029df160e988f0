"""The README's reference tables match the code's tables."""

from pathlib import Path

from mytimerd import reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_blocks_are_current() -> None:
    text = README.read_text()
    assert reference.render(text) == text, "run: python -m mytimerd.reference README.md"
