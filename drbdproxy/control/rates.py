"""Bytes per second, from byte counters sampled over time (sans-IO: the caller brings the clock).

The data path counts bytes; rates are what an operator reads. :class:`RateMeter` keeps the last
sample of every counter of each connection and each DRBD socket, and the rate over the last
interval. Only what the latest sample holds is kept, so memory follows the live connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

from drbdproxy.status import Totals

#: Seconds between samples: the rates are averages over this long.
RATE_INTERVAL = 1.0

_Counters = tuple[int, int, int, int]  # to_peer, to_peer_wire, from_peer, from_peer_wire
_Key = tuple[str, str, int]  # connection name, socket kind ("" for the whole connection), stream id


@dataclass(frozen=True)
class Rates:
    """Bytes per second over the last interval; None before two samples (or after a reset)."""

    to_peer: float | None = None
    to_peer_wire: float | None = None
    from_peer: float | None = None
    from_peer_wire: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"to_peer": self.to_peer, "to_peer_wire": self.to_peer_wire,
                "from_peer": self.from_peer, "from_peer_wire": self.from_peer_wire}


UNKNOWN = Rates()


class StreamCounts(Protocol):
    """A DRBD socket's byte counters (a StreamStatus or a StreamTraffic)."""

    @property
    def kind(self) -> str: ...
    @property
    def sid(self) -> int: ...
    @property
    def to_peer(self) -> int: ...
    @property
    def to_peer_wire(self) -> int: ...
    @property
    def from_peer(self) -> int: ...
    @property
    def from_peer_wire(self) -> int: ...


class Counts(Protocol):
    """A connection's byte counters (a ConnectionStatus, or the lighter Traffic)."""

    @property
    def name(self) -> str: ...
    @property
    def totals(self) -> Totals: ...
    @property
    def streams(self) -> Sequence[StreamCounts]: ...


def connection_counters(status: Counts) -> _Counters:
    """A connection's byte counters over all its DRBD sockets, closed ones included."""
    sums = [0, 0, 0, 0]
    for counters in status.totals.values():
        for i, key in enumerate(("to_peer", "to_peer_wire", "from_peer", "from_peer_wire")):
            sums[i] += counters.get(key, 0)
    return sums[0], sums[1], sums[2], sums[3]


def compression_ratio(status: Counts) -> float | None:
    """Raw bytes DRBD wrote per byte on the link, so far; None before any byte was sent."""
    raw, wire, _, _ = connection_counters(status)
    return raw / wire if wire else None


class RateMeter:
    """The rates of every connection and DRBD socket, from snapshots taken every interval."""

    def __init__(self) -> None:
        self._last: dict[_Key, tuple[float, _Counters]] = {}
        self._rates: dict[_Key, Rates] = {}

    def sample(self, now: float, statuses: Iterable[Counts]) -> None:
        """Take one sample of ``statuses`` at time ``now`` (seconds); forget what is gone."""
        seen: dict[_Key, _Counters] = {}
        for c in statuses:
            seen[(c.name, "", 0)] = connection_counters(c)
            for s in c.streams:
                seen[(c.name, s.kind, s.sid)] = (s.to_peer, s.to_peer_wire, s.from_peer,
                                                 s.from_peer_wire)
        rates: dict[_Key, Rates] = {}
        for key, counters in seen.items():
            before = self._last.get(key)
            if before is not None and now > before[0]:
                rates[key] = _rates(before[1], counters, now - before[0])
        self._last = {key: (now, counters) for key, counters in seen.items()}
        self._rates = rates

    def connection(self, name: str) -> Rates:
        return self._rates.get((name, "", 0), UNKNOWN)

    def stream(self, name: str, kind: str, sid: int) -> Rates:
        return self._rates.get((name, kind, sid), UNKNOWN)

    @property
    def tracked(self) -> set[_Key]:
        """Every connection and socket something is kept for (bounded by what the last sample held)."""
        return set(self._last) | set(self._rates)


def _rates(before: _Counters, after: _Counters, seconds: float) -> Rates:
    # A counter that went down belongs to a new connection or socket of the same name: no rate.
    values = [(b - a) / seconds if b >= a else None for a, b in zip(before, after)]
    return Rates(*values)
