"""One proxied DRBD connection: its settings, its listening ports, and the hub its parts meet at.

Life of a connection: ``Connecting`` (no peer proxy), ``ProxyConnected`` (meta and bulk links
up), ``Connected`` (DRBD's data and meta sockets are relayed); :mod:`lifecycle` decides the
moves. Any link failure drops both links, every DRBD socket and everything buffered, and the
proxies dial again with backoff: DRBD reconnects and resyncs, which is always consistent, where
replaying half a stream would not be.

The parts: :class:`session.PeerSession` (the links), :class:`heartbeat.Heartbeat`,
:class:`streamtable.StreamTable` (the DRBD sockets), :class:`admission.LinkAdmission` (who
may link). A :class:`ProxyConnection` is what the links and streams talk to (their owner), and
it passes each event to the part it is for.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort

from drbdproxy.admin.logs import logger
from drbdproxy.relay.compression import Compression
from drbdproxy.link import CloseReason, GoAway, GoAwayReason, StreamKind
from drbdproxy.relay.admission import LinkAdmission, Network, peer_names
from drbdproxy.relay.budget import Budget, BufferFullLog, DrainRate
from drbdproxy.relay.encoder import ChunkEncoder
from drbdproxy.relay.heartbeat import Heartbeat
from drbdproxy.relay.lifecycle import CONNECTED, CONNECTING, PROXY_CONNECTED
from drbdproxy.relay.links import LinkProtocol, LinkServerFactory
from drbdproxy.relay.peerlinks import PeerLinks
from drbdproxy.relay.session import PeerSession
from drbdproxy.relay.sockets import congestion_control, listen_shared
from drbdproxy.relay.inside import InsideFactory
from drbdproxy.relay.streams import DrbdSocket, Stream, StreamLink
from drbdproxy.relay.streamtable import (
    EARLY_DISCARDS,
    MAX_DRBD_CONNECTS,
    MAX_STREAMS_PER_LINK,
    MAX_UNREAD_OPENS,
    StreamTable,
)
from drbdproxy.relay.tls import TlsConfig
from drbdproxy.spec import ConnectionSpec, Settings
from drbdproxy.status import ConnectionStatus, StreamStatus, Traffic

__all__ = ["ProxyConnection", "State", "Network", "peer_names", "EARLY_DISCARDS",
           "MAX_DRBD_CONNECTS", "MAX_STREAMS_PER_LINK", "MAX_UNREAD_OPENS"]

_OUT_OF_SYNC = ("data", "to_peer", "P_OUT_OF_SYNC")


class State:
    """Connection states as DRBD Proxy v4 names them."""

    CONNECTING = CONNECTING
    PROXY_CONNECTED = PROXY_CONNECTED
    CONNECTED = CONNECTED


class ProxyConnection(Service):
    """A named child service of the registry: one DRBD connection through the proxy pair."""

    _log = logger()
    #: Twisted's Service leaves ``name`` unannotated (``name = None``): a connection always has one.
    name: str  # type: ignore[assignment]

    def __init__(self, spec: ConnectionSpec, reactor: Any, encoder: ChunkEncoder,
                 meta_first: bool = True, tls: TlsConfig | None = None,
                 secret: bytes | None = None, link_allow: tuple[Network, ...] = (),
                 rng: random.Random | None = None) -> None:
        self.name = spec.name
        self.spec = spec
        self.meta_first = meta_first
        self.tls = tls
        self.secret = secret
        self._reactor = reactor
        self.encoder = encoder
        self.settings = Settings()
        for option, value in spec.options.items():
            self.settings.apply(option, value)
        self.drain = DrainRate()
        self._fullLog = BufferFullLog(spec.name, reactor, self.drain)
        self.budget = self._fullLog.budget = Budget(self.settings.memlimit, self._fullLog.changed)
        self._bwlimit = self.settings.options.get("bwlimit", 0)
        self.drain.reset(self._bwlimit)
        self._ports: list[IListeningPort] = []
        self.compression = Compression(spec.name, reactor, encoder, self)
        self.compression.reset(self.settings.effective_plugins, None, self._bwlimit)
        authenticated = secret is not None or tls is not None
        self.admission = LinkAdmission(spec.name, spec.connect_peer_outside[0], authenticated,
                                       link_allow, reactor)
        self.table = StreamTable(self, reactor, lambda: self.spec.connect_drbd,
                                 lambda: self.spec.listen_inside, self.admission.refusals)
        self.heartbeat = Heartbeat(reactor, lambda: self.settings.ping_timeout, self._beat)
        self.peer = PeerLinks(self)
        self.links = PeerSession(self.peer, spec, reactor, rng or random.Random(),
                                 self.peer.hello, self.peer.connect, self.table, self.heartbeat,
                                 self.budget, authenticated, lambda: bool(self.running))

    # -- what the parts hold ---------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.links.state

    @property
    def reconnects(self) -> int:
        return self.links.reconnects

    @property
    def meta(self) -> LinkProtocol | None:
        return self.links.meta

    @property
    def bulk(self) -> LinkProtocol | None:
        return self.links.bulk

    # -- settings --------------------------------------------------------------------------------
    def settingsChanged(self) -> None:
        """Apply settings live: memlimit at once, a new codec from the next chunk on, link-cc,
        bwlimit (and the drain rate is measured afresh under it)."""
        self.budget.setLimit(self.settings.memlimit)
        self.peer.retune()
        bwlimit = self.settings.options.get("bwlimit", 0)
        if bwlimit != self._bwlimit:
            self._bwlimit = bwlimit
            self.drain.reset(bwlimit)
        self._chooseCodec()
        self._applyBwlimit()

    def _chooseCodec(self) -> None:
        # Within what this peer can decompress; auto learns the link afresh.
        accepted = self.bulk.accepted if self.bulk is not None else None
        self.compression.reset(self.settings.effective_plugins, accepted, self._bwlimit)

    # -- what auto compression looks at (LinkProbe) ----------------------------------------------
    def linkHeld(self) -> bool:
        writer = self.bulk.writer if self.bulk is not None else None
        return writer is not None and writer.held

    def readsPaused(self) -> bool:
        return not self.budget.reading

    def linkSent(self) -> int:
        writer = self.bulk.writer if self.bulk is not None else None
        return 0 if writer is None else writer.sent

    def _applyBwlimit(self) -> None:
        # Only the bulk link is limited: meta traffic and heartbeats never wait for tokens.
        if self.bulk is not None and self.bulk.writer is not None:
            self.bulk.writer.limitRate(self._reactor, self.settings.options.get("bwlimit", 0))

    def max_chunk(self, link: StreamLink) -> int:
        accepted = link.accepted
        return accepted.max_data_chunk if accepted is not None else 1 << 16

    # -- service lifecycle -----------------------------------------------------------------------
    def bind(self) -> None:
        """Listen on the inside and outside addresses; raises if either is unavailable."""
        try:
            host, port = self.spec.listen_inside
            self._ports.append(listen_shared(self._reactor, port, InsideFactory(self), host))
            host, port = self.spec.listen_outside
            factory: Any = LinkServerFactory(self.peer)
            if self.tls is not None:
                factory = self.tls.server(factory)
            self._ports.append(self._reactor.listenTCP(port, factory, interface=host))
        except Exception:
            self.unbind()
            raise

    def unbind(self) -> None:
        for port in self._ports:
            port.stopListening()
        self._ports.clear()

    def startService(self) -> None:
        super().startService()
        self.links.machine.start()

    def stopService(self) -> Deferred[Any]:
        """Say GOAWAY on both links and close them; fires once they are closed (within
        ping-timeout whatever the peer does)."""
        closed = [link.whenClosed() for link in (self.meta, self.bulk) if link is not None]
        self.links.machine.stop(GoAway(GoAwayReason.CONNECTION_REMOVED, ""))
        self.unbind()
        self.admission.refusals.stop()
        self.peer.stop()
        self.compression.stop()
        self._fullLog.stop()
        self.table.stop()
        self._log.info("connection {name} removed", name=self.name)
        super().stopService()
        return DeferredList(closed).addCallback(lambda _: None)

    @property
    def clock(self) -> Any:
        return self._reactor

    @property
    def close_timeout(self) -> float:
        """Seconds a closing DRBD socket or link may take to flush before it is aborted."""
        return self.settings.ping_timeout

    @property
    def authenticated(self) -> bool:
        """Links prove who they are (a link secret or mutual TLS): they may come from anywhere."""
        return self.admission.authenticated

    def bulkLinkUp(self, link: LinkProtocol) -> None:
        self.links.machine.bulkUp(link)
        if self.bulk is link:  # adopted, not a stray one dropped
            self.drain.reset(self._bwlimit)  # a new link: its rate is measured afresh
            self._chooseCodec()
            self._applyBwlimit()

    def _beat(self, now: float) -> None:
        self._checkPausedDrbd()
        self.peer.growSendBuffer()
        if self.bulk is not None and self.bulk.writer is not None:
            busy = self.bulk.writer.queued > 0
            self.drain.sample(now, self.bulk.writer.sent, busy)

    def _checkPausedDrbd(self) -> None:
        if not self.budget.reading:
            self.table.checkPausedDrbd()

    # -- streams (StreamOwner) -------------------------------------------------------------------
    def acceptsDrbd(self) -> bool:
        return self.state != State.CONNECTING

    def openStream(self, kind: StreamKind, sock: DrbdSocket) -> Stream | None:
        """DRBD opened a socket to our inside address: announce it to the peer proxy."""
        meta = kind is StreamKind.META and self.meta_first
        link = self.meta if meta else self.bulk
        return None if link is None else self.table.open(link, kind, sock)

    def tellPeerClosed(self, stream: Stream, reason: CloseReason, message: str = "") -> None:
        self.table.tellPeerClosed(stream, self.meta, reason, message)

    def streamAttached(self, stream: Stream) -> None:
        self.table.attached()
        self._log.info("DRBD {kind} socket {peer} of {name} relayed as stream {sid}",
                       kind=stream.name, peer=stream.peer, name=self.name, sid=stream.label)
        if self.table.relaying():
            self.links.machine.drbdRelayed()

    def streamGone(self, stream: Stream) -> None:
        self.table.gone(stream)
        if stream.kind is StreamKind.META:
            self._checkPausedDrbd()
        if not self.table.relaying():
            self.links.machine.drbdLost()

    def traffic(self) -> Traffic:
        """Only the byte counters, for the rates sampled every second."""
        return self.table.traffic()

    # -- counters --------------------------------------------------------------------------------
    def status(self) -> ConnectionStatus:
        """This connection as it is now, for the control protocol, metrics and the manhole."""
        budget, table, meta = self.budget, self.table, self.meta
        counters, live = table.counters, list(table.streams.values())
        to_peer, from_peer = counters.discardedBytes(live)
        streams = sorted(live, key=lambda s: (s.kind, s.sid))
        packets = counters.packet_counts(live)  # walked once: out_of_sync is one of them
        return ConnectionStatus(
            name=self.name, spec=self.spec, state=self.state, memlimit=budget.limit,
            bwlimit=self.settings.options.get("bwlimit", 0), codec=self.compression.describe(),
            buffered=budget.used, buffered_peak=budget.peak, reads_paused=budget.paused,
            read_pauses=budget.pauses, reconnects=self.reconnects, link_rtt_ms=self.heartbeat.rtt_ms,
            drain_rate=self.drain.rate, drain_seconds=self.drain.drain_seconds(budget.used),
            out_of_sync=packets[_OUT_OF_SYNC], dropped_after_close=counters.dropped_after_close,
            discarded_to_peer=to_peer, discarded_from_peer=from_peer, totals=counters.totals(live),
            packets=dict(packets),
            link_cc=None if meta is None or meta.transport is None else congestion_control(
                meta.transport), last_error=self.links.last_error, retry_in=self.links.retry_in,
            streams=tuple(StreamStatus(
                kind=s.name, sid=s.sid, label=s.label, peer=s.peer, to_peer=s.to_peer,
                to_peer_wire=s.to_peer_wire, from_peer=s.from_peer,
                from_peer_wire=s.from_peer_wire, opaque=s.opaque,
                packets_to_peer=dict(s.scan_to_peer.counts),
                packets_from_peer=dict(s.scan_from_peer.counts)) for s in streams),
        )
