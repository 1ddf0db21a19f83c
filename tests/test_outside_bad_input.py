"""Garbage and strangers on the outside port get a clear refusal; the daemon carries on."""

from __future__ import annotations

import socket

import pytest

from daemon import ProxyPair
from drbdproxy.link import (
    ErrorFrame,
    Hello,
    LinkDecoder,
    LinkRole,
    Reject,
    RejectReason,
    Side,
    new_nonce,
    new_session,
)


@pytest.fixture
def pair(tmp_path):
    p = ProxyPair(tmp_path)
    yield p
    p.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` to a loopback port and read until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_garbage_on_the_outside_port_gets_an_error_frame_and_a_close(pair):
    """Random bytes instead of a HELLO: one ERROR frame naming the problem, then the link closes."""
    # bob accepts links (alice, with the lower outside port, dials); send garbage to bob.
    server = pair.bob if pair.alice_out < pair.bob_out else pair.alice
    port = pair.bob_out if server is pair.bob else pair.alice_out
    reply = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    frames = LinkDecoder(Side.CLIENT).feed(reply)
    assert len(frames) == 1 and isinstance(frames[0], ErrorFrame), frames
    assert "magic" in frames[0].message
    assert server.ctl("show", "version").returncode == 0  # still serving


def test_a_peer_speaking_another_version_is_rejected(pair):
    """A HELLO offering only link protocol version 7 gets REJECT(version mismatch)."""
    port = pair.bob_out if pair.alice_out < pair.bob_out else pair.alice_out
    hello = Hello(7, 7, LinkRole.META, "r0-x-y", new_session(), (0,), new_nonce())
    frames = LinkDecoder(Side.CLIENT).feed(exchange(port, hello.encode()))
    assert isinstance(frames[0], Reject) and frames[0].reason == RejectReason.VERSION_MISMATCH
    assert "version mismatch" in frames[0].message


def test_garbage_on_the_inside_port_is_relayed_or_refused_never_fatal(pair):
    """A non-DRBD client on the inside port while unlinked is refused; the daemon survives."""
    try:
        with socket.create_connection(("127.0.0.1", pair.alice_in), timeout=30) as s:
            s.sendall(b"\x00" * 64)
            assert s.recv(10) == b""
    except ConnectionResetError:
        pass  # refused with a reset (even during connect): also a clear "no"
    assert pair.alice.ctl("show", "version").returncode == 0
