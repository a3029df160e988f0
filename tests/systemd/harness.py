"""Boot a real systemd as PID 1 in private namespaces, drive it, tear it down.

How it works (see docs/systemd.md, "Tests under a real systemd"):

1. ``unshare --pid --fork --mount --mount-proc --propagation private`` runs
   ``stage1``, which moves itself into fresh child cgroups (one per cgroup
   hierarchy systemd uses) and re-executes itself under ``unshare --cgroup`` so
   the sandboxed systemd sees that child cgroup as its root and cannot touch
   the machine's cgroups.
2. ``stage2`` makes the filesystem private *before* systemd runs:
   - a private copy of the whole of /etc is bind-mounted over /etc (sysusers,
     useradd and friends write there),
   - an installed tree (``install.sh DESTDIR=...``) is bind-mounted over
     /usr/local, so the units and the daemon live at their real paths,
   - fresh tmpfs on /run, /tmp, /var/tmp, /var/log and /var/lib/systemd
     (journald would otherwise write into the real /var/log/journal, and
     systemd-tmpfiles once wiped a machine's /tmp from such a sandbox: we
     never start it anyway),
   - cgroupfs re-mounted inside the cgroup namespace,
   - a restricted unit path: /run/systemd/system (tests' drop-ins), the
     installed /usr/local/lib/systemd/system, and a directory with copies of
     journald's units, empty stand-ins for the default-dependency targets
     (sysinit.target, basic.target, ...) and a minimal target wanting only
     journald. Never /lib/systemd/system or /etc/systemd/system: their
     sysinit.target would run systemd-sysctl, -tmpfiles-setup, -binfmt, ...,
     which change the machine (sysctls and binfmt are not namespaced);
   - no generators;
   then execs ``/lib/systemd/systemd --system --unit=<that target>``.
3. Everything is driven from outside with ``nsenter -t PID -m -p`` + the real
   ``systemctl`` / ``journalctl``.
4. Teardown: SIGKILL the namespace's PID 1 (the kernel kills everything else
   in the PID namespace), then rmdir the (empty) cgroups it created.

The network namespace is shared with the machine: TCP tests must use free
ports.

``Sandbox(private_system=True)`` (tests/packaging) boots a *private system*
instead of bind-mounting an installed tree: /usr and /var are overlayfs
mounts over the machine's (upper layers in the state directory, so dpkg's
database, /usr/bin, /usr/lib/... change only there), /etc is the private
copy with an empty /etc/systemd/system, /usr/lib/systemd/system is an empty
directory (the machine's units stay hidden, what dpkg installs appears
there), a container's policy-rc.d is hidden, and systemd's unit path is
/run/systemd/system, /etc/systemd/system, /usr/local/lib/systemd/system,
/usr/lib/systemd/system and the stand-ins. dpkg and install.sh then install,
enable, start, upgrade and remove for real.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
TARGET = "mytimerd-sandbox.target"
NS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PR_SET_PDEATHSIG = 1

#: mytimerd's units, as install.sh lays them out for PREFIX=/usr/local
UNITS = ("mytimerd.socket", "mytimerd-tcp.socket", "mytimerd.service")
UNIT_DIR = "/usr/local/lib/systemd/system"


class BootError(RuntimeError):
    """The sandboxed systemd could not be booted."""


def _die_with_parent() -> None:  # preexec_fn: the sandbox dies with pytest
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_cgroup_mounts() -> list[tuple[str, str]]:
    """(mountpoint, kind) of the cgroup hierarchies systemd needs: the unified
    (cgroup2) one and, on legacy/hybrid hosts, the name=systemd one."""
    found: list[tuple[str, str]] = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, fstype, opts, *_ = line.split()
            if fstype == "cgroup2":
                found.append((mnt, "cgroup2"))
            elif fstype == "cgroup" and "name=systemd" in opts.split(","):
                found.append((mnt, "name=systemd"))
    return found


def _own_cgroup_path(kind: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if kind == "cgroup2" and hid == "0" and controllers == "":
                return path
            if kind == "name=systemd" and "name=systemd" in controllers.split(","):
                return path
    return "/"


def _all_cgroup_roots() -> list[Path]:
    """Every cgroup directory this process sits in, on every hierarchy."""
    mounts: list[tuple[str, str, str]] = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, fstype, opts, *_ = line.split()
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((mnt, fstype, opts))
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    roots = []
    for mnt, fstype, opts in mounts:
        if fstype == "cgroup2":
            path = own.get("", "/")
        else:
            names = set(opts.split(","))
            path = "/"
            for controllers, p in own.items():
                if controllers and set(controllers.split(",")) <= names:
                    path = p
                    break
        roots.append(Path(mnt + path))
    return roots


def _cgroup_dirs(roots: Sequence[Path]) -> set[Path]:
    dirs: set[Path] = set()
    for root in roots:
        for dirpath, _dirnames, _files in os.walk(root):
            dirs.add(Path(dirpath))
    return dirs


STAGE1 = r"""#!/bin/sh
# stage 1: inside the new PID + mount namespaces, still in the host's cgroups.
set -eu
for procs in $MYTIMERD_SANDBOX_CGROUPS; do
    echo $$ > "$procs"
done
exec unshare --cgroup /bin/sh "$MYTIMERD_SANDBOX_STATE/stage2"
"""

STAGE2 = r"""#!/bin/sh
# stage 2: private filesystem, then exec systemd as PID 1.
set -eu
S=$MYTIMERD_SANDBOX_STATE
# bind mounts whose sources live under the real /tmp come first
mount --bind "$S/etc" /etc
if [ -n "${MYTIMERD_SANDBOX_PRIVATE:-}" ]; then
    # A private system for dpkg and install.sh: /usr and /var are overlays
    # of the machine's, whose changes land in $S/overlay (the machine's own
    # /usr and /var are never written).
    for d in usr var; do
        mkdir -p "$S/overlay/$d-upper" "$S/overlay/$d-work"
        mount -t overlay -o "lowerdir=/$d,upperdir=$S/overlay/$d-upper,workdir=$S/overlay/$d-work" \
            "sandbox-$d" "/$d"
    done
fi
if [ -n "${MYTIMERD_SANDBOX_USR_LOCAL:-}" ]; then
    mount --bind "$MYTIMERD_SANDBOX_USR_LOCAL" /usr/local
fi
mount -t tmpfs -o mode=755,nosuid,nodev sandbox-run /run
mount -t tmpfs -o mode=1777,nosuid,nodev sandbox-tmp /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev sandbox-vartmp /var/tmp
mount -t tmpfs -o mode=755,nosuid,nodev sandbox-varlog /var/log
mkdir -p /var/lib/systemd
mount -t tmpfs -o mode=755,nosuid,nodev sandbox-varlibsystemd /var/lib/systemd
# cgroupfs as seen from our cgroup namespace
if [ "$MYTIMERD_SANDBOX_CGMODE" = unified ]; then
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
else
    mount -t tmpfs -o mode=755,nosuid,nodev,noexec sandbox-cgroup /sys/fs/cgroup
    mkdir /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup /sys/fs/cgroup/systemd
    if [ "$MYTIMERD_SANDBOX_CGMODE" = hybrid ]; then
        mkdir /sys/fs/cgroup/unified
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
    fi
fi
# Only our units exist for this systemd: a restricted unit path (no /lib,
# /etc), empty stand-ins for the targets units depend on by default, and no
# generators. Otherwise starting any socket or service pulls in
# sysinit.target and with it systemd-sysctl, -tmpfiles-setup, -binfmt,
# -modules-load, -remount-fs, ... which act on the machine, not the sandbox.
U=/run/mytimerd-sandbox/units
mkdir -p /run/systemd/system "$U" /run/mytimerd-sandbox/no-generators
for u in systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket \
         systemd-journald-audit.socket -.slice system.slice; do
    if [ -e "/lib/systemd/system/$u" ]; then cp "/lib/systemd/system/$u" "$U/"; fi
done
for t in sysinit basic sockets shutdown local-fs local-fs-pre paths timers slices \
         network network-pre nss-user-lookup time-set; do
    printf '[Unit]\nDescription=%s.target (empty in the sandbox)\n' "$t" > "$U/$t.target"
    printf 'DefaultDependencies=no\n' >> "$U/$t.target"
done
cat > "$U/@TARGET@" <<'EOT'
[Unit]
Description=mytimerd test sandbox (journald only)
DefaultDependencies=no
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
After=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
AllowIsolate=yes
EOT
if [ -n "${MYTIMERD_SANDBOX_PRIVATE:-}" ]; then
    # The machine's units stay hidden: an empty directory (on /run) takes
    # the place of /usr/lib/systemd/system (= /lib/systemd/system), so what
    # is found there is what dpkg or install.sh put there. A container's
    # policy-rc.d (exit 101: start nothing) is not part of a real system.
    mkdir -p /run/mytimerd-sandbox/system-units
    mount --bind /run/mytimerd-sandbox/system-units /usr/lib/systemd/system
    rm -f /usr/sbin/policy-rc.d
fi
D=${MYTIMERD_SANDBOX_UNIT_DIRS:-}
export SYSTEMD_UNIT_PATH="/run/systemd/system:${D:+$D:}$U"
export SYSTEMD_GENERATOR_PATH=/run/mytimerd-sandbox/no-generators
export SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/mytimerd-sandbox/no-generators
unset MYTIMERD_SANDBOX_CGROUPS MYTIMERD_SANDBOX_STATE MYTIMERD_SANDBOX_USR_LOCAL
unset MYTIMERD_SANDBOX_CGMODE MYTIMERD_SANDBOX_UNIT_DIRS MYTIMERD_SANDBOX_PRIVATE
exec @SYSTEMD@ --system --unit=@TARGET@ --log-target=journal --show-status=no
"""


class Sandbox:
    """A systemd booted as PID 1 in private PID, mount and cgroup namespaces."""

    def __init__(
        self, state_dir: Path, usr_local: Path | None = None, *, private_system: bool = False
    ) -> None:
        """``usr_local``: a tree bind-mounted over /usr/local, whose units
        systemd sees (install.sh DESTDIR tests). ``private_system``: /usr and
        /var become private overlays of the machine's and /etc a private copy
        with an empty /etc/systemd/system, and systemd sees
        /etc/systemd/system and /usr/lib/systemd/system (empty at boot): a
        system on which dpkg and install.sh can install, enable, upgrade and
        remove for real."""
        if usr_local is not None and private_system:
            raise ValueError("usr_local and private_system do not go together")
        self.state = state_dir
        self.usr_local = usr_local
        self.private_system = private_system
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # host PID of the sandbox's PID 1
        self.log_path = state_dir / "systemd-console.log"
        self._cgroup_roots: list[Path] = []
        self._cgroup_before: set[Path] = set()
        self._own_cgroups: list[Path] = []

    # ------------------------------------------------------------------ boot
    def boot(self, timeout: float = 30.0) -> None:
        for tool in ("unshare", "nsenter", "systemctl", "journalctl"):
            if shutil.which(tool) is None:
                raise BootError(f"{tool} not found")
        if not os.path.exists(SYSTEMD):
            raise BootError(f"{SYSTEMD} not found")
        if os.geteuid() != 0:
            raise BootError("booting systemd in namespaces needs root")

        self.state.mkdir(parents=True, exist_ok=True)
        etc = self.state / "etc"
        if etc.exists():
            shutil.rmtree(etc)
        subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
        if self.private_system:
            # the machine's enablement symlinks are not this system's
            shutil.rmtree(etc / "systemd" / "system")
            (etc / "systemd" / "system").mkdir(mode=0o755)
            overlay = self.state / "overlay"
            if overlay.exists():
                shutil.rmtree(overlay)
        (self.state / "stage1").write_text(STAGE1)
        (self.state / "stage2").write_text(
            STAGE2.replace("@TARGET@", TARGET).replace("@SYSTEMD@", SYSTEMD)
        )

        # a child cgroup of our own on each hierarchy systemd tracks processes in
        mounts = _own_cgroup_mounts()
        kinds = {k for _m, k in mounts}
        if kinds == {"cgroup2"}:
            cgmode = "unified"
        elif kinds == {"name=systemd", "cgroup2"}:
            cgmode = "hybrid"
        elif kinds == {"name=systemd"}:
            cgmode = "legacy"
        else:
            raise BootError(f"unsupported cgroup layout: {mounts}")
        self._cgroup_roots = _all_cgroup_roots()
        self._cgroup_before = _cgroup_dirs(self._cgroup_roots)
        tag = f"mytimerd-sandbox-{uuid.uuid4().hex[:8]}"
        procs = []
        for mnt, kind in mounts:
            d = Path(mnt + _own_cgroup_path(kind).rstrip("/")) / tag
            d.mkdir()
            self._own_cgroups.append(d)
            procs.append(str(d / "cgroup.procs"))

        env = {
            "PATH": NS_PATH,
            "LANG": "C.UTF-8",
            "MYTIMERD_SANDBOX_STATE": str(self.state),
            "MYTIMERD_SANDBOX_CGROUPS": " ".join(procs),
            "MYTIMERD_SANDBOX_CGMODE": cgmode,
            "MYTIMERD_SANDBOX_USR_LOCAL": str(self.usr_local or ""),
            # the installed units (at their real path) are visible to systemd
            "MYTIMERD_SANDBOX_UNIT_DIRS": (
                "/etc/systemd/system:/usr/local/lib/systemd/system:/usr/lib/systemd/system"
                if self.private_system
                else UNIT_DIR
                if self.usr_local
                else ""
            ),
            "MYTIMERD_SANDBOX_PRIVATE": "1" if self.private_system else "",
        }
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "/bin/sh",
                str(self.state / "stage1"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
            cwd="/",
        )
        log.close()
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BootError(
                    f"sandbox exited with {self.proc.returncode}:\n{self.console_log()}"
                )
            if self.pid is None:
                self.pid = self._find_pid1()
            if self.pid is not None:
                r = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise BootError(
            f"systemd not running after {timeout}s (state {state!r}):\n{self.console_log()}"
        )

    def _find_pid1(self) -> int | None:
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in children.split():
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if exe.endswith("/systemd"):
                return int(pid)
        return None

    def console_log(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    # -------------------------------------------------------------- teardown
    def teardown(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        # wait for the namespace to empty, then remove the cgroups it created
        deadline = time.monotonic() + 10
        while True:
            created = sorted(
                _cgroup_dirs(self._cgroup_roots) - self._cgroup_before,
                key=lambda p: len(p.parts),
                reverse=True,
            )
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not (_cgroup_dirs(self._cgroup_roots) - self._cgroup_before):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.pid = None

    # ---------------------------------------------------------------- driving
    def nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        assert self.pid is not None, "sandbox not booted"
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-C", "--wd=/", "--", *argv]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": NS_PATH,
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "cat",
            "SYSTEMD_COLORS": "0",
            "SYSTEMD_LOG_COLOR": "0",
        }
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            self.nsenter_argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            input=input,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited {r.returncode}\n"
                f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
            )
        return r

    def popen(
        self, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.nsenter_argv(argv),
            text=True,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-ask-password", *args], check=check, timeout=timeout)

    def prop(self, unit: str, name: str) -> str:
        return self.systemctl("show", "-P", name, unit).stdout.strip()

    def journal(self, *args: str) -> str:
        self.run(["journalctl", "--sync"], check=False)
        return self.run(
            ["journalctl", "--no-pager", "-o", "short-monotonic", *args], check=False
        ).stdout

    def upper(self, top: str) -> Path:
        """Where a private system's changes to /usr or /var land (overlayfs upper)."""
        assert self.private_system
        return self.state / "overlay" / f"{top.strip('/')}-upper"

    def path(self, inside: str) -> Path:
        """A path inside the sandbox's mount namespace, reachable from outside."""
        assert self.pid is not None
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def write_file(self, inside: str, text: str, mode: int = 0o644) -> None:
        p = self.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.rename(p)

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def booted(
    state_dir: Path, usr_local: Path | None = None, *, private_system: bool = False
) -> Iterator[Sandbox]:
    sb = Sandbox(state_dir, usr_local, private_system=private_system)
    try:
        sb.boot()
        yield sb
    finally:
        sb.teardown()
