"""A link's outgoing frames, in order and flow-controlled, and its incoming pauses.

A :class:`FrameWriter` keeps a link's frames in order (a frame whose compression is still
running blocks the ones behind it), writes only while the link's transport wants more, and caps
the rate at bwlimit (:class:`TokenBucket`); :class:`PauseReasons` pauses a transport's reading
while any reason holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from drbdproxy.link import encode_data_header
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.encoder import Encoded
from drbdproxy.relay.vectored import write_pieces


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

    @property
    def held(self) -> bool:
        """Frames wait for the link: its transport refuses writes, or bwlimit's tokens ran out."""
        return self._paused or (self._wakeup is not None and self._wakeup.active())

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
                assert entry.chunks is not None  # only ready frames are batched
                pieces += entry.chunks
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
