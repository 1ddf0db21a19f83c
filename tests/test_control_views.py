"""What the read-side commands print: LINBIT-style tables, measured rates, the congestion-fill
advice and the JSON documents, rendered from typed snapshots (no daemon)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from twisted.internet.task import Clock

from drbdproxy.control import views, watch
from drbdproxy.control.rates import RATE_INTERVAL, RateMeter, compression_ratio
from drbdproxy.control.registry import ConnectionRegistry
from drbdproxy.control.interface import ControlError
from drbdproxy.spec import ConnectionSpec
from drbdproxy.status import ConnectionStatus, StreamStatus

M, G = 1 << 20, 1 << 30
SPEC = ConnectionSpec("r0-bob-alice", ("127.0.0.1", 7788), ("10.0.2.2", 7789), ("10.0.2.1", 7789),
                      ("127.0.0.1", 7789))


def stream(kind: str, sid: int, to_peer: int, to_wire: int, from_peer: int = 0,
           from_wire: int = 0) -> StreamStatus:
    return StreamStatus(kind, sid, "127.0.0.1:40000", to_peer, to_wire, from_peer, from_wire, None,
                        {"P_DATA": 3} if kind == "data" else {}, {})


def status(*streams: StreamStatus, memlimit: int = 16 * M, buffered: int = 0,
           name: str = "r0-bob-alice") -> ConnectionStatus:
    totals: dict[str, dict[str, int]] = {}
    for s in streams:
        t = totals.setdefault(s.kind, {"to_peer": 0, "to_peer_wire": 0, "from_peer": 0,
                                       "from_peer_wire": 0})
        t["to_peer"] += s.to_peer
        t["to_peer_wire"] += s.to_peer_wire
        t["from_peer"] += s.from_peer
        t["from_peer_wire"] += s.from_peer_wire
    return ConnectionStatus(
        name=name, spec=replace(SPEC, name=name), state="Connected", memlimit=memlimit,
        bwlimit=0, codec="lz4", buffered=buffered, buffered_peak=buffered, reads_paused=False,
        read_pauses=0, reconnects=1, link_rtt_ms=0.25, drain_rate=None, drain_seconds=None,
        out_of_sync=0, dropped_after_close=0, discarded_to_peer=0, discarded_from_peer=0,
        totals=totals, packets={}, streams=tuple(streams))


def measured(before: ConnectionStatus, after: ConnectionStatus, seconds: float = 1.0) -> RateMeter:
    meter = RateMeter()
    meter.sample(10.0, [before])
    meter.sample(10.0 + seconds, [after])
    return meter


def test_rates_are_bytes_per_second_over_the_last_interval():
    """Two samples 2 s apart: each counter's rate is its growth divided by 2, per socket and
    for the whole connection."""
    meter = measured(status(stream("data", 1, 1000, 500), stream("meta", 2, 10, 10, 40, 40)),
                     status(stream("data", 1, 5000, 2500), stream("meta", 2, 30, 30, 80, 80)),
                     seconds=2.0)
    data = meter.stream("r0-bob-alice", "data", 1)
    assert (data.to_peer, data.to_peer_wire, data.from_peer) == (2000, 1000, 0)
    whole = meter.connection("r0-bob-alice")
    assert (whole.to_peer, whole.to_peer_wire, whole.from_peer, whole.from_peer_wire) == (
        2010, 1010, 20, 20)


def test_no_rate_before_two_samples_nor_across_a_reset():
    """One sample gives no rate; a counter that went down (a new connection of the same name)
    gives none either, never a negative rate."""
    meter = RateMeter()
    meter.sample(1.0, [status(stream("data", 1, 1000, 500))])
    assert meter.connection("r0-bob-alice").to_peer is None
    meter.sample(2.0, [status(stream("data", 1, 10, 5))])
    assert meter.stream("r0-bob-alice", "data", 1).to_peer is None
    assert meter.connection("r0-bob-alice").to_peer is None


def test_the_meter_forgets_what_is_gone():
    """What the meter keeps is bounded by the last sample: closed sockets and deleted
    connections are dropped."""
    meter = RateMeter()
    for t in range(50):  # a new socket each second, as a reconnecting DRBD would open
        meter.sample(float(t), [status(stream("data", t, 100 * t, 50 * t))])
    assert meter.tracked == {("r0-bob-alice", "", 0), ("r0-bob-alice", "data", 49)}
    meter.sample(51.0, [])
    assert meter.tracked == set()


@pytest.mark.parametrize("memlimit, raw, wire, advice", [
    (100 * M, 0, 0, 90 * M),  # nothing sent yet: ratio 1
    (100 * M, 2000, 1000, 180 * M),  # 2:1 data: DRBD may count twice the buffer
    (100 * M, 1000, 1000, 90 * M),
    (8 * G, 3000, 1000, 10 * G),  # capped at DRBD_CONG_FILL_MAX
])
def test_congestion_fill_advice_scales_with_the_measured_ratio(memlimit, raw, wire, advice):
    """The advice is 90 % of memlimit x the measured compression ratio, at most DRBD's 10 GiB."""
    s = status(stream("data", 1, raw, wire), memlimit=memlimit)
    assert views.congestion_fill(memlimit, compression_ratio(s)) == pytest.approx(advice, abs=1)


def test_memusage_prints_the_advice_in_drbd_conf_units():
    """show memusage gives the ratio and a congestion-fill with its unit (a bare number would
    be sectors in drbd.conf)."""
    [line] = views.memusage_lines([status(stream("data", 1, 2000, 1000), memlimit=16 * M)], False)
    assert line.startswith("r0-bob-alice: buffered 0 memlimit 16777216 peak 0 drbd-reads running")
    assert line.endswith(" compression-ratio 2.00 congestion-fill 29491k")


def test_connections_table_has_a_header_and_a_status_column():
    """list connections: a header, then one tab-separated row per connection with its Status,
    buffer, rates and ratio; list hconnections: the same, aligned, sizes human-readable."""
    before = status(stream("data", 1, 0, 0), buffered=M)
    after = status(stream("data", 1, 4 * M, 2 * M), buffered=M)
    meter = measured(before, after)
    header, row = views.connections_table([after], meter, human=False)
    assert header.split("\t") == list(views.CONNECTION_COLUMNS)
    assert header.split("\t")[1] == "Status"
    assert row.split("\t") == ["r0-bob-alice", "Connected", str(M), str(16 * M), str(4 * M), "0",
                               str(2 * M), "2.00", "0.2ms", "1", "-", "-"]
    human = views.connections_table([after], meter, human=True)
    assert "\t" not in "".join(human)
    assert human[1].split() == ["r0-bob-alice", "Connected", "1.0M", "16.0M", "4.0M", "0", "2.0M",
                                "2.00", "0.2ms", "1", "-", "-"]
    assert human[0].index("Status") == human[1].index("Connected")


def test_a_connection_that_is_down_says_why_and_when_it_dials_next():
    """While the peer proxy is away, list connections ends each row with the seconds to the next
    dial and the last error, the JSON view gives both, and watch prints them under the buffer."""
    down = replace(status(), state="Connecting", retry_in=2.25,
                   last_error="dial failed: Connection was refused by other side")
    meter = measured(down, down)
    header, row = views.connections_table([down], meter, human=False)
    assert header.split("\t")[-2:] == ["NextDial", "LastError"]
    assert row.split("\t")[-2:] == ["2.2s", "dial failed: Connection was refused by other side"]
    [doc] = views.connections_json([down], meter)
    (c,) = json.loads(doc)["connections"]
    assert c["retry_in"] == 2.25 and c["last_error"].startswith("dial failed")
    screen = watch.connection_lines(c, 120)
    assert screen[-1] == ("  down: dial failed: Connection was refused by other side"
                          "   next dial in 2.2 s")


def test_subconnections_fields_2_9_13_are_socket_rate_and_ratio():
    """LINBIT's recipe `list subconnections | cut -f 2,9,13` picks the DRBD socket, the rate
    DRBD writes to the peer and the compression ratio."""
    before = status(stream("data", 3, 0, 0), stream("meta", 4, 0, 0))
    after = status(stream("data", 3, 3 * M, M), stream("meta", 4, 4096, 4096, 512, 512))
    lines = views.subconnections_table([after], measured(before, after), human=False)
    cut = [[line.split("\t")[i - 1] for i in (2, 9, 13)] for line in lines]
    assert cut == [["Socket", "ToPeer/s", "Ratio"], ["data", str(3 * M), "3.00"],
                   ["meta", "4096", "1.00"]]
    assert all(len(line.split("\t")) == 14 for line in lines)


def test_json_documents_are_one_line_with_numbers():
    """Each JSON reply is one line; numbers stay numbers, unknowns are null."""
    after = status(stream("data", 1, 2 * M, M))
    meter = measured(status(stream("data", 1, 0, 0)), after)
    [line] = views.connections_json([after], meter)
    [conn] = json.loads(line)["connections"]
    assert conn["name"] == "r0-bob-alice" and conn["state"] == "Connected"
    assert conn["rates"] == {"to_peer": 2 * M, "to_peer_wire": M, "from_peer": 0,
                             "from_peer_wire": 0}
    assert conn["compression_ratio"] == 2.0 and conn["congestion_fill"] == int(16 * M * 0.9 * 2)
    assert conn["drain_seconds"] is None and conn["inside"] == "127.0.0.1:7788"
    [sub] = json.loads(views.subconnections_json([after], meter)[0])["subconnections"]
    assert sub["socket"] == "data" and sub["ratio"] == {"to_peer": 2.0, "from_peer": None}
    [det] = json.loads(views.details_json([after])[0])["subconnections"]
    assert det["packets"] == {"to_peer": {"P_DATA": 3}, "from_peer": {}}
    stats = json.loads(views.statistics_json(["r0.state Connected", "r0.memlimit 1024",
                                              "r0.link_rtt_ms -", "r0.drain_seconds 1.500"])[0])
    assert stats == {"statistics": {"r0.state": "Connected", "r0.memlimit": 1024,
                                    "r0.link_rtt_ms": None, "r0.drain_seconds": 1.5}}


def test_the_registry_samples_rates_every_interval():
    """The registry measures rates on its own clock, once per RATE_INTERVAL, from snapshots."""
    clock = Clock()
    registry = ConnectionRegistry(clock, memory=G)
    snapshots = [status(stream("data", 1, 0, 0)), status(stream("data", 1, 5 * M, M))]
    registry.traffic = lambda: [snapshots[0]]  # type: ignore[method-assign]
    registry.startService()
    try:
        snapshots.pop(0)
        clock.advance(RATE_INTERVAL)
        assert registry.rates.connection("r0-bob-alice").to_peer == 5 * M
        registry.traffic = lambda: []  # type: ignore[method-assign]
        clock.advance(RATE_INTERVAL)
        assert registry.rates.tracked == set()
    finally:
        registry.stopService()


def test_a_memlimit_above_physical_memory_is_refused():
    """set memlimit and add connection --memlimit above the host's RAM fail with one line."""
    registry = ConnectionRegistry(Clock(), memory=G)
    with pytest.raises(ControlError, match=r"^memlimit 2.0G is more than this host's 1.0G of"
                                           r" physical memory$"):
        registry.add_connection(replace(SPEC, options={"memlimit": 2 * G}))
    assert list(registry) == []
