"""What a connection holds against its memlimit, and how fast its link drains it.

A :class:`Budget` counts every byte a connection holds and pauses DRBD reads at memlimit (and
while compression lags); a :class:`DrainRate` measures the link's rate while data waits.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer

from drbdproxy.admin.logs import logger


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


class BufferFullLog:
    """Says when a connection's buffer fills and drains. A saturated link flips this many times
    a second: one info event per change of regime (quiet for 10 s before), the rest at debug,
    and while the buffer stays full, a summary every ``interval`` seconds of what it costs."""

    _log = logger()

    def __init__(self, name: str, clock: Any, drain: DrainRate, interval: float = 10.0) -> None:
        self._name = name
        self._clock = clock
        self._drain = drain
        self.interval = interval
        self.budget: Budget | None = None
        self._last_event = float("-inf")
        self._reported = False
        self._since: float | None = None
        self._pauses_then = 0
        self._summary: Any = None

    def changed(self, full: bool) -> None:
        budget = self.budget
        if budget is None:
            return
        now = self._clock.seconds()
        if full:
            loud = now - self._last_event >= self.interval
            self._last_event = now
            self._reported = loud
            if self._summary is None:
                self._since, self._pauses_then = now, budget.pauses - 1
                self._summary = self._clock.callLater(self.interval, self._summarise)
        else:
            loud, self._reported = self._reported, False
        emit = self._log.info if loud else self._log.debug
        if full:
            emit("buffer of {name} full ({buffered} bytes, memlimit {memlimit}): pausing reads"
                 " from DRBD ({pauses} times so far)", name=self._name, buffered=budget.used,
                 memlimit=budget.limit, pauses=budget.pauses)
        else:
            emit("buffer of {name} drained to {buffered} bytes: reading from DRBD again",
                 name=self._name, buffered=budget.used)

    def _summarise(self) -> None:
        self._summary = None
        budget = self.budget
        if budget is None or self._since is None:
            return
        pauses = budget.pauses - self._pauses_then
        if not budget.paused and pauses == 0:
            self._since = None  # it drained and stayed below memlimit: the regime is over
            return
        now = self._clock.seconds()
        rate = self._drain.rate
        drain = self._drain.drain_seconds(budget.used)
        self._log.info(
            "buffer of {name} at memlimit for {seconds:.0f} s: now {buffered} of {memlimit} bytes"
            " ({fill:.0f} %), the link drains {rate}, {drain} to empty; reads from DRBD paused"
            " {pauses} times in the last {interval:.0f} s (the link is slower than DRBD writes:"
            " more bandwidth, better compression, or DRBD's on-congestion pull-ahead)",
            name=self._name, seconds=now - self._since, buffered=budget.used,
            memlimit=budget.limit, fill=100 * budget.used / max(budget.limit, 1),
            rate="at an unmeasured rate" if rate is None else f"{rate / 1e6:.2f} MB/s",
            drain="unknown time" if drain is None else f"{drain:.1f} s", pauses=pauses,
            interval=self.interval)
        self._pauses_then = budget.pauses
        self._summary = self._clock.callLater(self.interval, self._summarise)

    def stop(self) -> None:
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
