"""What a default start imports (issue 21: a socket-activated daemon answers
its first call within 100 ms). Each module below serves only what it is
listed with, and importing it cost every start time until it was imported
only where needed. A start's imports are read from Python's own log of them
(``-X importtime``, here through ``PYTHONPROFILEIMPORTTIME``), up to its
first answers."""

from __future__ import annotations

from collections.abc import Callable

from mytimerd.protocol import wire
from tests.support.daemon import Daemon, WireClient

#: Module -> the only thing the daemon needs it for.
NOT_AT_START = {
    "tomllib": "a TOML --config-file",
    "json": "a --config-file, or a --config value that is not text",
    "shutil": "nothing: argparse's default width is found without it",
    "bz2": "nothing (shutil imported it)",
    "lzma": "nothing (shutil imported it)",
    "ctypes": "glibc's malloc_trim, after a flood of TLS handshakes",
    "cddlparser": "a description other than the bundled ones, which come compiled",
}


def imported(log: str) -> set[str]:
    """The modules an -X importtime log says were imported."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_a_default_start_imports_nothing_it_does_not_need(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(env={"PYTHONPROFILEIMPORTTIME": "1"})
    with WireClient(d.address) as c:
        assert c.call("version").ret == wire.RET_OK
    modules = imported(d.log())
    assert {"mytimerd.daemon.cli", "mytimerd.daemon.server", "uvloop"} <= modules
    unneeded = {m: NOT_AT_START[m] for m in sorted(modules & NOT_AT_START.keys())}
    assert unneeded == {}, "imported by a default start, needed only for:"
