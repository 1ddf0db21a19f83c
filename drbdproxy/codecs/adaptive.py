"""Plugin ``auto``: which codec moves the most raw bytes through this link, chosen while it runs.

Sans-IO: the relay feeds measurements in (:meth:`AutoChooser.trialDone`, :meth:`~AutoChooser.live`,
:meth:`~AutoChooser.period`) and applies the :class:`Choice` it gets back.

The model. A candidate ``c`` (none, lz4, zstd levels) can move at most::

    min(1 / relay_cost,                  the reactor thread: reads, scans, frames, writes
        cores / (relay_cost + cost_c),   all the CPU the proxy gets
        link_rate * ratio_c)             the link

raw bytes a second. ``cost_c`` (CPU seconds per raw byte) and ``ratio_c`` (raw per wire byte,
frame headers included) come from a *trial*: every candidate compresses samples of the
connection's recent data in a worker thread, timed by that thread's CPU clock. The rest is
learnt from the running connection, one period at a time:

* ``link_rate`` (wire bytes a second) from what the link drained between looks at it that both
  found frames waiting for it (its window full, or bwlimit's tokens out), capped by bwlimit,
  which also stands in for it until measured;
* ``cores`` from periods in which the CPU was the limit (reads waited for compression, or the
  reactor thread was busy all the time): the raw rate the current codec achieved times what
  the model says a byte costs with it. On a shared machine that is less than the core count,
  and it corrects the model's cost estimates for every candidate alike;
* ``relay_cost`` from the process's CPU time outside compression per raw byte.

An unknown link rate is taken as unlimited: a CPU-bound connection then tries a lighter codec,
and learns the link's rate if that one fills it. The best prediction wins only if it beats the
current one by :data:`HYSTERESIS`, no sooner than :data:`DWELL` periods after the last change,
and only after a period that was limited by something (a connection that only gets what DRBD
writes tells nothing about what would be faster). What a candidate really achieved while the CPU
was the limit caps its prediction for a while, so a model error is tried once, not again and
again. Costs and ratios are averaged over trials, so sampling noise does not make it wander.
Incompressible data switches to none at once (:meth:`AutoChooser.live`: 4 MiB of chunks that did
not compress), without waiting for a period.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from drbdproxy.codecs.algorithms import RAW_CODEC, Buffer, Codec, Lz4Codec, ZstdCodec
from drbdproxy.codecs.chunks import encode_chunk
from drbdproxy.codecs.plugins import AUTO_MAX_LEVEL, PluginSpec
from drbdproxy.link.frames import DATA_PREFIX, HEADER

__all__ = [
    "Candidate",
    "candidates",
    "Measured",
    "trial",
    "Bound",
    "Period",
    "Choice",
    "AutoChooser",
    "START",
    "HYSTERESIS",
    "DWELL",
]

#: zstd levels on the ladder: each step costs about twice the CPU of the one before.
ZSTD_LADDER = (1, 3, 6, 9, 12, 15, 19, 22)
#: Where ``auto`` starts before anything is measured: zstd level 3 (or the nearest the ladder
#: has). What is compressed before the first decision fills the buffer and crosses the link
#: with that ratio: on a thin link that is memlimit's worth of seconds, so a start with a good
#: ratio costs least there, while on a fast link a too heavy start is left within a period.
START = "zstd-3"
#: A better prediction must beat the current one by this much to be worth a change. It is
#: also the most auto may leave behind by staying: at 4 % it keeps within 0.96 of the best
#: prediction. Trials are averaged, so neighbouring levels do not trade places on noise.
HYSTERESIS = 0.04
#: Periods to stay on a choice after a change: the first one still drains the old codec's frames.
DWELL = 2
#: Below this raw/wire ratio data counts as incompressible (the chunks' own threshold is 1/32).
INCOMPRESSIBLE = 1.03
#: Above this ratio a trial takes data for compressible again (a margin over INCOMPRESSIBLE).
COMPRESSIBLE = 1.10
#: Bytes of live data the instant incompressibility check needs before it judges: 64 chunks
#: of 64 KiB. Mixed data (a tar with compressed files in it) has runs of incompressible
#: chunks; a third of them incompressible at random still gives 8 in a row every 6561 runs.
LIVE_MIN_BYTES = 4 << 20
#: How long what a candidate achieved caps its prediction (seconds).
ACHIEVED_TTL = 60.0
#: The relay's CPU seconds per raw byte before it is measured (about 500 MB/s on one core).
DEFAULT_RELAY_COST = 2e-9
#: Bytes of a DATA frame beyond its payload.
FRAME_OVERHEAD = HEADER.size + DATA_PREFIX.size


@dataclass(frozen=True)
class Candidate:
    """One choice of ``auto``: a short name (``none``, ``lz4``, ``zstd-3``) and its codec."""

    name: str
    codec: Codec


def candidates(spec: PluginSpec, peer_codecs: Container[int] | None = None
               ) -> tuple[Candidate, ...]:
    """The ladder for an ``auto`` line, lightest first: none, lz4, then zstd levels up to
    ``max-level``; only codecs the peer proxy can decompress (``peer_codecs``, if known)."""
    top = spec.get_int("max-level", AUTO_MAX_LEVEL)
    levels = sorted({level for level in ZSTD_LADDER if level <= top} | {top})
    ladder = [Candidate("none", RAW_CODEC), Candidate("lz4", Lz4Codec())]
    ladder += [Candidate(f"zstd-{level}", ZstdCodec(level=level)) for level in levels]
    return tuple(c for c in ladder
                 if c.codec is RAW_CODEC or peer_codecs is None or int(c.codec.id) in peer_codecs)


@dataclass(frozen=True)
class Measured:
    """A candidate on samples: CPU seconds per raw byte, and raw bytes per wire byte."""

    cost: float
    ratio: float


def trial(ladder: Sequence[Candidate], samples: Sequence[Buffer],
          cpu_clock: Callable[[], float] = time.thread_time) -> tuple[dict[str, Measured], float]:
    """Every candidate on ``samples``, chunk by chunk as the link would send them; and the CPU
    seconds the trial took. Run it in a worker thread: ``cpu_clock`` is that thread's clock."""
    raw = sum(memoryview(s).nbytes for s in samples)
    results: dict[str, Measured] = {}
    spent = 0.0
    for cand in ladder:
        wire = FRAME_OVERHEAD * len(samples)
        started = cpu_clock()
        for piece in samples:
            wire += len(encode_chunk(cand.codec, piece)[1]) if cand.codec is not RAW_CODEC \
                else memoryview(piece).nbytes
        took = cpu_clock() - started
        spent += took
        cost = 0.0 if cand.codec is RAW_CODEC else took / max(raw, 1)
        results[cand.name] = Measured(cost, raw / max(wire, 1))
    return results, spent


class Bound(enum.Enum):
    """What limited a connection during a period."""

    LINK = "link"  #: ready frames waited for the link (its window, or bwlimit's tokens)
    CPU = "cpu"  #: reads waited for compression, or the reactor thread was never idle
    DEMAND = "demand"  #: nothing: the connection carried all DRBD wrote


#: Fractions of a period's samples above which a limit counts as the period's.
LINK_HELD = 0.5
BACKLOGGED = 0.25
REACTOR_BUSY = 0.85


@dataclass(frozen=True)
class Period:
    """What one period of a running connection showed."""

    seconds: float
    #: Raw bytes taken from DRBD, and the wire bytes they became.
    raw: int
    wire: int
    #: Fractions of the period's samples in which ready frames waited for the link, and in
    #: which reads from DRBD waited while the link did not (for compression or framing).
    link_held: float
    backlogged: float
    #: CPU seconds per second of the reactor thread, and of the whole process.
    reactor_busy: float
    cpu_rate: float
    #: The process's CPU seconds per raw byte outside compression (None: too few bytes to say).
    relay_cost: float | None = None
    #: Wire bytes a second the link drained while it held frames back from one look to the
    #: next (its window full all along, so exactly what it carried); None: too seldom held.
    drained: float | None = None

    @property
    def bound(self) -> Bound:
        if self.raw <= 0:
            return Bound.DEMAND
        if self.link_held >= LINK_HELD:
            return Bound.LINK
        if self.backlogged >= BACKLOGGED or self.reactor_busy >= REACTOR_BUSY:
            return Bound.CPU
        return Bound.DEMAND


@dataclass(frozen=True)
class Choice:
    """A change of codec and why, in words for the log."""

    candidate: Candidate
    previous: Candidate
    reason: str


def _rate(value: float) -> str:
    return "unlimited" if math.isinf(value) else f"{value / 1e6:.2f} MB/s"


class AutoChooser:
    """The ``auto`` decisions for one connection (see the module docstring)."""

    def __init__(self, ladder: Sequence[Candidate], cores: float,
                 link_ceiling: float | None = None) -> None:
        if not ladder:
            raise ValueError("auto needs at least one candidate")
        self.ladder = tuple(ladder)
        self._by_name = {c.name: c for c in self.ladder}
        self.current = self._by_name.get(START) or _nearest_start(self.ladder)
        self.cores = self._cores_guess = cores
        self._cores_guessed = True  # the first measurement replaces the guess
        self._cores_learnt = 0.0
        self.relay_cost = DEFAULT_RELAY_COST
        self.measured: dict[str, Measured] = {}
        self.incompressible = False
        self.ceiling: float | None = None
        self.link_rate: float | None = None
        self._achieved: dict[str, tuple[float, float]] = {}
        self._settled = DWELL
        self.linkChanged(link_ceiling)

    # -- what the relay reports ------------------------------------------------------------------
    def linkChanged(self, ceiling: float | None) -> None:
        """A new link or another bwlimit: forget the link's rate and what was achieved on it."""
        self.ceiling = ceiling or None
        self.link_rate = self.ceiling
        self._achieved.clear()

    def trialDone(self, measured: dict[str, Measured]) -> Choice | None:
        """A trial's results; switches to none at once if nothing compresses the samples.

        What the model plans with is averaged over trials: four chunks are a small sample,
        and their ratio alone would make the choice wander between neighbouring levels."""
        fresh = {name: m for name, m in measured.items() if name in self._by_name}
        if not self.incompressible:
            for name, m in fresh.items():
                old = self.measured.get(name)
                if old is not None:
                    fresh[name] = Measured(0.5 * old.cost + 0.5 * m.cost,
                                           0.5 * old.ratio + 0.5 * m.ratio)
        self.measured = fresh
        # Judged on the average too: four samples of mixed data are now and then all
        # incompressible. Really incompressible data is caught by live() within 4 MiB anyway.
        squeezed = [m.ratio for name, m in fresh.items() if name != "none"]
        if not squeezed:
            return None
        best = max(squeezed)
        if best < INCOMPRESSIBLE:
            return self._incompressible(f"samples compress at most {best:.3f}:1")
        if self.incompressible and best >= COMPRESSIBLE:
            self.incompressible = False  # the next limited period chooses afresh
            self._settled = DWELL
        return None

    def live(self, raw: int, wire: int) -> Choice | None:
        """Live traffic since the last call: if the current codec saves (almost) nothing on
        at least LIVE_MIN_BYTES, switch to none now. Returns None while it cannot judge yet;
        the caller keeps adding up until then."""
        if self.current.codec is RAW_CODEC or raw < LIVE_MIN_BYTES or wire <= 0:
            return None
        ratio = raw / wire
        if ratio >= INCOMPRESSIBLE:
            return None
        return self._incompressible(f"{self.current.name} made {raw} bytes into {wire}"
                                    f" ({ratio:.3f}:1)")

    def period(self, p: Period, now: float) -> Choice | None:
        """One period's measurements: learn from them, and maybe choose another candidate."""
        self._settled += 1
        bound = p.bound
        if p.relay_cost is not None and p.relay_cost > 0:
            self.relay_cost = 0.5 * self.relay_cost + 0.5 * p.relay_cost
        wire_rate = p.wire / p.seconds if p.seconds > 0 else 0.0
        if p.drained:  # None: too seldom held; 0: a stalled peer, which says nothing of the link
            known = self.link_rate if self.link_rate != self.ceiling else None
            learnt = p.drained if known is None else 0.5 * known + 0.5 * p.drained
            self.link_rate = min(learnt, self.ceiling) if self.ceiling else learnt
        elif (bound is Bound.CPU and p.link_held < 0.1 and self.link_rate is not None
              and wire_rate > self.link_rate):
            # The link took all the CPU could give it, more than we thought it could: it got
            # faster (bwlimit still caps it). Only then: a period that merely refilled the
            # sockets' buffers after a pause moves more than the link carries.
            self.link_rate = min(wire_rate, self.ceiling) if self.ceiling else wire_rate
        # The period right after a change still carries frames of the codec before: what was
        # achieved in it says nothing about either.
        settled = self._settled >= DWELL
        mine = self.measured.get(self.current.name)
        if (bound is Bound.CPU and settled and mine is not None and mine.cost > 0
                and p.backlogged >= BACKLOGGED):
            # The CPU it really got, in the model's terms: what the current codec achieved
            # while compression was the limit, times what the model says each byte costs. Any
            # error of the model for this codec is thus corrected for the others too.
            got = p.raw / p.seconds * (self.relay_cost + mine.cost)
            blended = got if self._cores_guessed else 0.5 * self.cores + 0.5 * got
            self.cores, self._cores_guessed = max(0.05, blended), False
            self._cores_learnt = now
        elif not self._cores_guessed and now - self._cores_learnt > ACHIEVED_TTL:
            # Learnt long ago, maybe under load that has gone: back to the guess, so a heavier
            # codec the CPU may afford now is tried again (what it achieves corrects it).
            self.cores, self._cores_guessed = self._cores_guess, True
        if bound is Bound.CPU and settled:
            # What the CPU allowed: a cap the model's costs may miss. (Under a link limit the
            # model's link x ratio already says what a candidate moves.)
            self._achieved[self.current.name] = (p.raw / p.seconds, now)
        if bound is Bound.DEMAND or self.incompressible or not settled:
            return None
        if bound is Bound.LINK and self.link_rate is None:
            return None  # held back by a link whose rate is not measured yet: wait for it
        if self.current.name not in self.measured:
            return None
        return self._choose(bound, now)

    # -- the model -------------------------------------------------------------------------------
    def predict(self, name: str, now: float) -> float:
        """Raw bytes a second candidate ``name`` would move (inf: no limit known)."""
        m = self.measured[name]
        cpu = self.cores / (self.relay_cost + m.cost)
        reactor = 1 / self.relay_cost
        link = math.inf if self.link_rate is None else self.link_rate * m.ratio
        estimate = min(cpu, reactor, link)
        achieved = self._achieved.get(name)
        if achieved is not None and now - achieved[1] <= ACHIEVED_TTL:
            estimate = min(estimate, achieved[0] * (1 + HYSTERESIS))
        return estimate

    def _choose(self, bound: Bound, now: float) -> Choice | None:
        options = [c for c in self.ladder if c.name in self.measured]
        # The lightest of equals wins: ties go to the one that costs least CPU.
        best = max(options, key=lambda c: (self.predict(c.name, now), -options.index(c)))
        if best is self.current:
            return None
        gain, have = self.predict(best.name, now), self.predict(self.current.name, now)
        if gain <= have * (1 + HYSTERESIS):
            return None
        m, mc = self.measured[best.name], self.measured[self.current.name]
        reason = (f"{bound.value}-bound; link {_rate(self.link_rate or math.inf)},"
                  f" {self.cores:.2f} CPUs: {best.name} should move {_rate(gain)}"
                  f" (ratio {m.ratio:.2f}, {_speed(m.cost)}) against {_rate(have)} for"
                  f" {self.current.name} (ratio {mc.ratio:.2f}, {_speed(mc.cost)})")
        return self._switch(best, reason)

    def _incompressible(self, why: str) -> Choice | None:
        self.incompressible = True
        none = self._by_name.get("none")
        if none is None or self.current is none:
            return None
        return self._switch(none, f"incompressible data: {why}")

    def _switch(self, to: Candidate, reason: str) -> Choice:
        choice = Choice(to, self.current, reason)
        self.current = to
        self._settled = 0
        return choice


def _nearest_start(ladder: Sequence[Candidate]) -> Candidate:
    # Below level 3 (max-level 1 or 2), the highest zstd level; without zstd, lz4 or none.
    zstd = [c for c in ladder if c.name.startswith("zstd-")]
    if zstd:
        return min(zstd, key=lambda c: abs(int(c.name[len("zstd-"):]) - 3))
    return ladder[-1]


def _speed(cost: float) -> str:
    return "no CPU" if cost <= 0 else f"{1 / cost / 1e6:.0f} MB/s per CPU"
