"""Prometheus text exposition at ``/metrics``, read from the connection registry at each scrape.

A custom collector (no global mutable gauges): every scrape renders ``registry.status()``, taken
on the reactor thread, so values are always those of that moment and a removed connection simply
disappears. Metrics, all labelled ``connection``:

- ``drbdproxy_connection_state{state}`` gauge: 1 for the current state, 0 for the others
- ``drbdproxy_buffered_bytes`` gauge: DRBD data buffered now
- ``drbdproxy_memlimit_bytes`` gauge: the connection's memlimit
- ``drbdproxy_buffered_peak_bytes`` gauge: highest buffered since the connection was added
- ``drbdproxy_drbd_reads_paused`` gauge: 1 while DRBD reads are paused at memlimit
- ``drbdproxy_drbd_read_pauses_total`` counter: times DRBD reads were paused
- ``drbdproxy_drbd_sockets`` gauge: live DRBD sockets relayed
- ``drbdproxy_reconnects_total`` counter: proxy-to-proxy link re-establishments
- ``drbdproxy_discarded_bytes_total{direction}`` counter: DRBD bytes thrown away because their
  socket or session closed (``to_peer``: read but never sent; ``from_peer``: received but never
  written to DRBD)
- ``drbdproxy_codec{codec}`` gauge: 1, labelled with what compresses now (``lz4-acceleration-1``,
  or plugin auto's current choice, ``auto:zstd-3``)
- ``drbdproxy_link_rtt_seconds`` gauge: last heartbeat round trip (absent before the first)
- ``drbdproxy_bytes_total{socket,direction}`` counter: DRBD bytes, uncompressed
- ``drbdproxy_wire_bytes_total{socket,direction}`` counter: the same on the proxy-to-proxy link
- ``drbdproxy_compression_ratio{socket,direction}`` gauge: bytes / wire bytes (absent at 0 wire)
- ``drbdproxy_packets_total{socket,direction,type}`` counter: DRBD packets per type

``socket`` is the DRBD socket kind (``data``, ``meta``, ``opaque``), ``direction`` ``to_peer`` or
``from_peer``. Counters restart from 0 when a connection is deleted and added again, which
Prometheus treats as a counter reset. ``drbdproxy_build_info{version}`` is always 1.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.application import strports
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from drbdproxy import __version__
from drbdproxy.relay.lifecycle import STATES
from drbdproxy.status import ConnectionStatus, Totals
from drbdproxy.admin.endpoints import check_endpoint as _check_endpoint

DEFAULT_ENDPOINT = "tcp:9942:interface=127.0.0.1"
DIRECTIONS = ("to_peer", "from_peer")

_log = Logger()
_Family = GaugeMetricFamily | CounterMetricFamily


class MetricsError(ValueError):
    """The metrics endpoint cannot be used (it does not parse)."""


def _families() -> dict[str, _Family]:
    c, g = CounterMetricFamily, GaugeMetricFamily
    conn = ["connection"]
    sock = ["connection", "socket", "direction"]
    return {f.name: f for f in (
        g("drbdproxy_connection_state", "Connection state: 1 for the current one",
          labels=["connection", "state"]),
        g("drbdproxy_buffered_bytes", "DRBD data buffered now", labels=conn),
        g("drbdproxy_memlimit_bytes", "Buffer limit (memlimit)", labels=conn),
        g("drbdproxy_buffered_peak_bytes", "Highest buffered since added", labels=conn),
        g("drbdproxy_drbd_reads_paused", "1 while DRBD reads are paused at memlimit",
          labels=conn),
        c("drbdproxy_drbd_read_pauses", "Times DRBD reads were paused at memlimit",
          labels=conn),
        g("drbdproxy_drbd_sockets", "Live DRBD sockets relayed", labels=conn),
        c("drbdproxy_reconnects", "Proxy-to-proxy link re-establishments", labels=conn),
        c("drbdproxy_discarded_bytes", "DRBD bytes discarded because their socket closed",
          labels=["connection", "direction"]),
        g("drbdproxy_codec", "What compresses the connection's data now: 1",
          labels=["connection", "codec"]),
        g("drbdproxy_link_rtt_seconds", "Last heartbeat round trip to the peer proxy",
          labels=conn),
        c("drbdproxy_bytes", "DRBD bytes relayed, uncompressed", labels=sock),
        c("drbdproxy_wire_bytes", "DRBD bytes relayed, as sent on the proxy link",
          labels=sock),
        g("drbdproxy_compression_ratio", "Uncompressed bytes per wire byte", labels=sock),
        c("drbdproxy_packets", "DRBD packets relayed per packet type",
          labels=sock + ["type"]),
    )}


class RegistryCollector(Collector):
    """Reads a ``ConnectionRegistry`` (anything with ``status()``) at each scrape."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        families = _families()
        for status in self._registry.status():
            _add_connection(families, status)
        info = GaugeMetricFamily("drbdproxy_build_info", "drbdproxy version", labels=["version"])
        info.add_metric([__version__], 1)
        return [info, *families.values()]


def _add_connection(f: dict[str, _Family], c: ConnectionStatus) -> None:
    name = c.name
    for state in _states(c.state):
        f["drbdproxy_connection_state"].add_metric([name, state], int(state == c.state))
    f["drbdproxy_buffered_bytes"].add_metric([name], c.buffered)
    f["drbdproxy_memlimit_bytes"].add_metric([name], c.memlimit)
    f["drbdproxy_buffered_peak_bytes"].add_metric([name], c.buffered_peak)
    f["drbdproxy_drbd_reads_paused"].add_metric([name], int(c.reads_paused))
    f["drbdproxy_drbd_read_pauses"].add_metric([name], c.read_pauses)
    f["drbdproxy_drbd_sockets"].add_metric([name], len(c.streams))
    f["drbdproxy_reconnects"].add_metric([name], c.reconnects)
    f["drbdproxy_codec"].add_metric([name, c.codec.replace(" ", "-")], 1)
    for direction, count in zip(DIRECTIONS, (c.discarded_to_peer, c.discarded_from_peer)):
        f["drbdproxy_discarded_bytes"].add_metric([name, direction], count)
    if c.link_rtt_ms is not None:
        f["drbdproxy_link_rtt_seconds"].add_metric([name], c.link_rtt_ms / 1000)
    _add_totals(f, name, c.totals)
    for (kind, direction, packet), count in sorted(c.packets.items()):
        f["drbdproxy_packets"].add_metric([name, kind, direction, packet], count)


def _states(current: str) -> Iterator[str]:
    yield from STATES
    if current not in STATES:
        yield current  # a state added later still shows as 1


def _add_totals(f: dict[str, _Family], name: str, totals: Totals) -> None:
    for kind, counters in sorted(totals.items()):
        for direction in DIRECTIONS:
            raw = counters.get(direction, 0)
            wire = counters.get(f"{direction}_wire", 0)
            labels = [name, kind, direction]
            f["drbdproxy_bytes"].add_metric(labels, raw)
            f["drbdproxy_wire_bytes"].add_metric(labels, wire)
            if wire:
                f["drbdproxy_compression_ratio"].add_metric(labels, raw / wire)


def collector_registry(registry: Any) -> CollectorRegistry:
    """A private prometheus_client registry holding only the drbdproxy collector."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(RegistryCollector(registry))
    return collectors


class MetricsPage(Resource):
    """``/metrics``: Prometheus text format, or OpenMetrics when the scraper asks for it."""

    isLeaf = True

    def __init__(self, collectors: CollectorRegistry) -> None:
        super().__init__()
        self._collectors = collectors

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        try:
            body = encoder(self._collectors)
        except Exception:
            _log.failure("collecting metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"collecting metrics failed; see the drbd-proxy log\n"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class _Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return b'<html><body><a href="/metrics">metrics</a></body></html>\n'


def metrics_resource(registry: Any) -> Resource:
    """The web root: ``/metrics`` serves the registry's metrics, ``/`` links to it."""
    root = _Index()
    root.putChild(b"metrics", MetricsPage(collector_registry(registry)))
    return root


class _QuietSite(Site):
    """A Site that logs scrapes at debug level instead of one access-log line every scrape."""

    noisy = False
    description = ""

    def startFactory(self) -> None:
        super().startFactory()
        _log.info("Prometheus metrics at /metrics on {endpoint}", endpoint=self.description)

    def log(self, request: http.Request) -> None:
        _log.debug("metrics scrape {method} {uri} from {peer}: {code}",
                   method=request.method, uri=request.uri,
                   peer=request.getClientAddress(), code=request.code)


def check_endpoint(endpoint: str, reactor: Any = None) -> str:
    """The endpoint description, after checking that it parses (it does not listen).

    :raises MetricsError: an empty or unparsable endpoint string.
    """
    return _check_endpoint(endpoint, "metrics", DEFAULT_ENDPOINT, MetricsError, reactor)


def metrics_service(endpoint: str, registry: Any, reactor: Any = None) -> IService:
    """An HTTP service on ``endpoint`` serving ``/metrics`` for ``registry``.

    :param endpoint: Twisted server endpoint string (``DEFAULT_ENDPOINT``); a bare port number
        means that port on 127.0.0.1.
    :raises MetricsError: an empty or unparsable endpoint. A port in use raises when started.
    """
    if reactor is None:
        from twisted.internet import reactor
    description = check_endpoint(endpoint, reactor)
    site = _QuietSite(metrics_resource(registry))
    site.description = description
    return strports.service(description, site, reactor=reactor)
