"""A client that pipelines hard while the daemon drains, run as its own
process (``python -m tests.support.pipelining ADDRESS CONNECTIONS PER_ANSWER``)
so that many of them read at full speed without sharing one interpreter's lock.

Each connection sends ``version`` in batches of 50 without waiting, reads its
answers on another thread (taking PER_ANSWER seconds over each if asked), and
stops sending only once it reads the daemon's EOF; it then closes its side at
once. The process prints ``ready`` once connected, and at the end one JSON
line: what each connection saw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass

from mytimerd.protocol import wire
from mytimerd.protocol.address import Address, TcpAddress, UnixAddress, parse_address
from mytimerd.protocol.errors import parse_error_body

BATCH = wire.encode_request("version", b"\xa0") * 50
#: Requests a slow reader keeps unanswered at most (without that window its
#: own backlog would take longer to read than any drain may last).
SLOW_WINDOW = 500


@dataclass
class Outcome:
    """What one client connection saw."""

    answers: int = 0
    ok: int = 0
    shutting_down: int = 0
    other: int = 0
    eof: bool = False
    #: When it read EOF (time.monotonic(), the same clock in every process).
    eof_at: float = 0.0
    reset: bool = False
    error: str | None = None


class PipeliningClient:
    """Sends batches until it reads EOF; reads (slowly if asked) on its own thread."""

    def __init__(self, address: Address, per_answer: float) -> None:
        if isinstance(address, UnixAddress):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(address.path)
        else:
            assert isinstance(address, TcpAddress)
            self.sock = socket.create_connection((address.host, address.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(20)
        self.per_answer = per_answer
        self.outcome = Outcome()
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader.start()
        self._sender.start()

    def _send(self) -> None:
        sent = 0
        try:
            while not self.done.is_set():
                if self.per_answer and sent - self.outcome.answers > SLOW_WINDOW:
                    time.sleep(0.001)
                    continue
                self.sock.sendall(BATCH)
                sent += 50
        except OSError:
            pass  # the daemon has closed: the reader tells how it ended

    def _read(self) -> None:
        parser = wire.ResponseParser()
        out = self.outcome
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    out.eof = True
                    out.eof_at = time.monotonic()
                    # A prompt client: it closes its side as soon as it reads EOF.
                    self.done.set()
                    with contextlib.suppress(OSError):  # the sender may have closed it
                        self.sock.shutdown(socket.SHUT_WR)
                    return
                for response in parser.feed(data):
                    out.answers += 1
                    if response.ret == wire.RET_OK:
                        out.ok += 1
                    elif parse_error_body(response.body)[0] == "ShuttingDown":
                        out.shutting_down += 1
                    else:
                        out.other += 1
                    if self.per_answer:
                        time.sleep(self.per_answer)
        except ConnectionResetError:
            out.reset = True
        except OSError as exc:
            out.error = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc}"
        finally:
            self.done.set()

    def finish(self) -> Outcome:
        """Wait for EOF (or the error), then close."""
        self._reader.join(30)
        self.done.set()
        self._sender.join(30)
        self.sock.close()
        return self.outcome


def main(argv: list[str]) -> None:
    """Run CONNECTIONS clients to ADDRESS until each reads EOF or fails."""
    address, connections, per_answer = parse_address(argv[0]), int(argv[1]), float(argv[2])
    clients = [PipeliningClient(address, per_answer) for _ in range(connections)]
    print("ready", flush=True)
    outcomes = [dataclasses.asdict(c.finish()) for c in clients]
    print(json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
