"""Who may call over unix sockets: socket mode and group whatever the umask,
and the --allow-user/--allow-group checks on the peer's credentials.

Clients run as other users through setpriv, so these tests need root: they
skip on a laptop and fail in CI when root is missing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, UnixAddress, mytimerd_command, start_daemon

#: A user and groups that need not exist: SO_PEERCRED reports numbers.
OTHER_UID = 4243
ALLOWED_GID = 4242
NOBODY = 65534

#: A stdlib-only client: one version call, prints "ret body" (or the error)
#: and, after a refusal, whether the daemon then closed.
CLIENT = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect", e.errno); sys.exit(0)
s.sendall(struct.pack(">I", 7) + b"version" + struct.pack(">I", 1) + b"\\xa0")
head = b""
while len(head) < 8:
    chunk = s.recv(8 - len(head))
    if not chunk:
        print("eof"); sys.exit(0)
    head += chunk
ret, n = struct.unpack(">iI", head)
body = b""
while len(body) < n:
    body += s.recv(n - len(body))
print(ret, body.decode(errors="replace"))
if ret:  # a refusal is final: the daemon closes
    print("then", "eof" if s.recv(1) == b"" else "more")
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("these tests need root in CI", pytrace=False)
        pytest.skip("needs root (clients run as other users)")


def call_as(path: Path, uid: int, gid: int) -> str:
    """One version call over ``path`` as uid/gid; what the client saw."""
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            CLIENT,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout.strip()


def served(out: str) -> bool:
    """The client got RET_OK with the library's version."""
    return out.startswith("0 ") and "nim-timer" in out


@pytest.fixture
def umask_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons under umask 000 with extra options; stop them afterwards."""
    started: list[Daemon] = []
    # Other users must reach the socket: pytest's own folders are private.
    public = Path(tempfile.mkdtemp(prefix="mytimerd-access-", dir="/tmp"))
    public.chmod(0o755)

    def start(*args: str) -> Daemon:
        sock = public / f"a{len(started)}.sock"
        command = ["sh", "-c", 'umask 000; exec "$@"', "sh"]
        command += mytimerd_command("--unix", str(sock), *args)
        d = start_daemon(tmp_path, command=command, address=UnixAddress(str(sock)))
        started.append(d)
        return d

    yield start
    for d in started:
        assert d.stop() == 0, d.log()
    shutil.rmtree(public)


def test_self_bound_socket_mode_ignores_the_umask(umask_daemon: Callable[..., Daemon]) -> None:
    st = os.stat(umask_daemon().address.path)  # type: ignore[union-attr]
    assert stat.S_IMODE(st.st_mode) == 0o660
    st = os.stat(
        umask_daemon("--socket-mode", "0600", "--socket-group", str(NOBODY)).address.path  # type: ignore[union-attr]
    )
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_gid == NOBODY


def test_socket_mode_keeps_others_out(umask_daemon: Callable[..., Daemon]) -> None:
    path = Path(umask_daemon().address.path)  # type: ignore[union-attr]
    assert call_as(path, NOBODY, NOBODY) == "connect 13"  # EACCES
    assert served(call_as(path, NOBODY, os.stat(path).st_gid))


def test_allow_lists_check_every_unix_peer(umask_daemon: Callable[..., Daemon]) -> None:
    d = umask_daemon(
        "--socket-mode",
        "0666",
        "--allow-group",
        str(ALLOWED_GID),
        "--allow-user",
        str(OTHER_UID),
    )
    path = Path(d.address.path)  # type: ignore[union-attr]
    denied = call_as(path, NOBODY, NOBODY)
    assert denied.startswith(
        f"1 mytimerd.PermissionDenied: uid {NOBODY} may not use this socket "
        "(--allow-user/--allow-group)"
    ), denied
    assert denied.endswith("then eof")  # answered once, then closed
    assert served(call_as(path, NOBODY, ALLOWED_GID))  # by group
    assert served(call_as(path, OTHER_UID, NOBODY))  # by user
    assert served(call_as(path, 0, 0))  # root always passes
    with d.client() as c:  # the daemon keeps serving, and counted the refusal
        stats = c.call_value("mytimerd.stats")
    assert stats["errors"]["PermissionDenied"] == 1  # type: ignore[index]
    assert (
        "refused (connection) from uid:65534: PermissionDenied: uid 65534 may not use this socket"
        in d.log()
    )


def test_unknown_user_or_group_is_a_usage_error(tmp_path: Path) -> None:
    for option in ("--allow-user", "--allow-group", "--socket-group"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mytimerd",
                "--unix",
                str(tmp_path / "x.sock"),
                option,
                "no-such-name",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        assert "no-such-name" in done.stderr
