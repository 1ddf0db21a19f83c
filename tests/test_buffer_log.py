"""Unit tests of what a connection logs about its buffer at memlimit: one line per change of
regime, and while the buffer stays full, a summary every 10 s an operator can act on."""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from helpers import logged

from drbdproxy.relay.budget import Budget, BufferFullLog, DrainRate

pytestmark = pytest.mark.unit

MEMLIMIT = 1 << 20


@pytest.fixture
def info() -> Iterator[list[str]]:
    """drbdproxy's info (and louder) log lines while the test runs."""
    with logged(LogLevel.info) as events:
        yield events.texts


def full_buffer() -> tuple[Clock, Budget, DrainRate, BufferFullLog]:
    clock = Clock()
    drain = DrainRate()
    log = BufferFullLog("r0", clock, drain)
    budget = log.budget = Budget(MEMLIMIT, log.changed)
    return clock, budget, drain, log


def test_a_buffer_that_stays_full_is_summarised_every_interval_with_rate_and_drain_time(
        info: list[str]) -> None:
    """The first fill is said at once; while reads stay paused, every 10 s one line gives how
    long, the fill, the link's drain rate, the time to empty and the pauses of that interval."""
    clock, budget, drain, _ = full_buffer()
    budget.add(MEMLIMIT)
    assert len(info) == 1 and "buffer of r0 full" in info[0]
    drain.sample(0.0, 0, True)
    drain.sample(1.0, 100_000, True)  # 100 kB/s while data waited
    clock.advance(10)
    assert len(info) == 2
    summary = info[1]
    assert "at memlimit for 10 s" in summary and "(100 %)" in summary
    assert "0.10 MB/s" in summary and "10.5 s to empty" in summary
    assert "paused 1 times in the last 10 s" in summary
    clock.advance(10)
    assert len(info) == 3 and "at memlimit for 20 s" in info[2]
    assert "paused 0 times" in info[2]  # still the same pause


def test_a_flapping_buffer_is_summarised_with_its_pauses_and_quiet_once_it_drains(
        info: list[str]) -> None:
    """Flips between full and drained within one interval give one info line each way (the
    rest at debug), then one summary counting the pauses; an interval without a pause ends the
    summaries."""
    clock, budget, _, log = full_buffer()
    for _ in range(5):
        budget.add(MEMLIMIT - budget.used)
        budget.sub(MEMLIMIT)
        clock.advance(1)
    assert len(info) == 2 and "drained to 0 bytes" in info[1]
    clock.advance(5)
    assert len(info) == 3 and "paused 5 times in the last 10 s" in info[2]
    assert "an unmeasured rate" in info[2] and "now 0 of 1048576 bytes" in info[2]
    clock.advance(10)
    assert len(info) == 3  # drained, no pause: the regime is over, nothing more
    assert not clock.getDelayedCalls()
    budget.add(MEMLIMIT)
    log.stop()
    assert not clock.getDelayedCalls()
