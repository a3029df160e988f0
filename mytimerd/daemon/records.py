"""The glue's completion records ([u64 id][i32 ret][u32 len][len bytes],
native byte order: mt_drain's, and the lane's orphans) as results."""

from __future__ import annotations

import struct
from typing import Final

from .library import Result

_RECORD: Final = struct.Struct("=QiI")


def unpack_records(data: bytes, out: list[Result]) -> None:
    """Append the (call id, ret, body) of every record in ``data`` to ``out``."""
    unpack = _RECORD.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        call_id, ret, size = unpack(data, pos)
        start = pos + _RECORD.size
        pos = start + size
        out.append((call_id, ret, data[start:pos]))
