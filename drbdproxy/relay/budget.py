"""What a connection holds against its memlimit, and how fast its link drains it.

A :class:`Budget` counts every byte a connection holds and pauses DRBD reads at memlimit (and
while compression lags); a :class:`DrainRate` measures the link's rate while data waits.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IPushProducer


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
