"""The client's first TLS flight, read before OpenSSL sees it (sans-IO).

OpenSSL allocates for a handshake message as soon as it has read the
message's header: a client that sends nine bytes announcing a 131,396-byte
ClientHello and then stalls costs the server the read buffer, the SSL object
and the message buffer, for as long as the handshake timeout lets it.
:class:`HelloReader` stands in front of OpenSSL: it reads the TLS record
headers and the handshake header itself, holds only the ClientHello's own
bytes (at most ``max_hello`` of them), refuses at once what is not a
ClientHello of a sane size, and hands back the complete hello re-framed into
records for OpenSSL to read as if it had come off the wire.

Re-framing is invisible to TLS: the handshake transcript covers handshake
messages, not how the records cut them up (RFC 8446, section 5.1).
"""

from __future__ import annotations

from typing import Final

from . import wire
from .record import Record

#: TLS record content types (RFC 8446, section 5.1).
CHANGE_CIPHER_SPEC: Final = 20
ALERT: Final = 21
HANDSHAKE: Final = 22
APPLICATION_DATA: Final = 23

#: Handshake message type of a ClientHello.
CLIENT_HELLO: Final = 1

#: Alert descriptions sent with a refusal (RFC 8446, section 6).
UNEXPECTED_MESSAGE: Final = 10
RECORD_OVERFLOW: Final = 22
ILLEGAL_PARAMETER: Final = 47
DECODE_ERROR: Final = 50

#: Largest plaintext record (2^14); the ClientHello is always plaintext.
MAX_RECORD: Final = 16384
RECORD_HEADER: Final = 5
HANDSHAKE_HEADER: Final = 4

#: Default bound on the ClientHello's announced length, in bytes. Real hellos
#: are a few hundred bytes (up to about 2 kB with post-quantum key shares).
DEFAULT_MAX_HELLO: Final = 16384

_RECORD_NAMES: Final = {
    CHANGE_CIPHER_SPEC: "a TLS change_cipher_spec record",
    ALERT: "a TLS alert record",
    APPLICATION_DATA: "a TLS application_data record",
}


class HelloRefused(Exception):
    """What the client sent first is not an acceptable TLS ClientHello.

    ``alert`` is the TLS alert description to send the client before
    closing, or None when the client does not speak TLS at all (an alert
    would mean nothing to it).
    """

    def __init__(self, message: str, alert: int | None) -> None:
        super().__init__(message)
        self.alert = alert


class ClientHello(Record):
    """A complete ClientHello and what followed it."""

    #: The legacy_version of the hello's first record (0x0300..0x0304).
    record_version: int
    #: The handshake message: its 4-byte header and its body.
    message: bytes
    #: Bytes received after the hello's last record, not looked at.
    rest: bytes

    def records(self) -> bytes:
        """The hello in handshake records of at most 2^14 bytes, then ``rest``:
        what OpenSSL is to read in place of what came off the wire."""
        out = bytearray()
        message = self.message
        for start in range(0, len(message), MAX_RECORD):
            chunk = message[start : start + MAX_RECORD]
            out += _record_header(HANDSHAKE, self.record_version, len(chunk))
            out += chunk
        out += self.rest
        return bytes(out)


def alert_record(description: int, version: int = 0x0303) -> bytes:
    """A plaintext fatal alert record (what a server sends before any keys)."""
    return _record_header(ALERT, version, 2) + bytes((2, description))


def _record_header(content_type: int, version: int, length: int) -> bytes:
    return bytes((content_type, version >> 8, version & 0xFF, length >> 8, length & 0xFF))


def not_tls(head: bytes) -> str:
    """What the first bytes of a connection that are not a TLS handshake
    record look like, for the refusal message."""
    if len(head) >= 3 and head[0] in _RECORD_NAMES and head[1] == 3:
        return f"{_RECORD_NAMES[head[0]]} before any ClientHello"
    if len(head) >= 3 and head[0] & 0x80 and head[2] == CLIENT_HELLO:
        # The two-byte length of an SSL 2.0 record, then its message type.
        return "an SSL 2.0-format ClientHello (not supported)"
    if len(head) >= 4:
        method_len = int.from_bytes(head[:4], "big")
        foreign = wire.foreign_protocol(method_len)
        if foreign is not None:
            return f"{foreign}, not TLS"
        if 0 < method_len < 0x10000:
            return "a plaintext mytimerd request, not TLS (this port needs TLS)"
    return f"bytes that are not TLS ({head[:4].hex(' ')})"


class HelloReader:
    """Reads the client's first flight up to the end of its ClientHello.

    ``feed()`` returns None until the hello is complete, then a
    :class:`ClientHello`; it raises :class:`HelloRefused` as soon as the
    bytes seen so far cannot begin an acceptable one. After either, the
    reader is spent: the caller hands everything further to OpenSSL (or
    closes). Memory held is the hello's bytes received so far, never more
    than ``max_hello`` plus the two headers.
    """

    __slots__ = ("_head", "_left", "_message", "_need", "_version", "max_hello")

    def __init__(self, max_hello: int = DEFAULT_MAX_HELLO) -> None:
        self.max_hello = max_hello
        # A record header still arriving (fewer than 5 bytes).
        self._head = b""
        # Payload bytes of the current record not received yet.
        self._left = 0
        # Handshake bytes so far (header, then body).
        self._message = bytearray()
        # Length of the whole message once its header is in (0 before).
        self._need = 0
        self._version = 0

    @property
    def buffered(self) -> int:
        """Bytes held (the hello so far and a partial record header)."""
        return len(self._message) + len(self._head)

    def feed(self, data: bytes) -> ClientHello | None:
        """Take ``data``; the complete hello once it is in, else None.

        Raises :class:`HelloRefused` on the first byte that rules out an
        acceptable ClientHello.
        """
        pos = 0
        end = len(data)
        while pos < end:
            if not self._left:
                take = min(RECORD_HEADER - len(self._head), end - pos)
                self._head += data[pos : pos + take]
                pos += take
                self._check_record_start()
                if len(self._head) < RECORD_HEADER:
                    continue
                self._start_record(self._head)
                self._head = b""
                continue
            take = min(self._left, end - pos)
            self._message += data[pos : pos + take]
            self._left -= take
            pos += take
            if not self._need:
                self._read_handshake_header()
            if self._need and len(self._message) >= self._need:
                if len(self._message) > self._need or self._left:
                    raise HelloRefused(
                        "more handshake data in the ClientHello's last record",
                        UNEXPECTED_MESSAGE,
                    )
                hello = ClientHello(self._version, bytes(self._message), data[pos:])
                self._message = bytearray()
                return hello
        return None

    def _check_record_start(self) -> None:
        # Refuse on the first byte that gives the game away, without waiting
        # for a whole header that may never come.
        head = self._head
        first_record = not self._version
        if head[0] != HANDSHAKE:
            if first_record:
                # An alert means something only to a client that speaks TLS.
                speaks_tls = head[0] in _RECORD_NAMES and (len(head) < 2 or head[1] == 3)
                raise HelloRefused(
                    f"the client sent {not_tls(head)}", UNEXPECTED_MESSAGE if speaks_tls else None
                )
            raise HelloRefused(
                f"{_RECORD_NAMES.get(head[0], 'a record that is not TLS')} "
                "in the middle of the ClientHello",
                UNEXPECTED_MESSAGE,
            )
        if len(head) >= 2 and head[1] != 3:
            raise HelloRefused(
                f"the client sent {not_tls(head)}" if first_record else "a record that is not TLS",
                None if first_record else DECODE_ERROR,
            )

    def _start_record(self, head: bytes) -> None:
        version = head[1] << 8 | head[2]
        length = head[3] << 8 | head[4]
        if version > 0x0304:
            raise HelloRefused(f"a TLS record of unknown version 0x{version:04x}", DECODE_ERROR)
        if length > MAX_RECORD:
            raise HelloRefused(
                f"a TLS record of {length} bytes (the limit is {MAX_RECORD})", RECORD_OVERFLOW
            )
        if not length:
            # RFC 8446 forbids empty handshake fragments; they would let a
            # client keep the reader busy without ever sending a byte of hello.
            raise HelloRefused("an empty handshake record", UNEXPECTED_MESSAGE)
        if not self._version:
            self._version = version
        self._left = length

    def _read_handshake_header(self) -> None:
        # The type is checked on its own byte, the length once it is in.
        message = self._message
        if message[0] != CLIENT_HELLO:
            raise HelloRefused(
                f"a handshake message of type {message[0]} where a ClientHello (type 1) "
                "was expected",
                UNEXPECTED_MESSAGE,
            )
        if len(message) < HANDSHAKE_HEADER:
            return
        length = message[1] << 16 | message[2] << 8 | message[3]
        if length > self.max_hello:
            raise HelloRefused(
                f"ClientHello of {length} bytes announced; the limit is {self.max_hello} "
                "(--max-tls-hello)",
                ILLEGAL_PARAMETER,
            )
        self._need = HANDSHAKE_HEADER + length
