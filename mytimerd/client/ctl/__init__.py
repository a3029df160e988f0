"""mytimerctl: call mytimerd from the command line.

Commands, options and help texts are generated from the library's
descriptions: one command per method of either bundled generation (0.2 and
0.3, see :mod:`.commands`; daemon methods without their ``mytimerd.`` prefix,
``watch`` for ``mytimerd.subscribe``), one option per leaf field of its
request, named after the field (camelCase to kebab-case, or ``Field.cli``).
Options the user leaves out are left out of the request, so the library's
defaults apply. Calls go through :class:`mytimerd.client.Client`.

A daemon serving another library has that library's commands, built by the
same builder from its ``mytimerd.describe``, cached per address
(:mod:`.remote`).

Modules: :mod:`.commands` (the command table), :mod:`.remote` (another
library's table and the describe cache), :mod:`.parser` (argparse and
exit codes), :mod:`.render` (JSON forms and human output), :mod:`.completion`
(shell scripts), :mod:`.hints` (what to do after an error) and :mod:`.main`
(the entry point, ``mytimerctl`` in pyproject.toml's console scripts).
"""

from __future__ import annotations

from .commands import COMMANDS, EXTRA_COMMANDS, kebab
from .main import main
from .parser import (
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_DAEMON_ERROR,
    EXIT_IO,
    EXIT_LIBRARY_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from .render import parse_json_request, render, to_json

__all__ = [
    "COMMANDS",
    "EXIT_BROKEN_PIPE",
    "EXIT_CODES",
    "EXIT_DAEMON_ERROR",
    "EXIT_IO",
    "EXIT_LIBRARY_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNHEALTHY",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "EXTRA_COMMANDS",
    "kebab",
    "main",
    "parse_json_request",
    "render",
    "to_json",
]
