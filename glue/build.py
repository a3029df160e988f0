"""cffi API-mode build of ``mytimerd._glue`` (run by setup.py).

The ABI's typedef and result codes come from the one public header
(native/include/my_timer_cbor.h, its CFFI region); the host functions from
glue/glue.h, the unix listener's gate from glue/gate.h, the lane of quick
calls from glue/lane.h.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ABI_HEADER = ROOT / "native" / "include" / "my_timer_cbor.h"


def _abi_region() -> str:
    text = ABI_HEADER.read_text()
    start = text.index("/* CFFI-BEGIN */") + len("/* CFFI-BEGIN */")
    return text[start : text.index("/* CFFI-END */")]


ffibuilder = FFI()
ffibuilder.cdef(
    _abi_region()
    + (HERE / "glue.h").read_text()
    + (HERE / "gate.h").read_text()
    + (HERE / "lane.h").read_text()
)
ffibuilder.set_source(
    "mytimerd._glue",
    '#include "my_timer_cbor.h"\n#include "glue.h"\n#include "gate.h"\n#include "lane.h"\n',
    sources=[str(HERE / n) for n in ("glue.c", "gate.c", "lane.c", "lanetls.c")],
    include_dirs=[str(ROOT / "native" / "include"), str(HERE)],
    # (libssl: the one Python's ssl module runs on, for the lane's TLS)
    libraries=["dl", "pthread", "ssl", "crypto"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT / "build" / "glue"), verbose=True)
