"""The bounded pipeline: memlimit accounting, ordered frames, writes only while the link wants them."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from drbdproxy.codecs import CodecId, Lz4Codec
from drbdproxy.link import Data, LinkDecoder, Open, Side, StreamKind
from drbdproxy.relay.writer import WRITE_BATCH, FrameWriter, PauseReasons
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.encoder import ChunkEncoder, Encoded, chunks


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


def test_budget_pauses_reads_while_too_much_waits_for_compression():
    """Reads pause once backlog_limit raw bytes wait to be compressed, without that counting as
    a full buffer, and resume when half of it is encoded; encoded bytes are held at their wire
    size."""
    changes: list[bool] = []
    budget = Budget(64 << 20, changes.append, backlog_limit=1 << 20)
    reader = Reader()
    budget.register(reader)
    budget.addRaw(512 << 10)
    assert reader.events == [] and budget.reading
    budget.addRaw(512 << 10)
    assert reader.events == ["pause"] and not budget.reading
    assert not budget.paused and budget.pauses == 0 and changes == []  # not memlimit
    budget.encoded(256 << 10, 100 << 10)
    assert reader.events == ["pause"]  # 768 KiB still waiting: more than half
    budget.encoded(256 << 10, 100 << 10)
    assert reader.events == ["pause", "resume"] and budget.reading
    assert budget.backlog == 512 << 10 and budget.used == (512 << 10) + (200 << 10)


def test_budget_resumes_reads_only_when_neither_reason_holds():
    """A full buffer and a compression backlog each stop reads; readers hear one pause and one
    resume, when the last of the two clears."""
    budget = Budget(1 << 20, backlog_limit=1 << 20)
    reader = Reader()
    budget.register(reader)
    budget.addRaw(1 << 20)  # both at once: memlimit and the backlog
    assert reader.events == ["pause"] and budget.paused
    budget.encoded(1 << 20, 0)  # backlog cleared, and the buffer is empty
    assert reader.events == ["pause", "resume"] and not budget.paused
    budget.addRaw(900 << 10)
    budget.add(200 << 10)  # full, backlog below its limit
    assert reader.events == ["pause", "resume", "pause"]
    budget.sub(200 << 10)  # 900 KiB: still above the low watermark
    assert reader.events[-1] == "pause"
    budget.encoded(900 << 10, 1000)
    assert reader.events == ["pause", "resume", "pause", "resume"]
    late = Reader()
    budget.addRaw(1 << 20)
    budget.register(late)  # registered while reads wait: paused at once
    assert late.events == ["pause"]
    budget.reset()
    assert budget.backlog == budget.used == 0 and late.events == ["pause", "resume"]


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
        writer.pushDataAll(1, d, [4])
    second.callback([Encoded(0, 4, 0x1234, b"BBBB")])
    assert transport.value() == b""  # the first chunk is not ready yet
    first.callback([Encoded(0, 4, 0x5678, b"AAAA")])
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
    writer.pushDataAll(3, pending, [65536])
    pending.callback([Encoded(1, 65536, 0, b"z" * 1000)])
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
    from drbdproxy.relay.budget import DrainRate

    rate = DrainRate(weight=1.0)
    rate.sample(0.0, 0, busy=True)
    rate.sample(1.0, 10_000_000, busy=True)
    assert rate.rate == 10_000_000
    rate.sample(2.0, 10_000_000, busy=False)  # nothing queued: says nothing about the link
    assert rate.rate == 10_000_000
    assert rate.drain_seconds(25_000_000) == 2.5 and rate.drain_seconds(0) == 0.0
    assert DrainRate().drain_seconds(5) is None


def test_drain_rate_after_a_bwlimit_starts_from_the_limit_and_never_exceeds_it():
    """Reset for a new bwlimit, the estimate is the limit until a rate is measured, and a
    measured rate above the limit (a burst) is capped by it."""
    from drbdproxy.relay.budget import DrainRate

    rate = DrainRate(weight=1.0)
    rate.sample(0.0, 0, busy=True)
    rate.sample(1.0, 4_000_000, busy=True)
    rate.reset(262_144)
    assert rate.rate is None and rate.drain_seconds(262_144 * 90) == 90.0
    rate.sample(2.0, 4_000_000, busy=True)
    rate.sample(3.0, 4_500_000, busy=True)  # 500 kB/s measured: a burst above the limit
    assert rate.drain_seconds(262_144) == 1.0
    rate.sample(4.0, 4_600_000, busy=True)  # 100 kB/s: below the limit, taken as it is
    assert rate.drain_seconds(100_000) == 1.0
    rate.reset(0)
    assert rate.drain_seconds(5) is None


class CountingTransport(StringTransport):
    """Counts the writes handed to it: one writeSequence per batch of frames."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def writeSequence(self, seq) -> None:
        self.writes += 1
        super().writeSequence(seq)


def data_payloads(transport: StringTransport) -> list[bytes]:
    decoder = handshake_done_decoder()
    decoder.feed(Open(1, StreamKind.DATA, Side.CLIENT).encode())
    return [bytes(f.payload) for f in decoder.feed(transport.value()) if isinstance(f, Data)]


def test_the_chunks_of_one_read_are_queued_together_and_written_in_one_go():
    """The frames of one DRBD read, encoded together, reach the link in one write, in order."""
    transport = CountingTransport()
    budget = Budget(1 << 20)
    writer = FrameWriter(transport, budget, lambda f: None)
    pending: Deferred = Deferred()
    budget.add(12)
    writer.pushDataAll(1, pending, [4, 4, 4])
    assert transport.value() == b"" and writer.queued == 3
    pending.callback([Encoded(0, 4, i, bytes([65 + i]) * 4) for i in range(3)])
    assert transport.writes == 1
    assert data_payloads(transport) == [b"AAAA", b"BBBB", b"CCCC"]
    assert budget.used == 0


def test_one_write_carries_at_most_write_batch_bytes_of_frames():
    """Ready frames beyond WRITE_BATCH bytes go in a further write, so the link's transport
    never holds much more than one batch."""
    transport = CountingTransport()
    writer = FrameWriter(transport, Budget(1 << 30), lambda f: None)
    writer.pauseProducing()
    size = 100 << 10
    writer.pushDataAll(1, [Encoded(0, size, 0, bytes([i]) * size) for i in range(5)], [size] * 5)
    writer.resumeProducing()
    assert 5 > transport.writes >= -(-5 * size // WRITE_BATCH)
    assert data_payloads(transport) == [bytes([i]) * size for i in range(5)]


def test_chunks_of_immutable_bytes_are_views_and_of_anything_else_copies():
    """Splitting received bytes copies nothing; a bytearray's pieces are copies nobody can
    change while they wait to be compressed."""
    data = bytes(range(256)) * 40
    pieces = chunks(data, 4096)
    assert all(isinstance(p, memoryview) and p.obj is data for p in pieces)
    mutable = bytearray(data)
    copies = chunks(mutable, 4096)
    mutable[0] ^= 0xFF
    assert all(type(p) is bytes for p in copies) and b"".join(copies) == data


def test_encoding_a_read_keeps_its_chunks_in_order_in_one_job():
    """encodeAll hands a compressible read to one worker job and returns its chunks in order;
    an incompressible chunk falls back to RAW without a copy of the received bytes."""
    class InlineWorkers:
        jobs = 0

        def submit(self, fn, *args):
            InlineWorkers.jobs += 1
            d: Deferred = Deferred()
            d.callback(fn(*args))
            return d

    data = bytes(64 << 10) + os.urandom(64 << 10)
    pieces = chunks(data, 64 << 10)
    result = []
    ChunkEncoder(InlineWorkers()).encodeAll(Lz4Codec(), pieces).addCallback(result.extend)
    assert InlineWorkers.jobs == 1
    assert [e.codec for e in result] == [CodecId.LZ4, CodecId.RAW]
    assert isinstance(result[1].payload, memoryview) and result[1].payload.obj is data
