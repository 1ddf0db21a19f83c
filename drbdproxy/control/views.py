"""What the read-side control commands print: tables, lines and JSON documents (sans-IO).

Every view renders typed snapshots (:mod:`drbdproxy.status`) and the rates measured from them
(:mod:`drbdproxy.control.rates`); none looks inside a connection. The JSON schema is documented
in ``docs/control-protocol.md``; a JSON reply is one line, so the reply framing is unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence

from drbdproxy.control.rates import Rates, RateMeter, compression_ratio, connection_counters
from drbdproxy.status import ConnectionStatus, StreamStatus
from drbdproxy.units import format_address, format_drbd_size, format_size

#: LINBIT's advice: DRBD's congestion-fill at 90 % of the proxy's buffer.
CONGESTION_FILL_SHARE = 0.9
#: The largest congestion-fill DRBD takes: DRBD_CONG_FILL_MAX, (10<<21) sectors = 10 GiB
#: (include/linux/drbd_limits.h in drbd and drbd-utils; drbdadm refuses more).
CONGESTION_FILL_MAX = 10 << 30
#: DRBD's defaults: ko-count 7 x timeout 6 s. A peer slower than this to ack is declared dead.
KO_SECONDS = 42

CONNECTION_COLUMNS = ("Name", "Status", "Buffered", "Memlimit", "ToPeer/s", "FromPeer/s",
                      "Link/s", "Ratio", "RTT", "Reconnects", "NextDial", "LastError")
#: Columns 2, 9 and 13 are what LINBIT's recipe ``list subconnections | cut -f 2,9,13`` picks:
#: which DRBD socket, how fast DRBD writes to the peer, how well it compresses.
SUBCONNECTION_COLUMNS = ("Name", "Socket", "Stream", "DRBD", "ToPeer", "ToPeerWire", "FromPeer",
                         "FromPeerWire", "ToPeer/s", "FromPeer/s", "ToPeerWire/s",
                         "FromPeerWire/s", "Ratio", "FromPeerRatio")


def congestion_fill(memlimit: int, ratio: float | None) -> int:
    """The congestion-fill to give DRBD for this buffer, in DRBD's (raw) bytes.

    The buffer holds compressed bytes while DRBD counts raw ones: with 2:1 data, DRBD would go
    Ahead at half a buffer if told 90 % of memlimit, so the advice is scaled by the measured
    ratio (1 before any byte was sent), and capped at what DRBD accepts.
    """
    return min(int(memlimit * CONGESTION_FILL_SHARE * (ratio or 1.0)), CONGESTION_FILL_MAX)


def document(**content: Any) -> list[str]:
    """A JSON reply: one line, so it never needs escaping in the reply framing."""
    return [json.dumps(content, separators=(",", ":"), sort_keys=False)]


def table(header: Sequence[str], rows: Iterable[Sequence[str]], human: bool) -> list[str]:
    """Tab-separated with a header line (for ``cut -f``); ``human``: aligned columns instead."""
    rows = [list(header)] + [list(r) for r in rows]
    if not human:
        return ["\t".join(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _ratio(raw: int, wire: int) -> str:
    return f"{raw / wire:.2f}" if wire else "-"


def _rate(size: Callable[[float], str], value: float | None) -> str:
    return "-" if value is None else size(round(value))


def _sizer(human: bool) -> Callable[[float], str]:
    return format_size if human else (lambda n: str(int(n)))


# -- connections ---------------------------------------------------------------------------


def connection_object(c: ConnectionStatus, rates: Rates) -> dict[str, Any]:
    """One connection in the JSON views: everything ``drbd-proxy-ctl watch`` shows."""
    raw, wire, from_peer, from_wire = connection_counters(c)
    ratio = compression_ratio(c)
    s = c.spec
    return {
        "name": c.name, "state": c.state, "reconnects": c.reconnects,
        "link_rtt_ms": c.link_rtt_ms,
        "inside": format_address(*s.listen_inside),
        "peer_outside": format_address(*s.connect_peer_outside),
        "outside": format_address(*s.listen_outside), "drbd": format_address(*s.connect_drbd),
        "memlimit": c.memlimit, "buffered": c.buffered, "buffered_peak": c.buffered_peak,
        "reads_paused": c.reads_paused, "read_pauses": c.read_pauses,
        "codec": c.codec, "bwlimit": c.bwlimit,
        "link_rate": c.drain_rate, "drain_seconds": c.drain_seconds,
        "compression_ratio": ratio,
        "congestion_fill": congestion_fill(c.memlimit, ratio),
        "out_of_sync": c.out_of_sync,
        "last_error": c.last_error, "retry_in": c.retry_in,
        "bytes": {"to_peer": raw, "to_peer_wire": wire, "from_peer": from_peer,
                  "from_peer_wire": from_wire},
        "rates": rates.as_dict(),
    }


def connections_json(statuses: Sequence[ConnectionStatus], meter: RateMeter) -> list[str]:
    return document(connections=[connection_object(c, meter.connection(c.name)) for c in statuses])


def connections_table(statuses: Sequence[ConnectionStatus], meter: RateMeter,
                      human: bool) -> list[str]:
    size = _sizer(human)
    rows = []
    for c in statuses:
        r = meter.connection(c.name)
        raw, wire, _, _ = connection_counters(c)
        rtt = f"{c.link_rtt_ms:.1f}ms" if c.link_rtt_ms is not None else "-"
        rows.append((c.name, c.state, size(c.buffered), size(c.memlimit), _rate(size, r.to_peer),
                     _rate(size, r.from_peer), _rate(size, r.to_peer_wire), _ratio(raw, wire),
                     rtt, str(c.reconnects), _next_dial(c), c.last_error or "-"))
    return table(CONNECTION_COLUMNS, rows, human)


def _next_dial(c: ConnectionStatus) -> str:
    # While the peer proxy is away: when this side dials it next.
    return "-" if c.retry_in is None else f"{c.retry_in:.1f}s"


def show_lines(statuses: Sequence[ConnectionStatus]) -> list[str]:
    lines = []
    for c in statuses:
        s = c.spec
        lines.append(f"{c.name}: inside {format_address(*s.listen_inside)}"
                     f" peer-outside {format_address(*s.connect_peer_outside)}"
                     f" outside {format_address(*s.listen_outside)}"
                     f" drbd {format_address(*s.connect_drbd)}")
    return lines


def memusage_lines(statuses: Sequence[ConnectionStatus], human: bool) -> list[str]:
    size = _sizer(human)
    lines = []
    for c in statuses:
        reads = "paused" if c.reads_paused else "running"
        drain = c.drain_seconds
        drain_text = f"{drain:.1f}s" if drain is not None else "unknown"
        ratio = compression_ratio(c)
        # With its unit always: drbd.conf reads a bare congestion-fill in sectors.
        fill = format_drbd_size(congestion_fill(c.memlimit, ratio), unit=True)
        lines.append(f"{c.name}: buffered {size(c.buffered)} memlimit {size(c.memlimit)}"
                     f" peak {size(c.buffered_peak)} drbd-reads {reads} drain-time {drain_text}"
                     f" codec {c.codec.replace(' ', '-')}"
                     f" compression-ratio {f'{ratio:.2f}' if ratio else '-'}"
                     f" congestion-fill {fill}")
        if drain is not None and drain > KO_SECONDS:
            lines.append(f"{c.name}: warning: draining the buffer takes {drain:.0f}s, more than"
                         f" DRBD's default ko-count x timeout ({KO_SECONDS}s): DRBD may drop"
                         " the connection; lower memlimit or use on-congestion pull-ahead")
        if c.out_of_sync:
            lines.append(f"{c.name}: DRBD pulled ahead: {c.out_of_sync} P_OUT_OF_SYNC sent"
                         " (Ahead/Behind); a resync follows when the buffer drains")
    return lines


# -- subconnections ------------------------------------------------------------------------


def _streams(statuses: Sequence[ConnectionStatus]) -> Iterable[tuple[ConnectionStatus, StreamStatus]]:
    for c in statuses:
        for s in c.streams:
            yield c, s


def subconnections_table(statuses: Sequence[ConnectionStatus], meter: RateMeter,
                         human: bool) -> list[str]:
    size = _sizer(human)
    rows = []
    for c, s in _streams(statuses):
        r = meter.stream(c.name, s.kind, s.sid)
        rows.append((c.name, s.kind, s.label or str(s.sid), s.peer, size(s.to_peer),
                     size(s.to_peer_wire),
                     size(s.from_peer), size(s.from_peer_wire), _rate(size, r.to_peer),
                     _rate(size, r.from_peer), _rate(size, r.to_peer_wire),
                     _rate(size, r.from_peer_wire), _ratio(s.to_peer, s.to_peer_wire),
                     _ratio(s.from_peer, s.from_peer_wire)))
    return table(SUBCONNECTION_COLUMNS, rows, human)


def _stream_head(c: ConnectionStatus, s: StreamStatus) -> dict[str, Any]:
    return {"connection": c.name, "socket": s.kind, "stream": s.sid, "label": s.label,
            "drbd": s.peer, "opaque": s.opaque}


def subconnections_json(statuses: Sequence[ConnectionStatus], meter: RateMeter) -> list[str]:
    subs = []
    for c, s in _streams(statuses):
        subs.append({
            **_stream_head(c, s),
            "bytes": {"to_peer": s.to_peer, "to_peer_wire": s.to_peer_wire,
                      "from_peer": s.from_peer, "from_peer_wire": s.from_peer_wire},
            "rates": meter.stream(c.name, s.kind, s.sid).as_dict(),
            "ratio": {"to_peer": s.to_peer / s.to_peer_wire if s.to_peer_wire else None,
                      "from_peer": s.from_peer / s.from_peer_wire if s.from_peer_wire else None},
        })
    return document(subconnections=subs)


def details_lines(statuses: Sequence[ConnectionStatus]) -> list[str]:
    lines = []
    for c, s in _streams(statuses):
        opaque = f" opaque: {s.opaque}" if s.opaque else ""
        lines.append(f"{c.name} {s.kind} stream {s.sid} drbd {s.peer}{opaque}")
        for label, counts in (("to-peer", s.packets_to_peer), ("from-peer", s.packets_from_peer)):
            text = " ".join(f"{n} {k}" for n, k in sorted(counts.items()))
            lines.append(f"  {label:9} {text or '-'}")
    return lines


def details_json(statuses: Sequence[ConnectionStatus]) -> list[str]:
    return document(subconnections=[
        {**_stream_head(c, s), "packets": {"to_peer": dict(sorted(s.packets_to_peer.items())),
                                           "from_peer": dict(sorted(s.packets_from_peer.items()))}}
        for c, s in _streams(statuses)])


# -- statistics ----------------------------------------------------------------------------


def statistics_json(lines: Iterable[str]) -> list[str]:
    """``print statistics`` as one object: numbers as numbers, ``-`` as null."""
    stats: dict[str, Any] = {}
    for line in lines:
        key, _, text = line.partition(" ")
        stats[key] = _value(text)
    return document(statistics=stats)


def _value(text: str) -> Any:
    if text == "-":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def statistics_lines(statuses: Sequence[ConnectionStatus], meter: RateMeter) -> list[str]:
    """``print statistics``: one ``NAME.counter value`` a line, for scripts and the tests."""
    return list(_statistics(statuses, meter))


def _statistics(statuses: Sequence[ConnectionStatus], meter: RateMeter) -> Iterable[str]:
    for c in statuses:
        yield f"{c.name}.state {c.state}"
        yield f"{c.name}.memlimit {c.memlimit}"
        yield f"{c.name}.bwlimit {c.bwlimit}"
        yield f"{c.name}.codec {c.codec.replace(' ', '-')}"
        yield f"{c.name}.link_cc {c.link_cc or '-'}"
        yield f"{c.name}.buffered {c.buffered}"
        yield f"{c.name}.buffered_peak {c.buffered_peak}"
        rtt = f"{c.link_rtt_ms:.3f}" if c.link_rtt_ms is not None else "-"
        yield f"{c.name}.link_rtt_ms {rtt}"
        rate = f"{c.drain_rate:.0f}" if c.drain_rate is not None else "-"
        yield f"{c.name}.link_rate_bytes_per_s {rate}"
        drain = f"{c.drain_seconds:.3f}" if c.drain_seconds is not None else "-"
        yield f"{c.name}.drain_seconds {drain}"
        rates = meter.connection(c.name)
        for key, value in (("to_peer", rates.to_peer), ("from_peer", rates.from_peer)):
            yield f"{c.name}.{key}_bytes_per_s {'-' if value is None else f'{value:.0f}'}"
        ratio = compression_ratio(c)
        yield f"{c.name}.compression_ratio {'-' if ratio is None else f'{ratio:.3f}'}"
        yield f"{c.name}.congestion_fill {congestion_fill(c.memlimit, ratio)}"
        yield f"{c.name}.out_of_sync {c.out_of_sync}"
        yield f"{c.name}.reconnects {c.reconnects}"
        yield f"{c.name}.dropped_after_close_bytes {c.dropped_after_close}"
        yield f"{c.name}.discarded_bytes {c.discarded_to_peer + c.discarded_from_peer}"
        yield f"{c.name}.discarded.to_peer_bytes {c.discarded_to_peer}"
        yield f"{c.name}.discarded.from_peer_bytes {c.discarded_from_peer}"
        for kind, t in sorted(c.totals.items()):
            prefix = f"{c.name}.{kind}"
            yield f"{prefix}.to_peer.bytes {t['to_peer']}"
            yield f"{prefix}.to_peer.wire_bytes {t['to_peer_wire']}"
            yield f"{prefix}.from_peer.bytes {t['from_peer']}"
            yield f"{prefix}.from_peer.wire_bytes {t['from_peer_wire']}"
        for (kind, direction, name), count in sorted(c.packets.items()):
            yield f"{c.name}.{kind}.{direction}.packets.{name} {count}"
