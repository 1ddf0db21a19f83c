"""The Prometheus collector and /metrics resource, against a fake connection registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactor
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from drbdproxy import __version__
from drbdproxy.spec import ConnectionSpec
from drbdproxy.status import ConnectionStatus, StreamStatus
from drbdproxy.admin.metrics import (
    MetricsError,
    collector_registry,
    metrics_resource,
    metrics_service,
)


@dataclass
class FakeBudget:
    used: int = 0
    limit: int = 16 << 20
    peak: int = 0
    paused: bool = False
    pauses: int = 0


@dataclass
class FakeConnection:
    name: str
    state: str = "Connecting"
    budget: FakeBudget = field(default_factory=FakeBudget)
    reconnects: int = 0
    link_rtt_ms: float | None = None
    streams: dict[Any, Any] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    discarded_bytes: tuple[int, int] = (0, 0)

    def totals(self) -> dict[str, dict[str, int]]:
        return {kind: dict(c) for kind, c in self.counters.items()}

    def discarded(self) -> tuple[int, int]:
        return self.discarded_bytes


class CountingConnection(FakeConnection):
    """A connection whose DRBD sockets have counted packets."""

    def packet_counts(self) -> dict[tuple[str, str, str], int]:
        return {("data", "to_peer", "P_DATA"): 7, ("meta", "from_peer", "P_PING_ACK"): 3}


class FakeRegistry:
    """Snapshots of its fake connections as they are at each call, as the registry gives."""

    def __init__(self, *connections: FakeConnection) -> None:
        self.connections = list(connections)

    def status(self) -> list[ConnectionStatus]:
        return [snapshot(c) for c in sorted(self.connections, key=lambda c: c.name)]


def snapshot(c: FakeConnection) -> ConnectionStatus:
    b = c.budget
    to_peer, from_peer = c.discarded()
    packets = c.packet_counts() if isinstance(c, CountingConnection) else {}
    return ConnectionStatus(
        name=c.name, spec=SPEC, state=c.state, memlimit=b.limit, bwlimit=0, codec="auto:zstd-3",
        buffered=b.used, buffered_peak=b.peak, reads_paused=b.paused, read_pauses=b.pauses,
        reconnects=c.reconnects, link_rtt_ms=c.link_rtt_ms, drain_rate=None,
        drain_seconds=None, out_of_sync=0, dropped_after_close=0, discarded_to_peer=to_peer,
        discarded_from_peer=from_peer, totals=c.totals(), packets=packets,
        streams=tuple(STREAM for _ in c.streams))


SPEC = ConnectionSpec("r0", ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3), ("127.0.0.1", 4))
STREAM = StreamStatus("data", 1, "127.0.0.1:7788", 0, 0, 0, 0, None)


def connected() -> FakeConnection:
    return FakeConnection(
        name="r0", state="Connected",
        budget=FakeBudget(used=4096, limit=128 << 20, peak=65536, paused=True, pauses=2),
        reconnects=3, link_rtt_ms=12.5, streams={1: object(), 2: object()},
        discarded_bytes=(5000, 700),
        counters={
            "data": {"to_peer": 1000, "to_peer_wire": 250, "from_peer": 80, "from_peer_wire": 100},
            "meta": {"to_peer": 40, "to_peer_wire": 0, "from_peer": 0, "from_peer_wire": 0},
        },
    )


def sample(collectors: Any, name: str, **labels: str) -> float | None:
    return collectors.get_sample_value(name, labels)  # type: ignore[no-any-return]


def test_connection_gauges() -> None:
    """Buffer, memlimit, peak, paused, sockets, reconnects, discarded bytes, RTT, state and
    the codec in use mirror the connection."""
    reg = collector_registry(FakeRegistry(connected()))
    assert sample(reg, "drbdproxy_connection_state", connection="r0", state="Connected") == 1
    assert sample(reg, "drbdproxy_connection_state", connection="r0", state="Connecting") == 0
    assert sample(reg, "drbdproxy_connection_state", connection="r0", state="ProxyConnected") == 0
    assert sample(reg, "drbdproxy_buffered_bytes", connection="r0") == 4096
    assert sample(reg, "drbdproxy_memlimit_bytes", connection="r0") == 128 << 20
    assert sample(reg, "drbdproxy_buffered_peak_bytes", connection="r0") == 65536
    assert sample(reg, "drbdproxy_drbd_reads_paused", connection="r0") == 1
    assert sample(reg, "drbdproxy_drbd_read_pauses_total", connection="r0") == 2
    assert sample(reg, "drbdproxy_drbd_sockets", connection="r0") == 2
    assert sample(reg, "drbdproxy_reconnects_total", connection="r0") == 3
    assert sample(reg, "drbdproxy_discarded_bytes_total", connection="r0",
                  direction="to_peer") == 5000
    assert sample(reg, "drbdproxy_discarded_bytes_total", connection="r0",
                  direction="from_peer") == 700
    assert sample(reg, "drbdproxy_link_rtt_seconds", connection="r0") == pytest.approx(0.0125)
    assert sample(reg, "drbdproxy_codec", connection="r0", codec="auto:zstd-3") == 1
    assert sample(reg, "drbdproxy_build_info", version=__version__) == 1


def test_byte_counters_and_ratio() -> None:
    """Raw and wire bytes per socket kind and direction are counters; the ratio is raw over wire."""
    reg = collector_registry(FakeRegistry(connected()))
    data_out = {"connection": "r0", "socket": "data", "direction": "to_peer"}
    assert reg.get_sample_value("drbdproxy_bytes_total", data_out) == 1000
    assert reg.get_sample_value("drbdproxy_wire_bytes_total", data_out) == 250
    assert reg.get_sample_value("drbdproxy_compression_ratio", data_out) == 4.0
    data_in = {"connection": "r0", "socket": "data", "direction": "from_peer"}
    assert reg.get_sample_value("drbdproxy_compression_ratio", data_in) == 0.8
    meta_out = {"connection": "r0", "socket": "meta", "direction": "to_peer"}
    assert reg.get_sample_value("drbdproxy_bytes_total", meta_out) == 40
    assert reg.get_sample_value("drbdproxy_compression_ratio", meta_out) is None  # no wire bytes


def test_exposition_types() -> None:
    """The text exposition declares counters as counters and gauges as gauges."""
    text = generate_latest(collector_registry(FakeRegistry(connected()))).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["drbdproxy_bytes"] == "counter"
    assert types["drbdproxy_wire_bytes"] == "counter"
    assert types["drbdproxy_reconnects"] == "counter"
    assert types["drbdproxy_buffered_bytes"] == "gauge"
    assert types["drbdproxy_compression_ratio"] == "gauge"
    assert "# TYPE drbdproxy_bytes_total counter" in text
    assert 'drbdproxy_bytes_total{connection="r0",direction="to_peer",socket="data"} 1000.0' in text


def test_no_rtt_sample_before_first_heartbeat() -> None:
    """A connection without a measured RTT has no RTT sample rather than a made-up value."""
    reg = collector_registry(FakeRegistry(FakeConnection(name="r1")))
    assert sample(reg, "drbdproxy_link_rtt_seconds", connection="r1") is None
    assert sample(reg, "drbdproxy_connection_state", connection="r1", state="Connecting") == 1


def test_packets_only_when_counted() -> None:
    """Packets per DRBD type appear for connections that counted some, and not for others."""
    reg = collector_registry(FakeRegistry(FakeConnection(name="a"), CountingConnection(name="b")))
    text = generate_latest(reg).decode()
    assert 'connection="a"' in text and 'drbdproxy_packets_total{connection="a"' not in text
    assert reg.get_sample_value("drbdproxy_packets_total", {
        "connection": "b", "socket": "data", "direction": "to_peer", "type": "P_DATA"}) == 7
    assert reg.get_sample_value("drbdproxy_packets_total", {
        "connection": "b", "socket": "meta", "direction": "from_peer", "type": "P_PING_ACK"}) == 3


def test_each_scrape_reads_the_registry_again() -> None:
    """Values change between scrapes as the live objects change; deleted connections vanish."""
    conn = connected()
    fake = FakeRegistry(conn)
    reg = collector_registry(fake)
    assert sample(reg, "drbdproxy_buffered_bytes", connection="r0") == 4096
    conn.budget.used = 0
    conn.state = "ProxyConnected"
    assert sample(reg, "drbdproxy_buffered_bytes", connection="r0") == 0
    assert sample(reg, "drbdproxy_connection_state", connection="r0", state="ProxyConnected") == 1
    fake.connections.clear()
    assert sample(reg, "drbdproxy_buffered_bytes", connection="r0") is None


def render(root: Any, path: bytes, accept: bytes | None = None) -> tuple[DummyRequest, bytes]:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    if accept is not None:
        request.requestHeaders.setRawHeaders(b"accept", [accept])
    body = getChildForRequest(root, request).render(request)
    return request, body


def test_resource_serves_text_format() -> None:
    """GET /metrics answers the Prometheus text format with its content type."""
    request, body = render(metrics_resource(FakeRegistry(connected())), b"/metrics")
    content_type = request.responseHeaders.getRawHeaders(b"content-type")[0]
    assert content_type.startswith(b"text/plain; version=0.0.4")
    assert b'drbdproxy_memlimit_bytes{connection="r0"} 1.34217728e+08' in body


def test_resource_serves_openmetrics_when_asked() -> None:
    """A scraper asking for OpenMetrics gets it, terminated by # EOF."""
    request, body = render(metrics_resource(FakeRegistry(connected())), b"/metrics",
                           accept=b"application/openmetrics-text; version=1.0.0")
    content_type = request.responseHeaders.getRawHeaders(b"content-type")[0]
    assert content_type.startswith(b"application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_resource_reports_a_failing_collection() -> None:
    """A registry that raises while being read gives a 500, not a half-written page."""

    class Broken:
        def status(self) -> list[Any]:
            raise RuntimeError("torn down")

    request, body = render(metrics_resource(Broken()), b"/metrics")
    assert request.responseCode == 500
    assert b"collecting metrics failed" in body


def test_service_listens_on_loopback_for_a_bare_port() -> None:
    """A bare port number listens on 127.0.0.1 only, and the site serves the metrics resource."""
    reactor = MemoryReactor()
    service = metrics_service("9942", FakeRegistry(), reactor=reactor)
    service.startService()
    port, site, _backlog, interface = reactor.tcpServers[0]
    assert (port, interface) == (9942, "127.0.0.1")
    assert site.resource.getStaticEntity(b"metrics") is not None


def test_service_refuses_a_bad_endpoint() -> None:
    """An endpoint string that does not parse is a MetricsError (a ValueError) at construction."""
    with pytest.raises(MetricsError, match="bad metrics endpoint"):
        metrics_service("nosuchtype:1234", FakeRegistry(), reactor=MemoryReactor())
    with pytest.raises(ValueError):
        metrics_service("", FakeRegistry(), reactor=MemoryReactor())
