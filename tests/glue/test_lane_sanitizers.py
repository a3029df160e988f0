"""glue/lane.c (the lane) with glue/glue.c under AddressSanitizer+UBSan and
ThreadSanitizer.

``lane_stress.c`` links the lane and the glue directly and drives them the way
the daemon's event loop does: one thread calls every ``mt_lane_*`` function
(and takes connections back, serves what they sent, writes the answers of
calls taken back in flight when they come as orphans), while client threads
each use only their own end of a socketpair. It is compiled with the project's
``-Wall -Wextra -Werror`` once per sanitizer and loads the matching sanitizer
build of libmy_timer. Every scenario runs in its own process, in direct and in
threaded mode; any sanitizer report, a non-zero exit or a missing PASS line
fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.glue.test_glue_sanitizers import (
    RUN_TIMEOUT,
    VARIANTS,
    _env,
    _launcher,
    build_drivers,
)
from tests.support.native import build_native
from tests.support.sanitizers import run_scenario

HERE: Path = Path(__file__).resolve().parent
DRIVER_SRC: Path = HERE / "lane_stress.c"

#: Version calls per stress run (each of direct and threaded mode, per
#: sanitizer), spread over 8 clients; client 0 makes 1,280 more on its own.
STRESS_CALLS: int = int(os.environ.get("MYTIMER_LANE_STRESS_CALLS", "50000"))


@pytest.fixture(scope="module")
def lane_driver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lane_stress + glue.c + lane.c, built once per sanitizer."""
    return build_drivers(DRIVER_SRC, tmp_path_factory.mktemp("lane-sanitizers"))


def run_lane(variant: str, exe: Path, *args: str | int | Path) -> str:
    """Run one scenario; fail on a report, a non-zero exit or a missing PASS."""
    cmd = [*_launcher(variant), str(exe), *map(str, args)]
    return run_scenario(cmd, _env(), RUN_TIMEOUT, str(args[0]))


@pytest.mark.parametrize("direct", [0, 1], ids=["threaded", "direct"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lane_stress(variant: str, direct: int, lane_driver: dict[str, Path]) -> None:
    """8 clients make version calls one at a time (now and then two at once,
    or one in two parts) through the lane, while the loop's thread runs it
    with small limits (answers put back for the next turn), takes back every
    connection it hands back (alone, ahead, quiet), takes one back at random
    whatever it is doing, and sweeps: every client reads exactly its
    answers, byte for byte; the lane's answers, the orphans of calls taken
    back in flight and those the loop wrote itself add up to the calls made;
    work left always leaves the lane's descriptor readable; shutdown is
    clean."""
    lib = build_native(variant)
    out = run_lane(variant, lane_driver[variant], "stress", lib, direct, STRESS_CALLS)
    assert "orphans=0 " not in out, out


@pytest.mark.parametrize("wait", [0, 1], ids=["calls", "answers"])
@pytest.mark.parametrize("direct", [0, 1], ids=["threaded", "direct"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lane_shutdown_in_flight(
    variant: str, direct: int, wait: int, lane_driver: dict[str, Path]
) -> None:
    """mt_shutdown with 4 calls made by the lane and nothing taken back nor
    run again (``calls``: right away; ``answers``: once their answers wait in
    the lane's queue) returns 0; LeakSanitizer proves lane_free freed them,
    and ThreadSanitizer that no answer races the lane's end."""
    lib = build_native(variant)
    run_lane(variant, lane_driver[variant], "shutdown", lib, direct, wait)


@pytest.mark.parametrize("direct", [0, 1], ids=["threaded", "direct"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lane_client_ends(variant: str, direct: int, lane_driver: dict[str, Path]) -> None:
    """A client that sends a request and shuts its side at once (or while the
    call is made) reads its answer, and then comes back with MT_LANE_EOF and
    nothing unserved; one that sends 3 bytes and closes comes back with
    MT_LANE_EOF and those 3 bytes; one gone before its answer comes back
    with MT_LANE_ERROR."""
    lib = build_native(variant)
    run_lane(variant, lane_driver[variant], "eof", lib, direct)


@pytest.mark.parametrize("direct", [0, 1], ids=["threaded", "direct"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lane_socket_full(variant: str, direct: int, lane_driver: dict[str, Path]) -> None:
    """A socket that takes none of an answer comes back with MT_LANE_FULL;
    mt_lane_take hands over the unwritten rest (after minus its size when it
    does not fit), which with what the client got makes the answer; a slot
    left that way at mt_shutdown is freed with the lane."""
    lib = build_native(variant)
    run_lane(variant, lane_driver[variant], "full", lib, direct)
