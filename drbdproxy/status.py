"""What a connection looks like at one moment: typed snapshots, built once per request.

The control protocol's text, the Prometheus collector and the manhole all render these, so
only :meth:`drbdproxy.relay.connection.ProxyConnection.status` walks a connection's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from drbdproxy.spec import ConnectionSpec

#: Byte counters per DRBD socket kind: ``to_peer``, ``to_peer_wire``, ``from_peer``,
#: ``from_peer_wire``.
Totals = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class StreamStatus:
    """One DRBD socket relayed over a link stream (a subconnection)."""

    kind: str  # data, meta or opaque
    sid: int
    peer: str  # the DRBD socket's far address, "-" while it connects
    to_peer: int
    to_peer_wire: int
    from_peer: int
    from_peer_wire: int
    #: Why the stream is relayed unparsed (it stopped looking like DRBD), or None.
    opaque: str | None
    #: DRBD packets per type, what this DRBD wrote and what it was sent.
    packets_to_peer: Mapping[str, int] = field(default_factory=dict)
    packets_from_peer: Mapping[str, int] = field(default_factory=dict)
    #: The stream as logs name it: ids are per link, so with the link's role ("bulk/2").
    label: str = ""


@dataclass(frozen=True)
class StreamTraffic:
    """What one DRBD socket carried so far, raw and on the link."""

    kind: str
    sid: int
    to_peer: int
    to_peer_wire: int
    from_peer: int
    from_peer_wire: int


@dataclass(frozen=True)
class Traffic:
    """Just the byte counters of a connection: what rates are measured from, every second,
    without the rest of a status snapshot (packet counts, socket options, sorting)."""

    name: str
    totals: Totals
    streams: tuple[StreamTraffic, ...]


@dataclass(frozen=True)
class ConnectionStatus:
    """One proxied DRBD connection."""

    name: str
    spec: ConnectionSpec
    state: str
    memlimit: int
    bwlimit: int
    codec: str
    buffered: int
    buffered_peak: int
    #: DRBD reads paused at memlimit now, and how many times they were.
    reads_paused: bool
    read_pauses: int
    reconnects: int
    link_rtt_ms: float | None
    #: The link's measured drain rate (bytes/s), and what draining the buffer takes at it.
    drain_rate: float | None
    drain_seconds: float | None
    #: P_OUT_OF_SYNC this site's DRBD sent: it pulled ahead (congestion) and will resync.
    out_of_sync: int
    dropped_after_close: int
    discarded_to_peer: int
    discarded_from_peer: int
    totals: Totals
    #: DRBD packets per (socket kind, direction, packet name), closed sockets included.
    packets: Mapping[tuple[str, str, str], int]
    streams: tuple[StreamStatus, ...]
    #: The congestion control the meta link's socket runs (None while there is none).
    link_cc: str | None = None
    #: Why the links last broke or a dial failed (None: never), and seconds to the next dial.
    last_error: str | None = None
    retry_in: float | None = None
