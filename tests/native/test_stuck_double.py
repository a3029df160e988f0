"""The misbehaving test double used by the daemon's tests behaves as documented."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from tests.support.native import build_stuck_double

from .conftest import Native


@pytest.fixture(scope="module")
def double() -> Native:
    return Native(build_stuck_double())


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "control"
    saved = os.environ.get("STUCK_TIMER_CONTROL")
    os.environ["STUCK_TIMER_CONTROL"] = str(path)
    yield path
    if saved is None:
        del os.environ["STUCK_TIMER_CONTROL"]
    else:
        os.environ["STUCK_TIMER_CONTROL"] = saved


def test_ok_mode(double: Native, control: Path) -> None:
    c, s = double.create("dbl")
    assert c != double.ffi.NULL
    r = s.wait()[0]
    assert r.code == 0 and cbor2.loads(r.body) == str(int(double.ffi.cast("uintptr_t", c)))
    assert r.thread != threading.get_ident()
    ev_ud, ev = double.sink()
    assert double.lib.my_timer_add_event_listener(c, b"on_echo_fired", double.cb, ev_ud) == 1
    _, v = double.call("version", c, b"\xa0")
    assert v.wait()[0].body == cbor2.dumps("nim-timer v0.1.0")
    t0 = time.monotonic()
    _, e = double.call("echo", c, cbor2.dumps({"req": {"message": "hi", "delayMs": 50}}))
    r = e.wait()[0]
    assert r.at - t0 >= 0.045
    assert cbor2.loads(r.body) == {"echoed": "hi", "timerName": "dbl"}
    assert cbor2.loads(ev.wait()[0].body)["payload"] == {"message": "hi", "echoCount": 1}
    _, x = double.call("complex", c, b"\xa0")
    assert x.wait()[0].body == b"not implemented by the test double"
    assert double.lib.my_timer_destroy(c) == 0


def test_silent_and_block(double: Native, control: Path) -> None:
    control.write_text("ok")
    c, s = double.create("dbl")
    s.wait()
    control.write_text("silent\n")
    rc, v = double.call("version", c, b"\xa0")
    assert rc == 0
    control.write_text("block")
    returned = threading.Event()

    def blocked() -> None:
        double.call("version", c, b"\xa0")
        returned.set()

    t = threading.Thread(target=blocked, daemon=True)
    t.start()
    assert not returned.wait(0.2)
    control.write_text("ok")
    t0 = time.monotonic()
    assert double.lib.my_timer_destroy(c) == 0
    assert time.monotonic() - t0 < 0.5
    assert returned.wait(1.0)
    assert v.results == []
