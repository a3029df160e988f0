"""The mytimerd framing, without any I/O (sans-IO, like h11).

Frames (all integers big-endian)::

    request:  [u32 method_len][method][u32 payload_len][payload]
    response: [i32 ret][u32 body_len][body]

Parsers are fed bytes as they arrive and hand back complete frames; encoders
return bytes. Both the daemon and the client use this module, so the two ends
cannot drift apart.
"""

from __future__ import annotations

import struct
from typing import Final

from .record import Fields

RET_OK: Final = 0
RET_ERR: Final = 1

_U32: Final = struct.Struct(">I")
_RESPONSE_HEAD: Final = struct.Struct(">iI")

#: Largest length a u32 length field can carry.
U32_MAX: Final = 0xFFFFFFFF


class _Frame(Fields):
    """Base of the frame and event classes: equal when of the same class with
    equal fields, hashed and shown by their fields (as a dataclass would be).

    Not dataclasses: ``@dataclass`` compiles its methods at every start (see
    record.py), and a frozen one's ``__init__`` takes twice as long as a
    plain one's, and one of these is made per request or answer. The fields
    are ``Final``: the type checker refuses to assign them."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields = cls.__slots__


class Request(_Frame):
    """One request frame: the raw method name and the raw CBOR payload."""

    __slots__ = ("method", "payload")

    def __init__(self, method: bytes, payload: bytes) -> None:
        self.method: Final = method
        self.payload: Final = payload


class Response(_Frame):
    """One response frame: ``ret`` (RET_OK/RET_ERR) and the raw body."""

    __slots__ = ("ret", "body")  # noqa: RUF023 (in order: the repr shows them so)

    def __init__(self, ret: int, body: bytes) -> None:
        self.ret: Final = ret
        self.body: Final = body


class MethodNameTooLong(_Frame):
    """The peer announced a method name longer than the limit.

    The parser stops here: the name is not read, so the stream cannot be
    resynchronised and the connection must be answered and closed.
    """

    __slots__ = ("length", "limit")

    def __init__(self, length: int, limit: int) -> None:
        self.length: Final = length
        self.limit: Final = limit


class FrameTooLarge(_Frame):
    """The peer announced a payload or body longer than the limit.

    As with :class:`MethodNameTooLong`, the payload is never read.
    """

    __slots__ = ("method", "length", "limit")  # noqa: RUF023 (as Response)

    def __init__(self, method: bytes, length: int, limit: int) -> None:
        self.method: Final = method
        self.length: Final = length
        self.limit: Final = limit


RequestEvent = Request | MethodNameTooLong | FrameTooLarge


def encode_request(method: str | bytes, payload: bytes) -> bytes:
    """Return the request frame for ``method`` with CBOR ``payload``."""
    name = method.encode() if isinstance(method, str) else method
    return b"".join((_U32.pack(len(name)), name, _U32.pack(len(payload)), payload))


def encode_response(ret: int, body: bytes) -> bytes:
    """Return the response frame for result code ``ret`` and ``body``."""
    return _RESPONSE_HEAD.pack(ret, len(body)) + body


#: First bytes of other protocols, read as a request's method length.
_FOREIGN: Final = {
    b"GET ": "an HTTP request",
    b"POST": "an HTTP request",
    b"PUT ": "an HTTP request",
    b"HEAD": "an HTTP request",
    b"DELE": "an HTTP request",
    b"OPTI": "an HTTP request",
    b"PATC": "an HTTP request",
    b"CONN": "an HTTP request",
    b"PRI ": "an HTTP/2 preface",
    b"SSH-": "an SSH client",
}


def foreign_protocol(method_len: int) -> str | None:
    """What another protocol's first four bytes, taken for a method length,
    look like ("an HTTP request", "a TLS handshake"), or None."""
    head = method_len.to_bytes(4, "big")
    if head[0] == 0x16 and head[1] == 0x03:
        return "a TLS handshake"
    return _FOREIGN.get(head)


class RequestParser:
    """Incremental parser for request frames (the server side).

    ``feed()`` returns every complete frame in the bytes seen so far. After it
    returns a :class:`MethodNameTooLong` or :class:`FrameTooLarge` event the
    parser is ``broken`` and ignores further input: the caller answers that
    error and closes the connection.
    """

    __slots__ = ("_buf", "_pos", "broken", "max_method_len", "max_payload")

    def __init__(self, max_method_len: int, max_payload: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_method_len = max_method_len
        self.max_payload = max_payload
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def pending(self) -> bytes:
        """The bytes received but not yet part of a returned frame."""
        return bytes(self._buf[self._pos :])

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Add ``data`` and return the frames (or the fatal error) it completes."""
        if self.broken:
            return []
        buf = self._buf
        src: bytes | bytearray
        if buf or type(data) is not bytes:
            buf += data
            src, pos = buf, self._pos
        else:
            # Nothing held back (the usual case): frames are cut from ``data``
            # itself, one copy each instead of two, and only a trailing
            # partial frame is kept.
            src, pos = data, 0
        end = len(src)
        out: list[RequestEvent] = []
        unpack = _U32.unpack_from
        while end - pos >= 4:
            (mlen,) = unpack(src, pos)
            if mlen > self.max_method_len:
                self.broken = True
                out.append(MethodNameTooLong(mlen, self.max_method_len))
                break
            head = pos + 4 + mlen
            if end - head < 4:
                break
            (plen,) = unpack(src, head)
            if plen > self.max_payload:
                self.broken = True
                out.append(FrameTooLarge(bytes(src[pos + 4 : head]), plen, self.max_payload))
                break
            stop = head + 4 + plen
            if stop > end:
                break
            # bytes(x) of a bytes slice is that slice: no second copy.
            out.append(Request(bytes(src[pos + 4 : head]), bytes(src[head + 4 : stop])))
            pos = stop
        if src is not buf:
            if pos < end:
                buf += memoryview(data)[pos:]
            self._pos = 0
            return out
        # Compact only when the consumed prefix dominates, so a pipelined burst
        # is not copied once per frame.
        if pos == end:
            buf.clear()
            pos = 0
        elif pos > 65536 and pos * 2 > end:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out


class ResponseParser:
    """Incremental parser for response frames (the client side).

    Raises :class:`ProtocolError` when the peer sends something no server
    speaking this protocol would send.
    """

    __slots__ = ("_buf", "max_body")

    def __init__(self, max_body: int = U32_MAX) -> None:
        self._buf = bytearray()
        self.max_body = max_body

    def feed(self, data: bytes) -> list[Response]:
        """Add ``data`` and return the responses it completes."""
        buf = self._buf
        buf += data
        out: list[Response] = []
        pos = 0
        end = len(buf)
        while end - pos >= 8:
            ret, blen = _RESPONSE_HEAD.unpack_from(buf, pos)
            if blen > self.max_body:
                raise ProtocolError(
                    f"response body of {blen} bytes exceeds the limit of {self.max_body}"
                )
            stop = pos + 8 + blen
            if stop > end:
                break
            out.append(Response(ret, bytes(buf[pos + 8 : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete response held back."""
        return len(self._buf)


class ProtocolError(Exception):
    """The peer broke the framing."""
