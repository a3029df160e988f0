"""The OpenSSL session of a TLS connection, lent to the lane (glue/lanetls.c).

Python's ``ssl`` makes the handshake and checks the client (its timer, its
alerts, the allow-lists all stay in Python); once a TLS connection makes
quick calls one after another, the lane reads its records, makes its calls
and seals its answers in C, on the same session, as it does for plaintext.
``ssl`` has no handle to give out, so the glue reads the session's address
from CPython's objects behind :class:`ssl.SSLObject` and takes it only where
OpenSSL confirms it (see glue/lanetls.c). Here, first: this is CPython, its
``_ssl`` types are the ones that layout is known for, and the OpenSSL they
run on is the glue's. Otherwise TLS connections stay with the event loop,
as before.
"""

from __future__ import annotations

import _ssl
import functools
import ssl
import sys

from .._glue import ffi, lib

__all__ = ["available", "session"]


@functools.cache
def available() -> bool:
    """Whether TLS sessions can be lent to the lane in this process."""
    word = ffi.sizeof("void *")
    # (the glue reads the third word of the one and the second of the other)
    return (
        sys.implementation.name == "cpython"
        and lib.mt_tls_openssl() == ssl.OPENSSL_VERSION_NUMBER
        and _ssl._SSLSocket.__basicsize__ >= 4 * word  # type: ignore[attr-defined]
        and _ssl.MemoryBIO.__basicsize__ >= 3 * word
    )


def session(tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> object:
    """The OpenSSL session of ``tls`` (handshake done, on the memory BIOs
    ``incoming`` and ``outgoing``) for :meth:`~.lane.Lane.add`, or None when
    it cannot be lent. The caller keeps the three objects alive, and leaves
    them alone, while the lane has the session."""
    sslobj = getattr(tls, "_sslobj", None)
    if (
        type(sslobj) is not _ssl._SSLSocket  # type: ignore[attr-defined]
        or type(incoming) is not _ssl.MemoryBIO
        or type(outgoing) is not _ssl.MemoryBIO
        or not available()
    ):
        return None
    handle = lib.mt_tls_borrow(id(sslobj), id(incoming), id(outgoing))
    return None if handle == ffi.NULL else handle
