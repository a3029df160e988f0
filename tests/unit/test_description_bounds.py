"""Descriptions are operator input: each bound (a regular file, size, UTF-8,
nesting, recursion, parse time) and each contradiction with the ABI's entry
points is a CDDLError with a clear message, and a usage error (exit 2, no
traceback) on mytimerd's command line."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mytimerd._glue import lib

from mytimerd.daemon.cli import build_parser
from mytimerd.protocol import cbor, cddl, interfaces
from mytimerd.protocol.schema import Interface

TIMER = interfaces.BUNDLED["0.3"].read_text()

#: A minimal valid description to extend: constructor, destructor, one method.
BASE = """
Cfg = { name: tstr }
CtorReq = { config: Cfg }
Empty = { }
; lib_create (ctor)
lib_create-request = CtorReq
lib_create-response = tstr
; lib_version (ffi)
lib_version-request = Empty
lib_version-response = tstr
; lib_destroy (dtor)
lib_destroy-response = nil
"""


def test_the_base_description_is_fine() -> None:
    i = interfaces.build(BASE, "base")
    assert i.name == "lib" and i.constructor.name == "CtorReq"
    assert [m.name for m in i.library_methods] == ["version"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(cddl.CDDLError, match="not a regular file"):
        interfaces.load(fifo)


@pytest.mark.parametrize(
    ("path", "message"), [(Path("/dev/zero"), "not a regular file"), (Path("/"), "a directory")]
)
def test_devices_and_directories_are_refused(path: Path, message: str) -> None:
    with pytest.raises(cddl.CDDLError, match=message):
        interfaces.load(path)


def test_size_bound(tmp_path: Path) -> None:
    big = tmp_path / "big.cddl"
    big.write_text(BASE + ";" * cddl.MAX_BYTES)
    with pytest.raises(cddl.CDDLError, match=f"larger than {cddl.MAX_BYTES} bytes"):
        interfaces.load(big)


def test_utf8_is_checked(tmp_path: Path) -> None:
    binary = tmp_path / "bin.cddl"
    binary.write_bytes(BASE.encode() + b"\xff\xfe")
    with pytest.raises(cddl.CDDLError, match=r"not UTF-8 text \(byte \d+"):
        interfaces.load(binary)


def test_deep_nesting_is_refused_before_parsing() -> None:
    deep = BASE + "Deep = " + "[* " * 100_000 + "int" + "]" * 100_000
    with pytest.raises(cddl.CDDLError, match=f"nested deeper than {cddl.MAX_NESTING} levels"):
        interfaces.build(deep, "deep")


def test_brackets_in_comments_and_strings_do_not_count() -> None:
    text = BASE + "; " + "{" * 1000 + '\nColor = "' + "[" * 1000 + '" / "b"\n'
    interfaces.build(text, "fine")


@pytest.mark.parametrize(
    "rules",
    [
        "Loop = { next: Loop }",
        "A = { b: B }\nB = { a: [* A] }",
        "X = [* Y]\nY = [* X]",
    ],
)
def test_recursive_rules_are_refused(rules: str) -> None:
    text = BASE.replace("Empty = { }", f"Empty = {{ r: {rules.split()[0]} }}\n{rules}")
    with pytest.raises(cddl.CDDLError, match=r"recursive rule .* requests must be finite"):
        interfaces.build(text, "loop")


def test_types_nested_deeper_than_the_decoder_are_refused() -> None:
    chain = "\n".join(f"L{i} = {{ n: L{i + 1} }}" for i in range(cbor.MAX_DEPTH + 2))
    last = f"L{cbor.MAX_DEPTH + 2} = {{}}"
    text = BASE.replace("Empty = { }", f"Empty = {{ n: L0 }}\n{chain}\n{last}")
    with pytest.raises(cddl.CDDLError, match=f"requests may nest {cbor.MAX_DEPTH}"):
        interfaces.build(text, "deep")


def test_types_that_spell_out_too_large_are_refused() -> None:
    """Rules used twice per level double at each level: 2**12 leaves."""
    chain = "\n".join(f"T{i} = {{ a: T{i + 1}, b: T{i + 1} }}" for i in range(12))
    text = BASE.replace("Empty = { }", f"Empty = {{ t: T0 }}\n{chain}\nT12 = {{ x: int }}")
    with pytest.raises(cddl.CDDLError, match=f"more than {cddl.MAX_TYPE_NODES}"):
        interfaces.build(text, "wide")


def test_parse_time_bound() -> None:
    many = "".join(TIMER.replace("my_timer", f"t{i}") for i in range(40))
    with pytest.raises(cddl.CDDLError, match=r"parsing took longer than 0\.01 s"):
        cddl.parse(many, time_limit=0.01)


def test_parse_time_bound_spares_code_the_parse_interrupts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound expiring inside a gc callback neither raises there (the
    exception would be swallowed or reported as unraisable) nor loses the
    refusal: the parse is still stopped, from its own code."""
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    many = "".join(TIMER.replace("my_timer", f"t{i}") for i in range(40))
    busy: list[int] = []

    def slow_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":  # long enough that every parse's first alarm lands here
            deadline = time.monotonic() + 0.03
            while time.monotonic() < deadline:
                busy.append(1)

    threshold = gc.get_threshold()
    gc.callbacks.append(slow_collection)
    gc.set_threshold(50)
    try:
        with pytest.raises(cddl.CDDLError, match=r"parsing took longer than 0\.01 s"):
            cddl.parse(many, time_limit=0.01)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(slow_collection)
    assert busy, "no collection ran during the parse"
    assert unraisable == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("; lib_create (ctor)", "; lib_create (ffi)", r"lib_create is marked \(ffi\), but it is"),
        ("; lib_destroy (dtor)", "; lib_destroy (ffiStatic)", r"it is the ABI's \(dtor\)"),
        ("; lib_version (ffi)", "; lib_version (ctor)", r"the ABI's \(ctor\) is lib_create"),
        ("lib_version", "lib_add_event_listener", "listener entry point, not a proc"),
        ("lib_version", "lib_remove_event_listener", "listener entry point, not a proc"),
        ("; lib_destroy (dtor)\nlib_destroy-response = nil", "", r"no lib_destroy \(dtor\)"),
        (
            "lib_version-response = tstr",
            "; lib_version (dtor)\nlib_version-response = tstr",
            "marked both",
        ),
    ],
)
def test_kinds_must_agree_with_the_abi(old: str, new: str, message: str) -> None:
    assert old in BASE
    with pytest.raises(cddl.CDDLError, match=message):
        interfaces.build(BASE.replace(old, new), "lying")


def test_the_library_name_option_must_match_the_procs() -> None:
    assert interfaces.build(BASE, "x", "lib").name == "lib"
    with pytest.raises(cddl.CDDLError, match="does not belong to library 'other'"):
        interfaces.build(BASE, "x", "other")


def test_the_glue_and_the_description_agree_on_the_longest_name() -> None:
    assert lib.MT_MAX_PREFIX == cddl.MAX_NAME


def test_each_bundled_library_has_one_constructor_and_probe() -> None:
    """cli checks --config and the probe against 0.2's description for both."""
    old, new = interfaces.bundled("0.2"), interfaces.bundled("0.3")
    assert old.constructor == new.constructor
    assert interfaces.probe_method(old) == interfaces.probe_method(new) == "version"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (BASE.replace("Empty = { }", "Empty = { l: L }\nL = { l: L }").encode(), "recursive"),
        (b"A = " + b"(" * 100_000, "nested deeper"),
        (BASE.replace("(ctor)", "(ffi)").encode(), "lib_create is marked (ffi)"),
    ],
)
def test_on_the_command_line_each_is_a_usage_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    schema = tmp_path / "s.cddl"
    schema.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "mytimerd", "--unix", str(tmp_path / "s"), "--schema", str(schema)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def swapped(generation: str, old: str, new: str, name: str = "my_timer") -> Interface:
    """libmy_timer's bundled description of ``generation`` with ``old`` made
    ``new`` (and its procs renamed to ``name``), as --schema would give it."""
    text = interfaces.BUNDLED[generation].read_text()
    assert old in text
    return interfaces.build(text.replace(old, new).replace("my_timer", name), "given.cddl")


@pytest.mark.parametrize("generation", ["0.2", "0.3"])
def test_the_bundled_descriptions_fit_their_generation(generation: str) -> None:
    bundled = interfaces.bundled(generation)
    assert interfaces.kind_contradiction(bundled, generation) is None
    same = interfaces.build(interfaces.BUNDLED[generation].read_text(), "copy.cddl")
    assert interfaces.kind_contradiction(same, generation) is None


@pytest.mark.parametrize(
    ("generation", "old", "new", "symbol", "given", "bundled"),
    [
        ("0.3", "; my_timer_echo (ffi)", "; my_timer_echo (ffiStatic)", "echo", "ffiStatic", "ffi"),
        (
            "0.3",
            "; my_timer_lib_version (ffiStatic)",
            "; my_timer_lib_version (ffi)",
            "lib_version",
            "ffi",
            "ffiStatic",
        ),
    ],
)
def test_a_kind_the_bundled_description_contradicts(
    generation: str, old: str, new: str, symbol: str, given: str, bundled: str
) -> None:
    message = interfaces.kind_contradiction(swapped(generation, old, new), generation)
    assert message == (
        f"given.cddl marks my_timer_{symbol} ({given}), but the bundled description of "
        f"my_timer {generation} ({interfaces.BUNDLED[generation]}) marks it ({bundled}); a "
        "static call and a method take different arguments, so calling it as described "
        "would crash the daemon"
    )


@pytest.mark.parametrize(
    ("text", "generation", "symbol"),
    [
        (BASE.replace("(ffi)", "(ffiStatic)"), "0.2", "lib_version_cbor"),
        (interfaces.BUNDLED["0.3"].read_text(), "0.2", "my_timer_lib_version_cbor"),
    ],
)
def test_the_older_generation_has_no_static_calls(text: str, generation: str, symbol: str) -> None:
    message = interfaces.kind_contradiction(interfaces.build(text, "given.cddl"), generation)
    assert message == (
        f"given.cddl marks {symbol} (ffiStatic), but the library is of nim-ffi's 0.2 symbol "
        "generation (names ending in _cbor), which has no static calls"
    )


def test_a_newer_build_may_add_procs_of_either_kind() -> None:
    """Only procs both descriptions have are compared; one the bundled
    description lacks, or lacking one it has, is no contradiction."""
    added = (
        "; my_timer_self_test (ffiStatic)\nmy_timer_self_test-request = MyTimerVersionReq\n"
        "my_timer_self_test-response = tstr\n; my_timer_destroy (dtor)"
    )
    newer = swapped("0.3", "; my_timer_destroy (dtor)", added)
    assert newer.by_name[b"self_test"].static
    assert interfaces.kind_contradiction(newer, "0.3") is None
    complex_ = (
        "; my_timer_complex (ffi)\nmy_timer_complex-request = MyTimerComplexReq\n"
        "my_timer_complex-response = ComplexResponse\n"
    )
    fewer = swapped("0.3", complex_, "")
    assert b"complex" not in fewer.by_name
    assert interfaces.kind_contradiction(fewer, "0.3") is None


def test_another_library_s_kinds_cannot_be_checked() -> None:
    """Renamed, the same swap is another library's: nothing is bundled for
    it, so its kinds are trusted (and --help says so)."""
    other = swapped("0.3", "; my_timer_echo (ffi)", "; my_timer_echo (ffiStatic)", "acme")
    assert other.name == "acme" and other.by_name[b"echo"].static
    assert interfaces.kind_contradiction(other, "0.3") is None
    help_text = " ".join(build_parser().format_help().split())
    assert (
        "Its proc kinds, (ffi) method or (ffiStatic) static call, are trusted like its types"
        in help_text
    )
    assert "a wrong kind for any other library cannot be detected" in help_text


def test_the_help_speaks_of_any_library() -> None:
    help_text = " ".join(build_parser().format_help().split())
    assert help_text.startswith("usage: mytimerd")
    assert "Serve a nim-ffi library's CBOR ABI (by default the bundled libmy_timer's)" in help_text
    assert "libmy_timer's CBOR ABI" not in help_text
    assert "(a version call)" not in help_text
    assert "the liveness probe (the --probe-method call)" in help_text
