"""The actors of the attacker-vs-bystander matrix (tests/hostile/test_matrix.py),
each run as its own small process.

Standard library only, so that the matrix can run this file's source with
``python -I -c SOURCE KIND CONFIG`` under ``setpriv`` as any uid, without
reading the repository or the virtualenv (another uid may not be able to).
Every actor:

- takes its configuration as one JSON argument (``KIND CONFIG``);
- prints ``READY {json}`` once its set-up is done (connections opened,
  subscriptions made) and ``RESULT {json}`` at the end, nothing else on stdout;
- stops when its stdin reaches EOF (the matrix closes it) or after
  ``maxSeconds`` (default 60), whichever comes first, and is bounded in count
  by its configuration: nothing here outlives a test or floods without end;
- only ever connects to loopback addresses (127.0.0.0/8) or unix sockets: a
  target or source address outside 127.0.0.0/8 is refused at start.

Kinds: ``bystander`` (a client that times every call), ``held`` (echoes at
the longest delay from many connections and reconnects), ``subscribers``
(many subscribers that read, do not read, or send a partial frame and stall),
``burst`` (echoes that all finish at one instant: event bursts), ``tlsstall``
(TLS handshakes announcing ClientHellos and stalling), ``tlsflood`` (TLS
handshakes as fast as possible, plus stalled ones), ``connflood`` (unix
connects as fast as possible), ``logflood`` (requests that each cause a refusal
or a log line) and ``fdflood`` (many connections at once, each asking once).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

# The framing (docs/protocol.md): request [u32 len][method][u32 len][payload],
# response [i32 ret][u32 len][body], big-endian.
_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">iI")
#: Daemon error bodies read "mytimerd.<Name>: <sentence>".
_ERROR_NAME = re.compile(rb"mytimerd\.([A-Za-z]+):")
#: Socket option IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind a source address
#: and let connect() pick the port, so TIME_WAIT ports are reused per 4-tuple.
_IP_BIND_ADDRESS_NO_PORT = 24


# encoding -------------------------------------------------------------------------------


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for code, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | code]) + value.to_bytes(size, "big")
    raise ValueError(value)


def cbor(value: object) -> bytes:
    """The CBOR encoding of ``value`` (dict, list, str, bytes, int, bool, None)."""
    if value is None:
        return b"\xf6"
    if value is True or value is False:
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _cbor_head(0, value) if value >= 0 else _cbor_head(1, -1 - value)
    if isinstance(value, str):
        data = value.encode()
        return _cbor_head(3, len(data)) + data
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    if isinstance(value, list):
        return _cbor_head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        return _cbor_head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(type(value))


def frame(method: str | bytes, payload: bytes = b"\xa0") -> bytes:
    """One request frame."""
    name = method.encode() if isinstance(method, str) else method
    return _U32.pack(len(name)) + name + _U32.pack(len(payload)) + payload


def echo_frame(message: str, delay_ms: int = 0) -> bytes:
    """The request frame of ``echo(message, delayMs)``."""
    return frame("echo", cbor({"req": {"message": message, "delayMs": delay_ms}}))


VERSION = frame("version")
SUBSCRIBE = frame("mytimerd.subscribe")


class Responses:
    """Incremental parser of response frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; the complete (ret, body) frames they finish."""
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 8:
            ret, size = _HEAD.unpack_from(buf, pos)
            if len(buf) - pos - 8 < size:
                break
            out.append((ret, bytes(buf[pos + 8 : pos + 8 + size])))
            pos += 8 + size
        del buf[:pos]
        return out


def outcome(ret: int, body: bytes) -> str:
    """The outcome of an answer: "ok", the daemon error name, or "library-error"."""
    if ret == 0:
        return "ok"
    found = _ERROR_NAME.match(body)
    return found.group(1).decode() if found else "library-error"


def os_error(exc: BaseException) -> str:
    """A short name for a socket failure: the errno name, or the exception type."""
    if isinstance(exc, ssl.SSLError):
        return f"ssl:{exc.reason or exc.__class__.__name__}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


# targets ---------------------------------------------------------------------------------


def _loopback(host: str) -> None:
    """Refuse any address that is not IPv4 loopback (127.0.0.0/8)."""
    if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
        raise SystemExit(f"refusing non-loopback address {host}")


class Target:
    """Where to connect: ``{"unix": PATH}`` or ``{"tcp": [HOST, PORT], "source":
    ADDR?, "tls": {"ca": PEM, "cert": PEM?, "key": PEM?}?}``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.unix: str | None = spec.get("unix")
        self.source: str | None = spec.get("source")
        self.tcp: tuple[str, int] | None = None
        self.tls: ssl.SSLContext | None = None
        if self.unix is None:
            host, port = spec["tcp"]
            _loopback(host)
            self.tcp = (host, int(port))
            if self.source is not None:
                _loopback(self.source)
            tls = spec.get("tls")
            if tls is not None:
                ctx = ssl.create_default_context(cafile=tls["ca"])
                if tls.get("cert"):
                    ctx.load_cert_chain(tls["cert"], tls["key"])
                self.tls = ctx

    def with_source(self, source: str) -> Target:
        """The same target from another source address."""
        _loopback(source)
        other = Target.__new__(Target)
        other.__dict__.update(self.__dict__)
        other.source = source
        return other

    def raw(self, timeout: float | None) -> socket.socket:
        """A socket, not yet connected (bound to the source address)."""
        if self.unix is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.source is not None:
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
        sock.settimeout(timeout)
        return sock

    @property
    def address(self) -> Any:
        """The address to connect() to."""
        return self.unix if self.unix is not None else self.tcp

    def connect(self, timeout: float, retry_eagain: bool = True) -> socket.socket:
        """A connected socket (TLS handshake done on TLS targets).

        A unix connect() that fails with EAGAIN (the listener's backlog is
        full) is retried until ``timeout``, as mytimerd's clients do."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            sock = self.raw(max(0.001, deadline - time.monotonic()))
            try:
                sock.connect(self.address)
                break
            except BlockingIOError as exc:
                sock.close()
                if not retry_eagain or exc.errno != errno.EAGAIN:
                    raise
                if time.monotonic() + pause > deadline:
                    raise TimeoutError("connect: EAGAIN until the timeout") from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            except BaseException:
                sock.close()
                raise
        if self.tls is None:
            return sock
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            return self.tls.wrap_socket(sock, server_hostname="localhost")
        except BaseException:
            sock.close()
            raise


def read_answers(sock: socket.socket, count: int, deadline: float) -> tuple[list[str], str | None]:
    """Read ``count`` answers: their outcomes, and why fewer came (None: all came)."""
    parser = Responses()
    got: list[str] = []
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, "timeout"
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 16)
        except (OSError, ssl.SSLError) as exc:
            return got, os_error(exc)
        if not data:
            return got, "eof"
        got.extend(outcome(ret, body) for ret, body in parser.feed(data))
    return got, None


# the actor's life ------------------------------------------------------------------------


class Life:
    """When to stop: EOF on stdin, or ``maxSeconds`` after the start."""

    def __init__(self, max_seconds: float) -> None:
        self.stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        threading.Thread(target=self._watch_stdin, daemon=True).start()
        threading.Thread(target=self._watch_clock, daemon=True).start()

    def _watch_stdin(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(1):
                pass
        self.stop.set()

    def _watch_clock(self) -> None:
        self.stop.wait(max(0.0, self._deadline - time.monotonic()))
        self.stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if told to stop."""
        return self.stop.wait(seconds)


def say(tag: str, value: object) -> None:
    """One line for the matrix: ``READY {json}`` or ``RESULT {json}``."""
    sys.stdout.write(f"{tag} {json.dumps(value)}\n")
    sys.stdout.flush()


def run_threads(count: int, body: Callable[[int], None]) -> None:
    """Run ``body(i)`` on ``count`` threads and wait for them."""
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# bystander -------------------------------------------------------------------------------


def bystander(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """Every ``interval`` s: connect, ``version``, ``echo`` (delay 0, a message
    of ``echoBytes``), ``complex`` (a tag of ``complexBytes``, if given: a large
    request that fires no event), close; with ``persistent`` the connection is
    kept (and made again after a failure); ``version``/``echo`` false leave
    that call out.

    Each call is a sample [start, method, seconds, outcome, connect seconds];
    the first call's time includes the connect (and TLS handshake), as a
    command-line client's would, and the last field says how much that was.
    A call that fails ends its session (counted once)."""
    target = Target(cfg["target"])
    message = "b" * int(cfg.get("echoBytes", 16))
    calls = []
    if cfg.get("version", True):
        calls.append(("version", VERSION, ""))
    if cfg.get("echo", True):
        calls.append(("echo", echo_frame(message, 0), message))
    if cfg.get("complexBytes"):
        tag = "c" * int(cfg["complexBytes"])
        request = frame("complex", cbor({"req": {"messages": [], "tags": [tag]}}))
        calls.append(("complex", request, ""))
    interval = float(cfg.get("interval", 0.01))
    timeout = float(cfg.get("timeout", 5.0))
    persistent = bool(cfg.get("persistent", False))
    samples: list[list[Any]] = []
    sock: socket.socket | None = None
    say("READY", {})
    while not life.stop.is_set():
        session = time.monotonic()
        connecting = 0.0
        if sock is None:
            try:
                sock = target.connect(timeout)
            except (OSError, ssl.SSLError) as exc:
                took = time.monotonic() - session
                samples.append([session, "connect", took, os_error(exc), took])
                life.wait(interval)
                continue
            connecting = time.monotonic() - session
        started = session
        failed = False
        for method, request, expect in calls:
            try:
                sock.sendall(request)
            except (OSError, ssl.SSLError) as exc:
                # Refused and closed before the request went out: the
                # refusal may still be there to read.
                answer, why = _one_answer_or_none(sock, started + timeout)
                why = why or os_error(exc)
            else:
                try:
                    answer, why = _one_answer(sock, started + timeout)
                except (OSError, ssl.SSLError) as exc:
                    answer, why = None, os_error(exc)
            took = time.monotonic() - started
            result = why if answer is None else outcome(*answer)
            if answer is not None and result == "ok" and len(answer[1]) < len(expect):
                result = "short-answer"
            samples.append([started, method, took, result, connecting])
            connecting = 0.0
            if result != "ok":
                failed = True
                break
            started = time.monotonic()
        if failed or not persistent:
            sock.close()
            sock = None
        life.wait(max(0.0, interval - (time.monotonic() - session)))
    if sock is not None:
        sock.close()
    return {"samples": samples}


def _one_answer_or_none(
    sock: socket.socket, deadline: float
) -> tuple[tuple[int, bytes] | None, str]:
    """:func:`_one_answer`, with a socket error as no answer ("")."""
    try:
        return _one_answer(sock, deadline)
    except (OSError, ssl.SSLError):
        return None, ""


def _one_answer(sock: socket.socket, deadline: float) -> tuple[tuple[int, bytes] | None, str]:
    parser = Responses()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, "timeout"
        sock.settimeout(left)
        data = sock.recv(1 << 20)
        if not data:
            return None, "eof"
        got = parser.feed(data)
        if got:
            return got[0], ""


# held calls --------------------------------------------------------------------------------


def held(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``rounds`` x (connect, ``perRound`` pipelined echoes at ``delayMs``,
    close without reading), then, until stopped (at most ``maxLater`` more),
    rounds that read their answers. Also one echo just past the longest delay."""
    target = Target(cfg["target"])
    message = "h" * int(cfg.get("messageBytes", 8))
    delay = int(cfg["delayMs"])
    batch = echo_frame(message, delay) * int(cfg["perRound"])
    per_round = int(cfg["perRound"])
    unread = Counter[str]()
    say("READY", {})
    started = time.monotonic()
    for _ in range(int(cfg["rounds"])):
        if life.stop.is_set():
            break
        try:
            with target.connect(10.0) as sock:
                sock.sendall(batch)
        except (OSError, ssl.SSLError) as exc:
            unread[os_error(exc)] += 1
    fill_seconds = time.monotonic() - started
    over = Counter[str]()
    try:
        with target.connect(10.0) as sock:
            sock.sendall(echo_frame(message, delay + 1))
            got, why = read_answers(sock, 1, time.monotonic() + 10)
            over.update(got or [why or "nothing"])
    except (OSError, ssl.SSLError) as exc:
        over[os_error(exc)] += 1
    later = Counter[str]()
    messages: list[str] = []
    rounds_later = 0
    while not life.stop.is_set() and rounds_later < int(cfg.get("maxLater", 200)):
        rounds_later += 1
        try:
            with target.connect(10.0) as sock:
                sock.sendall(batch)
                parser = Responses()
                answers: list[tuple[int, bytes]] = []
                deadline = time.monotonic() + 10
                while len(answers) < per_round and time.monotonic() < deadline:
                    sock.settimeout(deadline - time.monotonic())
                    data = sock.recv(1 << 16)
                    if not data:
                        break
                    answers.extend(parser.feed(data))
        except (OSError, ssl.SSLError) as exc:
            later[os_error(exc)] += 1
            continue
        later.update(outcome(*a) for a in answers)
        later["missing"] += per_round - len(answers)
        if not messages:
            messages = sorted({a[1].decode(errors="replace")[:300] for a in answers if a[0]})
        life.wait(0.05)
    later = +later
    return {
        "fillSeconds": fill_seconds,
        "connectErrors": dict(unread),
        "overDelay": dict(over),
        "later": dict(later),
        "roundsLater": rounds_later,
        "laterMessages": messages[:3],
    }


# subscribers -----------------------------------------------------------------------------


def subscribers(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``count`` connections each subscribe to every event. Then, by ``mode``:
    "read" drains them all until stopped; "still" reads nothing; "partial"
    sends on each the start of a frame announcing ``partialBytes`` of payload,
    as much of it as the kernel takes within ``partialSeconds``, then stalls.

    At the end, every connection's pending bytes are read (2 s at most in
    all) and the daemon errors found in the last bytes are counted."""
    target = Target(cfg["target"])
    mode = cfg.get("mode", "still")
    socks: list[socket.socket] = []
    acks = Counter[str]()
    for _ in range(int(cfg["count"])):
        if life.stop.is_set():
            break
        try:
            sock = target.connect(5.0)
        except (OSError, ssl.SSLError) as exc:
            acks[f"connect:{os_error(exc)}"] += 1
            continue
        try:
            sock.sendall(SUBSCRIBE)
            got, why = read_answers(sock, 1, time.monotonic() + 5)
        except (OSError, ssl.SSLError) as exc:
            got, why = [], os_error(exc)
        # Only the first answer is the acknowledgement (an event may follow).
        acks.update(got[:1] or [why or "nothing"])
        if got[:1] == ["ok"]:
            socks.append(sock)
        else:
            sock.close()
    say("READY", {"subscribed": len(socks), "acks": dict(acks)})
    pushed = 0
    if mode == "partial":
        pushed = _push_partial(socks, int(cfg["partialBytes"]), float(cfg["partialSeconds"]), life)
    received = 0
    if mode == "read":
        received = _drain_until(socks, life)
    else:
        life.stop.wait()
    tail = _final_drain(socks, 2.0)
    for sock in socks:
        sock.close()
    return {
        "subscribed": len(socks),
        "acks": dict(acks),
        "partialBytesSent": pushed,
        "bytesReceived": received + tail["bytes"],
        "finalErrors": tail["errors"],
        "closedByDaemon": tail["closed"],
    }


def _push_partial(socks: list[socket.socket], size: int, seconds: float, life: Life) -> int:
    """Send the head of an ``echo`` frame announcing ``size`` payload bytes and
    then up to ``size - 1`` of them on every socket, without blocking."""
    head = frame("echo", b"")[:-4] + _U32.pack(size)
    chunk = b"\x00" * (1 << 16)
    left = {s: size - 1 for s in socks}
    sent = 0
    for sock in socks:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.send(head)
    deadline = time.monotonic() + seconds
    while left and time.monotonic() < deadline and not life.stop.is_set():
        progress = False
        for sock in list(left):
            try:
                n = sock.send(chunk[: min(len(chunk), left[sock])])
            except BlockingIOError:
                continue
            except OSError:
                del left[sock]
                continue
            sent += n
            progress = True
            left[sock] -= n
            if left[sock] <= 0:
                del left[sock]
        if not progress:
            time.sleep(0.01)
    return sent


def _drain_until(socks: list[socket.socket], life: Life) -> int:
    """Read everything every socket receives until stopped; the bytes read."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    total = 0
    while not life.stop.is_set():
        for key, _ in sel.select(0.05):
            sock = cast(socket.socket, key.fileobj)
            try:
                data = sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                continue
            total += len(data)
    sel.close()
    return total


def _final_drain(socks: Iterable[socket.socket], seconds: float) -> dict[str, Any]:
    """Read what each socket holds (within ``seconds`` in all): bytes read,
    daemon error names found in each one's last 4 KiB, and how many the
    daemon had closed."""
    deadline = time.monotonic() + seconds
    total = 0
    closed = 0
    errors = Counter[str]()
    for sock in socks:
        sock.setblocking(False)
        tail = b""
        eof = False
        while time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            total += len(data)
            tail = (tail + data)[-4096:]
        closed += eof
        errors.update(m.decode() for m in _ERROR_NAME.findall(tail))
    return {"bytes": total, "errors": dict(errors), "closed": closed}


# event bursts ----------------------------------------------------------------------------


def burst(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``bursts`` times: ``total`` echoes over ``connections`` connections, each
    delayed so that all finish ``leadMs`` after the burst starts (each fires
    on_echo_fired), then every answer is read; ``gap`` s between bursts."""
    target = Target(cfg["target"])
    total = int(cfg["total"])
    lead = int(cfg["leadMs"])
    conns = [target.connect(10.0) for _ in range(int(cfg["connections"]))]
    per = [total // len(conns) + (i < total % len(conns)) for i in range(len(conns))]
    outcomes = Counter[str]()
    spreads = []
    say("READY", {})
    for b in range(int(cfg["bursts"])):
        if life.stop.is_set():
            break
        start = time.monotonic()
        for sock, n in zip(conns, per, strict=True):
            now_ms = int((time.monotonic() - start) * 1000)
            sock.sendall(echo_frame(f"burst{b}", max(1, lead - now_ms)) * n)
        results: list[list[str]] = [[] for _ in conns]
        finished: list[float] = [0.0 for _ in conns]

        def read(
            i: int, results: list[list[str]] = results, finished: list[float] = finished
        ) -> None:
            got, why = read_answers(conns[i], per[i], time.monotonic() + lead / 1000 + 20)
            results[i] = got + ([why] if why else [])
            finished[i] = time.monotonic()

        run_threads(len(conns), read)
        for got in results:
            outcomes.update(got)
        spreads.append(max(finished) - (start + lead / 1000))
        life.wait(float(cfg.get("gap", 1.0)))
    for sock in conns:
        sock.close()
    return {"answers": dict(outcomes), "lastAnswerAfterInstant": spreads}


# TLS -------------------------------------------------------------------------------------


def client_hello_head(announced: int) -> bytes:
    """The first 9 bytes of a TLS ClientHello announcing ``announced`` bytes:
    a handshake record header (its length capped at 2^14) and the handshake
    message header."""
    record = min(announced + 4, 1 << 14)
    return (
        bytes([0x16, 0x03, 0x01])
        + record.to_bytes(2, "big")
        + b"\x01"
        + announced.to_bytes(3, "big")
    )


def tlsstall(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """From each of ``sources``, ``perSource`` TCP connections each send the
    9-byte head of a ClientHello announcing the next of ``announce`` (cycled)
    and stall; how each ends is watched until stopped."""
    base = Target(cfg["target"])
    sizes = [int(s) for s in cfg["announce"]]
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, tuple[int, float]] = {}
    connect_errors = Counter[str]()
    i = 0
    for source in cfg["sources"]:
        target = base.with_source(source)
        for _ in range(int(cfg["perSource"])):
            size = sizes[i % len(sizes)]
            i += 1
            try:
                sock = target.raw(5.0)
                sock.connect(target.address)
                sock.sendall(client_hello_head(size))
            except OSError as exc:
                connect_errors[os_error(exc)] += 1
                continue
            sock.setblocking(False)
            opened[sock] = (size, time.monotonic())
            sel.register(sock, selectors.EVENT_READ)
    say("READY", {"opened": len(opened)})
    ended: dict[socket.socket, tuple[str, float]] = {}
    while not life.stop.is_set() and len(ended) < len(opened):
        for key, _ in sel.select(0.05):
            sock = cast(socket.socket, key.fileobj)
            how = "eof"
            try:
                data = sock.recv(1 << 16)
                if data:
                    how = "alert" if data[:1] == b"\x15" else "data"
                    # Read on to the end: an alert is followed by the close.
                    with contextlib.suppress(OSError):
                        while sock.recv(1 << 16):
                            pass
            except BlockingIOError:
                continue
            except OSError as exc:
                how = os_error(exc)
            ended[sock] = (how, time.monotonic() - opened[sock][1])
            sel.unregister(sock)
    by_size: dict[str, dict[str, Any]] = {}
    for sock, (size, _) in opened.items():
        row = by_size.setdefault(
            str(size), {"opened": 0, "open": 0, "ended": Counter(), "endMax": 0.0}
        )
        row["opened"] += 1
        if sock in ended:
            how, after = ended[sock]
            row["ended"][how] += 1
            row["endMax"] = max(row["endMax"], after)
        else:
            row["open"] += 1
        sock.close()
    sel.close()
    for row in by_size.values():
        row["ended"] = dict(row["ended"])
    return {"connectErrors": dict(connect_errors), "bySize": by_size}


def tlsflood(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``threads`` threads do TLS handshakes back to back from one source (at
    most ``maxAttempts`` in all), each then asking ``version``; meanwhile
    ``stall`` more connections are opened and send nothing."""
    target = Target(cfg["target"])
    outcomes = Counter[str]()
    attempts = [0]
    lock = threading.Lock()
    limit = int(cfg["maxAttempts"])
    stalled: list[socket.socket] = []
    stall_errors = Counter[str]()
    for _ in range(int(cfg.get("stall", 0))):
        try:
            sock = target.raw(5.0)
            sock.connect(target.address)
            stalled.append(sock)
        except OSError as exc:
            stall_errors[os_error(exc)] += 1
    say("READY", {"stalled": len(stalled)})

    def flood(_: int) -> None:
        while not life.stop.is_set():
            with lock:
                if attempts[0] >= limit:
                    return
                attempts[0] += 1
            try:
                with target.connect(5.0) as sock:
                    sock.sendall(VERSION)
                    got, why = read_answers(sock, 1, time.monotonic() + 5)
                    result = got[0] if got else f"no-answer:{why}"
            except (OSError, ssl.SSLError) as exc:
                result = os_error(exc)
            with lock:
                outcomes[result] += 1

    run_threads(int(cfg["threads"]), flood)
    life.stop.wait()
    closed = 0
    for sock in stalled:
        sock.setblocking(False)
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return {
        "attempts": attempts[0],
        "outcomes": dict(outcomes),
        "stalled": len(stalled),
        "stallErrors": dict(stall_errors),
        "stalledClosedByDaemon": closed,
    }


# connect floods --------------------------------------------------------------------------


def connflood(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``threads`` threads connect and close as fast as they can (at most
    ``maxConnects`` in all), never waiting on a full backlog; every
    ``sampleEvery``-th connection reads its answer."""
    target = Target(cfg["target"])
    counts = Counter[str]()
    lock = threading.Lock()
    limit = int(cfg["maxConnects"])
    every = int(cfg["sampleEvery"])
    done = [0]

    def flood(_: int) -> None:
        mine = Counter[str]()
        while not life.stop.is_set():
            with lock:
                if done[0] >= limit:
                    break
                done[0] += 1
                n = done[0]
            sock = target.raw(None)
            sock.setblocking(False)
            try:
                sock.connect(target.address)
            except BlockingIOError as exc:
                mine["EAGAIN" if exc.errno == errno.EAGAIN else os_error(exc)] += 1
                sock.close()
                continue
            except OSError as exc:
                mine[os_error(exc)] += 1
                sock.close()
                continue
            mine["connected"] += 1
            if n % every == 0:
                sock.setblocking(True)
                got, why = read_answers(sock, 1, time.monotonic() + 5)
                mine.update(f"answer:{x}" for x in got or [why or "nothing"])
            sock.close()
        with lock:
            counts.update(mine)

    started = time.monotonic()
    say("READY", {})
    run_threads(int(cfg["threads"]), flood)
    return {"attempts": done[0], "seconds": time.monotonic() - started, "counts": dict(counts)}


# log floods ------------------------------------------------------------------------------


def _log_patterns(max_payload: int, over_delay_ms: int) -> dict[str, tuple[bytes, int]]:
    """Request bytes that each cause refusals, and how many answers to expect
    (-1: read until the daemon closes)."""
    bad_param = frame("echo", cbor({"req": {"message": "x", "delayMs": "soon"}}))
    unknown = frame("no.such.method")
    bad_cbor = frame("version", b"\xff")
    over_delay = echo_frame("x", over_delay_ms)
    return {
        "subscribe+calls": (SUBSCRIBE + VERSION + VERSION, -1),
        "invalid-params": (bad_param * 64, 64),
        "unknown-method": (unknown * 64, 64),
        "invalid-cbor": (bad_cbor * 64, 64),
        "over-delay": (over_delay * 16, 16),
        "frame-too-large": (_U32.pack(4) + b"echo" + _U32.pack(max_payload + 1), -1),
    }


def logflood(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``threads`` threads cycle through requests that are all refused (see
    :func:`_log_patterns`), each on a fresh connection, reading the answers."""
    target = Target(cfg["target"])
    patterns = list(_log_patterns(int(cfg["maxPayload"]), int(cfg["overDelayMs"])).items())
    seen: dict[str, Counter[str]] = {name: Counter() for name, _ in patterns}
    lock = threading.Lock()
    rounds = [0]
    limit = int(cfg["maxRounds"])

    def flood(k: int) -> None:
        i = k
        while not life.stop.is_set():
            with lock:
                if rounds[0] >= limit:
                    return
                rounds[0] += 1
            name, (data, expect) = patterns[i % len(patterns)]
            i += 1
            try:
                with target.connect(5.0) as sock:
                    sock.sendall(data)
                    got, why = read_answers(
                        sock, expect if expect > 0 else 1 << 30, time.monotonic() + 5
                    )
                    if expect < 0 and why == "eof":
                        why = None  # read until the close: expected
            except (OSError, ssl.SSLError) as exc:
                got, why = [], os_error(exc)
            with lock:
                seen[name].update(got)
                if why:
                    seen[name][f"then:{why}"] += 1

    say("READY", {})
    run_threads(int(cfg["threads"]), flood)
    return {"rounds": rounds[0], "seen": {k: dict(v) for k, v in seen.items()}}


# descriptor exhaustion -------------------------------------------------------------------


def fdflood(cfg: dict[str, Any], life: Life) -> dict[str, Any]:
    """``count`` connections opened at once, each sending ``version``; each is
    then classified by its first answer (or how it ended without one) within
    ``timeout`` s. Served connections are held open until stopped."""
    target = Target(cfg["target"])
    count = int(cfg["count"])
    socks: list[socket.socket] = []
    connect_errors = Counter[str]()
    for _ in range(count):
        try:
            sock = target.connect(5.0)
        except (OSError, ssl.SSLError) as exc:
            connect_errors[os_error(exc)] += 1
            continue
        # Refused and closed before the request went out (EPIPE): the answer
        # may still be there to read, so the connection is watched all the same.
        with contextlib.suppress(OSError):
            sock.sendall(VERSION)
        sock.setblocking(False)
        socks.append(sock)
    opened = time.monotonic()
    say("READY", {"opened": len(socks)})
    sel = selectors.DefaultSelector()
    parsers = {}
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
        parsers[sock] = Responses()
    first: dict[socket.socket, tuple[str, float]] = {}
    deadline = opened + float(cfg["timeout"])
    while len(first) < len(socks) and time.monotonic() < deadline and not life.stop.is_set():
        for key, _ in sel.select(0.05):
            sock = cast(socket.socket, key.fileobj)
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                first[sock] = (f"closed:{os_error(exc)}", time.monotonic() - opened)
                sel.unregister(sock)
                continue
            if not data:
                first[sock] = ("closed:eof-without-answer", time.monotonic() - opened)
                sel.unregister(sock)
                continue
            got = parsers[sock].feed(data)
            if got:
                first[sock] = (outcome(*got[0]), time.monotonic() - opened)
                sel.unregister(sock)
    kinds = Counter(first[s][0] if s in first else "no-answer-in-time" for s in socks)
    slowest = max((t for _, t in first.values()), default=0.0)
    say("ANSWERED", {})
    life.stop.wait()
    sel.close()
    for sock in socks:
        sock.close()
    return {
        "opened": len(socks),
        "connectErrors": dict(connect_errors),
        "kinds": dict(kinds),
        "slowestAnswer": slowest,
    }


KINDS: dict[str, Callable[[dict[str, Any], Life], dict[str, Any]]] = {
    "bystander": bystander,
    "held": held,
    "subscribers": subscribers,
    "burst": burst,
    "tlsstall": tlsstall,
    "tlsflood": tlsflood,
    "connflood": connflood,
    "logflood": logflood,
    "fdflood": fdflood,
}


def main(argv: list[str]) -> None:
    """``KIND CONFIG``: run one actor; print READY and RESULT lines."""
    kind, config = argv
    cfg = json.loads(config)
    life = Life(float(cfg.get("maxSeconds", 60)))
    result = KINDS[kind](cfg, life)
    say("RESULT", result)
    sys.stdout.flush()
    os._exit(0)  # threads blocked on stdin must not hold the exit


if __name__ == "__main__":
    main(sys.argv[1:])
