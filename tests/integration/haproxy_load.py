"""Steady load for tests/integration/test_haproxy.py, run in the clients' namespace.

``python -m tests.integration.haproxy_load TARGET OUT STOP [options]``: worker
threads call ``echo`` (delayMs 0) back to back until the file STOP exists,
then write a JSON summary to OUT. Every answer names the daemon that served it
(``timerName``). Kinds of worker:

- ``raw``: a raw-frame client that opens a connection per call (the framing
  by hand, as a client of the original example would);
- ``persistent``: a raw-frame client that keeps one connection and opens a
  new one only after a failure or when the daemon ended the connection while
  it was idle (seen before sending, as mytimerd.client does);
- ``client``: :class:`mytimerd.client.Client`, one per thread, one connection
  kept across calls (it resends a request that never left);
- ``oneshot``: a new :class:`mytimerd.client.Client` (so a new connection)
  per call.

A failed call is recorded with its start and end (``time.monotonic()``, the
same clock as the test's) and the error's type and text.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cbor2

from mytimerd.client import Client
from mytimerd.protocol import wire

ECHO = wire.encode_request("echo", cbor2.dumps({"req": {"message": "lb", "delayMs": 0}}))


@dataclass
class Tally:
    """What one worker saw."""

    kind: str
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    first_ok: float | None = None
    last_ok: float | None = None

    def served(self, backend: str, now: float) -> None:
        """One call answered by ``backend``."""
        self.ok[backend] += 1
        if self.first_ok is None:
            self.first_ok = now
        self.last_ok = now

    def failed(self, start: float, exc: BaseException) -> None:
        """One call that failed."""
        self.failures.append(
            {
                "kind": self.kind,
                "start": start,
                "end": time.monotonic(),
                "error": type(exc).__name__,
                "text": str(exc)[:200],
            }
        )


def _read_answer(sock: socket.socket, parser: wire.ResponseParser) -> wire.Response:
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the answer")
        answers = parser.feed(data)
        if answers:
            assert len(answers) == 1, answers
            return answers[0]


def _backend(resp: wire.Response) -> str:
    if resp.ret != wire.RET_OK:
        raise RuntimeError(f"RET {resp.ret}: {resp.body[:200]!r}")
    return str(cbor2.loads(resp.body)["timerName"])


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_while_idle(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def raw_worker(host: str, port: int, timeout: float, stop: threading.Event, tally: Tally) -> None:
    """A connection per call."""
    while not stop.is_set():
        start = time.monotonic()
        try:
            with _connect(host, port, timeout) as sock:
                sock.sendall(ECHO)
                backend = _backend(_read_answer(sock, wire.ResponseParser()))
        except Exception as exc:  # every failure is counted
            tally.failed(start, exc)
            time.sleep(0.01)
            continue
        tally.served(backend, time.monotonic())


def persistent_worker(
    host: str, port: int, timeout: float, stop: threading.Event, tally: Tally
) -> None:
    """One connection kept across calls."""
    sock: socket.socket | None = None
    parser = wire.ResponseParser()
    while not stop.is_set():
        start = time.monotonic()
        try:
            if sock is not None and _closed_while_idle(sock):
                sock.close()
                sock = None
            if sock is None:
                sock = _connect(host, port, timeout)
                parser = wire.ResponseParser()
            sock.settimeout(timeout)
            sock.sendall(ECHO)
            backend = _backend(_read_answer(sock, parser))
        except Exception as exc:  # every failure is counted
            tally.failed(start, exc)
            if sock is not None:
                sock.close()
                sock = None
            time.sleep(0.01)
            continue
        tally.served(backend, time.monotonic())
    if sock is not None:
        sock.close()


def client_worker(
    host: str, port: int, timeout: float, stop: threading.Event, tally: Tally
) -> None:
    """mytimerd.client.Client on one kept connection."""
    with Client(f"tcp:{host}:{port}", timeout=timeout, connect_timeout=timeout) as client:
        while not stop.is_set():
            start = time.monotonic()
            try:
                answer = client.call("echo", {"req": {"message": "lb", "delayMs": 0}})
            except Exception as exc:  # every failure is counted
                tally.failed(start, exc)
                time.sleep(0.01)
                continue
            tally.served(str(answer["timerName"]), time.monotonic())


def oneshot_worker(
    host: str, port: int, timeout: float, stop: threading.Event, tally: Tally
) -> None:
    """mytimerd.client.Client, a new one (a new connection) per call."""
    while not stop.is_set():
        start = time.monotonic()
        try:
            with Client(f"tcp:{host}:{port}", timeout=timeout, connect_timeout=timeout) as c:
                answer = c.call("echo", {"req": {"message": "lb", "delayMs": 0}})
        except Exception as exc:  # every failure is counted
            tally.failed(start, exc)
            time.sleep(0.01)
            continue
        tally.served(str(answer["timerName"]), time.monotonic())


WORKERS = {
    "raw": raw_worker,
    "persistent": persistent_worker,
    "client": client_worker,
    "oneshot": oneshot_worker,
}


def main() -> None:
    """Run the workers until the stop file appears; write the summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("target", help="HOST:PORT")
    parser.add_argument("out")
    parser.add_argument("stop")
    for kind in WORKERS:
        parser.add_argument(f"--{kind}", type=int, default=0, help=f"{kind} workers")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    stop = threading.Event()
    tallies: list[Tally] = []
    threads: list[threading.Thread] = []
    for kind, work in WORKERS.items():
        for _ in range(getattr(args, kind)):
            tally = Tally(kind)
            tallies.append(tally)
            threads.append(
                threading.Thread(
                    target=work, args=(host, int(port), args.timeout, stop, tally), daemon=True
                )
            )
    began = time.monotonic()
    for t in threads:
        t.start()
    while not os.path.exists(args.stop):
        time.sleep(0.005)
    stop.set()
    ended = time.monotonic()
    for t in threads:
        t.join(args.timeout + 5)
    summary = {
        "began": began,
        "ended": ended,
        "workers": [
            {
                "kind": t.kind,
                "ok": dict(t.ok),
                "first_ok": t.first_ok,
                "last_ok": t.last_ok,
                "failures": t.failures,
            }
            for t in tallies
        ],
    }
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.rename(tmp, args.out)


if __name__ == "__main__":
    main()
