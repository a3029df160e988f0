#!/bin/sh
# Install, upgrade or uninstall mytimerd on a host without dpkg (on Debian,
# prefer the package: packaging/build-deb, then apt install ./dist/mytimerd_*.deb).
#
#   sudo packaging/install.sh                       # install or upgrade, PREFIX=/usr/local
#   sudo packaging/install.sh uninstall             # stop, disable, remove everything
#   sudo PREFIX=/opt/mytimerd packaging/install.sh
#   PREFIX=/usr DESTDIR=/tmp/stage packaging/install.sh   # staged (packaging)
#
# An upgrade never takes a running installation down: the new version is
# built aside in its own directory, then switched to with one atomic rename
# of a symlink, and only then is mytimerd.service restarted, and only if it
# was running (systemd keeps the sockets open meanwhile: no client is
# refused). If anything fails before the switch, the old version stays.
#
# Layout (PREFIX=/usr/local):
#   $PREFIX/lib/mytimerd/releases/<version>-<time>/   a self-contained venv (packaging/build-venv)
#   $PREFIX/lib/mytimerd/current -> releases/<...>    the version in use (the previous one is kept)
#   $PREFIX/lib/mytimerd/installed-files              every file installed outside lib/mytimerd
#   $PREFIX/bin/mytimerd, mytimerctl                  -> ../lib/mytimerd/current/bin/...
#   $UNITDIR/mytimerd.socket, mytimerd-tcp.socket, mytimerd.service,
#            mytimerd@.socket, mytimerd@.service (one daemon per library)
#                                      (ExecStart= rewritten to $PREFIX/bin/mytimerd)
#   $PREFIX/lib/mytimerd/libecho.so, libecho-0.3.so -> current/.../mytimerd/_lib/
#   $PREFIX/share/mytimerd/descriptions/echo-0.2.cddl, echo-0.3.cddl   (libecho's)
#   $SYSUSERSDIR/mytimerd.conf         sysusers.d file creating group "mytimer"
#   $PREFIX/share/man/man8/mytimerd.8, man1/mytimerctl.1
#   $PREFIX/share/bash-completion/completions/mytimerctl, $ZSHDIR/_mytimerctl
#   $PREFIX/share/doc/mytimerd/        README.md, docs/*.md, examples/ (echo.conf:
#                                      copy to /etc/mytimerd/ for mytimerd@echo.socket)
#
# Variables (environment or VAR=value arguments):
#   PREFIX       default /usr/local
#   DESTDIR      staging root, default empty. Paths inside are those of the
#                final location, so the tree works once $DESTDIR$PREFIX is
#                moved to $PREFIX. Never touches systemd.
#   PYTHON       interpreter the venv is built on, default /usr/bin/python3. It
#                must be readable by any user (the service runs with
#                DynamicUser=yes): do not use one under /root or /home.
#   UNITDIR      default $PREFIX/lib/systemd/system for PREFIX=/usr and
#                /usr/local (both are on systemd's unit search path),
#                /etc/systemd/system for any other PREFIX.
#   SYSUSERSDIR  default $PREFIX/lib/sysusers.d for /usr and /usr/local,
#                /etc/sysusers.d otherwise.
#   ZSHDIR       default /usr/share/zsh/vendor-completions for PREFIX=/usr,
#                $PREFIX/share/zsh/site-functions otherwise.
#   PIP_ARGS     extra arguments for pip install (e.g. --no-index --find-links DIR)
#   POSTINST     yes|no|auto (default auto): run systemd-sysusers, systemctl
#                daemon-reload and try-restart mytimerd.service (install), or
#                stop and disable the units and remove group mytimer
#                (uninstall). auto = only when DESTDIR is empty, we are root
#                and systemd is running.
#
# Build requirements: python3-venv, gcc, make, pkg-config, libsystemd-dev, python3-dev.
set -eu

ACTION=install
for arg in "$@"; do
    case "$arg" in
        install|uninstall) ACTION=$arg;;
        PREFIX=*|DESTDIR=*|PYTHON=*|UNITDIR=*|SYSUSERSDIR=*|ZSHDIR=*|PIP_ARGS=*|POSTINST=*) export "${arg?}";;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '/^set -eu/d; s/^# \{0,1\}//'; exit 0;;
        *) echo "install.sh: unknown argument: $arg (see --help)" >&2; exit 2;;
    esac
done

PREFIX=${PREFIX:-/usr/local}
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
POSTINST=${POSTINST:-auto}
case "$PREFIX" in /*) ;; *) echo "install.sh: PREFIX must be absolute" >&2; exit 2;; esac
case "$PREFIX" in
    /usr|/usr/local) UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
                     SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d};;
    *)               UNITDIR=${UNITDIR:-/etc/systemd/system}
                     SYSUSERSDIR=${SYSUSERSDIR:-/etc/sysusers.d};;
esac
case "$PREFIX" in
    /usr) ZSHDIR=${ZSHDIR:-/usr/share/zsh/vendor-completions};;
    *)    ZSHDIR=${ZSHDIR:-$PREFIX/share/zsh/site-functions};;
esac

SRC=$(cd "$(dirname "$0")/.." && pwd)
LIBDIR=$PREFIX/lib/mytimerd
BINDIR=$PREFIX/bin
DOCDIR=$PREFIX/share/doc/mytimerd
MANDIR=$PREFIX/share/man
BASHDIR=$PREFIX/share/bash-completion/completions
MANIFEST=$LIBDIR/installed-files
UNITS="mytimerd.socket mytimerd-tcp.socket mytimerd.service"
TEMPLATES="mytimerd@.socket mytimerd@.service"
DATADIR=$PREFIX/share/mytimerd
SERVICE=mytimerd.service

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

if [ "$POSTINST" = auto ]; then
    if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then
        POSTINST=yes
    else
        POSTINST=no
    fi
fi

umask 022
mkdir -p "$DESTDIR$LIBDIR"
# one install.sh at a time per PREFIX
if command -v flock >/dev/null 2>&1; then
    exec 9>"$DESTDIR$LIBDIR/.lock"
    flock -n 9 || die "another install.sh is running on $DESTDIR$LIBDIR"
fi

# make_dirs DIR: mkdir -p, recording the directories it creates ("DIR/" lines)
make_dirs() {
    d=$1
    created=
    while [ ! -d "$DESTDIR$d" ]; do
        created="$d $created"
        d=$(dirname "$d")
    done
    mkdir -p "$DESTDIR$1"
    for d in $created; do echo "$d/" >> "$DESTDIR$MANIFEST.new"; done
}
# put_file SRC DEST [MODE]: install one file atomically and record it
put_file() {
    make_dirs "$(dirname "$2")"
    cp "$1" "$DESTDIR$2.new.$$"
    chmod "${3:-644}" "$DESTDIR$2.new.$$"
    mv -f "$DESTDIR$2.new.$$" "$DESTDIR$2"
    echo "$2" >> "$DESTDIR$MANIFEST.new"
}
# put_link TARGET DEST: create or replace a symlink atomically and record it
put_link() {
    make_dirs "$(dirname "$2")"
    ln -sfn "$1" "$DESTDIR$2.new.$$"
    mv -Tf "$DESTDIR$2.new.$$" "$DESTDIR$2"
    echo "$2" >> "$DESTDIR$MANIFEST.new"
}

uninstall() {
    if [ "$POSTINST" = yes ]; then
        say "stopping and disabling $UNITS"
        systemctl disable --now mytimerd.socket mytimerd-tcp.socket >/dev/null 2>&1 || true
        systemctl stop "$SERVICE" mytimerd.socket mytimerd-tcp.socket 2>/dev/null || true
        # the instances of mytimerd@.socket (enabled, or only started)
        instances=$(systemctl list-unit-files --no-legend --plain 'mytimerd@?*.socket' 2>/dev/null | cut -d' ' -f1)
        instances="$instances $(systemctl list-units --all --no-legend --plain 'mytimerd@?*.socket' 2>/dev/null | cut -d' ' -f1)"
        for socket in $instances; do
            systemctl disable --now "$socket" >/dev/null 2>&1 || true
            systemctl stop "${socket%.socket}.service" 2>/dev/null || true
        done
    fi
    if [ -f "$DESTDIR$MANIFEST" ]; then
        files=$(cat "$DESTDIR$MANIFEST")
    else  # installed by an install.sh without a manifest: its known files
        files="$BINDIR/mytimerd $BINDIR/mytimerctl $SYSUSERSDIR/mytimerd.conf"
        for unit in $UNITS $TEMPLATES; do files="$files $UNITDIR/$unit"; done
    fi
    say "removing installed files"
    for f in $files; do
        case "$f" in */) ;; /*) rm -f "$DESTDIR$f";; esac
    done
    rm -rf "$DESTDIR$DOCDIR" "$DESTDIR$LIBDIR" "$DESTDIR$DATADIR"
    # the directories install.sh created, deepest first, if nothing else is in them
    for d in $(printf '%s\n' $files | grep '/$' | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-); do
        rmdir "$DESTDIR$d" 2>/dev/null || true
    done
    if [ "$POSTINST" = yes ]; then
        systemctl daemon-reload
        systemctl reset-failed $UNITS 2>/dev/null || true
        if getent group mytimer >/dev/null; then
            say "removing group mytimer"
            groupdel mytimer
        fi
    fi
    say "uninstalled"
}

if [ "$ACTION" = uninstall ]; then
    uninstall
    exit 0
fi

# ------------------------------------------------------------------ install
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/mytimerd/__init__.py")
[ -n "$VERSION" ] || die "cannot read __version__ from $SRC/mytimerd/__init__.py"
ID=$VERSION-$(date -u +%Y%m%dT%H%M%SZ)-$$
RELEASE=$LIBDIR/releases/$ID
STAGE=$DESTDIR$RELEASE
OLD=$(readlink "$DESTDIR$LIBDIR/current" 2>/dev/null || true)

cleanup_failed() {
    rc=$?
    if [ "$rc" != 0 ]; then
        rm -rf "$STAGE" "$DESTDIR$MANIFEST.new"
        [ -z "${GEN:-}" ] || rm -rf "$GEN"
        printf 'install.sh: FAILED (exit %s); the installed version, if any, is unchanged\n' "$rc" >&2
    fi
}
trap cleanup_failed EXIT

say "building $ID aside in $STAGE"
"$SRC/packaging/build-venv" "$STAGE" "$RELEASE"

# man pages and completion scripts, generated by the new version itself
GEN=$(mktemp -d "${TMPDIR:-/tmp}/mytimerd-gen.XXXXXX")
"$STAGE/bin/python" -I -m mytimerd.manpages "$GEN" >/dev/null
"$STAGE/bin/python" -I -c 'import sys; from mytimerd.client.ctl import main; sys.exit(main(sys.argv[1:]))' \
    completion bash > "$GEN/mytimerctl.bash"
"$SRC/packaging/zsh-completion" "$STAGE/bin/python" > "$GEN/_mytimerctl"

say "installing units to $DESTDIR$UNITDIR, docs, man pages, completions"
# directories an earlier install created stay on the list
grep '/$' "$DESTDIR$MANIFEST" > "$DESTDIR$MANIFEST.new" 2>/dev/null || : > "$DESTDIR$MANIFEST.new"
for unit in $UNITS $TEMPLATES; do
    sed -e "s|/usr/local/bin/mytimerd|$BINDIR/mytimerd|g" \
        -e "s|/usr/local/share/doc/mytimerd|$DOCDIR|g" "$SRC/systemd/$unit" > "$GEN/$unit"
    put_file "$GEN/$unit" "$UNITDIR/$unit"
done
# libecho's descriptions, and the example instance configuration naming them
for description in echo-0.2.cddl echo-0.3.cddl; do
    put_file "$SRC/native/echo/$description" "$DATADIR/descriptions/$description"
done
sed -e "s|/usr/local/lib/mytimerd|$LIBDIR|g" -e "s|/usr/local/share/mytimerd|$DATADIR|g" \
    "$SRC/systemd/instances/echo.conf" > "$GEN/echo.conf"
put_file "$SRC/systemd/mytimerd.sysusers" "$SYSUSERSDIR/mytimerd.conf"
put_file "$GEN/mytimerd.8" "$MANDIR/man8/mytimerd.8"
put_file "$GEN/mytimerctl.1" "$MANDIR/man1/mytimerctl.1"
put_file "$GEN/mytimerctl.bash" "$BASHDIR/mytimerctl"
put_file "$GEN/_mytimerctl" "$ZSHDIR/_mytimerctl"
make_dirs "$DOCDIR/examples"
install -m 644 "$SRC/README.md" "$SRC"/docs/*.md "$DESTDIR$DOCDIR/"
install -m 644 "$SRC"/systemd/examples/* "$GEN/echo.conf" "$DESTDIR$DOCDIR/examples/"
rm -rf "$GEN"
GEN=

# the switch: one rename each, so every path always points at a complete version
say "switching $LIBDIR/current to releases/$ID"
put_link "releases/$ID" "$LIBDIR/current"
for prog in mytimerd mytimerctl; do
    put_link "../lib/mytimerd/current/bin/$prog" "$BINDIR/$prog"
done
# libecho at a path that outlives releases and Python versions (echo.conf names it)
for so in libecho.so libecho-0.3.so; do
    built=$(cd "$STAGE" && ls lib/python3*/site-packages/mytimerd/_lib/$so)
    put_link "current/$built" "$LIBDIR/$so"
done
mv -f "$DESTDIR$MANIFEST.new" "$DESTDIR$MANIFEST"
trap - EXIT

if [ "$POSTINST" = yes ]; then
    say "creating group mytimer (systemd-sysusers) and reloading systemd"
    systemd-sysusers "$SYSUSERSDIR/mytimerd.conf"
    systemctl daemon-reload
    for instance in $(systemctl list-units --state=active --no-legend --plain 'mytimerd@?*.service' | cut -d' ' -f1); do
        say "restarting $instance on the new version (its socket stays open)"
        systemctl restart "$instance" || say "warning: $instance did not restart (see journalctl -u $instance)"
    done
    if systemctl --quiet is-active "$SERVICE"; then
        say "restarting $SERVICE on the new version (its sockets stay open)"
        if ! systemctl restart "$SERVICE" || ! systemctl --quiet is-active "$SERVICE"; then
            if [ -n "$OLD" ]; then
                say "$SERVICE did not start on $ID: switching back to $OLD"
                ln -sfn "$OLD" "$LIBDIR/current.new.$$"
                mv -Tf "$LIBDIR/current.new.$$" "$LIBDIR/current"
                systemctl reset-failed "$SERVICE" 2>/dev/null || true
                systemctl restart "$SERVICE" || true
            fi
            die "$SERVICE did not start on $ID (see journalctl -u mytimerd); $ID stays in $LIBDIR/releases"
        fi
    fi
fi

# an install.sh before releases/ kept the venv directly in $LIBDIR: remove it
# now that nothing runs from it any more
if [ -f "$DESTDIR$LIBDIR/pyvenv.cfg" ]; then
    say "removing the old single-venv layout from $LIBDIR"
    rm -rf "$DESTDIR$LIBDIR/bin" "$DESTDIR$LIBDIR/lib" "$DESTDIR$LIBDIR/lib64" \
        "$DESTDIR$LIBDIR/include" "$DESTDIR$LIBDIR/share" "$DESTDIR$LIBDIR/pyvenv.cfg"
fi
# keep the new release and the one before it (to roll back to); remove older ones
for dir in "$DESTDIR$LIBDIR"/releases/*; do
    name=releases/$(basename "$dir")
    [ "$name" = "releases/$ID" ] || [ "$name" = "$OLD" ] || rm -rf "$dir"
done

if [ "$POSTINST" = yes ]; then
    say "done: $ID is installed. Enable the socket once: systemctl enable --now mytimerd.socket"
else
    say "done: $ID is installed in $DESTDIR$PREFIX"
fi
