#!/bin/sh
# Install mytimerd, its native library and its systemd units.
#
#   sudo packaging/install.sh                       # PREFIX=/usr/local
#   sudo PREFIX=/usr packaging/install.sh
#   PREFIX=/usr DESTDIR=/tmp/stage packaging/install.sh   # staged (packaging)
#
# Layout (PREFIX=/usr/local):
#   $PREFIX/lib/mytimerd/              self-contained venv (built on $PYTHON) with
#                                      the mytimerd package, its libmy_timer.so
#                                      (mytimerd/_lib/) and cbor2, cffi, systemd-python
#   $PREFIX/bin/mytimerd, mytimerctl   symlinks into the venv
#   $UNITDIR/mytimerd.socket, mytimerd-tcp.socket, mytimerd.service
#                                      (ExecStart= rewritten to $PREFIX/bin/mytimerd)
#   $SYSUSERSDIR/mytimerd.conf         sysusers.d file creating group "mytimer"
#   $PREFIX/share/doc/mytimerd/        docs/systemd.md and the example drop-in
#
# Variables (environment or VAR=value arguments):
#   PREFIX       default /usr/local
#   DESTDIR      staging root, default empty. The venv is built in the staging
#                directory and its absolute paths are rewritten to the final
#                location, so it works once $DESTDIR$PREFIX is moved to $PREFIX.
#   PYTHON       interpreter the venv is built on, default /usr/bin/python3. It
#                must be readable by any user (the service runs with
#                DynamicUser=yes): do not use one under /root or /home.
#   UNITDIR      default $PREFIX/lib/systemd/system for PREFIX=/usr and
#                /usr/local (both are on systemd's unit search path),
#                /etc/systemd/system for any other PREFIX.
#   SYSUSERSDIR  default $PREFIX/lib/sysusers.d for /usr and /usr/local,
#                /etc/sysusers.d otherwise.
#   PIP_ARGS     extra arguments for pip install (e.g. --no-index --find-links DIR)
#   POSTINST     yes|no|auto (default auto): run systemd-sysusers and
#                systemctl daemon-reload afterwards. auto = only when DESTDIR is
#                empty, we are root and systemd is running.
#
# Build requirements: python3-venv, gcc, pkg-config, libsystemd-dev, python3-dev.
set -eu

for arg in "$@"; do
    case "$arg" in
        PREFIX=*|DESTDIR=*|PYTHON=*|UNITDIR=*|SYSUSERSDIR=*|PIP_ARGS=*|POSTINST=*) export "$arg";;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '/^set -eu/d; s/^# \{0,1\}//'; exit 0;;
        *) echo "install.sh: unknown argument: $arg (see --help)" >&2; exit 2;;
    esac
done

PREFIX=${PREFIX:-/usr/local}
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PYTHON=${PYTHON:-/usr/bin/python3}
PIP_ARGS=${PIP_ARGS:-}
POSTINST=${POSTINST:-auto}
case "$PREFIX" in
    /usr|/usr/local) UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
                     SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d};;
    *)               UNITDIR=${UNITDIR:-/etc/systemd/system}
                     SYSUSERSDIR=${SYSUSERSDIR:-/etc/sysusers.d};;
esac
case "$PREFIX" in /*) ;; *) echo "install.sh: PREFIX must be absolute" >&2; exit 2;; esac

SRC=$(cd "$(dirname "$0")/.." && pwd)
VENV=$PREFIX/lib/mytimerd          # final location
STAGE=$DESTDIR$VENV                # where we build it now
BINDIR=$PREFIX/bin
DOCDIR=$PREFIX/share/doc/mytimerd

say() { printf 'install.sh: %s\n' "$*"; }

umask 022
say "building venv at $STAGE (final location $VENV) on $PYTHON"
rm -rf "$STAGE"
mkdir -p "$(dirname "$STAGE")"
"$PYTHON" -m venv "$STAGE"
# build from a scratch copy: the build (make -C native, setuptools) then never
# writes into the checkout, and runs alongside other builds safely
BUILD=$(mktemp -d "${TMPDIR:-/tmp}/mytimerd-build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
tar -C "$SRC" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude=./native/build --exclude=./bench/build --exclude=./tests/build \
    --exclude=./mytimerd/_lib --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache . \
    | tar -C "$BUILD" -xf -
# shellcheck disable=SC2086
"$STAGE/bin/python" -m pip install --quiet --no-compile --disable-pip-version-check $PIP_ARGS "$BUILD"
# pip and setuptools are not needed at run time
"$STAGE/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
rm -f "$STAGE"/bin/pip "$STAGE"/bin/pip3* "$STAGE"/bin/activate* "$STAGE"/bin/Activate.ps1

if [ -n "$DESTDIR" ]; then
    # venvs embed their absolute path: rewrite the staging path to the final one
    say "relocating venv paths $STAGE -> $VENV"
    for f in "$STAGE"/bin/* "$STAGE/pyvenv.cfg"; do
        [ -f "$f" ] && [ ! -L "$f" ] || continue
        if grep -qI -F "$STAGE" "$f" 2>/dev/null; then
            sed -i "s|$STAGE|$VENV|g" "$f"
        fi
    done
fi
# byte-compile now (the service cannot write __pycache__ under ProtectSystem=strict),
# recording the final paths in the .pyc files
"$STAGE/bin/python" -m compileall -q -j 0 ${DESTDIR:+-s "$DESTDIR" -p /} "$STAGE/lib" >/dev/null
chmod -R u+rwX,go+rX,go-w "$STAGE"

say "linking $DESTDIR$BINDIR/mytimerd, mytimerctl"
mkdir -p "$DESTDIR$BINDIR"
for prog in mytimerd mytimerctl; do
    ln -sfn "$VENV/bin/$prog" "$DESTDIR$BINDIR/$prog"
done

say "installing units to $DESTDIR$UNITDIR"
mkdir -p "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$DOCDIR/examples"
for unit in mytimerd.socket mytimerd-tcp.socket mytimerd.service; do
    sed -e "s|/usr/local/bin/mytimerd|$BINDIR/mytimerd|g" \
        -e "s|/usr/local/share/doc/mytimerd|$DOCDIR|g" "$SRC/systemd/$unit" > "$DESTDIR$UNITDIR/$unit.tmp"
    chmod 644 "$DESTDIR$UNITDIR/$unit.tmp"
    mv "$DESTDIR$UNITDIR/$unit.tmp" "$DESTDIR$UNITDIR/$unit"
done
install -m 644 "$SRC/systemd/mytimerd.sysusers" "$DESTDIR$SYSUSERSDIR/mytimerd.conf"
install -m 644 "$SRC/docs/systemd.md" "$DESTDIR$DOCDIR/systemd.md"
install -m 644 "$SRC"/systemd/examples/* "$DESTDIR$DOCDIR/examples/" 2>/dev/null || true

if [ "$POSTINST" = auto ]; then
    if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then
        POSTINST=yes
    else
        POSTINST=no
    fi
fi
if [ "$POSTINST" = yes ]; then
    say "creating group mytimer (systemd-sysusers) and reloading systemd"
    systemd-sysusers "$SYSUSERSDIR/mytimerd.conf"
    systemctl daemon-reload
fi

say "done. Next: systemctl enable --now mytimerd.socket  (and mytimerd-tcp.socket for TCP)"
