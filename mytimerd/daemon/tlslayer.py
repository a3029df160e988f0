"""TLS between a TCP transport and a :class:`~.connection.Connection`, on
memory BIOs.

The event loops' own TLS (``create_server(ssl=...)``, ``start_tls``) drops
the alert that tells a refused client why, and reports failed handshakes
nowhere. This layer owns the handshake: it is bounded by a timer, its
failure is reported to the daemon with the reason, and the alert reaches the
client before the connection closes. It is a protocol to the TCP transport
and a transport to the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

_READ: int = 256 * 1024


class HandshakeTimeout(Exception):
    """The client did not complete the TLS handshake in time."""


class TLSLayer(asyncio.Protocol):
    """Server-side TLS for one TCP connection."""

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        app: asyncio.Protocol,
        timeout: float,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """Start the handshake on ``raw``; ``done(None)`` once it succeeded
        (then ``app`` receives the plaintext), ``done(exc)`` if it failed."""
        self._raw = raw
        self._app = app
        self._done: Callable[[BaseException | None], None] | None = done
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._eof_sent = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            timeout,
            self._fail,
            HandshakeTimeout(f"no handshake within {timeout:g} s (--tls-handshake-timeout)"),
        )
        raw.set_protocol(self)

    # the TCP side --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        incoming = self._in
        incoming.write(data)
        if self._done is not None and not self._handshake():
            return
        tls = self._ssl
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
        if self._out.pending:  # session tickets, key updates
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
        self._ssl.write(data)
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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peercert`` and ``cipher`` from TLS; the rest from the TCP transport."""
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "ssl_object":
            return self._ssl
        return self._raw.get_extra_info(name, default)

    # internals -------------------------------------------------------------------

    def _handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
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
        # SSLWantReadError: the client's own close_notify has not come yet.
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()
        self._send_out()

    def _send_out(self) -> None:
        if self._out.pending and not self._raw.is_closing():
            self._raw.write(self._out.read())

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
        if done is not None:
            done(exc)
