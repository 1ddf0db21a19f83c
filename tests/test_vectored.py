"""Frame pieces go straight to an idle TCP socket, and queue in order behind anything held."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from drbdproxy.relay.vectored import IOV_MAX, unsent, write_pieces


@pytest.fixture
def connection():
    """A Twisted TCP transport on one end of a connected socket pair, and the other end."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport = tcp.Connection(ours, Protocol(), MemoryReactorClock())
    transport.connected = 1
    yield transport, theirs
    ours.close()
    theirs.close()


def _read_all(transport: tcp.Connection, peer: socket.socket, size: int) -> bytes:
    """Drain what the transport holds into the peer (as the reactor would), up to ``size``."""
    got = bytearray()
    peer.setblocking(False)
    while len(got) < size:
        try:
            got += peer.recv(1 << 16)
        except BlockingIOError:
            assert transport.doWrite() is None, "the transport lost the connection"
    return bytes(got)


def test_an_idle_transport_sends_straight_from_the_pieces(connection) -> None:
    """Nothing queued: header and payload view go out in one sendmsg, the transport holds none."""
    transport, peer = connection
    payload = b"p" * 1000
    write_pieces(transport, [b"HEAD", memoryview(payload)[10:]])
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""
    assert peer.recv(4096) == b"HEAD" + payload[10:]


def test_what_the_kernel_refuses_is_queued_and_later_writes_keep_their_order(connection) -> None:
    """A write larger than the socket buffers is sent in part and the rest queued; the next
    write queues behind it, and the peer reads everything exactly once, in order."""
    transport, peer = connection
    first = bytes(range(256)) * 4096  # 1 MiB
    second = b"second" * 1000
    write_pieces(transport, [b"A" * 7, memoryview(first)])
    assert 0 < transport._tempDataLen < len(first) + 7  # part went out, the rest waits
    write_pieces(transport, [memoryview(second)])
    expected = b"A" * 7 + first + second
    assert _read_all(transport, peer, len(expected)) == expected


def test_a_tls_transport_is_never_written_around(connection) -> None:
    """With TLS on, the pieces must go through the transport (to be encrypted): all queued."""
    transport, peer = connection
    encrypted: list[bytes] = []

    class TLSLayer(Protocol):  # where Twisted's startTLS sends a TLS transport's writes
        def writeSequence(self, data: list[bytes]) -> None:
            encrypted.extend(data)

    transport.TLS = True
    transport.protocol = TLSLayer()
    write_pieces(transport, [b"x" * 100, memoryview(b"yz")])
    assert encrypted == [b"x" * 100, b"yz"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)


@pytest.mark.parametrize("close", ["loseWriteConnection", "abortConnection"])
def test_nothing_goes_around_a_closing_transport(connection, close: str) -> None:
    """Once the write side is being closed or the connection aborted, the transport alone
    decides what still goes out (before its FIN, or nothing): no sendmsg of ours."""
    transport, peer = connection
    getattr(transport, close)()
    write_pieces(transport, [b"late"])
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)


def test_more_pieces_than_one_sendmsg_takes(connection) -> None:
    """Over IOV_MAX pieces go out in several sendmsg calls, still without queueing any."""
    transport, peer = connection
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    pieces = [bytes([i % 251]) for i in range(IOV_MAX * 2 + 5)]
    write_pieces(transport, pieces)
    assert transport._tempDataLen == 0
    assert _read_all(transport, peer, len(pieces)) == b"".join(pieces)


def test_other_transports_get_bytes_in_one_writeSequence() -> None:
    """Anything but a plain TCP connection gets the pieces as bytes, in order."""
    transport = StringTransport()
    write_pieces(transport, [b"ab", memoryview(b"xcdx")[1:3], b"ef"])
    assert transport.value() == b"abcdef"


@pytest.mark.parametrize("sent, left", [
    (0, [b"abc", b"de"]), (2, [b"c", b"de"]), (3, [b"de"]), (4, [b"e"]), (5, []),
])
def test_unsent_skips_whole_and_partial_pieces(sent: int, left: list[bytes]) -> None:
    """unsent() drops the pieces that went out and cuts the one that went out in part."""
    assert [bytes(p) for p in unsent([b"abc", b"de"], sent)] == left


def test_unsent_counts_bytes_of_wide_views() -> None:
    """A view of 4-byte items counts (and is cut) in bytes, not items."""
    wide = memoryview(bytes(range(8))).cast("I")
    assert [bytes(p) for p in unsent([wide, b"z"], 5)] == [bytes(range(5, 8)), b"z"]
