"""A connection's codec: the one its plugin lines name, or plugin ``auto``'s current choice.

For ``auto``, :class:`AutoCompression` is the Twisted half of :mod:`drbdproxy.codecs.adaptive`:
it keeps samples of the data, runs trials in the compression workers, watches the link and the
budget ten times a second while data flows, and hands the chooser one :class:`Period` every
two seconds. It runs only while data flows: an idle connection holds no timer.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from drbdproxy.admin.logs import logger
from drbdproxy.codecs import Codec, PluginSpec
from drbdproxy.codecs.adaptive import (
    FRAME_OVERHEAD,
    LIVE_MIN_BYTES,
    AutoChooser,
    Candidate,
    Choice,
    Measured,
    Period,
    candidates,
)
from drbdproxy.link import Accepted
from drbdproxy.relay.encoder import ChunkEncoder, codec_within

__all__ = ["Compression", "AutoCompression", "LinkProbe"]

#: Seconds between looks at the link and the budget, and between the chooser's periods.
TICK = 0.1
PERIOD = 2.0
#: Trials compress the latest SAMPLES samples, each as one chunk, as the link would. After a
#: trial starts, the next SAMPLES DRBD reads at least SAMPLE_SPACING raw bytes apart give one
#: each: their first chunk, if it has SAMPLE_MIN bytes (smaller ones are DRBD's headers, not
#: its data). So at most SAMPLES chunks are copied per trial, and at most twice that are held
#: (a trial's and the next one's): 2 MiB per connection.
SAMPLES = 4
SAMPLE_SPACING = 1 << 20
SAMPLE_MIN = 64 << 10
#: Trials take at most 1/TRIAL_SHARE of a CPU: the period between them stretches with their cost.
TRIAL_SHARE = 25
#: Raw bytes the whole process must encode in a period to measure the relay's cost per byte.
RELAY_COST_MIN_BYTES = 4 << 20
#: Seconds of a period the link must hold frames back, look after look, to measure its rate.
DRAINED_MIN_SECONDS = 0.5


class LinkProbe(Protocol):
    """What ``auto`` looks at on its connection, ten times a second."""

    def linkHeld(self) -> bool:
        """Ready frames wait for the link: its window is full, or bwlimit's tokens are out."""

    def readsPaused(self) -> bool:
        """Reads from DRBD wait: the buffer is at memlimit, or compression lags behind."""

    def linkSent(self) -> int:
        """Bytes handed to the bulk link so far (0 without one)."""


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class AutoCompression:
    """Plugin ``auto`` for one connection (see the module docstring)."""

    _log = logger()

    def __init__(self, name: str, ladder: Sequence[Candidate], clock: Any, encoder: ChunkEncoder,
                 probe: LinkProbe, bwlimit: int = 0, cores: float | None = None,
                 cpu_clock: Callable[[], float] = time.process_time,
                 thread_clock: Callable[[], float] = time.thread_time) -> None:
        self.name = name
        self.ladder = tuple(ladder)
        self.chooser = AutoChooser(self.ladder, cores or float(usable_cpus()), bwlimit or None)
        self._clock = clock
        self._encoder = encoder
        self._probe = probe
        self._cpu_clock = cpu_clock
        self._thread_clock = thread_clock
        self._samples: deque[bytes] = deque(maxlen=SAMPLES)
        self._until_sample = 0
        self._wanted = SAMPLES
        self._loop: LoopingCall | None = None
        self._trial_running = False
        self._next_trial = 0.0
        self._live = [0, 0]
        self._closed = False
        self._last_held: tuple[float, int] | None = None
        self._reset_period()

    @property
    def codec(self) -> Codec:
        return self.chooser.current.codec

    def describe(self) -> str:
        return f"auto:{self.chooser.current.name}"

    # -- what the connection tells it ------------------------------------------------------------
    def sample(self, pieces: Sequence[bytes | memoryview]) -> None:
        """A DRBD read about to be encoded: keep a copy of a piece now and then; start watching."""
        if self._wanted:
            self._until_sample -= sum(len(p) for p in pieces)
            if self._until_sample <= 0 and len(pieces[0]) >= SAMPLE_MIN:
                self._samples.append(bytes(pieces[0]))
                self._until_sample = SAMPLE_SPACING
                self._wanted -= 1
        if self._loop is None and not self._closed:
            self._start()

    def encoded(self, codec_id: int, raw: int, payload: int) -> None:
        """One chunk's encoding is done: ``raw`` bytes became ``payload`` bytes."""
        self._raw += raw
        self._wire += payload + FRAME_OVERHEAD
        self._live[0] += raw
        self._live[1] += payload
        if self._live[0] >= LIVE_MIN_BYTES:
            raw_live, wire_live = self._live
            self._live = [0, 0]
            self._apply(self.chooser.live(raw_live, wire_live))

    def linkChanged(self, bwlimit: int) -> None:
        """A new link or another bwlimit: what was learnt about the old one says nothing now,
        nor does what this period saw of it."""
        self.chooser.linkChanged(bwlimit or None)
        self._drained_bytes, self._drained_seconds = 0, 0.0
        self._last_held = None

    def stop(self) -> None:
        """Stop watching until the next DRBD read."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def close(self) -> None:
        """The connection no longer uses this: stop for good, and ignore a trial still out."""
        self._closed = True
        self.stop()

    # -- the watch -------------------------------------------------------------------------------
    def _start(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._reset_period()
        self._loop.start(TICK, now=False)

    def _reset_period(self) -> None:
        self._started = self._clock.seconds()
        self._ticks = self._held = self._backlogged = 0
        self._drained_bytes, self._drained_seconds = 0, 0.0
        self._last_held = None
        self._raw = self._wire = 0
        self._cpu = self._cpu_clock()
        self._reactor_cpu = self._thread_clock()
        self._meter = self._encoder.meter.read()

    def _tick(self) -> None:
        self._ticks += 1
        now = self._clock.seconds()
        held = self._probe.linkHeld()
        self._held += held
        if held:
            sent = self._probe.linkSent()
            if self._last_held is not None and sent >= self._last_held[1]:
                # Held at both looks: the window stayed full, so what went is what it carried.
                self._drained_bytes += sent - self._last_held[1]
                self._drained_seconds += now - self._last_held[0]
            self._last_held = (now, sent)
        else:
            self._last_held = None
        # Reads wait while the link takes all it is given: the buffer fills with data still
        # to be compressed (or, without compression, to be framed): the CPU is the limit.
        self._backlogged += self._probe.readsPaused() and not held
        if self._samples and not self._trial_running and now >= self._next_trial:
            self._trial()
        if now - self._started >= PERIOD:
            self._endPeriod(now)

    def _endPeriod(self, now: float) -> None:
        seconds = now - self._started
        cpu = self._cpu_clock() - self._cpu
        compress_cpu, raw_all = (b - a for a, b in zip(self._meter, self._encoder.meter.read()))
        relay_cost = ((cpu - compress_cpu) / raw_all if raw_all >= RELAY_COST_MIN_BYTES
                      and cpu > compress_cpu else None)
        period = Period(
            seconds=seconds, raw=self._raw, wire=self._wire,
            link_held=self._held / max(self._ticks, 1),
            backlogged=self._backlogged / max(self._ticks, 1),
            reactor_busy=(self._thread_clock() - self._reactor_cpu) / seconds,
            cpu_rate=cpu / seconds, relay_cost=relay_cost,
            drained=(self._drained_bytes / self._drained_seconds
                     if self._drained_seconds >= DRAINED_MIN_SECONDS else None))
        idle = self._raw == 0 and not self._probe.linkHeld()
        self._apply(self.chooser.period(period, now))
        self._log.debug("auto compression of {name}: {bound}-bound period, {raw} raw bytes in"
                        " {seconds:.1f} s, link held {held:.0%}, backlogged {backlogged:.0%},"
                        " CPU {cpu:.2f}/s, on {codec}", name=self.name, bound=period.bound.value,
                        raw=period.raw, seconds=seconds, held=period.link_held,
                        backlogged=period.backlogged, cpu=period.cpu_rate, codec=self.describe())
        if idle:
            self.stop()  # the next DRBD read starts it again
        else:
            self._reset_period()

    def _trial(self) -> None:
        self._trial_running = True
        samples = list(self._samples)
        self._wanted = SAMPLES  # fresh ones for the next trial
        d = self._encoder.trial(self.ladder, samples)
        d.addCallbacks(self._trialDone, self._trialFailed)

    def _trialDone(self, result: tuple[dict[str, Measured], float]) -> None:
        self._trial_running = False
        if self._closed:
            return
        measured, spent = result
        self._next_trial = self._clock.seconds() + max(PERIOD, TRIAL_SHARE * spent)
        self._apply(self.chooser.trialDone(measured))

    def _trialFailed(self, failure: Failure) -> None:
        self._trial_running = False
        self._next_trial = self._clock.seconds() + PERIOD
        self._log.failure("auto compression of {name}: trial failed", failure, name=self.name)

    def _apply(self, choice: Choice | None) -> None:
        if choice is None:
            return
        self._live = [0, 0]  # what the codec before made of its chunks says nothing of this one
        self._log.info("compression of {name} now {new} (was {old}): {reason}", name=self.name,
                       new=choice.candidate.name, old=choice.previous.name, reason=choice.reason)


class Compression:
    """A connection's codec, chosen again when its settings or its bulk link change."""

    def __init__(self, name: str, clock: Any, encoder: ChunkEncoder, probe: LinkProbe) -> None:
        self.name = name
        self._clock = clock
        self._encoder = encoder
        self._probe = probe
        self._fixed: Codec | None = None
        self._plugins: list[PluginSpec] = []
        self._accepted: Accepted | None = None
        self._link: tuple[int, Accepted | None] = (0, None)
        self.auto: AutoCompression | None = None

    def reset(self, plugins: Sequence[PluginSpec], accepted: Accepted | None, bwlimit: int
              ) -> None:
        """Choose again from ``plugins``, within what the peer proxy can decompress."""
        spec = next((p for p in plugins if p.compresses), None)
        self._fixed = None
        if spec is None or spec.name != "auto":
            self._stopAuto()
            self._plugins, self._accepted = list(plugins), accepted  # chosen at the first use
            return
        ladder = candidates(spec, None if accepted is None else accepted.peer_codecs)
        if self.auto is not None and self.auto.ladder == ladder:
            if (bwlimit, accepted) != self._link:
                self.auto.linkChanged(bwlimit)
                self._link = (bwlimit, accepted)
            return
        self._link = (bwlimit, accepted)
        self._stopAuto()
        self.auto = AutoCompression(self.name, ladder, self._clock, self._encoder, self._probe,
                                    bwlimit)

    @property
    def codec(self) -> Codec:
        if self.auto is not None:
            return self.auto.codec
        if self._fixed is None:
            self._fixed = codec_within(self.name, self._plugins, self._accepted)
        return self._fixed

    def codecFor(self, pieces: Sequence[bytes | memoryview]) -> Codec:
        """The codec for one DRBD read of the data socket (``auto`` samples it)."""
        if self.auto is not None:
            self.auto.sample(pieces)
        return self.codec

    def encoded(self, codec_id: int, raw: int, payload: int) -> None:
        if self.auto is not None:
            self.auto.encoded(codec_id, raw, payload)

    def describe(self) -> str:
        return self.auto.describe() if self.auto is not None else self.codec.describe()

    def stop(self) -> None:
        self._stopAuto()

    def _stopAuto(self) -> None:
        if self.auto is not None:
            self.auto.close()
        self.auto = None
