"""The bounded pipeline: memlimit accounting, ordered frames, writes only while the link wants them."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from drbdproxy.link import Data, LinkDecoder, Open, Side, StreamKind
from drbdproxy.pipeline import Budget, Encoded, FrameWriter, PauseReasons, chunks


@implementer(IPushProducer)
class Reader:
    """Stands in for a DRBD socket's transport: records pause and resume calls."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_budget_pauses_readers_at_memlimit_and_resumes_at_the_low_watermark():
    """Reads pause when held bytes reach memlimit and resume only below the low watermark."""
    budget = Budget(1 << 20)
    reader = Reader()
    budget.register(reader)
    budget.add((1 << 20) - 1)
    assert reader.events == []
    budget.add(1)
    assert reader.events == ["pause"] and budget.paused
    budget.sub(1000)  # just below the limit: still paused (no flapping)
    assert reader.events == ["pause"]
    budget.sub(budget.used - budget.low)
    assert reader.events == ["pause", "resume"] and not budget.paused
    assert budget.peak == 1 << 20


def test_budget_limit_changes_apply_live():
    """Raising memlimit resumes paused reads; lowering keeps what is held and pauses new reads."""
    budget = Budget(1 << 20)
    reader = Reader()
    budget.register(reader)
    budget.add(1 << 20)
    budget.setLimit(8 << 20)
    assert reader.events == ["pause", "resume"]
    budget.setLimit(512 << 10)
    assert reader.events == ["pause", "resume", "pause"] and budget.used == 1 << 20


def test_a_reader_registered_while_paused_is_paused_at_once():
    """A DRBD socket that connects while the buffer is full does not get to read."""
    budget = Budget(100)
    budget.add(100)
    late = Reader()
    budget.register(late)
    assert late.events == ["pause"]


def handshake_done_decoder():
    from drbdproxy.link import Hello, LinkRole, new_nonce, new_session

    decoder = LinkDecoder(Side.SERVER)
    decoder.feed(Hello(1, 1, LinkRole.BULK, "r0", new_session(), (0,), new_nonce()).encode())
    return decoder


def test_frame_writer_keeps_order_while_compression_finishes_out_of_order():
    """A frame still being compressed holds back the frames queued after it; order is kept."""
    transport = StringTransport()
    budget = Budget(1 << 20)
    writer = FrameWriter(transport, budget, lambda f: None)
    first, second = Deferred(), Deferred()
    for d in (first, second):
        budget.add(4)
        writer.pushData(1, d, 4)
    second.callback(Encoded(0, 4, 0x1234, b"BBBB"))
    assert transport.value() == b""  # the first chunk is not ready yet
    first.callback(Encoded(0, 4, 0x5678, b"AAAA"))
    decoder = handshake_done_decoder()
    decoder.feed(Open(1, StreamKind.DATA, Side.CLIENT).encode())  # the stream exists
    frames = decoder.feed(transport.value())
    assert [f.payload for f in frames if isinstance(f, Data)] == [b"AAAA", b"BBBB"]
    assert budget.used == 0


def test_frame_writer_stops_writing_while_the_transport_is_paused():
    """While the link transport pauses us, frames wait in our queue, counted in the budget."""
    transport = StringTransport()
    budget = Budget(1 << 20)
    writer = FrameWriter(transport, budget, lambda f: None)
    assert transport.producer is writer and transport.streaming
    writer.pauseProducing()
    budget.add(10)
    writer.push(b"x" * 10, cost=10)
    assert transport.value() == b"" and budget.used == 10
    writer.resumeProducing()
    assert transport.value() == b"x" * 10 and budget.used == 0


def test_budget_holds_the_compressed_size_once_known():
    """A chunk costs its raw size while compressing and its wire size once compressed."""
    transport = StringTransport()
    budget = Budget(1 << 20)
    writer = FrameWriter(transport, budget, lambda f: None)
    writer.pauseProducing()
    pending = Deferred()
    budget.add(65536)
    writer.pushData(3, pending, 65536)
    pending.callback(Encoded(1, 65536, 0, b"z" * 1000))
    assert budget.used == 1000 + 21  # payload plus frame header and DATA prefix


def test_pause_reasons_pause_once_and_resume_when_all_are_gone():
    """Two streams pausing one link: reading resumes only when both have resumed."""
    transport = StringTransport()
    reasons = PauseReasons(transport)
    reasons.pause("a")
    reasons.pause("b")
    assert transport.producerState == "paused"
    reasons.resume("a")
    assert transport.producerState == "paused"
    reasons.resume("b")
    assert transport.producerState == "producing"


def test_chunks_split_only_what_is_too_big():
    """Data up to the chunk size passes through as is; larger data is split in order."""
    data = bytes(range(256)) * 10
    assert list(chunks(data, 4096)) == [data]
    assert b"".join(chunks(data, 1000)) == data and len(list(chunks(data, 1000))) == 3


def test_bwlimit_spaces_frames_at_the_configured_rate():
    """With a rate cap, frames beyond the burst wait for tokens on the clock, none are dropped."""
    from twisted.internet.task import Clock

    clock = Clock()
    transport = StringTransport()
    budget = Budget(1 << 30)
    writer = FrameWriter(transport, budget, lambda f: None)
    writer.limitRate(clock, 1 << 20)  # 1 MiB/s, 256 KiB burst
    for _ in range(8):
        budget.add(128 << 10)
        writer.push(b"x" * (128 << 10), cost=128 << 10)
    assert len(transport.value()) == 256 << 10  # the burst
    for _ in range(50):  # half a second, in steps like a reactor's: 512 KiB more
        clock.advance(0.01)
    assert len(transport.value()) == 768 << 10
    for _ in range(100):
        clock.advance(0.01)
    assert len(transport.value()) == 1 << 20 and budget.used == 0


def test_drain_rate_learns_only_from_busy_intervals():
    """The link rate is measured while data waits; idle intervals do not drag it to zero."""
    from drbdproxy.pipeline import DrainRate

    rate = DrainRate(weight=1.0)
    rate.sample(0.0, 0, busy=True)
    rate.sample(1.0, 10_000_000, busy=True)
    assert rate.rate == 10_000_000
    rate.sample(2.0, 10_000_000, busy=False)  # nothing queued: says nothing about the link
    assert rate.rate == 10_000_000
    assert rate.drain_seconds(25_000_000) == 2.5 and rate.drain_seconds(0) == 0.0
    assert DrainRate().drain_seconds(5) is None
