"""The bounded pipeline between DRBD and the link: memlimit accounting, ordered compression, writers.

Plain objects with no sockets of their own: a :class:`Budget` counts every byte a connection
holds and pauses DRBD reads at memlimit; a :class:`ChunkEncoder` compresses chunks in worker
threads; a :class:`FrameWriter` keeps a link's frames in order (a frame whose compression is still
running blocks the ones behind it) and writes only while the link's transport wants more.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .codecs import RAW_CODEC, Codec, encode_chunk
from .link import data_checksum, encode_data_header
from .vectored import write_pieces
from .workers import Workers


#: Raw bytes a connection may have read but not yet compressed. Reads past this only pile up
#: in front of busy workers: the budget counts them raw until compressed, and memory freed by
#: a large backlog once it is compressed stays in the heap (measured: RSS 60-90 MiB above what
#: was held right after a 256 MiB fill). Sixteen DRBD reads keep every worker fed.
BACKLOG_LIMIT = 8 << 20


class Budget:
    """Bytes a connection holds against its memlimit, with watermarks for DRBD backpressure.

    At ``limit`` every registered reader (the DRBD sockets' transports) is paused; they resume once
    usage falls to the low watermark. One read can overshoot the limit: that is the fixed slack.
    Reads also wait while ``backlog_limit`` raw bytes are still being compressed (``addRaw``
    until ``encoded``); that wait is not a full buffer (``paused`` stays False).
    """

    def __init__(self, limit: int, on_change: Callable[[bool], None] | None = None,
                 backlog_limit: int = BACKLOG_LIMIT) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.paused = False
        self.pauses = 0
        #: Raw bytes counted by addRaw whose encoding is not done yet.
        self.backlog = 0
        self.backlog_limit = backlog_limit
        self._backlogged = False
        self._readers: set[IPushProducer] = set()
        #: Called with True when reads pause at memlimit, False when they resume.
        self._on_change = on_change

    @property
    def low(self) -> int:
        return max(0, self.limit - max(self.limit // 8, 64 << 10))

    @property
    def reading(self) -> bool:
        return not (self.paused or self._backlogged)

    def register(self, reader: IPushProducer) -> None:
        self._readers.add(reader)
        if not self.reading:
            reader.pauseProducing()

    def unregister(self, reader: IPushProducer) -> None:
        self._readers.discard(reader)

    def add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)
        if not self.paused and self.used >= self.limit:
            self._switch(full=True)

    def addRaw(self, n: int) -> None:
        """``n`` raw bytes read, held until ``encoded`` reports what they became."""
        self.backlog += n
        if not self._backlogged and self.backlog >= self.backlog_limit:
            self._switch(backlogged=True)
        self.add(n)

    def encoded(self, raw: int, wire: int) -> None:
        """Bytes counted by ``addRaw`` are encoded: hold their ``wire`` size from now on."""
        self.backlog -= raw
        self.sub(raw - wire)

    def sub(self, n: int) -> None:
        self.used -= n
        self._maybeResume()

    def setLimit(self, limit: int) -> None:
        """Change memlimit live: raising resumes readers, lowering keeps what is held."""
        self.limit = limit
        if not self.paused and self.used >= limit:
            self.add(0)
        self._maybeResume()

    def reset(self) -> None:
        """Forget everything held (the connection dropped its queues) and resume readers."""
        self.used = self.backlog = 0
        self._maybeResume()

    def _maybeResume(self) -> None:
        if self.paused and self.used <= self.low:
            self._switch(full=False)
        if self._backlogged and self.backlog <= self.backlog_limit // 2:
            self._switch(backlogged=False)

    def _switch(self, full: bool | None = None, backlogged: bool | None = None) -> None:
        """Change one reason to stop reading; readers only hear of changes to the sum of both."""
        was_reading = self.reading
        if backlogged is not None:
            self._backlogged = backlogged
        if full is not None:
            self.paused = full
            if full:
                self.pauses += 1
        if self.reading != was_reading:
            for reader in list(self._readers):
                if self.reading:
                    reader.resumeProducing()
                else:
                    reader.pauseProducing()
        if full is not None and self._on_change is not None:
            self._on_change(full)


@dataclass
class Encoded:
    """A chunk ready for a DATA frame."""

    codec: int
    raw_length: int
    crc32c: int
    payload: bytes | memoryview


#: Below this a read is compressed on the reactor thread: a thread hop would cost more, and
#: small reads are DRBD's meta traffic, which must not wait behind compression work.
INLINE_LIMIT = 16 << 10


def _encode(codec: Codec, data: bytes | memoryview) -> Encoded:
    crc = data_checksum(data)
    if codec.id == RAW_CODEC.id:
        return Encoded(0, len(data), crc, data)
    codec_id, payload = encode_chunk(codec, data)
    return Encoded(codec_id, len(data), crc, payload)


def _encode_all(codec: Codec, pieces: list[bytes | memoryview]) -> list[Encoded]:
    return [_encode(codec, piece) for piece in pieces]


class ChunkEncoder:
    """Compresses and checksums chunks off the reactor thread, except small and raw ones.

    A raw chunk only needs its CRC-32C (tens of GB/s): a thread hop would cost more than that.
    All chunks of one DRBD read go to a worker as one job: one hand-off each way per read, not
    per chunk, and on a saturated machine every hand-off is a few futex calls and a GIL switch.
    """

    def __init__(self, workers: Workers) -> None:
        self._workers = workers

    def encodeAll(self, codec: Codec, pieces: list[bytes | memoryview]
                  ) -> list[Encoded] | Deferred[list[Encoded]]:
        """``pieces`` encoded in order, now or (compressing a read of INLINE_LIMIT or more) once
        a worker thread is done with all of them."""
        if codec.id == RAW_CODEC.id or sum(map(len, pieces)) < INLINE_LIMIT:
            return _encode_all(codec, pieces)
        return self._workers.submit(_encode_all, codec, pieces)


class DrainRate:
    """The link's measured drain rate: an average over intervals in which data was waiting.

    ``ceiling`` (bwlimit) caps the estimate, and stands in for it until a rate is measured.
    """

    def __init__(self, weight: float = 0.3) -> None:
        self.rate: float | None = None
        self.ceiling: float | None = None
        self._weight = weight
        self._last: tuple[float, int] | None = None

    def sample(self, now: float, sent: int, busy: bool) -> None:
        """Record the writer's byte count; intervals with nothing queued say nothing of the link."""
        if self._last is not None and busy:
            then, before = self._last
            if now > then:
                observed = (sent - before) / (now - then)
                self.rate = observed if self.rate is None else (
                    self._weight * observed + (1 - self._weight) * self.rate)
        self._last = (now, sent)

    def reset(self, ceiling: float | None = None) -> None:
        """The link changed (a new link, another bwlimit): what was measured says nothing now."""
        self.rate = None
        self._last = None
        self.ceiling = ceiling or None

    def drain_seconds(self, buffered: int) -> float | None:
        if not buffered:
            return 0.0
        rate = self.rate
        if self.ceiling is not None:
            rate = min(rate, self.ceiling) if rate else self.ceiling
        return buffered / rate if rate else None


class TokenBucket:
    """A byte rate with a small burst: ``delay(n)`` is 0 when n bytes may go now (and takes them)."""

    def __init__(self, clock: Any, rate: float, burst: int = 256 << 10) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def delay(self, n: int) -> float:
        now = self._clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= min(n, self.burst):
            self._tokens -= n  # may go negative for a frame larger than the burst: paid later
            return 0.0
        return (min(n, self.burst) - self._tokens) / self.rate


#: At most this many bytes of ready frames go to the link's transport in one write (one
#: sendmsg); more frames wait for the next round, so the transport never holds much beyond it.
WRITE_BATCH = 256 << 10

_Piece = Union[bytes, memoryview]


class _Entry:
    __slots__ = ("chunks", "cost", "size", "stream", "raw", "opens", "discarded")

    def __init__(self, chunks: list[_Piece] | None, cost: int, stream: int = 0,
                 raw: int = 0, opens: bool = False) -> None:
        self.chunks = chunks
        self.cost = cost
        #: Bytes on the wire, known once the frame is ready.
        self.size = sum(map(len, chunks)) if chunks is not None else 0
        #: The stream of a DATA or OPEN frame (0: any other frame), its raw bytes, and whether
        #: this is the stream's OPEN.
        self.stream = stream
        self.raw = raw
        self.opens = opens
        #: Dropped from the queue while still being compressed.
        self.discarded = False


@dataclass
class Discarded:
    """What :meth:`FrameWriter.discard` dropped of one stream."""

    #: Raw bytes of DATA frames never sent.
    raw: int = 0
    #: The stream's OPEN was still queued too: the peer never heard of the stream.
    unopened: bool = False


@implementer(IPushProducer)
class FrameWriter:
    """Writes one link's frames in order, only while its transport is not asking us to pause.

    Frames wait in our own queue (counted in the connection's budget) rather than in the
    transport's buffer, so the transport never holds more than one frame beyond its own limit.
    """

    def __init__(self, transport: Any, budget: Budget, on_error: Callable[[Failure], None]) -> None:
        self._transport = transport
        self._budget = budget
        self._on_error = on_error
        self._queue: deque[_Entry] = deque()
        self._paused = False
        self._closed = False
        self._answer: bytes | None = None
        self._limiter: TokenBucket | None = None
        #: Bytes handed to the link's transport so far.
        self.sent = 0
        self._clock: Any = None
        self._wakeup: Any = None
        transport.registerProducer(self, True)

    def limitRate(self, clock: Any, rate: int) -> None:
        """Cap what this link sends at ``rate`` bytes/s (0: no cap); applies from the next frame."""
        if rate <= 0:
            self._limiter = None
        elif self._limiter is None:
            self._limiter = TokenBucket(clock, rate)
        else:
            self._limiter.rate = rate
        self._clock = clock
        self._flush()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def writeNow(self, data: bytes) -> None:
        """Heartbeats: straight to the transport, ahead of queued frames."""
        if not self._closed:
            self._transport.write(data)

    def answer(self, data: bytes) -> None:
        """An answer to the peer (PONG): straight to the transport like a heartbeat, unless the
        transport is refusing writes (the peer does not read): then only the latest answer is
        kept, and goes first once the transport takes writes again."""
        if self._paused:
            self._answer = data
        else:
            self.writeNow(data)

    @property
    def paused(self) -> bool:
        """The transport is refusing writes: the peer does not read what we send."""
        return self._paused

    def push(self, data: bytes, cost: int = 0) -> None:
        """Queue a ready frame (its cost, if any, is already counted in the budget)."""
        self._queue.append(_Entry([data], cost))
        self._flush()

    def pushOpen(self, stream: int, data: bytes) -> None:
        """Queue the OPEN frame of ``stream`` (dropped with its DATA if it was never sent)."""
        self._queue.append(_Entry([data], 0, stream, opens=True))
        self._flush()

    def pushDataAll(self, stream: int, encoded: list[Encoded] | Deferred[list[Encoded]],
                    raw_costs: list[int],
                    on_encoded: Callable[[Encoded], object] | None = None) -> None:
        """Queue one DATA frame per raw cost, in order: the chunks of one DRBD read, encoded
        (``encoded`` has one Encoded per cost) or still being compressed together."""
        entries = [_Entry(None, cost, stream, cost) for cost in raw_costs]
        self._queue.extend(entries)
        if isinstance(encoded, list):
            self._encoded(encoded, entries, stream, on_encoded)
        else:
            encoded.addCallbacks(self._encoded, self._failed,
                                 callbackArgs=(entries, stream, on_encoded))

    def _encoded(self, encoded: list[Encoded], entries: list[_Entry], stream: int,
                 on_encoded: Callable[[Encoded], object] | None = None) -> None:
        for enc, entry in zip(encoded, entries):
            if self._closed:
                return
            if entry.discarded:
                self._budget.encoded(entry.cost, 0)  # its stream closed while it was compressed
                continue
            if on_encoded is not None:
                on_encoded(enc)
            header = encode_data_header(stream, enc.codec, enc.raw_length, enc.crc32c,
                                        len(enc.payload))
            # Hold what the frame really costs now: the compressed payload, not the raw chunk.
            wire = len(header) + len(enc.payload)
            self._budget.encoded(entry.cost, wire)
            entry.cost = entry.size = wire
            entry.chunks = [header, enc.payload]
        self._flush()

    def discard(self, stream: int) -> Discarded:
        """Drop the frames of ``stream`` not yet handed to the transport: its DRBD socket is
        gone. Frames still being compressed leave the budget when their job is done."""
        kept: deque[_Entry] = deque()
        dropped = Discarded()
        for entry in self._queue:
            if entry.stream != stream:
                kept.append(entry)
                continue
            dropped.raw += entry.raw
            dropped.unopened |= entry.opens
            if entry.chunks is None:
                entry.discarded = True
            else:
                self._budget.sub(entry.cost)
        if len(kept) != len(self._queue):
            self._queue = kept
            self._flush()  # the head may be ready now
        return dropped

    def _failed(self, failure: Failure) -> None:
        if not self._closed:
            self._on_error(failure)

    def _flush(self) -> None:
        queue = self._queue
        while queue and queue[0].chunks is not None and not self._paused and not self._closed:
            if self._limiter is not None:
                wait = self._limiter.delay(queue[0].size)
                if wait > 0:
                    self._sleep(wait)
                    return
                batch = [queue.popleft()]
            else:
                batch = self._readyBatch()
            pieces: list[_Piece] = []
            for entry in batch:
                pieces += entry.chunks  # type: ignore[arg-type]
            write_pieces(self._transport, pieces)
            for entry in batch:
                self.sent += entry.size
                self._budget.sub(entry.cost)

    def _readyBatch(self) -> list[_Entry]:
        """Ready frames from the head of the queue, up to WRITE_BATCH bytes (at least one)."""
        queue = self._queue
        batch = [queue.popleft()]
        size = batch[0].size
        while queue and queue[0].chunks is not None and size + queue[0].size <= WRITE_BATCH:
            entry = queue.popleft()
            batch.append(entry)
            size += entry.size
        return batch

    def _sleep(self, wait: float) -> None:
        if self._wakeup is None or not self._wakeup.active():
            self._wakeup = self._clock.callLater(wait, self._flush)

    def close(self) -> int:
        """Drop everything queued (the link is gone); the budget is reset by the connection.
        Returns the raw bytes of the DATA frames dropped."""
        dropped = 0 if self._closed else sum(entry.raw for entry in self._queue)
        self._closed = True
        self._queue.clear()
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        return dropped

    # IPushProducer, driven by the link transport
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        answer, self._answer = self._answer, None
        if answer is not None:
            self.writeNow(answer)
        self._flush()

    def stopProducing(self) -> None:
        self.close()


class PauseReasons:
    """Pauses a transport's reading while any reason holds (pause/resume are not counted).

    ``on_clear`` is called whenever the last reason goes, just before reading resumes.
    """

    def __init__(self, transport: Any, on_clear: Callable[[], object] | None = None) -> None:
        self._transport = transport
        self._reasons: set[object] = set()
        self._on_clear = on_clear

    def pause(self, reason: object) -> None:
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: object) -> None:
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                if self._on_clear is not None:
                    self._on_clear()
                self._transport.resumeProducing()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)


def chunks(data: bytes, size: int) -> list[bytes | memoryview]:
    """Split ``data`` into pieces of at most ``size`` bytes, in order (no copy when it fits).

    Pieces of immutable bytes are views of it (no copy); those of anything else are copies,
    so nobody can change them while they wait to be compressed or sent.
    """
    if len(data) <= size:
        return [data]
    view = memoryview(data)
    if type(data) is bytes:
        return [view[i : i + size] for i in range(0, len(data), size)]
    return [bytes(view[i : i + size]) for i in range(0, len(data), size)]
