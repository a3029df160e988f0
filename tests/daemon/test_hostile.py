"""Hostile clients against a real daemon: it answers what it can, closes what
it must, and keeps serving everyone else."""

from __future__ import annotations

import random
import socket
import time

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mytimerd.protocol import interfaces, schema, wire
from mytimerd.protocol.errors import parse_error_body
from tests.support.daemon import Daemon

LIBRARY_METHODS = [m.name for m in interfaces.LIBRARY_METHODS]


def _keys(struct: schema.Struct) -> set[str]:
    out = set()
    for f in struct.fields:
        out.add(f.name)
        inner = f.type.item if isinstance(f.type, schema.Array) else f.type
        if isinstance(inner, schema.Struct):
            out |= _keys(inner)
    return out


# Every key the schema knows, and one it does not.
KEYS = sorted(set().union(*(_keys(m.request) for m in interfaces.LIBRARY_METHODS)) | {"extra"})

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(KEYS),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(LIBRARY_METHODS), value=values)
def test_any_cbor_request_gets_one_well_formed_answer(
    daemon: Daemon, method: str, value: object
) -> None:
    """Valid CBOR of any shape: RET_OK with CBOR, or a daemon/library error text."""
    if isinstance(value, dict) and isinstance(value.get("req"), dict):
        value["req"].pop("delayMs", None)  # keep the run fast: no sleeping echoes
    with daemon.client() as c:
        resp = c.call(method, cbor2.dumps(value))
    if resp.ret == wire.RET_OK:
        cbor2.loads(resp.body)
    else:
        assert resp.ret == wire.RET_ERR
        name, message = parse_error_body(resp.body)
        assert message
        if name is not None:
            assert name in ("InvalidCBOR", "InvalidParameter")


def test_random_byte_streams_never_hurt_the_daemon(daemon: Daemon) -> None:
    """Garbage on 200 connections, then the daemon still answers and holds nothing."""
    rng = random.Random(1234)
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(daemon.address.path)  # type: ignore[union-attr]
        kind = rng.randrange(3)
        if kind == 0:  # pure noise
            data = rng.randbytes(rng.randrange(1, 4096))
        elif kind == 1:  # plausible frames with noise payloads
            data = b"".join(
                wire.encode_request(rng.choice(LIBRARY_METHODS), rng.randbytes(rng.randrange(64)))
                for _ in range(rng.randrange(1, 20))
            )
        else:  # a frame cut anywhere
            frame = wire.encode_request("echo", cbor2.dumps({"req": {"message": "x"}}))
            data = frame[: rng.randrange(len(frame))]
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the daemon may close on us: that is allowed
        finally:
            sock.close()
    deadline = time.monotonic() + 5
    with daemon.client() as c:
        assert c.call_value("version") == "nim-timer v0.1.0"
        while True:  # the daemon may still be closing the last of them
            stats = c.call_value("mytimerd.stats")
            assert isinstance(stats, dict)
            if stats["inFlight"] == 0 and stats["connections"]["open"] == 1:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
    assert stats["connections"]["total"] >= 201
