"""The hints mytimerctl prints after an error: what to do about it.

Each function returns the hint's text, wrapped, starting ``hint: ``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import textwrap
from collections.abc import Sequence

from ...protocol.address import ADDRESS_ENV, Address, TcpAddress, UnixAddress
from ..errors import TLSError
from .commands import PROG


def _fill(text: str) -> str:
    return textwrap.fill(
        f"hint: {text}",
        79,
        subsequent_indent="      ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def start_hint(addresses: Sequence[Address]) -> str:
    """Nothing listens: how to start the daemon, or point mytimerctl elsewhere."""
    first = addresses[0]
    if isinstance(first, TcpAddress):
        by_hand = f"mytimerd --tcp {first.host} {first.port}"
        unit = "mytimerd-tcp.socket"
    else:
        by_hand = f"mytimerd --unix {first.path}"
        unit = "mytimerd.socket"
    return _fill(
        f"is mytimerd running? Start it with 'systemctl start {unit}' "
        f"(or 'systemctl --user start {unit}' for your own daemon), or by hand: "
        f"'{by_hand}'. Point {PROG} elsewhere with --unix, --tcp or ${ADDRESS_ENV}."
    )


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "$USER"


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _member_of(gid: int, group: str | None) -> bool:
    """Whether this user belongs to ``gid`` by the group database (not this session)."""
    try:
        user = pwd.getpwuid(os.getuid())
    except KeyError:
        return False
    if user.pw_gid == gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def permission_hint(path: str) -> str:
    """Connecting to the unix socket ``path`` was refused (EACCES): who may, how to join them."""
    try:
        st = os.stat(path)
    except PermissionError:
        return _fill(
            f"permission denied on {path}: a directory on its way is closed to you "
            f"(see 'namei -l {path}'); ask an administrator for access."
        )
    except OSError:
        return _fill(f"permission denied on {path}: ask an administrator for access.")
    owner = _owner(st.st_uid)
    group = _group(st.st_gid)
    shown = group if group is not None else str(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    where = f"permission denied on {path} (owner {owner}, group {shown}, mode {mode:04o})"
    if not mode & stat.S_IWGRP:
        return _fill(
            f"{where}: only its owner may connect. Ask an administrator to open it to a "
            "group (mytimerd --socket-mode 0660 --socket-group GROUP, or SocketMode= and "
            "SocketGroup= in the socket unit) and to add you to that group."
        )
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return _fill(
            f"{where}: you are in group {shown}, so a directory on its way is closed to "
            f"you (see 'namei -l {path}'); ask an administrator for access."
        )
    if group is not None and _member_of(st.st_gid, group):
        return _fill(
            f"{where}: you are in group {group}, but this login session is not yet: "
            f"log in again (or run 'newgrp {group}')."
        )
    name = group if group is not None else "that group"
    return _fill(
        f"{where}: ask an administrator to add you to group {name} "
        f"('sudo usermod -aG {name} {_user_name()}', then log in again)."
    )


#: What to do about each TLS problem (TLSError.problem).
_TLS_HINTS = {
    "untrusted": "give the CA that signed the daemon's certificate with --tls-ca FILE "
    "(without it, the system's CA store is used).",
    "name": "connect by a name the daemon's certificate holds, or give the name to check "
    "with --tls-server-name NAME.",
    "not-tls": "that port serves plaintext: leave out --tls and the --tls-* options "
    "(or write tcp:HOST:PORT instead of tls:).",
    "handshake": "the daemon's log says why the handshake failed ('journalctl -u mytimerd').",
}

#: What to do about each refusal of the client certificate (TLSError.alert).
_CLIENT_HINTS = {
    "certificate required": "the daemon wants a client certificate: give it with "
    "--tls-cert FILE --tls-key FILE (one issued by the CA of the daemon's --tls-client-ca).",
    "unknown ca": "use a client certificate issued by the CA the daemon trusts (its "
    "--tls-client-ca), with --tls-cert FILE --tls-key FILE.",
    "certificate expired": "the client certificate (--tls-cert) has expired: renew it.",
}


def tls_hint(exc: TLSError) -> str:
    """What to do about a failed TLS handshake."""
    if exc.problem == "client-certificate":
        text = _CLIENT_HINTS.get(
            exc.alert or "",
            "check --tls-cert and --tls-key against the daemon's --tls-client-ca; "
            "its log says why it refused them ('journalctl -u mytimerd').",
        )
    else:
        text = _TLS_HINTS.get(exc.problem, _TLS_HINTS["handshake"])
    return _fill(text)


def plaintext_on_tls_hint(address: TcpAddress) -> str:
    """A plaintext client was hung up on by a TLS port."""
    return _fill(
        f"use TLS: --tls (with --tls-ca FILE for the daemon's CA, and --tls-cert FILE "
        f"--tls-key FILE if it wants a client certificate), or the address "
        f"{TcpAddress(address.host, address.port, tls=True)}."
    )


def permission_denied_hint(address: Address | None) -> str:
    """The daemon answered mytimerd.PermissionDenied: who it admits, whom to ask."""
    if isinstance(address, UnixAddress):
        return _fill(
            f"the daemon at {address} admits only the users and groups of its "
            f"--allow-user/--allow-group; ask its administrator to allow your user "
            f"({_user_name()}) or one of your groups."
        )
    if isinstance(address, TcpAddress) and address.tls:
        return _fill(
            "the daemon admits only client certificates that name what its --tls-allow "
            "lists; ask its administrator for such a certificate (give it with --tls-cert "
            "and --tls-key), or to allow a name yours holds."
        )
    return _fill("ask the daemon's administrator to allow you.")
