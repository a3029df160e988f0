"""TLS between a TCP transport and a :class:`~.connection.Connection`, on
memory BIOs.

The event loops' own TLS (``create_server(ssl=...)``, ``start_tls``) drops
the alert that tells a refused client why, and reports failed handshakes
nowhere. This layer owns the handshake: it is bounded by a timer, its
failure is reported to the daemon with the reason, and the alert reaches the
client before the connection closes. It is a protocol to the TCP transport
and a transport to the connection.

No SSL object exists until the client's whole ClientHello is in: a
:class:`~mytimerd.protocol.tlshello.HelloReader` reads it first, so a
client that stalls before (or announces a hello larger than ``max_hello``)
costs the bytes it sent and no OpenSSL buffers (:class:`HelloRefused`).

After a flood of handshakes has receded, the heap's free pages are handed
back to the OS (``malloc_trim``): glibc's ``free()`` only ever shrinks the
top of the heap, and a few long-lived allocations made during the flood (the
event loop's descriptor tables, sets that grew) pin it, so without this the
memory of thousands of closed connections stays resident for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Callable
from typing import Any

from ..protocol.tlshello import DEFAULT_MAX_HELLO, HelloReader, HelloRefused, alert_record
from . import tlslane

__all__ = ["HandshakeTimeout", "HelloRefused", "TLSLayer"]

_READ: int = 256 * 1024


class HandshakeTimeout(Exception):
    """The client did not complete the TLS handshake in time."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library: nothing to do)."""
    import ctypes  # here, not at the top: it costs every start time, and only a flood needs it

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapReturn:
    """Counts handshakes under way and, once a flood of them has receded,
    gives the heap's free pages back to the OS.

    A flood is ``flood`` handshakes at once (each holds at least a few kB,
    tens with OpenSSL's buffers); it has receded when no more than a quarter
    of its peak is left. The trim runs ``delay`` seconds later, when the
    transports closed meanwhile have been freed, and at most once per flood,
    so its cost (a walk of the heap: about 25 ms for 8,000 freed chunks) is
    paid once per thousands of handshakes, never per connection.
    """

    def __init__(
        self,
        flood: int = 256,
        delay: float = 1.0,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.flood = flood
        self.delay = delay
        if trim is not None:
            self.trim = trim
        #: Handshakes under way, and the most at once since the last trim.
        self.live = 0
        self.peak = 0
        #: Trims done (for tests and curiosity).
        self.trims = 0
        self._due: float | None = None

    @functools.cached_property
    def trim(self) -> Callable[[int], int] | None:
        """What gives the heap back (None: nothing can), by default glibc's
        malloc_trim, looked up when the first flood recedes."""
        return _malloc_trim()

    def begin(self) -> None:
        """A handshake started."""
        self.live += 1
        self.peak = max(self.peak, self.live)

    def end(self) -> None:
        """A handshake ended (either way); trim later if a flood receded."""
        self.live -= 1
        if self.peak < self.flood or self.live > self.peak // 4 or self.trim is None:
            return
        now = time.monotonic()
        # A trim already due is not scheduled again (unless its loop died
        # before running it: then it is long overdue).
        if self._due is not None and now < self._due + 10 * self.delay:
            return
        self._due = now + self.delay
        asyncio.get_running_loop().call_later(self.delay, self._run)

    def _run(self) -> None:
        self._due = None
        self.peak = self.live
        if self.trim is not None:
            self.trim(0)
            self.trims += 1


#: The process's one heap, shared by every TLS layer.
heap = HeapReturn()


class TLSLayer(asyncio.Protocol):
    """Server-side TLS for one TCP connection."""

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        app: asyncio.Protocol,
        timeout: float,
        done: Callable[[BaseException | None], None],
        *,
        max_hello: int = DEFAULT_MAX_HELLO,
    ) -> None:
        """Start the handshake on ``raw``; ``done(None)`` once it succeeded
        (then ``app`` receives the plaintext), ``done(exc)`` if it failed
        (:class:`HandshakeTimeout`, :class:`HelloRefused`, an ``ssl.SSLError``
        or a ``ConnectionError``). A ClientHello announcing more than
        ``max_hello`` bytes is refused before OpenSSL sees it."""
        self._raw = raw
        self._app = app
        self._done: Callable[[BaseException | None], None] | None = done
        self._context = context
        # Until the ClientHello is complete there is no SSL object (and no
        # OpenSSL buffer): only this reader and the bytes of the hello.
        self._hello: HelloReader | None = HelloReader(max_hello)
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._ssl: ssl.SSLObject | None = None
        self._eof_sent = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout,
            self._fail,
            HandshakeTimeout(f"no handshake within {timeout:g} s (--tls-handshake-timeout)"),
        )
        heap.begin()
        raw.set_protocol(self)

    # the TCP side --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        tls, incoming = self._ssl, self._in
        if tls is None or incoming is None:
            data = self._read_hello(data)
            tls, incoming = self._ssl, self._in
            if tls is None or incoming is None:
                return
        incoming.write(data)
        if self._done is not None and not self._handshake():
            return
        chunks = []
        eof = False
        # Read while whole records may be waiting: stopping when neither the
        # BIO nor OpenSSL holds anything spares the SSLWantReadError that
        # would otherwise end every read.
        while True:
            try:
                chunk = tls.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify from the client
                eof = True
                break
            except ssl.SSLError:
                self._send_out()
                self._raw.close()
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
            if not incoming.pending and not tls.pending():
                break
        if self._out is not None and self._out.pending:  # session tickets, key updates
            self._send_out()
        if chunks:
            self._app.data_received(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        if eof and not self._app.eof_received():
            self.close()

    def eof_received(self) -> bool:
        if self._done is not None:
            self._fail(ConnectionResetError("the client closed during the handshake"))
            return False
        return bool(self._app.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None:
            self._fail(exc or ConnectionResetError("the client closed during the handshake"))
            return
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # the connection side (a transport) -----------------------------------------------

    def write(self, data: bytes) -> None:
        """Encrypt and send ``data``."""
        self._session().write(data)
        self._send_out()

    def can_write_eof(self) -> bool:
        """Half-close is a close_notify then a TCP half-close."""
        return True

    def write_eof(self) -> None:
        """Send close_notify and half-close the TCP connection."""
        self._close_notify()
        if self._raw.can_write_eof() and not self._raw.is_closing():
            self._raw.write_eof()

    def close(self) -> None:
        """Send close_notify (once) and close after what is buffered is out."""
        self._close_notify()
        self._raw.close()

    def is_closing(self) -> bool:
        """Whether the TCP transport is closing."""
        return self._raw.is_closing()

    def pause_reading(self) -> None:
        """Stop reading from the client."""
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        """Read from the client again."""
        self._raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        """Encrypted bytes the TCP transport has not sent yet."""
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Backpressure marks, on the encrypted bytes of the TCP transport."""
        self._raw.set_write_buffer_limits(high, low)

    # lending the session to the lane (.tlslane) ------------------------------------

    def lane_session(self) -> object:
        """The session, for the lane, when it holds nothing unread or unsent
        (else None: the lane would not know of it)."""
        tls, incoming, out = self._ssl, self._in, self._out
        if (
            tls is None
            or incoming is None
            or out is None
            or self._done is not None
            or self._eof_sent
            or incoming.pending
            or out.pending
            or tls.pending()
        ):
            return None
        return tlslane.session(tls, incoming, out)

    def write_sealed(self, data: bytes) -> None:
        """Send records the lane sealed on this session and could not send."""
        if not self._raw.is_closing():
            self._raw.write(data)

    def read_held(self) -> None:
        """Back from the lane: hand on what the session holds unread (records
        read by the lane behind the requests it served)."""
        if self._ssl is not None and self._done is None:
            self.data_received(b"")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peercert`` and ``cipher`` from TLS; the rest from the TCP transport."""
        tls = self._ssl
        if name == "peercert":
            return default if tls is None else tls.getpeercert()
        if name == "cipher":
            return default if tls is None else tls.cipher()
        if name == "ssl_object":
            return default if tls is None else tls
        return self._raw.get_extra_info(name, default)

    # internals -------------------------------------------------------------------

    def _read_hello(self, data: bytes) -> bytes:
        """Feed the hello reader; once the hello is complete, create the SSL
        object and return what OpenSSL is to read (else b"")."""
        reader = self._hello
        if reader is None or self._done is None:
            return b""  # refused or timed out: the transport is closing
        try:
            hello = reader.feed(data)
        except HelloRefused as exc:
            self._hello = None
            if exc.alert is not None and not self._raw.is_closing():
                self._raw.write(alert_record(exc.alert))
            self._fail(exc)
            return b""
        if hello is None:
            return b""
        self._hello = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = self._context.wrap_bio(self._in, self._out, server_side=True)
        return hello.records()

    def _session(self) -> ssl.SSLObject:
        tls = self._ssl
        if tls is None:
            raise RuntimeError("no TLS session before the handshake")
        return tls

    def _handshake(self) -> bool:
        try:
            self._session().do_handshake()
        except ssl.SSLWantReadError:
            self._send_out()
            return False
        except ssl.SSLError as exc:
            self._fail(exc)
            return False
        self._send_out()
        self._finish(None)
        return True

    def _close_notify(self) -> None:
        if self._eof_sent or self._raw.is_closing():
            return
        self._eof_sent = True
        if self._ssl is None:
            return  # no session, nothing to close
        # SSLWantReadError: the client's own close_notify has not come yet.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._send_out()

    def _send_out(self) -> None:
        out = self._out
        if out is not None and out.pending and not self._raw.is_closing():
            self._raw.write(out.read())

    def _fail(self, exc: BaseException) -> None:
        if self._done is None:
            return
        # The alert that says why is in the outgoing BIO: send it, then close
        # (close() lets the transport write what it holds first).
        self._send_out()
        self._raw.close()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        done, self._done = self._done, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A reader left from before the hello holds its bytes: let them go now,
        # not when the transport gets round to dropping this protocol.
        self._hello = None
        if done is not None:
            heap.end()
            done(exc)
