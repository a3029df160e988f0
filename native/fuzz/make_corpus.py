#!/usr/bin/env python3
"""Regenerate the fuzz seed corpus: the spec's vectors plus hand-made edge cases.

usage: python3 native/fuzz/make_corpus.py   (writes native/fuzz/corpus/<sha1>)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = HERE.parents[1] / "tests" / "vectors" / "abi-vectors.json"
SPEC_03 = HERE.parents[1] / "tests" / "vectors" / "abi-vectors-0.3.json"


def main() -> None:
    seeds: list[bytes] = []
    vectors = json.loads(SPEC.read_text())
    seeds.append(bytes.fromhex(vectors["create"]["request_hex"]))
    seeds += [bytes.fromhex(v["request_hex"]) for v in vectors["calls"]]
    # the 0.3 generation's requests (text priorities) for the gen-3 schedule decoder
    seeds += [bytes.fromhex(v["request_hex"]) for v in json.loads(SPEC_03.read_text())["calls"]]
    h = bytes.fromhex
    seeds += [
        b"",
        h("a0"),
        h("a0ff"),
        h("80"),
        h("c0a0"),
        h("bf"),
        h("bfff"),
        h("a163726571bfff"),  # indefinite map
        h("a163726571a1676d65737361676562fffe"),  # invalid UTF-8
        h("a163726571a1676d65737361676563eda080"),  # surrogate
        h("a163726571a1676d6573736167657bffffffffffffffff"),  # huge length
        h("a163726571a16764656c61794d731b8000000000000000"),  # 2^63
        h("a163726571a16764656c61794d733b8000000000000000"),  # -2^63-1
        h("a163726571a16764656c61794d731b7fffffffffffffff"),  # INT64_MAX
        h("a163726571a16764656c61794d73f6"),  # null int
        h("a163726571a1686d657373616765739bffffffffffffffff"),  # huge array
        h("a163726571a2646e6f7465f667726574726965737f"),  # null note, bad retries
        h(
            "a2636a6f62a1646e616d65616a687363686564756c65a2"
            "69737461727441744d731b7fffffffffffffff666a697474657201"
        ),  # overflow
        h("a166636f6e666967a1646e616d656464656d6f"),
        h("a263726571a063726571a0"),  # duplicate key
        h("a1" * 64),
        h("81" * 64),  # deep nesting
        h("a1fb3ff0000000000000a0"),
        h("a17c"),
    ]
    out = HERE / "corpus"
    out.mkdir(exist_ok=True)
    for s in seeds:
        (out / hashlib.sha1(s).hexdigest()).write_bytes(s)
    print(f"{len(seeds)} seeds in {out}")


if __name__ == "__main__":
    main()
