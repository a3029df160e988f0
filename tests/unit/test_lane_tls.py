"""The lane on TLS connections (glue/lanetls.c, daemon/tlslane.py): over real
socket pairs, a session whose handshake Python's ssl made, as the daemon's
TLS layer makes it (memory BIOs), is lent to the lane. The lane serves quick
calls on it byte for byte; anything else hands the connection back with the
plaintext it read, what the session holds unread left there for Python's
ssl, and an answer the socket did not take sealed, so that Python carries
on the same session with nothing lost, doubled or out of order."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from mytimerd.daemon import tlslane
from mytimerd.daemon.host import LibraryHost
from mytimerd.daemon.lane import Lane, Turn
from tests.support.certs import PKI, make_pki
from tests.unit.test_lane import (
    ECHO,
    VERSION,
    answered,
    backs,
    host,  # noqa: F401 (a fixture)
    lane,  # noqa: F401 (a fixture)
    run_until,
    version_answer,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tcp_pair(rcvbuf: int) -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, the client's) of a loopback TCP connection, the
    client's receive buffer set before it connects (so its window is small)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.socket()
        if rcvbuf:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        theirs.connect(listener.getsockname())
        ours, _ = listener.accept()
    for end in (ours, theirs):
        end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


class Session:
    """The daemon's side of a TLS connection (socket, SSL object on memory
    BIOs) and the client's (a blocking ssl socket), handshake done."""

    def __init__(
        self,
        pki: PKI,
        rcvbuf: int = 0,
        tcp: bool = False,
        version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> None:
        ours, theirs = tcp_pair(rcvbuf) if tcp else socket.socketpair()
        if rcvbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        theirs.settimeout(10)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(pki.server.cert, pki.server.key)
        client = ssl.create_default_context(cafile=str(pki.ca.pem))
        client.maximum_version = version
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = server.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.client = client.wrap_socket(
            theirs, server_hostname="localhost", do_handshake_on_connect=False
        )
        shaken = threading.Thread(target=self.client.do_handshake)
        shaken.start()
        ours.settimeout(10)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                ours.sendall(self.outgoing.read())
                self.incoming.write(ours.recv(65536))
        ours.sendall(self.outgoing.read())  # the last flight, session tickets
        shaken.join(10)
        ours.setblocking(False)
        self.ours = ours

    def lend(self) -> object:
        """The session for the lane."""
        handle = tlslane.session(self.tls, self.incoming, self.outgoing)
        assert handle is not None
        return handle

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes of plaintext, as the client reads them."""
        out = b""
        while len(out) < n:
            chunk = self.client.recv(n - len(out))
            assert chunk, f"EOF after {out!r}"
            out += chunk
        return out

    def held(self) -> bytes:
        """The plaintext Python's ssl reads from what the socket and the
        session hold now (as the daemon's TLS layer would once it takes the
        connection back)."""
        with contextlib.suppress(BlockingIOError):
            self.incoming.write(self.ours.recv(65536))
        out = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return out
            if not chunk:
                return out
            out += chunk


@pytest.fixture
def session(pki: PKI) -> Iterator[Session]:
    s = Session(pki)
    yield s
    s.client.close()
    s.ours.close()


def test_a_session_is_lent_only_when_it_is_the_one_there(pki: PKI) -> None:
    """Before the handshake, or with BIOs that are not the session's, the
    glue refuses it (the check that the memory it read is what it thinks)."""
    assert tlslane.available()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    fresh = context.wrap_bio(incoming, outgoing, server_side=True)
    assert tlslane.session(fresh, incoming, outgoing) is None  # no handshake yet
    s = Session(pki)
    assert tlslane.session(s.tls, outgoing, incoming) is None  # BIOs swapped
    assert tlslane.session(s.tls, ssl.MemoryBIO(), s.outgoing) is None
    assert tlslane.session(s.tls, s.incoming, s.outgoing) is not None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_quick_calls_are_answered_byte_for_byte(
    host: LibraryHost,  # noqa: F811
    lane: Lane,  # noqa: F811
    pki: PKI,
    version: ssl.TLSVersion,
) -> None:
    """One request after another's answer, sealed and opened on the lent
    session (TLS 1.2 and 1.3): each answered exactly, never handed back;
    Python's ssl then goes on with the session (the next call through it
    works)."""
    expected = version_answer(host)
    session = Session(pki, version=version)
    assert session.client.version() == (
        "TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    )
    slot = lane.add(session.ours.fileno(), session.lend())
    turns: list[Turn] = []
    for _ in range(50):
        session.client.sendall(VERSION)
        turns += run_until(lane, lambda t: len(answered(t)) == 1)
        assert session.read(len(expected)) == expected
    assert not backs(turns)
    taken = lane.take(slot)
    assert taken.sent == taken.unwritten == b""
    # Python's turn: the session is where the lane left it.
    session.client.sendall(ECHO)
    session.ours.setblocking(True)
    session.incoming.write(session.ours.recv(65536))
    assert session.tls.read(65536) == ECHO
    session.tls.write(b"after the lane")
    session.ours.sendall(session.outgoing.read())
    assert session.read(14) == b"after the lane"
    session.client.close()
    session.ours.close()


def test_a_lone_tls_client_is_served_on_the_spot(
    host: LibraryHost,  # noqa: F811
    lane: Lane,  # noqa: F811
    session: Session,
) -> None:
    """With lone serving (the loop has nothing else), a client calling back
    to back is answered several times in one turn, every answer exact."""
    expected = version_answer(host)
    slot = lane.add(session.ours.fileno(), session.lend())
    calls = 400

    def client() -> None:
        for _ in range(calls):
            session.client.sendall(VERSION)
            assert session.read(len(expected)) == expected

    t = threading.Thread(target=client)
    t.start()
    turns: list[Turn] = []
    while t.is_alive() or sum(x.calls for x in turns) < calls:
        turns.append(lane.run(lone=0.001))
        assert not backs(turns)
        if len(turns) > 200_000:
            break
    t.join(10)
    assert sum(x.calls for x in turns) == calls
    assert max(x.calls for x in turns) > 1
    assert lane.take(slot).sent == b""


def test_a_tls_pipeline_goes_back_with_the_rest_in_order(
    host: LibraryHost,  # noqa: F811
    lane: Lane,  # noqa: F811
    session: Session,
) -> None:
    """version, echo, version in one record: the first is answered, then the
    connection comes back ("ahead"): what the lane read and did not serve,
    then what the session holds, is the rest, in order."""
    expected = version_answer(host)
    slot = lane.add(session.ours.fileno(), session.lend())
    session.client.sendall(VERSION + ECHO + VERSION)
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "ahead")]
    assert len(answered(turns)) == 1
    assert session.read(len(expected)) == expected
    taken = lane.take(slot)
    assert taken.sent + session.held() == ECHO + VERSION
    assert taken.unwritten == b""


def test_records_beyond_what_the_lane_reads_stay_with_the_session(
    lane: Lane,  # noqa: F811
    session: Session,
) -> None:
    """An echo request then 30 version requests, each its own record, in one
    go: the lane reads what its buffer holds, sees the echo and hands the
    connection back ("other"); the rest stays in the session (and the
    socket) for Python's ssl, every byte, in order."""
    records = [ECHO] + [VERSION] * 30
    session.client.sendall(ECHO)  # (records one by one: writes in a row)
    for record in records[1:]:
        session.client.sendall(record)
    slot = lane.add(session.ours.fileno(), session.lend())
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "other")]
    taken = lane.take(slot)
    rest = taken.sent
    want = b"".join(records)
    for _ in range(50):
        rest += session.held()
        if len(rest) >= len(want):
            break
        select.select([session.ours], [], [], 0.1)
    assert rest == want


def test_the_clients_close_notify_hands_it_back_as_its_end(
    lane: Lane,  # noqa: F811
    session: Session,
) -> None:
    """close_notify read by the lane: back ("eof"); Python's ssl then reads
    the end too (the session keeps it), as the daemon's TLS layer does."""
    slot = lane.add(session.ours.fileno(), session.lend())
    session.client.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):  # ours has not answered: it waits
        session.client.unwrap()
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "eof")]
    lane.take(slot)
    assert session.tls.read(1) == b""  # (how Python's ssl says close_notify)


def test_a_forged_record_hands_it_back_failed_for_python_to_end(
    lane: Lane,  # noqa: F811
    session: Session,
) -> None:
    """An application-data record that does not open (forged bytes on the
    socket): back ("error") with nothing served; Python's ssl finds the
    session failed and has the alert to send."""
    slot = lane.add(session.ours.fileno(), session.lend())
    raw = socket.socket(fileno=session.client.detach())
    raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(range(32)))
    turns = run_until(lane, lambda t: bool(backs(t)))
    assert backs(turns) == [(slot, "error")]
    assert not answered(turns)
    taken = lane.take(slot)
    assert taken.sent == taken.unwritten == b""
    with pytest.raises(ssl.SSLError):
        session.tls.read(1)
    assert session.outgoing.pending  # the alert
    raw.close()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_an_answer_the_socket_does_not_take_goes_back_sealed(
    host: LibraryHost,  # noqa: F811
    lane: Lane,  # noqa: F811
    pki: PKI,
    tcp: bool,
) -> None:
    """A client that calls and reads nothing, until the socket is full: the
    connection comes back ("full") with the rest of the last answer sealed
    (written as is, not sealed again); the client then reads every answer
    exactly, on one unbroken session."""
    expected = version_answer(host)
    s = Session(pki, rcvbuf=4096, tcp=tcp)
    slot = lane.add(s.ours.fileno(), s.lend())
    turns: list[Turn] = []
    calls = 0
    while not backs(turns):
        assert calls < 20_000, "the socket never filled"
        s.client.sendall(VERSION)
        calls += 1
        turns += run_until(lane, lambda t: len(answered(t)) == 1 or bool(backs(t)))
    assert backs(turns) == [(slot, "full")]
    assert len(answered(turns)) == calls
    taken = lane.take(slot)
    assert taken.unwritten and taken.sent == b""
    print(f"{calls} answers, {len(taken.unwritten)} bytes unwritten")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(s.read(len(expected) * calls)))
    reader.start()
    s.ours.setblocking(True)
    s.ours.sendall(taken.unwritten)
    reader.join(10)
    assert got == [expected * calls]
    s.client.close()
    s.ours.close()
