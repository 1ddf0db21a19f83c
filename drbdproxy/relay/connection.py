"""One proxied DRBD connection: settings, state, the two links to the peer proxy, and streams.

Life of a connection: ``Connecting`` (no peer proxy), ``ProxyConnected`` (control and bulk links
up), ``Connected`` (DRBD's data and meta sockets are relayed). Any link failure drops both links,
every DRBD socket and everything buffered, and the dialling side tries again with backoff: DRBD
reconnects and resyncs, which is always consistent, where replaying half a stream would not be.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections import Counter
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.task import LoopingCall
from twisted.protocols.tls import TLSMemoryBIOProtocol

from drbdproxy.admin.logs import Summarised, logger
from drbdproxy.codecs import Codec, CodecId, codec_for
from drbdproxy.spec import ConnectionSpec, Settings
from drbdproxy.status import ConnectionStatus, StreamStatus
from drbdproxy.link import (
    Accepted,
    ClientHandshake,
    Close,
    CloseReason,
    Data,
    Discard,
    ErrorFrame,
    Frame,
    GoAway,
    GoAwayReason,
    LinkProtocolError,
    ErrorCode,
    LinkRole,
    Open,
    Ping,
    Pong,
    Rejected,
    RejectReason,
    ServerHandshake,
    Side,
    StreamIdAllocator,
    StreamKind,
    new_session,
)
from drbdproxy.relay.budget import Budget, DrainRate
from drbdproxy.relay.encoder import ChunkEncoder
from drbdproxy.relay.tls import TlsConfig, check_peer
from drbdproxy.relay.links import LinkClientFactory, LinkProtocol, LinkServerFactory
from drbdproxy.relay.sockets import connect_from, listen_shared
from drbdproxy.relay.streams import (
    DrbdConnectFactory,
    DrbdSocket,
    InsideFactory,
    Stream,
    StreamLink,
    format_peer,
)

#: Every codec this proxy can decompress, announced in the handshake.
DECODABLE = tuple(int(c) for c in CodecId)
_BACKOFF_MIN, _BACKOFF_MAX = 0.2, 10.0
#: Streams one link may carry at once, and connects to our DRBD in progress at once: DRBD uses
#: two sockets per path, and a few more for a moment while it connects. More is a peer gone
#: wrong (or not a peer at all), and is refused.
MAX_STREAMS_PER_LINK = 32
MAX_DRBD_CONNECTS = 8
#: OPENs a peer may send while it does not read our link (each one gets an answer: a CLOSE
#: when refused or when our DRBD refuses the connect); more is a flood, and ends the link.
MAX_UNREAD_OPENS = 64
#: DISCARDs remembered for streams whose OPEN has not arrived yet (it may still be on its way on
#: the bulk link, behind data, while the DISCARD came on the control link).
EARLY_DISCARDS = 256


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peer_names(name: str) -> frozenset[str]:
    """The names the peer proxy may give this connection in its HELLO: ``name`` itself, and
    every reading of it as drbdadm's RESOURCE-PEER-SELF with PEER and SELF swapped (host names
    may hold dashes too, so every split counts)."""
    names = {name}
    dashes = [i for i, c in enumerate(name) if c == "-"]
    for n, a in enumerate(dashes):
        for b in dashes[n + 1:]:
            resource, peer, own = name[:a], name[a + 1:b], name[b + 1:]
            if resource and peer and own:
                names.add(f"{resource}-{own}-{peer}")
    return frozenset(names)


class State:
    """Connection states as DRBD Proxy v4 names them."""

    CONNECTING = "Connecting"
    PROXY_CONNECTED = "ProxyConnected"
    CONNECTED = "Connected"


class ProxyConnection(Service):
    """A named child service of the registry: one DRBD connection through the proxy pair."""

    _log = logger()
    #: Twisted's Service leaves ``name`` unannotated (``name = None``): a connection always has one.
    name: str  # type: ignore[assignment]

    def __init__(self, spec: ConnectionSpec, reactor: Any, encoder: ChunkEncoder,
                 meta_first: bool = True, tls: TlsConfig | None = None,
                 secret: bytes | None = None, link_allow: tuple[Network, ...] = ()) -> None:
        self.name = spec.name
        self._peer_names = peer_names(spec.name)
        self._link_allow = link_allow
        self.meta_first = meta_first
        self._tls = tls
        self._secret = secret
        self.spec = spec
        self._reactor = reactor
        self.encoder = encoder
        self.settings = Settings()
        for option, value in spec.options.items():
            self.settings.apply(option, value)
        self._last_buffer_event = float("-inf")
        self._buffer_full_reported = False
        self.budget = Budget(self.settings.memlimit, self._bufferFull)
        self.drain = DrainRate()
        self._bwlimit = self.settings.options.get("bwlimit", 0)
        self.drain.reset(self._bwlimit)
        self.state = State.CONNECTING
        self.reconnects = 0
        #: Raw bytes of DATA frames that came for a stream already gone here (its DRBD socket
        #: closed first): dropped, so the peer's to_peer bytes are our from_peer plus these.
        self.dropped_after_close = 0
        #: Raw bytes thrown away because their DRBD socket or the whole session closed: read
        #: from our DRBD but never sent, and received for our DRBD but never written to it
        #: (dropped_after_close included).
        self.discarded_to_peer = 0
        self.discarded_from_peer = 0
        self.link_rtt_ms: float | None = None
        #: Our control link being dialled, until it is up or gone. Both proxies dial (neither
        #: can tell from its addresses whether the other can reach it, behind NAT); when the
        #: dials cross, the greater session id wins on both sides (docs/link-protocol.md §4.6).
        self._outgoing: LinkClientFactory | None = None
        self.control: LinkProtocol | None = None
        self.bulk: LinkProtocol | None = None
        self._session: bytes | None = None
        self._ids: dict[LinkProtocol, StreamIdAllocator] = {}
        #: Per link: the highest stream id the peer has opened, and the ids it discarded
        #: before their OPEN arrived.
        self._peer_last: dict[LinkProtocol, int] = {}
        self._unread_opens: dict[LinkProtocol, int] = {}
        self._early_discards: dict[LinkProtocol, set[int]] = {}
        self.streams: dict[tuple[StreamLink, int], Stream] = {}
        self._ports: list[IListeningPort] = []
        self._retry: IDelayedCall | None = None
        self._backoff = _BACKOFF_MIN
        self._heartbeat: LoopingCall | None = None
        self._last_rx = 0.0
        #: Since when the control link's transport has been refusing our writes.
        self._unread_since: float | None = None
        self._refusals = Summarised(self._log, reactor)
        self._cc_refused = False
        self._dialFailures = Summarised(self._log, reactor)
        self._ping_token = 0
        self._codec: Codec | None = None
        #: Byte counters of DRBD sockets that have closed, per kind (data, meta, opaque).
        self.closed_totals: dict[str, dict[str, int]] = {}
        self.closed_packets: Counter[tuple[str, str, str]] = Counter()

    # -- settings --------------------------------------------------------------------------------
    @property
    def codec(self) -> Codec:
        if self._codec is None:
            codec = codec_for(self.settings.effective_plugins)
            accepted = self.bulk.accepted if self.bulk is not None else None
            if accepted is not None and int(codec.id) not in accepted.peer_codecs:
                # The handshake told us what the peer can decompress: never send it more.
                self._log.warn("peer proxy of {name} cannot decompress {codec}; sending raw",
                               name=self.name, codec=codec.describe())
                codec = codec_for([])
            self._codec = codec
        return self._codec

    def settingsChanged(self) -> None:
        """Apply settings live: memlimit at once, a new codec from the next chunk on, bwlimit
        (and the drain rate is measured afresh under it)."""
        self._codec = None
        self.budget.setLimit(self.settings.memlimit)
        self._cc_refused = False
        for link in (self.control, self.bulk):
            if link is not None and link.transport is not None:
                self._setCongestionControl(_handle(link.transport))
        bwlimit = self.settings.options.get("bwlimit", 0)
        if bwlimit != self._bwlimit:
            self._bwlimit = bwlimit
            self.drain.reset(bwlimit)
        self._applyBwlimit()

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
            factory: Any = LinkServerFactory(self)
            if self._tls is not None:
                factory = self._tls.server(factory)
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
        self._scheduleDial(0)

    def stopService(self) -> Deferred[Any]:
        """Say GOAWAY on both links and close them; fires once they are closed (within
        ping-timeout whatever the peer does)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        closed = [link.whenClosed() for link in (self.control, self.bulk) if link is not None]
        self._teardown("connection removed", redial=False,
                       goaway=GoAway(GoAwayReason.CONNECTION_REMOVED, ""))
        self.unbind()
        self._refusals.stop()
        self._dialFailures.stop()
        self._log.info("connection {name} removed", name=self.name)
        super().stopService()
        return DeferredList(closed).addCallback(lambda _: None)

    # -- dialling the peer proxy -----------------------------------------------------------------
    def _scheduleDial(self, delay: float | None = None) -> None:
        if not self.running or self.control is not None or self._outgoing is not None:
            return
        if self._retry is not None and self._retry.active():
            return
        if delay is None:
            delay = self._backoff * random.uniform(0.8, 1.2)
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        self._retry = self._reactor.callLater(delay, self._dial, LinkRole.CONTROL)

    def _dial(self, role: LinkRole) -> None:
        if role is LinkRole.CONTROL:
            if self.control is not None or self._outgoing is not None:
                return  # the peer's link came up meanwhile, or ours is on its way
            self._session = new_session()
        assert self._session is not None
        handshake = ClientHandshake(self.name, role, self._session, DECODABLE, secret=self._secret)
        host, port = self.spec.connect_peer_outside
        factory = LinkClientFactory(self, handshake)
        wrapped: Any = factory if self._tls is None else self._tls.client(host, factory)
        # From our outside address: the peer admits links only from the address it knows us by,
        # and the route's default source may be another of this host's addresses.
        own = self.spec.listen_outside[0]
        source = (own, 0) if (":" in own) == (":" in host) else None
        factory.connector = self._reactor.connectTCP(host, port, wrapped, timeout=10,
                                                     bindAddress=source)
        if role is LinkRole.CONTROL:
            self._outgoing = factory

    def dialFailed(self, factory: LinkClientFactory, role: LinkRole, message: str) -> None:
        if role is LinkRole.CONTROL and factory is not self._outgoing:
            return  # abandoned: the peer's link won
        self._log.debug("dialling the {role} link of {name} failed: {message}",
                        role=role.name.lower(), name=self.name, message=message)
        if role is LinkRole.CONTROL:
            self._outgoing = None
        self._teardown(f"dial failed: {message}")

    def _abandonOutgoing(self, why: str) -> None:
        """Give up our control link being dialled (the peer's won, or we are going down)."""
        factory, self._outgoing = self._outgoing, None
        if factory is None:
            return
        if factory.link is not None:
            factory.link.abandon(why)
        elif factory.connector is not None:
            factory.connector.disconnect()

    @property
    def authenticated(self) -> bool:
        """Links prove who they are (a link secret or mutual TLS): they may come from anywhere."""
        return self._secret is not None or self._tls is not None

    def admitLink(self, source: str) -> bool:
        """Whether a TCP connection to our outside address from ``source`` (an IP) may start a
        handshake. Without authentication, only the peer proxy's address (or --link-allow) may."""
        if self.authenticated:
            return True
        ip = _ip(source)
        if ip is not None and (ip == _ip(self.spec.connect_peer_outside[0])
                               or any(ip in net for net in self._link_allow)):
            return True
        self._refusals.warn("refused a link of {name} from {source}: not the peer proxy's"
                            " address {peer} (links are not authenticated: use --link-secret or"
                            " TLS, or --link-allow for an address behind NAT)", name=self.name,
                            source=source, peer=self.spec.connect_peer_outside[0])
        return False

    def serverHandshake(self, source: str = "-") -> ServerHandshake:
        """The handshake of a link that ``source`` dialled."""
        def lookup(name: str, role: LinkRole, session: bytes) -> RejectReason | None:
            reason = self._lookup(name, role, session)
            if reason is not None:
                self._refusals.warn("refused a {role} link of {name} from {source}: {why}",
                                    role=role.name.lower(), name=self.name, source=source,
                                    why=_REFUSALS.get(reason, reason.name))
            return reason
        return ServerHandshake(lookup, DECODABLE, secret=self._secret)

    def _lookup(self, name: str, role: LinkRole, session: bytes) -> RejectReason | None:
        if name not in self._peer_names:
            return RejectReason.UNKNOWN_CONNECTION
        if role is LinkRole.CONTROL:
            if self.control is not None:
                # A restarted peer's new link replaces a live one only once that is silent,
                # or if the newcomer proved who it is (and is no crossed dial we already won).
                if self._controlSilent():
                    return None
                if self.authenticated and self._session is not None and session > self._session:
                    return None
                return RejectReason.DUPLICATE_CONTROL
            if self._outgoing is not None and self._session is not None and self._session > session:
                return RejectReason.DUPLICATE_CONTROL  # crossed dials: ours wins
            return None
        if self.control is None or session != self._session:
            return RejectReason.NO_SUCH_SESSION
        return RejectReason.BUSY if self.bulk is not None else None

    def _controlSilent(self) -> bool:
        return self._reactor.seconds() - self._last_rx > self.settings.ping_timeout

    # -- link events (LinkOwner) -----------------------------------------------------------------
    @property
    def clock(self) -> Any:
        return self._reactor

    @property
    def close_timeout(self) -> float:
        """Seconds a closing DRBD socket or link may take to flush before it is aborted."""
        return self.settings.ping_timeout

    def checkPeerCertificate(self, transport: Any, side: Side) -> str | None:
        """The dialler's TLS already checked the name; the accepting side checks it here."""
        if self._tls is None or side is Side.CLIENT:
            return None
        return check_peer(transport, self.spec.connect_peer_outside[0])

    def tuneLinkSocket(self, transport: Any) -> None:
        """sndbuf-size and rcvbuf-size apply to each new link socket (so: on reconnect), and
        link-cc to each link socket, live."""
        handle = _handle(transport)
        for option, level in (("sndbuf-size", socket.SO_SNDBUF), ("rcvbuf-size", socket.SO_RCVBUF)):
            size = self.settings.options.get(option, 0)
            if size > 0:
                handle.setsockopt(socket.SOL_SOCKET, level, size)
        self._setCongestionControl(handle)

    def _setCongestionControl(self, handle: Any) -> None:
        wanted = self.settings.link_cc
        if wanted == "system":
            return
        try:
            handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, wanted.encode())
        except OSError as e:
            if not self._cc_refused:
                self._cc_refused = True
                # Asked for, it matters; bbr by default, where the kernel lacks it, less so.
                log = self._log.warn if "link-cc" in self.settings.options else self._log.info
                log("link sockets of {name} keep the system's congestion control: {cc} is not"
                    " available ({error}; modprobe tcp_{cc})", name=self.name, cc=wanted,
                    error=e.strerror)

    @property
    def link_cc(self) -> str | None:
        """The congestion control the control link's socket runs, as the kernel says."""
        link = self.control
        if link is None or link.transport is None:
            return None
        try:
            name = _handle(link.transport).getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION,
                                                      16)
        except (AttributeError, OSError):
            return None
        return bytes(name).split(b"\0", 1)[0].decode("ascii", "replace")

    def linkBudget(self) -> Budget:
        return self.budget

    def linkActivity(self, link: LinkProtocol) -> None:
        if link is self.control:
            self._last_rx = self._reactor.seconds()

    def linkUp(self, link: LinkProtocol, accepted: Accepted) -> None:
        if accepted.role is LinkRole.CONTROL:
            if link.side is Side.CLIENT:
                self._outgoing = None  # ours is up
            else:
                self._abandonOutgoing("crossed dials: the peer proxy's link won")
            if self.control is not None:
                self._log.warn("a new control link of {name} from {source} replaces the live"
                               " one", name=self.name, source=link.source)
                self._teardown("the peer proxy opened a new control link", redial=False)
            self.control = link
            self._session = accepted.session
            self._last_rx = self._reactor.seconds()
            if link.side is Side.CLIENT:
                self._dial(LinkRole.BULK)
        else:
            self.bulk = link
            self._codec = None  # choose again, within what this peer can decompress
            self.drain.reset(self._bwlimit)  # a new link: its rate is measured afresh
            self._applyBwlimit()
        self._ids[link] = StreamIdAllocator(link.side)
        self._peer_last[link] = 0
        self._early_discards[link] = set()
        if self.control is not None and self.bulk is not None:
            self._proxyConnected()

    def _proxyConnected(self) -> None:
        self._backoff = _BACKOFF_MIN
        self._setState(State.PROXY_CONNECTED, "links up")
        interval = min(max(self.settings.ping_timeout / 4, 0.05), 2.0)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(interval, now=True)

    def linkRefused(self, link: LinkProtocol, rejected: Rejected) -> None:
        if link.side is Side.SERVER:
            return  # we refused it: the lookup said why
        if rejected.reason is RejectReason.DUPLICATE_CONTROL:
            self._log.info("crossed dials on {name}: the peer proxy keeps its own link",
                           name=self.name)
            return
        self._dialFailures.warn("the peer proxy refused a link of {name}: {message}",
                                name=self.name, message=rejected.message)

    def linkDown(self, link: LinkProtocol, reason: str) -> None:
        if link is self.control or link is self.bulk:
            self._teardown(f"{link!r} lost: {reason}")
            return
        if self._outgoing is not None and self._outgoing.link is link:
            self._outgoing = None
        if link.accepted is None and link.rejected is None and not link.abandoned:
            # Refused TLS certificates, garbage, a peer of another version: say why (what a
            # remote host repeats is summarised). Refusals of our dials said so already.
            refusals = self._refusals if link.side is Side.SERVER else self._dialFailures
            refusals.warn("a link of {name} {way} {source} failed before its handshake"
                          " completed: {reason}", name=self.name, source=link.source,
                          way="from" if link.side is Side.SERVER else "dialled to",
                          reason=reason)
        self._scheduleDial()

    def linkFrame(self, link: LinkProtocol, frame: Frame) -> None:
        if isinstance(frame, Data):
            stream = self.streams.get((link, frame.stream))
            if stream is not None:
                stream.fromPeer(frame)
            else:
                self._checkKnownStream(link, frame.stream)
                self.dropped_after_close += frame.raw_length
                self.discarded_from_peer += frame.raw_length
        elif isinstance(frame, Open):
            self._peerOpened(link, frame)
        elif isinstance(frame, Close):
            stream = self.streams.pop((link, frame.stream), None)
            if stream is not None:
                stream.remoteClosed(frame.reason, frame.message)
        elif isinstance(frame, Discard):
            self._peerDiscarded(frame)
        elif isinstance(frame, Ping):
            assert link.writer is not None  # made in connectionMade, before any frame
            link.writer.answer(frame.pong().encode())
        elif isinstance(frame, Pong):
            self.link_rtt_ms = (time.monotonic_ns() - frame.sent_ns) / 1e6
        elif isinstance(frame, GoAway):
            code = frame.code
            what = code.name.lower().replace("_", " ") if isinstance(code, GoAwayReason) \
                else f"reason {code}"
            self._teardown(f"the peer proxy said GOAWAY: {what}"
                           + (f" ({frame.message})" if frame.message else ""))
        elif isinstance(frame, ErrorFrame):
            self._teardown(f"peer proxy: {frame.message or 'ERROR'}")

    def _peerDiscarded(self, frame: Discard) -> None:
        """The peer's DRBD socket of a stream on either link is gone: so is ours, at once."""
        link = self.control if frame.role is LinkRole.CONTROL else self.bulk
        if link is None:
            return
        stream = self.streams.pop((link, frame.target), None)
        if stream is not None:
            stream.remoteClosed(frame.reason)
            return
        peers = (frame.target & 1) == (0 if link.side is Side.CLIENT else 1)
        if peers and frame.target > self._peer_last[link]:
            # Its OPEN is still on its way on the other link: drop the stream when it comes.
            early = self._early_discards[link]
            if len(early) >= EARLY_DISCARDS:
                raise LinkProtocolError(ErrorCode.STREAM_ERROR,
                                        f"more than {EARLY_DISCARDS} DISCARDs ahead of their OPEN")
            early.add(frame.target)
            return
        self._checkKnownStream(link, frame.target)

    def _checkKnownStream(self, link: LinkProtocol, sid: int) -> None:
        """DATA for a stream already closed is dropped; for one never opened it is a violation."""
        ids = self._ids.get(link)
        mine = (sid & 1) == (1 if link.side is Side.CLIENT else 0)
        if mine and (ids is None or sid > ids.last):
            raise LinkProtocolError(ErrorCode.STREAM_ERROR, f"DATA for stream {sid} never opened")

    # -- heartbeats ------------------------------------------------------------------------------
    def _beat(self) -> None:
        control = self.control
        if control is None or control.writer is None:
            return
        now = self._reactor.seconds()
        paused = control.reading is not None and control.reading.paused
        if not paused and now - self._last_rx > self.settings.ping_timeout:
            control.fail("peer proxy timed out (ping-timeout)")
            return
        if not control.writer.paused:
            self._unread_since = None
        elif self._unread_since is None:
            self._unread_since = now
        elif now - self._unread_since > self.settings.ping_timeout:
            # It sends (PINGs, perhaps a flood of them) but reads nothing of ours.
            control.fail("peer proxy stopped reading the control link (ping-timeout)")
            return
        self._ping_token += 1
        control.writer.writeNow(Ping(self._ping_token, time.monotonic_ns()).encode())
        self._checkPausedDrbd()
        if self.bulk is not None and self.bulk.writer is not None:
            busy = self.bulk.writer.queued > 0
            self.drain.sample(now, self.bulk.writer.sent, busy)

    def _checkPausedDrbd(self) -> None:
        """Reads from DRBD are paused: find the DRBD sockets DRBD has dropped meanwhile."""
        if self.budget.reading:
            return
        streams = list(self.streams.values())
        meta = any(s.kind is StreamKind.META and not s.closed for s in streams)
        for stream in streams:
            stream.checkDrbdClosed(orphaned=not meta and stream.kind is StreamKind.DATA)

    # -- streams ---------------------------------------------------------------------------------
    def acceptsDrbd(self) -> bool:
        return self.state != State.CONNECTING

    def openStream(self, kind: StreamKind, sock: DrbdSocket) -> Stream | None:
        """DRBD opened a socket to our inside address: announce it to the peer proxy."""
        meta = kind is StreamKind.META and self.meta_first
        link = self.control if meta else self.bulk
        if link is None or link.writer is None:
            return None
        if self._liveStreams(link) >= MAX_STREAMS_PER_LINK:
            self._refusals.warn("refusing a DRBD connection from {peer} on {name}: already"
                                " {limit} streams on the link", peer=format_peer(sock.transport),
                                name=self.name, limit=MAX_STREAMS_PER_LINK)
            return None
        sid = self._ids[link].allocate()
        stream = Stream(self, link, sid, kind)
        self.streams[(link, sid)] = stream
        link.writer.pushOpen(sid, Open(sid, kind, link.side).encode())
        stream.attach(sock)
        return stream

    def _peerOpened(self, link: LinkProtocol, frame: Open) -> None:
        """The peer's DRBD opened a socket: open ours to the local DRBD, from the inside IP."""
        self._countUnreadOpen(link)
        self._peer_last[link] = frame.stream
        early = self._early_discards[link]
        if frame.stream in early:
            early.discard(frame.stream)  # closed at the peer already: never connect
            return
        refusal = None
        if self._liveStreams(link) >= MAX_STREAMS_PER_LINK:
            refusal = f"already {MAX_STREAMS_PER_LINK} streams on the link"
        elif sum(1 for s in self.streams.values() if s.connector is not None) >= MAX_DRBD_CONNECTS:
            refusal = f"already {MAX_DRBD_CONNECTS} connects to DRBD in progress"
        if refusal is not None:
            self._refusals.warn("refusing stream {sid} the peer proxy opened on {name}: {why}",
                                sid=frame.stream, name=self.name, why=refusal)
            assert link.writer is not None  # the OPEN came from it
            link.writer.push(Close(frame.stream, CloseReason.REFUSED, refusal).encode())
            return
        stream = Stream(self, link, frame.stream, frame.kind)
        self.streams[(link, frame.stream)] = stream
        self._connectDrbd(stream, self.spec.listen_inside)

    def _countUnreadOpen(self, link: LinkProtocol) -> None:
        """Every OPEN is answered sooner or later: a peer that sends them while it reads none of
        our frames would have the answers pile up here."""
        unread = any(l is not None and l.writer is not None and l.writer.paused
                     for l in (link, self.control))
        count = self._unread_opens.get(link, 0) + 1 if unread else 0
        self._unread_opens[link] = count
        if count > MAX_UNREAD_OPENS:
            raise LinkProtocolError(ErrorCode.STREAM_ERROR, f"more than {MAX_UNREAD_OPENS} OPENs"
                                    " while the peer reads none of our answers")

    def _liveStreams(self, link: LinkProtocol) -> int:
        return sum(1 for stream_link, _ in self.streams if stream_link is link)

    def _connectDrbd(self, stream: Stream, source: tuple[str, int]) -> None:
        # DRBD 9 matches an incoming peer by (IP, port), then by IP: connect from the inside
        # address DRBD knows as its peer; if that exact pair is taken, from the inside IP.
        host, port = self.spec.connect_drbd
        retry = None
        if source[1]:
            retry = lambda: self._connectDrbd(stream, (source[0], 0))  # noqa: E731
        stream.connector = connect_from(self._reactor, host, port,
                                        DrbdConnectFactory(stream, retry), source)

    def tellPeerClosed(self, stream: Stream, reason: CloseReason, message: str = "") -> None:
        """Our DRBD socket of ``stream`` is gone (or never came up): CLOSE ends the stream on
        its link, and for a stream of the bulk link a DISCARD on the control link gets there
        even while the peer is not reading the bulk link."""
        link = stream.link
        if link.writer is None:
            return
        link.writer.push(Close(stream.sid, reason, message).encode())
        control = self.control
        if link is not control and control is not None and control.writer is not None:
            control.writer.writeNow(Discard(link.role or LinkRole.BULK, stream.sid,
                                            reason).encode())

    def _bufferFull(self, full: bool) -> None:
        # A saturated link flips this many times a second: one info event per change of
        # regime (quiet for 10 s before), the rest at debug.
        now = self._reactor.seconds()
        if full:
            loud = now - self._last_buffer_event >= 10.0
            self._last_buffer_event = now
            self._buffer_full_reported = loud
        else:
            loud, self._buffer_full_reported = self._buffer_full_reported, False
        emit = self._log.info if loud else self._log.debug
        if full:
            emit("buffer of {name} full ({buffered} bytes, memlimit {memlimit}): pausing reads"
                 " from DRBD ({pauses} times so far)", name=self.name, buffered=self.budget.used,
                 memlimit=self.budget.limit, pauses=self.budget.pauses)
        else:
            emit("buffer of {name} drained to {buffered} bytes: reading from DRBD again",
                 name=self.name, buffered=self.budget.used)

    def streamAttached(self, stream: Stream) -> None:
        self._log.info("DRBD {kind} socket {peer} of {name} relayed as stream {sid}",
                       kind=stream.name, peer=stream.peer, name=self.name, sid=stream.sid)
        kinds = {s.kind for s in self.streams.values() if s.sock is not None}
        if {StreamKind.DATA, StreamKind.META} <= kinds and self.state == State.PROXY_CONNECTED:
            self._setState(State.CONNECTED, "DRBD data and meta sockets relayed")

    def totals(self) -> dict[str, dict[str, int]]:
        """Byte counters per DRBD socket kind, over closed and live sockets."""
        result = {kind: dict(counters) for kind, counters in self.closed_totals.items()}
        for stream in self.streams.values():
            _addCounters(result.setdefault(stream.name, {}), stream)
        return result

    def status(self) -> ConnectionStatus:
        """This connection as it is now, for the control protocol, metrics and the manhole."""
        budget = self.budget
        to_peer, from_peer = self.discarded()
        streams = sorted(self.streams.values(), key=lambda s: (s.kind, s.sid))
        packets = self.packet_counts()  # walked once: out_of_sync is one of them
        return ConnectionStatus(
            name=self.name, spec=self.spec, state=self.state, memlimit=budget.limit,
            bwlimit=self.settings.options.get("bwlimit", 0), codec=self.codec.describe(),
            buffered=budget.used, buffered_peak=budget.peak, reads_paused=budget.paused,
            read_pauses=budget.pauses, reconnects=self.reconnects, link_rtt_ms=self.link_rtt_ms,
            drain_rate=self.drain.rate, drain_seconds=self.drain.drain_seconds(budget.used),
            out_of_sync=packets[_OUT_OF_SYNC], dropped_after_close=self.dropped_after_close,
            discarded_to_peer=to_peer, discarded_from_peer=from_peer, totals=self.totals(),
            packets=dict(packets),
            link_cc=self.link_cc,
            streams=tuple(StreamStatus(
                kind=s.name, sid=s.sid, peer=s.peer, to_peer=s.to_peer,
                to_peer_wire=s.to_peer_wire, from_peer=s.from_peer,
                from_peer_wire=s.from_peer_wire, opaque=s.opaque,
                packets_to_peer=dict(s.scan_to_peer.counts),
                packets_from_peer=dict(s.scan_from_peer.counts)) for s in streams),
        )

    def discarded(self) -> tuple[int, int]:
        """Raw bytes discarded so far (to the peer, from the peer), live streams included."""
        to_peer, from_peer = self.discarded_to_peer, self.discarded_from_peer
        for stream in self.streams.values():
            if not stream.retired:
                to_peer += stream.discarded_to_peer
                from_peer += stream.discarded_from_peer
        return to_peer, from_peer

    def out_of_sync(self) -> int:
        """P_OUT_OF_SYNC sent by this site's DRBD: it pulled ahead (congestion) and will resync."""
        return self.packet_counts()[_OUT_OF_SYNC]

    def packet_counts(self) -> Counter[tuple[str, str, str]]:
        """DRBD packets per (socket kind, direction, packet name), over closed and live sockets."""
        result = Counter(self.closed_packets)
        for stream in self.streams.values():
            _addPackets(result, stream)
        return result

    def streamGone(self, stream: Stream) -> None:
        """A stream is over: count it into the totals (once), forget it."""
        self._retire(stream)
        if self.streams.get((stream.link, stream.sid)) is stream:
            del self.streams[(stream.link, stream.sid)]
        if stream.kind is StreamKind.META:
            self._checkPausedDrbd()
        if self.state == State.CONNECTED:
            kinds = {s.kind for s in self.streams.values() if s.sock is not None}
            if not {StreamKind.DATA, StreamKind.META} <= kinds:
                self._setState(State.PROXY_CONNECTED, "a DRBD socket closed")

    def _retire(self, stream: Stream) -> None:
        if stream.retired:
            return
        stream.retired = True
        discarded = ""
        if stream.discarded_to_peer or stream.discarded_from_peer:
            discarded = (f"; discarded {stream.discarded_to_peer} bytes not yet sent and"
                         f" {stream.discarded_from_peer} not yet written to DRBD")
        self._log.info("DRBD {kind} socket {peer} of {name} closed ({to_peer} bytes to the peer,"
                       " {from_peer} from it{discarded})", kind=stream.name, peer=stream.peer,
                       name=self.name, to_peer=stream.to_peer, from_peer=stream.from_peer,
                       discarded=discarded)
        self.discarded_to_peer += stream.discarded_to_peer
        self.discarded_from_peer += stream.discarded_from_peer
        _addCounters(self.closed_totals.setdefault(stream.name, {}), stream)
        _addPackets(self.closed_packets, stream)

    # -- teardown --------------------------------------------------------------------------------
    def _teardown(self, reason: str, redial: bool = True, goaway: GoAway | None = None) -> None:
        """Drop both links, every DRBD socket and everything buffered. With ``goaway``, it is
        the links' last frame before their close; without, they are aborted at once."""
        was = self.state
        self._abandonOutgoing(reason)
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        dropped = 0
        for link in (self.control, self.bulk):
            if link is not None and link.writer is not None:
                dropped += link.writer.close()
        self.discarded_to_peer += dropped
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.abort()
            self._retire(stream)
        for link in (self.control, self.bulk):
            if link is not None:
                link.fail(reason, goaway.encode() if goaway is not None else None)
        if dropped:
            self._log.info("connection {name}: discarded {dropped} buffered bytes not yet sent",
                           name=self.name, dropped=dropped)
        self.control = self.bulk = None
        self._ids.clear()
        self._peer_last.clear()
        self._early_discards.clear()
        self._unread_opens.clear()
        self.budget.reset()
        if was != State.CONNECTING:
            self.reconnects += 1
            self._setState(State.CONNECTING, reason)
        if redial:
            self._scheduleDial()

    def _setState(self, state: str, reason: str) -> None:
        if state == self.state:
            return
        self._log.info("connection {name}: {old} -> {new} ({reason})",
                       name=self.name, old=self.state, new=state, reason=reason)
        self.state = state


def _handle(transport: Any) -> Any:
    """The OS socket under a link's transport: a TLS transport's own handle is its OpenSSL
    connection, the socket is its TCP transport's."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    return transport.getHandle()


_OUT_OF_SYNC = ("data", "to_peer", "P_OUT_OF_SYNC")

_REFUSALS = {
    RejectReason.UNKNOWN_CONNECTION: "it names another connection",
    RejectReason.DUPLICATE_CONTROL: "the control link is alive",
    RejectReason.NO_SUCH_SESSION: "no such session",
    RejectReason.BUSY: "the bulk link is up",
}

_COUNTERS = ("to_peer", "to_peer_wire", "from_peer", "from_peer_wire")


def _addCounters(into: dict[str, int], stream: Stream) -> None:
    for key in _COUNTERS:
        into[key] = into.get(key, 0) + getattr(stream, key)


def _addPackets(into: Counter[tuple[str, str, str]], stream: Stream) -> None:
    for direction, scanner in (("to_peer", stream.scan_to_peer), ("from_peer", stream.scan_from_peer)):
        for name, count in scanner.counts.items():
            into[(stream.name, direction, name)] += count
