"""What a drbd-sim run measured, and its JSON report."""

from __future__ import annotations

from array import array
from collections import Counter
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def percentiles(samples: array[float] | list[float]) -> dict[str, float | None]:
    """p50, p99 and max of samples given in seconds, reported in milliseconds."""
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3)}


@dataclass
class Stats:
    """Counters a node keeps while it runs."""

    packets_sent: Counter[str] = field(default_factory=Counter)
    packets_received: Counter[str] = field(default_factory=Counter)
    write_latency: array[float] = field(default_factory=lambda: array("d"))
    ping_rtt: array[float] = field(default_factory=lambda: array("d"))
    bytes: int = 0
    writes: int = 0
    epochs: int = 0
    started: float | None = None
    finished: float | None = None
    #: This process's CPU seconds (user + system) when the run started and finished, so a
    #: benchmark can tell the load generator's own cost from the system under test's.
    cpu_started: float | None = None
    cpu_finished: float | None = None
    cpu_clock: Callable[[], float] = time.process_time

    def start(self, now: float) -> None:
        self.started = now
        self.cpu_started = self.cpu_clock()

    def finish(self, now: float) -> None:
        self.finished = now
        self.cpu_finished = self.cpu_clock()

    @property
    def cpu_seconds(self) -> float | None:
        if self.cpu_started is None or self.cpu_finished is None:
            return None
        return round(self.cpu_finished - self.cpu_started, 3)

    @property
    def duration(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return self.finished - self.started


def build_report(
    role: str,
    stats: Stats,
    error: str | None,
    verified: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    duration = stats.duration
    return {
        "role": role,
        "verified": verified,
        "error": error,
        "bytes": stats.bytes,
        "writes": stats.writes,
        "epochs": stats.epochs,
        "duration_s": round(duration, 3),
        "mb_per_s": round(stats.bytes / duration / 1e6, 3) if duration > 0 else 0.0,
        # The whole process's CPU over the run (with several connections: all of theirs).
        "cpu_s": stats.cpu_seconds,
        "write_latency_ms": percentiles(stats.write_latency),
        "ping_rtt_ms": percentiles(stats.ping_rtt),
        "pings": len(stats.ping_rtt),
        # Every round trip in order (ms), so a run's pings can be plotted over time.
        "ping_rtt_samples_ms": [round(rtt * 1000, 3) for rtt in stats.ping_rtt],
        "packets_sent": dict(sorted(stats.packets_sent.items())),
        "packets_received": dict(sorted(stats.packets_received.items())),
        **extra,
    }
