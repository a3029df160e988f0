"""A strict decoder for the CBOR subset that requests may use.

The daemon is the trust boundary in front of the library, so it accepts only
what a request can sensibly contain and says precisely what it refuses:
definite lengths only, no tags, no simple values other than false/true/null/
undefined, valid UTF-8, text map keys without duplicates, bounded nesting and
nothing after the one item. Floats and byte strings decode (the schema then
names them in its error), so the message can say what was sent.

Responses are encoded with cbor2, which matches the library byte for byte.
"""

from __future__ import annotations

import struct
from typing import Final

#: Deepest nesting of arrays and maps accepted (requests need 4).
MAX_DEPTH: Final = 16
#: Most data items one payload may hold, counted while decoding, so a payload
#: of a million tiny items is refused after a few milliseconds of work
#: instead of holding the event loop for a second (``--max-items``).
MAX_ITEMS: Final = 4096

UNDEFINED: Final = object()
"""The CBOR ``undefined`` value (the library treats it like null)."""

_HALF: Final = struct.Struct(">e")
_FLOAT: Final = struct.Struct(">f")
_DOUBLE: Final = struct.Struct(">d")


class CBORError(ValueError):
    """The payload is not acceptable CBOR; ``str()`` is the precise reason."""


class _Decoder:
    __slots__ = ("data", "items_left", "max_items", "path", "pos")

    def __init__(self, data: bytes, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.path: list[str] = []
        self.max_items = max_items
        self.items_left = max_items

    def fail(self, what: str, offset: int) -> CBORError:
        where = "".join(self.path).lstrip(".")
        return CBORError(f"{where + ': ' if where else ''}{what} (at byte {offset})")

    def take(self, n: int, start: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.fail(
                f"unexpected end of payload: need {n} more bytes, have {len(self.data) - self.pos}",
                start,
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int, int, int]:
        """Read an initial byte and its argument: (major, info, argument, offset)."""
        start = self.pos
        if start >= len(self.data):
            raise self.fail("unexpected end of payload: expected a data item", start)
        self.items_left -= 1
        if self.items_left < 0:
            raise self.fail(f"more than {self.max_items} data items (--max-items)", start)
        ib = self.data[start]
        self.pos += 1
        major, info = ib >> 5, ib & 0x1F
        if info < 24:
            return major, info, info, start
        if info <= 27:
            size = 1 << (info - 24)
            return major, info, int.from_bytes(self.take(size, start), "big"), start
        if info == 31:
            if major in (2, 3, 4, 5):
                raise self.fail("indefinite-length items are not accepted", start)
            if major == 7:
                raise self.fail("unexpected break code", start)
        raise self.fail(f"malformed initial byte 0x{ib:02x}", start)

    def item(self, depth: int) -> object:
        major, info, arg, start = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg, start)
        if major == 3:
            raw = self.take(arg, start)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.fail(
                    f"invalid UTF-8 in text string: {exc.reason} at byte {start + 1 + exc.start}",
                    start,
                ) from None
        if major in (4, 5):
            if depth >= MAX_DEPTH:
                raise self.fail(f"nesting deeper than {MAX_DEPTH} levels", start)
            # Every element takes at least one byte: refuse impossible counts
            # before building anything.
            if arg > len(self.data) - self.pos:
                raise self.fail(
                    f"unexpected end of payload: {'array' if major == 4 else 'map'} "
                    f"announces {arg} items, only {len(self.data) - self.pos} bytes remain",
                    start,
                )
            if major == 4:
                out: list[object] = []
                for i in range(arg):
                    self.path.append(f"[{i}]")
                    out.append(self.item(depth + 1))
                    self.path.pop()
                return out
            result: dict[str, object] = {}
            for _ in range(arg):
                key_at = self.pos
                key = self.item(depth + 1)
                if not isinstance(key, str):
                    raise self.fail(f"map key is {type_name(key)}, not a text string", key_at)
                if key in result:
                    raise self.fail(f"duplicate map key {key!r}", key_at)
                self.path.append("." + key)
                result[key] = self.item(depth + 1)
                self.path.pop()
            return result
        if major == 6:
            raise self.fail(f"tag {arg} is not accepted", start)
        # major 7
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return UNDEFINED
        if info == 25:
            return float(_HALF.unpack(arg.to_bytes(2, "big"))[0])
        if info == 26:
            return float(_FLOAT.unpack(arg.to_bytes(4, "big"))[0])
        if info == 27:
            return float(_DOUBLE.unpack(arg.to_bytes(8, "big"))[0])
        raise self.fail(f"simple value {arg} is not accepted", start)


def loads(data: bytes, max_items: int = MAX_ITEMS) -> object:
    """Decode exactly one CBOR item of at most ``max_items`` data items from
    ``data`` (map keys count); raise :class:`CBORError`."""
    if not data:
        raise CBORError("empty payload: expected one CBOR item (an empty request is a0)")
    dec = _Decoder(data, max_items)
    value = dec.item(0)
    if dec.pos != len(data):
        raise CBORError(
            f"trailing bytes: the item ends at byte {dec.pos} of a {len(data)}-byte payload"
        )
    return value


def type_name(value: object) -> str:
    """Name a decoded value's CBOR type the way error messages do."""
    if value is None:
        return "null"
    if value is UNDEFINED:
        return "undefined"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a text string"
    if isinstance(value, bytes):
        return "a byte string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__
