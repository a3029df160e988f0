"""Listening sockets: taken over from systemd, or bound by the daemon itself."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path
from typing import Final

from ..protocol.address import Address, TcpAddress, UnixAddress
from ..protocol.record import Record
from . import handover


class ActivationError(Exception):
    """A socket cannot be served; ``str()`` says which and why."""


#: The name of a listener this process bound itself (not handed over by systemd).
BOUND: Final = "bound"


class Listener(Record):
    """One listening stream socket.

    ``name`` is systemd's FileDescriptorName (or "bound" for a self-bound
    socket); ``owned_path`` is set only for a unix socket this process bound,
    the only kind it may unlink.
    """

    sock: socket.socket
    name: str
    address: str
    owned_path: Path | None = None
    owned_inode: int | None = None

    @property
    def tcp_host(self) -> str | None:
        """The address a TCP listener is bound to; None for a unix one."""
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            return str(self.sock.getsockname()[0])
        return None

    def close(self) -> None:
        """Close the socket and remove a unix path this process created."""
        self.sock.close()
        path = self.owned_path
        if path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            # Only unlink the very socket we bound: another instance may have
            # replaced it since.
            if path.lstat().st_ino == self.owned_inode:
                path.unlink()


def socket_label(sock: socket.socket) -> str:
    """``unix:/path`` or ``tcp:host:port`` for a bound socket."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # abstract namespace
            return "unix:@" + name[1:].decode(errors="replace")
        return f"unix:{name}"
    return str(TcpAddress(name[0], name[1]))


def _check_handed(fd: int, name: str) -> socket.socket:
    what = f"socket fd {fd} ({name!r})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ActivationError(f"{what}: not an open file descriptor ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"{what} is not a socket; mytimerd serves ListenStream= sockets")
    sock = socket.socket(fileno=fd)
    if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        raise ActivationError(
            f"{what} has address family {sock.family!r}; mytimerd serves unix, IPv4 and IPv6"
        )
    if sock.type != socket.SOCK_STREAM:
        raise ActivationError(
            f"{what} is a {sock.type.name} socket; mytimerd serves stream sockets only "
            "(ListenStream=, not ListenDatagram= or ListenSequentialPacket=)"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError(
            f"{what} is not listening; with Accept=yes systemd hands over connections, "
            "mytimerd needs Accept=no"
        )
    return sock


def from_systemd() -> tuple[list[Listener], list[tuple[int, str]]] | None:
    """The sockets systemd passed (LISTEN_FDS), or None when there are none:
    the listeners, and what a previous instance put in the file descriptor
    store (descriptor, name; see :mod:`.handover`), which are not listeners.

    Every listener is checked before any is used, so a unit that hands over
    something unservable fails at start-up with a message naming it.
    """
    if "LISTEN_FDS" not in os.environ:
        return None
    from systemd import daemon  # type: ignore[attr-defined]  # late: only socket activation needs it

    # Call only one listen function: each unsets the variables in C.
    fds: dict[int, str] = daemon.listen_fds_with_names(unset_environment=True)
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not fds:
        return None
    listeners = []
    stored = []
    for fd, name in sorted(fds.items()):
        if name in handover.NAMES:
            stored.append((fd, name))
            continue
        sock = _check_handed(fd, name)
        sock.setblocking(False)
        listeners.append(Listener(sock, name, socket_label(sock)))
    return listeners, stored


def _bind_unix(path: Path, mode: int, group: int | None) -> Listener:
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ActivationError(f"{path} exists and is not a socket; refusing to replace it")
        # Non-blocking: a live server with a full backlog (EAGAIN) must not
        # hang start-up, and counts as live.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            code = probe.connect_ex(str(path))
        finally:
            probe.close()
        if code == errno.ECONNREFUSED:
            path.unlink()  # stale: nobody listens on it any more
        elif code in (0, errno.EAGAIN, errno.EINPROGRESS):
            raise ActivationError(
                f"another server is listening on {path}; stop it or choose another --unix path"
            )
        else:
            raise ActivationError(f"cannot check the existing socket {path}: {os.strerror(code)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind with no permission at all, then set the mode and group: whatever
    # the umask, no one can connect before the socket has its final mode.
    old_umask = os.umask(0o777)
    bound = False
    try:
        sock.bind(str(path))
        bound = True
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        if bound:
            path.unlink(missing_ok=True)
        raise ActivationError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return Listener(sock, BOUND, f"unix:{path}", path, path.lstat().st_ino)


def _bind_tcp(host: str, port: int) -> list[Listener]:
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
    except socket.gaierror as exc:
        raise ActivationError(f"cannot resolve {host!r}: {exc.strerror}") from None
    listeners: list[Listener] = []
    seen = set()
    for family, type_, proto, _, sockaddr in infos:
        if sockaddr[:2] in seen:
            continue
        seen.add(sockaddr[:2])
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            for other in listeners:
                other.close()
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ActivationError(
                f"cannot listen on {TcpAddress(str(sockaddr[0]), port)}: {reason}"
            ) from None
        sock.setblocking(False)
        listeners.append(Listener(sock, BOUND, socket_label(sock)))
    return listeners


def bind(
    addresses: list[Address], socket_mode: int = 0o660, socket_group: int | None = None
) -> list[Listener]:
    """Bind every address (unix sockets with ``socket_mode`` and, if given,
    ``socket_group``); on any failure close what was bound and raise."""
    listeners: list[Listener] = []
    try:
        for address in addresses:
            if isinstance(address, UnixAddress):
                listeners.append(_bind_unix(Path(address.path), socket_mode, socket_group))
            else:
                listeners.extend(_bind_tcp(address.host, address.port))
    except ActivationError:
        for listener in listeners:
            listener.close()
        raise
    return listeners
