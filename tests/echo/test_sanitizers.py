"""libecho under ASan+UBSan and TSan, both generations: the C stress driver
(every vector, then concurrently, lifecycle, re-entrancy, garbage) and the
pytest suite of this directory rerun against the sanitizer builds. Any
sanitizer report, crash, leak or failed check fails; so does a skipped test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.native import build_native
from tests.support.sanitizers import run_pytest, run_stress

from .conftest import GENERATIONS, build_echo, load_vectors, stress_path, write_vector_file


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_stress_driver(variant: str, generation: str, tmp_path: Path) -> None:
    build_echo(generation, variant)
    vectors = tmp_path / "vectors.txt"
    count = write_vector_file(generation, vectors)
    iterations = "20000" if variant == "asan" else "8000"
    cmd = [str(stress_path(generation, variant)), str(vectors), iterations]
    proc = run_stress(variant, cmd, timeout=300)
    assert f"vectors: {count}/{count} passed" in proc.stdout
    assert "all scenarios passed" in proc.stdout


@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_pytest_suite_under_sanitizer(variant: str) -> None:
    """tests/echo (but this file) against the sanitizer builds, loaded into a
    python subprocess with the sanitizer runtime preloaded."""
    for generation in GENERATIONS:
        build_echo(generation, variant)
    build_native(variant)  # libmy_timer, for the side-by-side test
    here = Path(__file__).resolve().parent
    tests = ["test_vectors.py", "test_abi.py", "test_hostile.py"]
    proc = run_pytest(
        variant,
        "ECHO",
        ["-rA", *(str(here / t) for t in tests)],
        cwd=here.parents[1],
        timeout=400,
    )
    output = proc.stdout + proc.stderr
    summary = re.search(r"^(\d+) passed(.*) in ", proc.stdout, re.M)
    assert summary, output[-3000:]
    assert "skipped" not in summary.group(2), summary.group(0)
    vectors = sum(len(load_vectors(g)["calls"]) for g in GENERATIONS)
    replayed = re.findall(r"^PASSED \S+::test_call_vector\[", proc.stdout, re.M)
    assert len(replayed) == vectors, f"{len(replayed)} of {vectors} vectors passed"
