"""The daemon side: sockets from systemd or bound by hand, the library host,
the server, its health and its entry point (``mytimerd``)."""

from .cli import main

__all__ = ["main"]
