"""Build hooks that pyproject.toml cannot express.

- ``cffi_modules`` compiles the API-mode glue ``mytimerd._glue``.
- ``build_py`` also builds native/ (``make -C native``) and ships
  ``libmy_timer.so`` inside the package, where mytimerd finds it without
  configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
NATIVE_SO = ROOT / "native" / "build" / "libmy_timer.so"


class BuildPyWithNative(build_py):
    """build_py that also builds and ships the native library."""

    def run(self) -> None:
        subprocess.run(["make", "-C", str(ROOT / "native"), f"-j{os.cpu_count() or 1}"], check=True)
        super().run()
        targets = [Path(self.build_lib) / "mytimerd" / "_lib"]
        if self.editable_mode:
            targets.append(ROOT / "mytimerd" / "_lib")
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            # Copy, then rename: a running daemon maps the old file, and
            # overwriting it in place would crash it with SIGBUS.
            tmp = target / f".{NATIVE_SO.name}.{os.getpid()}"
            shutil.copy2(NATIVE_SO, tmp)
            os.replace(tmp, target / NATIVE_SO.name)


setup(
    cffi_modules=["glue/build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithNative},
)
