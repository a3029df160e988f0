"""The ``mytimerd`` command (and ``python -m mytimerd``): the daemon, its
modules loaded with no garbage collection.

The collector would run some 30 times while uvloop and the daemon's modules
load, about 4 ms of a socket-activated start, and free next to nothing; so
it is off until the daemon serves (:func:`mytimerd.daemon.cli.main` turns it
back on, with the start's objects frozen). This module imports nothing of
the daemon's before it is off.
"""

import gc


def main() -> int:
    """Run the daemon (see ``mytimerd --help``)."""
    gc.disable()
    from .daemon.cli import main as run  # late: with the collector off

    return run()
