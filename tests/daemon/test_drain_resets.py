"""A drain never resets a connection, whatever the client does while it reads.

Each client pipelines ``version`` in batches of 50 without waiting, reads
its answers on another thread, and stops sending only once it reads the
daemon's EOF. A fast reader reads at full speed; a slow one takes 1 ms per
answer and keeps at most 500 requests unanswered (without that window its
own backlog would take longer to read than any drain may last). SIGTERM comes while they work.
Every connection must end in EOF, never a reset; the answers the clients
read add up to the calls the daemon says it answered (so none was destroyed
on its way); and the daemon exits within 2 s. Repeated 20 times for each
transport and reader.
"""

from __future__ import annotations

import contextlib
import errno
import re
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mytimerd.protocol import wire
from mytimerd.protocol.address import Address, TcpAddress, UnixAddress
from mytimerd.protocol.errors import parse_error_body
from tests.support.daemon import free_tcp_port, start_daemon

CONNECTIONS = 16
BATCH = wire.encode_request("version", b"\xa0") * 50
RUNS = 20
#: Requests a slow reader keeps unanswered at most.
SLOW_WINDOW = 500
#: How long the clients work before SIGTERM.
LOAD_SECONDS = 0.4


@dataclass
class Outcome:
    """What one client connection saw."""

    answers: int = 0
    ok: int = 0
    shutting_down: int = 0
    other: int = 0
    eof: bool = False
    #: When it read EOF (time.monotonic()).
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
        self.sock.settimeout(10)
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
        self._reader.join(15)
        self.done.set()
        self._sender.join(15)
        self.sock.close()
        return self.outcome


def one_run(
    tmp_path: Path, transport: str, per_answer: float
) -> tuple[list[Outcome], float, float, int]:
    """One daemon, 16 clients, SIGTERM: (outcomes, exit seconds, seconds until
    the last client read EOF, calls answered)."""
    if transport == "unix":
        address: Address = UnixAddress(str(tmp_path / "drain.sock"))
        args = ["--unix", address.path]
    else:
        port = free_tcp_port()
        address = TcpAddress("127.0.0.1", port)
        args = ["--tcp", "127.0.0.1", str(port)]
    d = start_daemon(tmp_path, args, address=address)
    try:
        clients = [PipeliningClient(address, per_answer) for _ in range(CONNECTIONS)]
        time.sleep(LOAD_SECONDS)
        signalled = time.monotonic()
        d.send_signal(signal.SIGTERM)
        code = d.proc.wait(15)
        exited = time.monotonic() - signalled
        outcomes = [c.finish() for c in clients]
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    assert code == 0, d.log()[-3000:]
    found = re.search(r"stopped: (\d+) calls answered", d.log())
    assert found, d.log()[-3000:]
    last_eof = max(o.eof_at for o in outcomes) - signalled
    # The readiness probe's ping is one of the daemon's answers too.
    return outcomes, exited, last_eof, int(found.group(1)) - 1


@pytest.mark.parametrize("per_answer", [0.0, 0.001], ids=["fast-reader", "slow-reader"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_under_pipelining_never_resets(
    tmp_path: Path, transport: str, per_answer: float
) -> None:
    resets = errors = others = silent = 0
    lost = 0
    exits: list[float] = []
    behind: list[float] = []
    answered_total = 0
    for run in range(RUNS):
        run_dir = tmp_path / f"run{run}"
        run_dir.mkdir()
        outcomes, exited, last_eof, answered = one_run(run_dir, transport, per_answer)
        exits.append(exited)
        behind.append(exited - last_eof)
        resets += sum(o.reset for o in outcomes)
        errors += sum(o.error is not None or not (o.eof or o.reset) for o in outcomes)
        others += sum(o.other for o in outcomes)
        silent += sum(not o.answers for o in outcomes)
        lost += answered - sum(o.answers for o in outcomes)
        answered_total += answered
    print(
        f"\ndrain {transport} {'slow' if per_answer else 'fast'} reader: {RUNS} runs x "
        f"{CONNECTIONS} connections: resets {resets}, other errors {errors}, connections "
        f"with no answer {silent}, calls answered by the daemon {answered_total}, answers "
        f"not read by a client {lost}, exit max {max(exits):.2f} s, median "
        f"{sorted(exits)[RUNS // 2]:.2f} s, after the last client's EOF at most "
        f"{max(behind):.2f} s"
    )
    assert (resets, errors, others, silent, lost) == (0, 0, 0, 0, 0)
    # The daemon cannot close before its clients have read what it answered
    # (that would reset them); it exits once they close: within a second of the
    # last EOF (tearing the library down included), so within 2 s whenever
    # the clients have read everything within 1 s.
    assert max(behind) <= 1.0


def test_a_connection_ended_after_an_error_is_not_reset_while_its_client_reads(
    tmp_path: Path,
) -> None:
    """A client pipelines calls, then a frame too large; it reads slowly and
    keeps sending: it reads every answer and the FrameTooLarge, then EOF."""
    d = start_daemon(tmp_path, ["--max-payload", "64", "--linger", "0.2"])
    try:
        assert isinstance(d.address, UnixAddress)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(d.address.path)
        sock.settimeout(10)
        too_large = struct.pack(">I", 4) + b"echo" + struct.pack(">I", 65)
        sock.sendall(BATCH * 4 + too_large)
        parser = wire.ResponseParser()
        answers: list[wire.Response] = []
        eof = False
        keep_sending = threading.Event()
        keep_sending.set()

        def send() -> None:
            try:
                while keep_sending.is_set():
                    sock.sendall(b"\x00" * 1024)  # unread garbage after the error
                    time.sleep(0.01)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while not eof:
            data = sock.recv(4096)
            if not data:
                eof = True
            answers.extend(parser.feed(data))
            time.sleep(0.01)  # a slow reader: well past --linger in all
        keep_sending.clear()
        sender.join(5)
        sock.close()
        assert len(answers) == 201
        assert parse_error_body(answers[-1].body)[0] == "FrameTooLarge"
    finally:
        d.stop()


def test_drain_grace_keeps_serving_while_ping_says_not_accepting(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, ["--drain-grace", "1.5"])
    try:
        with d.client() as c:
            assert c.call_value("mytimerd.ping")["accepting"] is True  # type: ignore[index]
            d.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)
            ping = c.call_value("mytimerd.ping")
            assert isinstance(ping, dict)
            assert (ping["accepting"], ping["draining"]) == (False, True)
            assert c.call("version").ret == wire.RET_OK  # still served
        with d.client() as fresh:  # and still accepting connections
            assert fresh.call("version").ret == wire.RET_OK
        assert d.proc.wait(10) == 0
        assert time.monotonic() - signalled >= 1.5
        assert "draining in 1.5 s (--drain-grace)" in d.log()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
