"""The glue's bounded wait for a lone client's next request, on real sockets."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from mytimerd.daemon import readahead
from tests.support.sockets import fill


def test_nothing_comes_the_wait_ends_on_time() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        for seconds in (0.0, 0.002, 0.02):
            started = time.perf_counter()
            assert readahead.spin_read(ours.fileno(), seconds) == b""
            assert not readahead.spin_wait(ours.fileno(), seconds)
            took = time.perf_counter() - started
            assert 2 * seconds <= took < 2 * seconds + 0.25  # slack for a loaded machine


def test_what_comes_during_the_wait_is_read_or_left() -> None:
    """Bytes sent 2 ms into a 1 s wait end it: spin_read takes them (at most
    READ_CAP), spin_wait leaves them for the event loop."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        later = threading.Timer(0.002, theirs.sendall, (b"x" * 100,))
        later.start()
        started = time.perf_counter()
        assert readahead.spin_wait(ours.fileno(), 1.0)
        assert time.perf_counter() - started < 0.5
        assert readahead.spin_read(ours.fileno(), 1.0) == b"x" * 100
        later.join()
        theirs.setblocking(False)
        assert fill(theirs, b"y") > 0
        got = readahead.spin_read(ours.fileno(), 0.0)
        assert 0 < len(got) <= readahead.READ_CAP and set(got) == {ord("y")}


def test_an_ended_or_failed_peer_is_left_to_the_event_loop() -> None:
    """An end is only peeked at: the event loop still reads it; after a
    reset the wait ends at once, and the event loop reads the reset or an
    end."""
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        assert readahead.spin_read(ours.fileno(), 1.0) == b""
        assert not readahead.spin_wait(ours.fileno(), 1.0)
        assert ours.recv(16) == b""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with server:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # linger 0: a reset
            time.sleep(0.05)
            started = time.perf_counter()
            assert readahead.spin_read(server.fileno(), 1.0) == b""
            assert time.perf_counter() - started < 0.5
            with contextlib.suppress(ConnectionResetError):  # the reset, still there
                assert server.recv(16) == b""
