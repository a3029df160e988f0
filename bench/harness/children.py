"""The harness's child processes: each runs in its own process group, gets
SIGTERM if the harness dies (PDEATHSIG), and is killed (SIGTERM, then
SIGKILL) when its scenario ends and when the harness exits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from typing import Any

from .common import ROOT

_children: list[subprocess.Popen[Any]] = []

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # in the child before exec: SIGTERM when the harness dies, even by SIGKILL
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
    """Start cmd (cwd: the repository) as a tracked child in its own session."""
    p = subprocess.Popen(
        cmd, start_new_session=True, cwd=kw.pop("cwd", ROOT), preexec_fn=_die_with_parent, **kw
    )
    _children.append(p)
    return p


def stop(p: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM to the child's process group, SIGKILL after grace seconds."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)
    # the group may still hold children even if the leader is gone
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=grace)
    if p in _children:
        _children.remove(p)


def stop_all() -> None:
    """Stop every child still running."""
    for p in list(_children):
        stop(p, grace=2.0)


def on_term(signum: int, _frame: Any) -> None:
    """Signal handler: unwind (and so stop the children) as on an error."""
    raise SystemExit(128 + signum)
