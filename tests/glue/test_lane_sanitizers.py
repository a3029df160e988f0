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

``lane_tls_stress.c`` does the same for TLS connections (glue/lanetls.c): the
server side of each is an OpenSSL session on memory BIOs, as Python's ssl makes
it, lent to the lane; its client an OpenSSL client in its own thread, with
certificates made here.
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
from tests.support.certs import make_pki
from tests.support.native import build_native
from tests.support.sanitizers import run_scenario

HERE: Path = Path(__file__).resolve().parent
DRIVER_SRC: Path = HERE / "lane_stress.c"
TLS_DRIVER_SRC: Path = HERE / "lane_tls_stress.c"

#: Version calls per stress run (each of direct and threaded mode, per
#: sanitizer), spread over 8 clients; client 0 makes 1,280 more on its own.
STRESS_CALLS: int = int(os.environ.get("MYTIMER_LANE_STRESS_CALLS", "50000"))
#: Version calls per TLS stress run, spread over 4 clients; client 0 makes
#: 2,000 more on its own.
TLS_STRESS_CALLS: int = int(os.environ.get("MYTIMER_LANE_TLS_STRESS_CALLS", "40000"))


@pytest.fixture(scope="module")
def lane_driver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lane_stress + glue.c + lane.c, built once per sanitizer."""
    return build_drivers(DRIVER_SRC, tmp_path_factory.mktemp("lane-sanitizers"))


@pytest.fixture(scope="module")
def lane_tls_driver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lane_tls_stress + glue.c + lane.c + lanetls.c, built once per sanitizer."""
    return build_drivers(TLS_DRIVER_SRC, tmp_path_factory.mktemp("lane-tls-sanitizers"))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The server's certificate and key, and the CA its clients trust."""
    pki = make_pki(tmp_path_factory.mktemp("lane-tls-pki"))
    return pki.server.cert, pki.server.key, pki.ca.pem


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
    work left always leaves the lane's descriptor readable; turns with the
    loop idle serve several connections round after round (serve_busy);
    shutdown is clean."""
    lib = build_native(variant)
    out = run_lane(variant, lane_driver[variant], "stress", lib, direct, STRESS_CALLS)
    print(out)
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


@pytest.mark.parametrize("direct", [0, 1], ids=["threaded", "direct"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lane_tls_stress(
    variant: str,
    direct: int,
    lane_tls_driver: dict[str, Path],
    tls_files: tuple[Path, Path, Path],
) -> None:
    """4 TLS clients (each verifying the server's certificate) make version
    calls one at a time through the lane, which reads and seals them on the
    sessions it was lent; now and then two requests in one record, or 20
    (more than the lane reads: the session keeps the rest), come back
    MT_LANE_AHEAD, and one in two records waits in the lane. The loop's
    thread runs the lane with small limits, serves what comes back (the
    bytes taken back, then the plaintext the session still holds) on the
    session, lends it again, and sweeps. Every client reads exactly its
    answers, byte for byte, then its close_notify comes back MT_LANE_EOF and
    ours ends it; client 0 makes its last calls alone, served on the spot;
    every other turn the loop is idle, and several sessions are served round
    after round; the answers add up to the calls made; nothing leaks or
    races."""
    lib = build_native(variant)
    exe = lane_tls_driver[variant]
    out = run_lane(variant, exe, "stress", lib, direct, TLS_STRESS_CALLS, *tls_files)
    print(out)
    assert "ahead=0 " not in out, out


@pytest.mark.parametrize("direct", [0, 1], ids=["threaded", "direct"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lane_tls_socket_full(
    variant: str,
    direct: int,
    lane_tls_driver: dict[str, Path],
    tls_files: tuple[Path, Path, Path],
) -> None:
    """A TLS client that reads nothing (its socket's buffers small) while it
    makes calls one at a time comes back MT_LANE_FULL; mt_lane_take hands
    over the sealed rest, which the loop writes: the client then reads every
    answer, exact, on a session still in step, makes more calls through the
    lane, and ends with close_notify (MT_LANE_EOF)."""
    lib = build_native(variant)
    out = run_lane(variant, lane_tls_driver[variant], "full", lib, direct, *tls_files)
    assert "full=0 " not in out, out
