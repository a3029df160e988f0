"""The errors the daemon itself answers with: one catalogue, one place.

On the wire a daemon error is a RET_ERR body ``mytimerd.<Name>: <sentence>``.
Library errors never start with ``mytimerd.``, so a client can tell them apart.
The catalogue below is part of the interface: ``mytimerd.describe`` lists it and
the README documents it from here.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "mytimerd."

#: Every error name the daemon can send, with what it means.
CATALOGUE: Final[dict[str, str]] = {
    "UnknownMethod": "No method of that name; the message lists the methods there are.",
    "InvalidCBOR": (
        "The payload is not one well-formed CBOR item of the accepted subset: "
        "definite lengths only, no tags, valid UTF-8, no duplicate map keys, "
        "bounded nesting, nothing after the item."
    ),
    "InvalidParameter": (
        "The payload is valid CBOR but does not match the method's request schema: "
        "wrong type, unknown key or value out of range. The message starts with the "
        "path of the offending value (e.g. req.delayMs)."
    ),
    "MethodNameTooLong": (
        "The method name is longer than --max-method-len; the connection is closed."
    ),
    "FrameTooLarge": (
        "The payload is longer than --max-payload; it is not read and the connection is closed."
    ),
    "TooManyConnections": (
        "The daemon already serves --max-connections connections, this peer already "
        "holds --max-connections-per-peer (TLS handshakes under way included), or the "
        "daemon is at its descriptor limit; this one is answered once and closed."
    ),
    "Overloaded": (
        "The library already holds --max-held-calls calls or --max-held-bytes bytes of "
        "requests (counted until it really answers, even after a Timeout answer); the "
        "call is refused at once. Daemon methods and later calls within budget work. "
        "Also sent, as a final answer before closing, to a connection whose unfinished "
        "frame would take the daemon past --max-buffered-bytes, and to "
        "mytimerd.subscribe past --max-subscribers."
    ),
    "QuotaExceeded": (
        "This peer (a unix uid, a TCP address, or with mutual TLS the certificate's "
        "name) already holds its share of a daemon budget: held calls or their bytes "
        "(--max-held-calls-per-peer, --max-held-bytes-per-peer), unfinished frames "
        "(--max-buffered-bytes-per-peer; the connection is closed) or subscriptions "
        "(--max-subscribers-per-peer); the message names which. Other peers are not "
        "affected; retry once some of your calls have ended."
    ),
    "PermissionDenied": (
        "The peer is not allowed: a unix peer not on --allow-user/--allow-group (root "
        "and the daemon's own user always are), or a TLS client whose certificate names "
        "nothing on --tls-allow; answered once, then the connection is closed."
    ),
    "MethodUnavailable": (
        "The library's description lists this method but the loaded library lacks its "
        "entry point (mytimerd.describe shows which)."
    ),
    "Subscribed": (
        "This connection is an event stream since mytimerd.subscribe and takes no calls; "
        "it is answered once and closed. Make calls on another connection."
    ),
    "SlowSubscriber": (
        "This subscriber fell behind: more than --max-subscriber-queue events or "
        "--max-subscriber-bytes bytes waited for it, or events waited longer than "
        "--max-subscriber-lag; it is sent this error last (after any answer it is owed) "
        "and cut off."
    ),
    "Timeout": (
        "The library did not answer within --timeout seconds, or before the daemon "
        "stopped (--drain-timeout); the call may still have been carried out."
    ),
    "ShuttingDown": (
        "The daemon is stopping and did not start this request: it is safe to send "
        "it again (mytimerd's clients do, once, on a fresh connection: another "
        "daemon, or the next instance on the same socket)."
    ),
    "Internal": "A bug in mytimerd; the daemon's log has the details.",
}


class DaemonError(Exception):
    """An error answered by the daemon as ``mytimerd.<name>: <message>``."""

    def __init__(self, name: str, message: str) -> None:
        if name not in CATALOGUE:
            raise ValueError(f"undocumented daemon error name {name!r}")
        super().__init__(f"{PREFIX}{name}: {message}")
        self.name = name
        self.message = message

    def body(self) -> bytes:
        """The RET_ERR body for this error."""
        return str(self).encode()


def parse_error_body(body: bytes) -> tuple[str | None, str]:
    """Split a RET_ERR body into (daemon error name or None, message).

    A body that does not start with ``mytimerd.<Name>: `` is a library error and
    is returned whole, decoded leniently (the real library can send invalid UTF-8).
    """
    text = body.decode("utf-8", "replace")
    if text.startswith(PREFIX):
        name, sep, message = text[len(PREFIX) :].partition(": ")
        if sep and name.isidentifier():
            return name, message
    return None, text
