"""drbd-sim's socket framing: corked bursts go out as one buffer, in order, byte for byte."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from drbdproxy.drbd.decoder import PacketDecoder
from drbdproxy.drbd.packets import Cmd
from drbdproxy.sim.sockets import CORK_LIMIT, DrbdSocket
from drbdproxy.sim.workload import Workload


class _Owner:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def countSent(self, name: str) -> None:
        self.sent.append(name)


def _socket() -> tuple[DrbdSocket, StringTransport, _Owner]:
    owner = _Owner()
    sock = DrbdSocket(owner, None)  # type: ignore[arg-type]
    transport = StringTransport()
    sock.transport = transport
    sock.connected = True
    return sock, transport, owner


def test_corked_packets_are_written_once_in_order() -> None:
    """Between cork() and uncork() nothing reaches the transport; then the packets arrive as one
    write that decodes to the same packets, a block given as stamp and pool view included."""
    sock, transport, owner = _socket()
    block = Workload("disk").block_parts(7, 8, 4096)
    sock.cork()
    sock.send(Cmd.P_DATA, b"H" * 24, *block)
    sock.send(Cmd.P_BARRIER, b"\0" * 8)
    assert transport.value() == b""
    sock.uncork()
    packets = PacketDecoder().feed(transport.value())
    assert [p.command for p in packets] == [Cmd.P_DATA, Cmd.P_BARRIER]
    assert packets[0].payload == b"H" * 24 + Workload("disk").block(7, 8, 4096)
    assert owner.sent == ["P_DATA", "P_BARRIER"]


def test_uncorked_send_writes_at_once_and_an_empty_cork_writes_nothing() -> None:
    """Without a cork every send() is its own write; uncorking with nothing held writes nothing."""
    sock, transport, _ = _socket()
    sock.cork()
    sock.uncork()
    assert transport.value() == b""
    sock.send(Cmd.P_PING)
    assert [p.command for p in PacketDecoder().feed(transport.value())] == [Cmd.P_PING]


def test_a_long_cork_writes_every_cork_limit_so_backpressure_can_act() -> None:
    """A corked burst is handed to the transport whenever CORK_LIMIT bytes are held, so the
    transport can pause its producer mid-burst as it would for separate writes; what is left
    goes at uncork(), all in order."""
    sock, transport, _ = _socket()
    sock.agreed_version = 101  # h100 headers: 64 KiB payloads
    writes: list[bytes] = []
    transport.writeSequence = lambda seq: writes.append(b"".join(seq))  # type: ignore[method-assign]
    block = b"b" * (64 << 10)
    sock.cork()
    for _ in range(CORK_LIMIT // len(block) + 1):
        sock.send(Cmd.P_DATA, b"H" * 24, block)
    assert len(writes) == 1 and len(writes[0]) >= CORK_LIMIT
    sock.uncork()
    assert len(writes) == 2
    packets = PacketDecoder().feed(b"".join(writes))
    assert len(packets) == CORK_LIMIT // len(block) + 1
    assert all(p.payload == b"H" * 24 + block for p in packets)
