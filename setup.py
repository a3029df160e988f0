"""Build hooks that pyproject.toml cannot express.

- ``cffi_modules`` compiles the API-mode glue ``mytimerd._glue``.
- ``build_py`` also builds native/ (``make -C native``, and
  ``GENERATION=0.3``) and ships ``libmy_timer.so`` (and the 0.3 drop-in
  ``libmy_timer-0.3.so``) inside the package, where mytimerd finds it without
  configuration; and native/echo/, the second library (``libecho.so``,
  ``libecho-0.3.so``), served with ``--library`` and its description.
- ``build_py`` also compiles the bundled descriptions
  (``mytimerd/protocol/descriptions/*.cddl``) into
  ``mytimerd/protocol/_descriptions.py``, so a default start does not parse
  CDDL (``mytimerd.protocol.compile_descriptions``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
NATIVE_SO = ROOT / "native" / "build" / "libmy_timer.so"
NATIVE_SO_03 = ROOT / "native" / "build" / "libmy_timer-0.3.so"
ECHO_SOS = (ROOT / "native/echo/build/libecho.so", ROOT / "native/echo/build/libecho-0.3.so")


class BuildPyWithNative(build_py):
    """build_py that also builds and ships the native library."""

    def run(self) -> None:
        jobs = f"-j{os.cpu_count() or 1}"
        for folder in (ROOT / "native", ROOT / "native" / "echo"):
            for gen in ("0.2", "0.3"):
                subprocess.run(["make", "-C", str(folder), jobs, f"GENERATION={gen}"], check=True)
        # Before super().run(), which copies the package (with the module) to build_lib.
        subprocess.run(
            [sys.executable, "-m", "mytimerd.protocol.compile_descriptions"], cwd=ROOT, check=True
        )
        super().run()
        targets = [Path(self.build_lib) / "mytimerd" / "_lib"]
        if self.editable_mode:
            targets.append(ROOT / "mytimerd" / "_lib")
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            # Copy, then rename: a running daemon maps the old file, and
            # overwriting it in place would crash it with SIGBUS.
            for so in (NATIVE_SO, NATIVE_SO_03, *ECHO_SOS):
                tmp = target / f".{so.name}.{os.getpid()}"
                shutil.copy2(so, tmp)
                os.replace(tmp, target / so.name)


setup(
    cffi_modules=["glue/build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithNative},
)
