"""Helpers for the hostile-load suite (tests/hostile): attackers that pipeline
without stopping, a bystander that times its calls, the daemon's memory, and
the systemd side of sd_notify with a time stamp on every message.

Everything here uses plain threads and blocking sockets with time-outs, so
each helper stops by itself (``stop()``/``close()``) and never outlives a test.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from mytimerd.protocol import wire
from mytimerd.protocol.address import Address, TcpAddress, UnixAddress
from mytimerd.protocol.errors import parse_error_body

MIB = 1 << 20


# payloads ---------------------------------------------------------------------------


def echo_payload(message: str, delay_ms: int = 0) -> bytes:
    """The CBOR request of ``echo``."""
    return cbor2.dumps({"req": {"message": message, "delayMs": delay_ms}})


def many_items_payload(size: int) -> bytes:
    """A ``complex`` request of exactly ``size`` bytes made of (almost) one item
    per byte: ``{"req": {"tags": ["", "", ...]}}``, every tag the one-byte
    empty text string (0x60). The worst shape for a decoder: a million items
    in a mebibyte."""
    head_without_len = cbor2.dumps({"req": {"tags": []}})[:-1]  # up to the array head
    head = head_without_len + b"\x9a"  # array, 32-bit count follows
    count = size - len(head) - 4
    payload = head + count.to_bytes(4, "big") + b"\x60" * count
    assert len(payload) == size
    return payload


def error_name(resp: wire.Response) -> str | None:
    """The daemon error name of a RET_ERR response (None for OK or library text)."""
    if resp.ret != wire.RET_ERR:
        return None
    return parse_error_body(resp.body)[0]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# the environment and the daemon's process ----------------------------------------------


#: What systemd hands a service in its environment; a daemon started by the
#: tests must not inherit it from whatever runs pytest.
SYSTEMD_PREFIXES = ("LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_STREAM")


def clean_command(command: list[str], extra: Mapping[str, str] | None = None) -> list[str]:
    """``command`` run through env(1) without systemd's variables and with
    ``extra`` set. (start_daemon layers its env over os.environ, so removing
    needs env -u; env execs, so the process id stays the daemon's.)"""
    extra = dict(extra or {})
    unset = [k for k in os.environ if k.startswith(SYSTEMD_PREFIXES) and k not in extra]
    return [
        "env",
        *(arg for k in unset for arg in ("-u", k)),
        *(f"{k}={v}" for k, v in extra.items()),
        *command,
    ]


def rss_bytes(pid: int) -> int:
    """VmRSS of process ``pid`` (from /proc/PID/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            self.samples += 1

    def stop(self) -> int:
        """Stop sampling; the peak RSS seen, in bytes."""
        self._stop.set()
        self._thread.join(5)
        return self.peak


# raw connections -------------------------------------------------------------------------


def connect(address: Address, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    """A connected blocking socket to ``address`` (TCP from ``source`` if given)."""
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address.path
    else:
        assert isinstance(address, TcpAddress)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            sock.bind((source, 0))
        target = (address.host, address.port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)  # type: ignore[arg-type]
    except BaseException:
        sock.close()
        raise
    return sock


def read_responses(sock: socket.socket, count: int, timeout: float) -> list[wire.Response]:
    """Read exactly ``count`` responses (fewer if the daemon closes first)."""
    parser = wire.ResponseParser()
    out: list[wire.Response] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not data:
            break
        out.extend(parser.feed(data))
    return out


@dataclass
class PipelineResult:
    """What one attacking connection saw."""

    sent: int = 0
    responses: list[wire.Response] = field(default_factory=list)
    eof: bool = False
    reset: bool = False
    read_error: str | None = None
    send_error: str | None = None
    first_sent_at: float = 0.0
    last_response_at: float = 0.0


class Pipeliner:
    """One connection that writes requests without waiting and reads answers on
    another thread: ``frames(i)`` gives the i-th request frame.

    The sender stops at :meth:`stop`, at a send error, at EOF, or when
    ``stop_when`` (given a response) says so; ``max_requests`` bounds it and
    ``window`` bounds the requests sent and not yet answered. With
    ``read=False`` nothing is read (a client that does not read its answers);
    ``bytes_sent`` counts what the kernel took. With ``half_close`` the sender
    shuts its side down when it stops, so the daemon answers and closes.
    """

    def __init__(
        self,
        address: Address,
        frames: Callable[[int], bytes],
        *,
        read: bool = True,
        max_requests: int | None = None,
        window: int | None = None,
        stop_when: Callable[[wire.Response], bool] | None = None,
        half_close: bool = True,
    ) -> None:
        self.sock = connect(address)
        # One time-out for both threads (it is per socket): short, both retry.
        self.sock.settimeout(0.05)
        self.frames = frames
        self.read = read
        self.max_requests = max_requests
        self.window = window
        self.stop_when = stop_when
        self.half_close = half_close
        self.result = PipelineResult()
        self.bytes_sent = 0
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._sender = threading.Thread(target=self._send_loop, name="pipeliner-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="pipeliner-read", daemon=True)
        self._sender.start()
        if read:
            self._reader.start()

    # sending -------------------------------------------------------------

    def _may_send(self) -> bool:
        if self.window is None:
            return True
        with self._progress:
            while (
                self.result.sent - len(self.result.responses) >= self.window
                and not self._stop.is_set()
            ):
                self._progress.wait(0.1)
        return not self._stop.is_set()

    def _send_loop(self) -> None:
        res = self.result
        res.first_sent_at = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.max_requests is not None and res.sent >= self.max_requests:
                    break
                if not self._may_send():
                    break
                if not self._send_frame(self.frames(res.sent)):
                    break
        except OSError as exc:
            res.send_error = errno.errorcode.get(exc.errno or 0, repr(exc))
            return
        if self.half_close and self.read:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def _send_frame(self, frame: bytes) -> bool:
        """Write all of ``frame`` unless stopped first (then False: a partial
        frame may have gone out, and is not counted as sent)."""
        view = memoryview(frame)
        while view:
            if self._stop.is_set():
                return False
            try:
                n = self.sock.send(view)
            except TimeoutError:  # backpressure: the daemon is not reading
                continue
            view = view[n:]
            self.bytes_sent += n
        self.result.sent += 1
        return True

    # reading -------------------------------------------------------------

    def _read_loop(self) -> None:
        res = self.result
        parser = wire.ResponseParser()
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                if self._stop.is_set() and self._reader_done():
                    return
                continue
            except ConnectionResetError:
                res.reset = True
                return
            except OSError as exc:
                res.read_error = repr(exc)
                return
            if not data:
                res.eof = True
                self._stop.set()
                with self._progress:
                    self._progress.notify_all()
                return
            got = parser.feed(data)
            if got:
                res.last_response_at = time.monotonic()
                with self._progress:
                    res.responses.extend(got)
                    self._progress.notify_all()
                if self.stop_when is not None and any(self.stop_when(r) for r in got):
                    self._stop.set()

    def _reader_done(self) -> bool:
        """After stop: done once every request sent is answered."""
        return len(self.result.responses) >= self.result.sent and not self._sender.is_alive()

    # control -------------------------------------------------------------

    def stop(self) -> None:
        """Stop sending (the reader goes on until :meth:`join`)."""
        self._stop.set()

    def join(self, timeout: float = 10.0, stop: bool = True) -> PipelineResult:
        """Stop sending (or, with ``stop=False``, let the sender reach
        ``max_requests``); wait for the threads (the reader until EOF, every
        answer or ``timeout``); return what was seen."""
        deadline = time.monotonic() + timeout
        if stop:
            self._stop.set()
        self._sender.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        if self.read:
            self._reader.join(max(0.0, deadline - time.monotonic()))
        return self.result

    def wait_responses(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` responses have arrived."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while len(self.result.responses) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.result.eof or self.result.reset:
                    return len(self.result.responses) >= count
                self._progress.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        """Stop everything and close the socket."""
        self._stop.set()
        self._sender.join(5)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self.read:
            self._reader.join(5)
        self.sock.close()


class Bystander:
    """A well-behaved client on its own connection: calls ``method`` one at a
    time, at most every ``interval`` seconds, and times every answer."""

    def __init__(
        self,
        address: Address,
        method: str = "version",
        payload: bytes = b"\xa0",
        interval: float = 0.01,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.method = method
        self.frame = wire.encode_request(method, payload)
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            sock = connect(self.address, self.timeout)
        except OSError as exc:
            self.failures.append(f"connect: {exc!r}")
            return
        with sock:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    sock.sendall(self.frame)
                    got = read_responses(sock, 1, self.timeout)
                except OSError as exc:
                    self.failures.append(f"{self.method}: {exc!r}")
                    return
                if len(got) != 1 or got[0].ret != wire.RET_OK:
                    self.failures.append(f"{self.method}: {got!r}"[:300])
                    return
                elapsed = time.monotonic() - started
                self.latencies.append(elapsed)
                self._stop.wait(max(0.0, self.interval - elapsed))

    def stop(self) -> list[float]:
        """Stop; the latencies seen, in seconds."""
        self._stop.set()
        self._thread.join(self.timeout + 1)
        return self.latencies


def call_once(
    address: Address, method: str, payload: bytes = b"\xa0", timeout: float = 10.0
) -> tuple[wire.Response, float]:
    """One call on a fresh connection: (response, seconds it took)."""
    started = time.monotonic()
    with connect(address, timeout) as sock:
        sock.sendall(wire.encode_request(method, payload))
        got = read_responses(sock, 1, timeout)
    assert len(got) == 1, f"no answer to {method} within {timeout} s"
    return got[0], time.monotonic() - started


def stats(address: Address) -> dict[str, object]:
    """The daemon's mytimerd.stats answer, and its encoded size under key ``_bytes``."""
    resp, _ = call_once(address, "mytimerd.stats")
    assert resp.ret == wire.RET_OK, resp.body
    value = cbor2.loads(resp.body)
    assert isinstance(value, dict)
    value["_bytes"] = len(resp.body)
    return value


# sd_notify -------------------------------------------------------------------------------


class NotifyRecorder:
    """The systemd side of sd_notify: a datagram socket read on a thread; every
    message line is kept with the monotonic time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().splitlines())

    def times(self, message: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """When ``message`` arrived within [since, until]."""
        return [t for t, m in list(self.messages) if m == message and since <= t <= until]

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest interval in [start, end] without one of ``times``."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


# the daemon's log ------------------------------------------------------------------------


class LineRate:
    """Counts the lines of a growing file (a daemon's stderr log) every
    ``interval`` seconds, so the busiest one-second window can be found."""

    def __init__(self, path: Path, interval: float = 0.1) -> None:
        self.path = path
        self.interval = interval
        #: (monotonic time, lines so far)
        self.samples: list[tuple[float, int]] = []
        self._lines = 0
        self._offset = 0
        self._stop = threading.Event()
        self._count()
        self._thread = threading.Thread(target=self._run, name="line-rate", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset += len(data)
            self._lines += data.count(b"\n")
        self.samples.append((time.monotonic(), self._lines))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._count()

    def busiest_second(self, start: float, end: float) -> int:
        """The most lines written within any one second inside [start, end]."""
        points = [(t, n) for t, n in list(self.samples) if start <= t <= end]
        best = 0
        j = 0
        for t, n in points:
            while j < len(points) and points[j][0] - t <= 1.0:
                j += 1
            best = max(best, points[j - 1][1] - n)
        return best

    def lines_between(self, start: float, end: float) -> int:
        """Lines written between ``start`` and ``end`` (as sampled)."""
        inside = [n for t, n in list(self.samples) if start <= t <= end]
        return inside[-1] - inside[0] if inside else 0

    def stop(self) -> None:
        """Stop sampling (one last count first)."""
        self._stop.set()
        self._thread.join(5)
        self._count()
