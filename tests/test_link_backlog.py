"""A link paused in the middle of a read: the frames after the pause wait, still compressed."""

from __future__ import annotations

import lz4.block
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from drbdproxy.link import (
    ClientHandshake,
    Data,
    LinkDecoder,
    LinkRole,
    Open,
    ServerHandshake,
    Side,
    StreamKind,
    data_checksum,
    new_session,
)
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.links import PAUSE_SLACK, LinkProtocol

from lookups import Registry

NAME = "r0-bob-alice"
LZ4 = 1
STREAM = 2  # a stream the server (the peer here) opened
CHUNK = 64 << 10
#: DATA frames of CHUNK raw bytes still handled after a pause.
SLACK_FRAMES = PAUSE_SLACK // CHUNK


class Transport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Owner:
    """Records DATA frames; pauses the link's reading after ``pause_after`` of them, as a DRBD
    socket whose transport is full would."""

    def __init__(self, pause_after: int) -> None:
        self.clock = Clock()
        self.close_timeout = 10.0
        self.pause_after = pause_after
        self.frames: list[Data] = []
        self.up = False

    def linkUp(self, link, accepted) -> None:
        self.up = True

    def linkFrame(self, link, frame) -> None:
        if isinstance(frame, Data):
            self.frames.append(frame)
            if len(self.frames) == self.pause_after:
                link.reading.pause("drbd socket full")

    def linkActivity(self, link) -> None:
        pass

    def linkDown(self, link, reason) -> None:
        pass

    def linkRefused(self, link, rejected) -> None:
        raise AssertionError(rejected)

    def linkBudget(self) -> Budget:
        return Budget(1 << 30)

    def tuneLinkSocket(self, transport) -> None:
        pass


def zeros_frame(index: int) -> bytes:
    """A DATA frame of 64 KiB that compresses to a few hundred bytes, tagged by its index."""
    raw = index.to_bytes(4, "big") + bytes(CHUNK - 4)
    payload = lz4.block.compress(raw, store_size=False)
    return Data(STREAM, LZ4, len(raw), data_checksum(raw), payload).encode()


def linked(pause_after: int, count: int) -> tuple[LinkProtocol, Owner, Transport, bytes]:
    """A client link whose handshake is done, and one read holding ``count`` DATA frames."""
    owner = Owner(pause_after)
    handshake = ClientHandshake(NAME, LinkRole.META, new_session(), [LZ4])
    link = LinkProtocol(owner, Side.CLIENT, handshake)
    transport = Transport()
    link.makeConnection(transport)
    (hello,) = LinkDecoder(Side.SERVER).feed(transport.value())
    reply, _ = ServerHandshake(Registry(NAME), [LZ4]).receive(hello)
    link.dataReceived(reply)
    assert owner.up
    opened = Open(STREAM, StreamKind.DATA, Side.SERVER).encode()
    return link, owner, transport, opened + b"".join(zeros_frame(i) for i in range(count))


def raw_frame(index: int, size: int) -> bytes:
    """An uncompressed DATA frame of ``size`` bytes, tagged by its index."""
    raw = index.to_bytes(4, "big") + bytes(size - 4)
    return Data(STREAM, 0, len(raw), data_checksum(raw), raw).encode()


def tags(owner: Owner) -> list[int]:
    """The index each handled frame carries, decompressed as the receiver would."""
    return [int.from_bytes(bytes(f.payload)[:4] if f.codec == 0 else
                           lz4.block.decompress(f.payload, uncompressed_size=f.raw_length)[:4],
                           "big") for f in owner.frames]


def test_a_pause_in_the_middle_of_a_read_stops_inflating_soon_after():
    """Of 200 highly compressible frames in one read (12.5 MiB once inflated), those up to the
    pause and PAUSE_SLACK raw bytes more are handled; the rest wait compressed, and the link's
    transport is paused."""
    link, owner, transport, read = linked(pause_after=3, count=200)
    link.dataReceived(read)
    assert tags(owner) == list(range(3 + SLACK_FRAMES))
    assert transport.producerState == "paused"


def test_a_read_of_raw_frames_is_handled_whole_despite_a_pause():
    """Without compression a read holds no more raw bytes than PAUSE_SLACK: a pause in its
    middle takes effect at its end, as it would have without the backlog."""
    size = PAUSE_SLACK // 16
    link, owner, transport, opened = linked(pause_after=1, count=0)
    link.dataReceived(opened + b"".join(raw_frame(i, size) for i in range(16)))
    assert tags(owner) == list(range(16))
    assert transport.producerState == "paused"


def test_frames_left_waiting_are_handled_in_order_once_reading_resumes():
    """After the pause lifts, the waiting frames come in the next reactor turn, in order, and
    a read that arrives before that turn queues behind them."""
    link, owner, transport, read = linked(pause_after=3, count=20)
    link.dataReceived(read)
    handled = 3 + SLACK_FRAMES
    link.reading.resume("drbd socket full")
    assert transport.producerState == "producing"
    assert tags(owner) == list(range(handled))  # not inside resume(): the next turn
    owner.pause_after = 0
    link.dataReceived(zeros_frame(20))
    assert tags(owner) == list(range(21))
    owner.clock.advance(0)
    assert tags(owner) == list(range(21))


def test_a_second_pause_while_draining_stops_the_drain_again():
    """The drain stops at the next pause too (after its slack): the rest waits for the next
    resume."""
    link, owner, transport, read = linked(pause_after=2, count=40)
    link.dataReceived(read)
    assert tags(owner) == list(range(2 + SLACK_FRAMES))
    owner.pause_after = 2 + SLACK_FRAMES + 3
    link.reading.resume("drbd socket full")
    owner.clock.advance(0)
    assert tags(owner) == list(range(owner.pause_after + SLACK_FRAMES))
    assert transport.producerState == "paused"
    owner.pause_after = 0
    link.reading.resume("drbd socket full")
    owner.clock.advance(0)
    assert tags(owner) == list(range(40))


def test_frames_waiting_when_the_link_drops_are_discarded():
    """A link lost while frames wait hands none of them on later."""
    link, owner, transport, read = linked(pause_after=1, count=10)
    link.dataReceived(read)
    link.reading.resume("drbd socket full")
    link.connectionLost()
    owner.clock.advance(0)
    assert tags(owner) == list(range(1 + SLACK_FRAMES))
