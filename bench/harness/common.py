"""Paths of the benchmark's programs and the wire constants every part uses."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
BUILD = BENCH / "build"
LOADGEN = BUILD / "loadgen"
FLOOR = BUILD / "floor_server"
REFERENCE = BUILD / "reference_server"
LOOPBACK = "127.0.0.1"

VERSION_REQ = (7).to_bytes(4, "big") + b"version" + (1).to_bytes(4, "big") + b"\xa0"
VERSION_RESP = bytes.fromhex("0000000000000011706e696d2d74696d65722076302e312e30")
