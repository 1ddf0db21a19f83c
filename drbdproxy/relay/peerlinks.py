"""The owner of a connection's links to the peer proxy: what each link event means.

A :class:`PeerLinks` is what every :class:`links.LinkProtocol` of one connection talks to. It
makes the handshakes, admits (or not) who dials, and passes each event on: link ups and losses
to the lifecycle machine, stream frames to the stream table, heartbeats to the heartbeat.
"""

from __future__ import annotations

from typing import Any, Protocol

from drbdproxy.admin.logs import Persisting, Summarised, logger
from drbdproxy.codecs import CodecId
from drbdproxy.link import (
    Accepted,
    ClientHandshake,
    Close,
    Data,
    Discard,
    ErrorFrame,
    Frame,
    GoAway,
    GoAwayReason,
    LinkRole,
    Open,
    Ping,
    Pong,
    Rejected,
    RejectReason,
    ServerHandshake,
    Side,
)
from drbdproxy.relay.admission import LinkAdmission
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.heartbeat import Heartbeat
from drbdproxy.relay.links import LinkClientFactory, LinkProtocol
from drbdproxy.relay.session import PeerSession
from drbdproxy.relay.sockets import LinkSocketTuning, SendBufferGrowth, os_socket
from drbdproxy.relay.streamtable import StreamTable
from drbdproxy.relay.tls import TlsConfig, check_peer
from drbdproxy.spec import ConnectionSpec, Settings
from drbdproxy.units import format_address

#: Every codec this proxy can decompress, announced in the handshake.
DECODABLE = tuple(int(c) for c in CodecId)


class LinkHub(Protocol):
    """What the links' owner uses of its connection: the parts link events go to."""

    name: str
    spec: ConnectionSpec
    settings: Settings
    secret: bytes | None
    tls: TlsConfig | None
    budget: Budget
    admission: LinkAdmission
    links: PeerSession
    table: StreamTable
    heartbeat: Heartbeat

    @property
    def clock(self) -> Any: ...
    @property
    def close_timeout(self) -> float: ...
    @property
    def meta(self) -> LinkProtocol | None: ...
    @property
    def bulk(self) -> LinkProtocol | None: ...
    def bulkLinkUp(self, link: LinkProtocol) -> None: ...


class PeerLinks:
    """The links of one connection (a :class:`links.LinkOwner`)."""

    _log = logger()

    def __init__(self, connection: LinkHub) -> None:
        self._conn = connection
        self.clock = connection.clock
        self._dialFailures = Summarised(self._log, self.clock)
        self._tuning = LinkSocketTuning(connection.name, self._log)
        self._unreachable = Persisting(self.clock)
        self._selfDial = False
        self._growth: SendBufferGrowth | None = None
        self._growth_link: LinkProtocol | None = None

    def stop(self) -> None:
        self._dialFailures.stop()

    # -- making links ----------------------------------------------------------------------------
    def hello(self, role: LinkRole, session: bytes) -> ClientHandshake:
        """The handshake of a link we dial."""
        return ClientHandshake(self._conn.name, role, session, DECODABLE,
                               secret=self._conn.secret)

    def connect(self, host: str, port: int, factory: LinkClientFactory,
                source: tuple[str, int] | None) -> Any:
        tls = self._conn.tls
        wrapped: Any = factory if tls is None else tls.client(host, factory)
        return self.clock.connectTCP(host, port, wrapped, timeout=10, bindAddress=source)

    def admitLink(self, source: str) -> bool:
        """Whether a TCP connection to our outside address from ``source`` may handshake."""
        return self._conn.admission.admit(source)

    def serverHandshake(self, source: str = "-") -> ServerHandshake:
        """The handshake of a link that ``source`` dialled."""
        conn = self._conn

        def lookup(name: str, role: LinkRole, session: bytes) -> RejectReason | None:
            reason: RejectReason | None
            if not conn.admission.names(name):
                reason = RejectReason.UNKNOWN_CONNECTION
            elif session == conn.links.session and conn.links.outgoing is not None:
                self._selfDial = True
                self._dialFailures.warn(
                    "connection {name} dialled itself: {peer}, the peer proxy's outside address,"
                    " is this proxy's own; check the addresses of the connection", name=conn.name,
                    peer=format_address(*conn.spec.connect_peer_outside))
                return RejectReason.UNKNOWN_CONNECTION
            elif role is LinkRole.META:
                reason = conn.links.machine.lookupMeta(session)
            else:
                reason = conn.links.machine.lookupBulk(session)
            if reason is not None:
                conn.admission.refused(role, source, reason)
            return reason
        return ServerHandshake(lookup, DECODABLE, secret=conn.secret)

    @property
    def close_timeout(self) -> float:
        """Seconds a closing link may take to flush before it is aborted."""
        return self._conn.close_timeout

    def checkPeerCertificate(self, transport: Any, side: Side) -> str | None:
        """The dialler's TLS already checked the name; the accepting side checks it here."""
        if self._conn.tls is None or side is Side.CLIENT:
            return None
        return check_peer(transport, self._conn.spec.connect_peer_outside[0])

    def tuneLinkSocket(self, transport: Any) -> None:
        settings = self._conn.settings
        self._tuning.tune(transport, settings.options, settings.link_cc)

    def growSendBuffer(self) -> None:
        """Each heartbeat: the bulk link's send buffer grows while it limits the link, unless
        sndbuf-size fixes it (0, the default, is auto; up to memlimit, between 8 and 64 MiB)."""
        conn = self._conn
        bulk = conn.bulk
        if bulk is None or bulk.transport is None or conn.settings.options.get("sndbuf-size", 0):
            return
        if self._growth is None or self._growth_link is not bulk:
            self._growth, self._growth_link = SendBufferGrowth(), bulk
        ceiling = min(max(conn.settings.memlimit, 8 << 20), 64 << 20)
        grown = self._growth.look(os_socket(bulk.transport), ceiling)
        if grown is not None:
            self._log.info("bulk link of {name}: its send buffer limited it; now {size} bytes",
                           name=conn.name, size=grown)

    def retune(self) -> None:
        """link-cc changed: the live links get it now."""
        settings = self._conn.settings
        self._tuning.retune([link.transport for link in (self._conn.meta, self._conn.bulk)
                             if link is not None and link.transport is not None],
                            settings.link_cc, "link-cc" in settings.options)

    def linkBudget(self) -> Budget:
        return self._conn.budget

    # -- link events -----------------------------------------------------------------------------
    def linkActivity(self, link: LinkProtocol) -> None:
        if link is self._conn.meta:
            self._conn.heartbeat.heard()

    def dialFailed(self, factory: LinkClientFactory, role: LinkRole, message: str) -> None:
        conn = self._conn
        if not conn.links.dialFailed(factory, message):
            return
        # Proxies start one after the other: a peer not there yet is news, not a problem,
        # until it stays away.
        away, persists = self._unreachable.failed()
        fields = dict(name=conn.name, reason=message, away=away,
                      peer=format_address(*conn.spec.connect_peer_outside))
        if persists:
            self._dialFailures.warn("cannot reach the peer proxy of {name} at {peer} for"
                                    " {away:.0f} s: {reason}", **fields)
        elif away == 0:
            self._log.info("cannot reach the peer proxy of {name} at {peer} yet: {reason}"
                           " (dialling again with backoff)", **fields)

    def linkUp(self, link: LinkProtocol, accepted: Accepted) -> None:
        conn = self._conn
        if accepted.role is LinkRole.META:
            self._unreachable.ok()
            if conn.meta is not None:
                self._log.warn("a new meta link of {name} from {source} replaces the live one",
                               name=conn.name, source=link.source)
            conn.links.machine.metaUp(link)
        else:
            conn.bulkLinkUp(link)

    def linkRefused(self, link: LinkProtocol, rejected: Rejected) -> None:
        if link.side is Side.SERVER:
            return  # we refused it: the lookup said why
        if self._selfDial:
            self._selfDial = False  # our own refusal of it said why
            return
        if rejected.reason is RejectReason.DUPLICATE_META:
            self._log.info("crossed dials on {name}: the peer proxy keeps its own link",
                           name=self._conn.name)
            return
        self._dialFailures.warn("the peer proxy refused a link of {name}: {message}",
                                name=self._conn.name, message=rejected.message)

    def linkDown(self, link: LinkProtocol, reason: str) -> None:
        conn = self._conn
        if link is conn.meta or link is conn.bulk:
            role = link.role.name.lower() if link.role is not None else "a"
            conn.links.machine.linkLost(f"{role} link lost: {reason}")
            return
        for dial in (conn.links.outgoing, conn.links.bulk_dial):
            if dial is not None and dial.link is link:
                conn.links.dialFailed(dial, reason)  # lost, refused or timed out in its handshake
        if link.accepted is None and link.rejected is None and not link.abandoned:
            # Refused TLS certificates, garbage, a peer of another version: say why (what a
            # remote host repeats is summarised). Refusals of our dials said so already.
            refusals = conn.admission.refusals if link.side is Side.SERVER else self._dialFailures
            refusals.warn("a link of {name} {way} {source} failed before its handshake"
                          " completed: {reason}", name=conn.name, source=link.source,
                          way="from" if link.side is Side.SERVER else "dialled to",
                          reason=reason)

    def linkFrame(self, link: LinkProtocol, frame: Frame) -> None:
        conn = self._conn
        table = conn.table
        if isinstance(frame, Data):
            table.data(link, frame)
        elif isinstance(frame, Open):
            table.opened(link, frame, conn.meta)
        elif isinstance(frame, Close):
            table.closed(link, frame)
        elif isinstance(frame, Discard):
            table.discarded(conn.meta if frame.role is LinkRole.META else conn.bulk, frame)
        elif isinstance(frame, Ping):
            assert link.writer is not None  # made in connectionMade, before any frame
            link.writer.answer(frame.pong().encode())
        elif isinstance(frame, Pong):
            conn.heartbeat.pong(frame)
        elif isinstance(frame, GoAway):
            code = frame.code
            what = code.name.lower().replace("_", " ") if isinstance(code, GoAwayReason) \
                else f"reason {code}"
            conn.links.machine.linkLost(f"the peer proxy said GOAWAY: {what}"
                                        + (f" ({frame.message})" if frame.message else ""))
        elif isinstance(frame, ErrorFrame):
            conn.links.machine.linkLost(f"peer proxy: {frame.message or 'ERROR'}")
