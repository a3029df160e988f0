"""The service manager's side: logging to the journal, sd_notify, the
watchdog interval systemd asked for, and the descriptor limit."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import time
from typing import Any

log = logging.getLogger("mytimerd")


def setup_logging(level: str) -> None:
    """Structured journald logging when stderr is the journal, else stderr."""
    handler: logging.Handler
    if _stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="mytimerd")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("mytimerd[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return bool(ino) and f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class Notifier:
    """sd_notify, a no-op when not run by systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if message.startswith("STATUS="):
            if message == self._last_status:
                return
            self._last_status = message
        self.with_fds(message, [])

    def with_fds(self, message: str, fds: list[int]) -> bool:
        """Send ``message`` with descriptors (FDSTORE=1); whether systemd got it."""
        if not self.enabled:
            return False
        from systemd import daemon  # type: ignore[attr-defined]

        try:
            return bool(daemon.notify(message, fds=fds) if fds else daemon.notify(message))
        except OSError as exc:  # the socket went away: stop trying
            log.warning("sd_notify failed (%s); no further notifications", exc)
            self.enabled = False
            return False


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec= for this process, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def raise_fd_limit() -> int | None:
    """Raise the soft descriptor limit to the hard one; return it (None: no limit)."""
    # Every connection is a descriptor; systemd's default soft limit (1024)
    # is far below --max-connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return None if soft == resource.RLIM_INFINITY else soft


class LoopErrors:
    """The event loop's exception handler: an OSError the loop meets on its
    own (accept() out of descriptors, a socket gone) is a condition a client
    can cause, not a bug, so it is one warning line, at most once per
    ``interval`` seconds, never a traceback; anything else goes to the
    loop's default handler."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last = -interval
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, OSError):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.warning("%s: %s%s", context.get("message", "event loop"), exc, more)
