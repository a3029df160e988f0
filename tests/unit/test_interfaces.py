"""Both generations' CDDL descriptions parse into the expected tables, and
the overlay adds what the CDDL lacks without being needed."""

from __future__ import annotations

import cbor2
import pytest

from mytimerd.protocol import cddl, interfaces
from mytimerd.protocol.errors import DaemonError
from mytimerd.protocol.schema import Array, Enum, Int, Struct, Text


def test_the_0_2_description() -> None:
    i = interfaces.bundled("0.2")
    assert [m.name for m in i.library_methods] == ["echo", "version", "complex", "schedule"]
    assert not any(m.static for m in i.methods)
    priority = i.lookup(b"schedule").request.by_name["job"].type
    assert isinstance(priority, Struct) and priority.by_name["priority"].type == Int()
    assert [e.name for e in i.events] == ["on_echo_fired"]


def test_the_0_3_description() -> None:
    i = interfaces.bundled("0.3")
    assert [m.name for m in i.library_methods] == [
        "echo",
        "version",
        "lib_version",
        "complex",
        "schedule",
    ]
    assert [m.name for m in i.methods if m.static] == ["lib_version"]
    job = i.lookup(b"schedule").request.by_name["job"].type
    assert isinstance(job, Struct)
    assert job.by_name["priority"].type == Enum("JobPriority", ("low", "normal", "high"))
    assert job.by_name["priority"].default == "low"
    result = i.lookup(b"schedule").response
    assert isinstance(result, Struct) and result.fields[-1].name == "priority"
    assert [e.name for e in i.events] == ["on_echo_fired", "on_job_scheduled"]
    complex_req = i.lookup(b"complex").request.by_name["req"].type
    assert isinstance(complex_req, Struct)
    messages = complex_req.by_name["messages"]
    assert isinstance(messages.type, Array) and isinstance(messages.type.item, Struct)
    assert complex_req.by_name["note"].option and complex_req.by_name["note"].type == Text()


def test_enum_errors_name_the_choices() -> None:
    schedule = interfaces.bundled("0.3").lookup(b"schedule")
    with pytest.raises(DaemonError) as err:
        schedule.validate(cbor2.dumps({"job": {"priority": "urgent"}}))
    assert str(err.value) == (
        'mytimerd.InvalidParameter: job.priority: expected one of low, normal, high, got "urgent"'
    )
    with pytest.raises(DaemonError) as err:
        schedule.validate(cbor2.dumps({"job": {"priority": 1}}))
    assert "job.priority: expected one of low, normal, high, got an integer" in str(err.value)
    schedule.validate(cbor2.dumps({"job": {"priority": "high"}}))


def test_the_overlay_narrows_and_names() -> None:
    echo = interfaces.bundled("0.3").lookup(b"echo").request.by_name["req"].type
    assert isinstance(echo, Struct)
    delay = echo.by_name["delayMs"]
    assert delay.type == Int(-(10**12), 10**12) and delay.cli == "delay-ms"


def test_a_description_without_overlay_entries_still_works() -> None:
    text = """
    Thing = { size: int, label: tstr / nil, kind: "a" / "b" }
    ThingReq = { thing: Thing }
    ; acme_widget_create (ctor)
    acme_widget_create-request = ThingReq
    acme_widget_create-response = tstr
    ; acme_widget_measure (ffi)
    ; Measures a thing.
    acme_widget_measure-request = ThingReq
    acme_widget_measure-response = [* int]
    ; acme_widget_ping (ffiStatic)
    acme_widget_ping-request = ThingReq
    acme_widget_ping-response = tstr
    ; acme_widget_destroy (dtor)
    acme_widget_destroy-response = nil
    """
    i = interfaces.build(text, "test")
    measure = i.lookup(b"measure")
    assert measure.doc == "Measures a thing." and not measure.static
    assert i.lookup(b"ping").static
    measure.validate(cbor2.dumps({"thing": {"size": 3, "label": None, "kind": "b"}}))
    with pytest.raises(DaemonError, match=r"thing\.kind: expected one of a, b"):
        measure.validate(cbor2.dumps({"thing": {"kind": "c"}}))
    assert i.events == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Broken = {", "not valid CDDL"),
        ("; x_y (ffi)\nx_y-request = Missing\nx_y-response = tstr", "no rule named 'Missing'"),
        ("Req = { }\nx_y-request = Req\nx_y-response = tstr", "has no \\(ffi\\)"),
        ("; x_y (ffi)\nx_y-request = { }\nx_y-response = tstr", "inline maps are not supported"),
        ("; x_y (ffi)\nx_y-request = tstr\nx_y-response = tstr", "must name a map rule"),
    ],
)
def test_bad_descriptions_are_refused_precisely(text: str, message: str) -> None:
    with pytest.raises(cddl.CDDLError, match=message):
        interfaces.build(text, "test")


def test_a_bundled_interface_is_built_once_however_its_library_is_named() -> None:
    """The import asks for bundled("0.2"), the daemon names the library: one
    build serves both (each costs a start about a millisecond)."""
    assert interfaces.bundled("0.2") is interfaces.bundled("0.2", interfaces.DEFAULT_LIBRARY)
