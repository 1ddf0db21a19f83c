"""Unit tests of the Twisted relay layer, without sockets: a ProxyConnection whose meta and bulk
links run on StringTransports, DRBD sockets on StringTransports, and a MemoryReactorClock.

The peer proxy is played by the test: its side of the handshake (ClientHandshake), the frames it
sends (encoded here) and a LinkDecoder per link that reads what our connection writes. Our
connection accepts both links (Side.SERVER): it allocates even stream ids, the peer odd ones.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, NotConnectingError, UserError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

import drbdproxy.relay.streamtable as streamtable_module
from drbdproxy.codecs import Codec
from drbdproxy.relay.connection import ProxyConnection, State
from drbdproxy.spec import ConnectionSpec
from drbdproxy.link import (
    Accepted,
    ClientHandshake,
    Close,
    CloseReason,
    Data,
    Discard,
    ErrorCode,
    ErrorFrame,
    GoAway,
    GoAwayReason,
    LinkDecoder,
    LinkError,
    LinkRole,
    Open,
    Ping,
    Pong,
    ServerHandshake,
    Side,
    StreamKind,
    new_session,
)
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.encoder import Encoded, _encode_all
from drbdproxy.control.registry import ConnectionRegistry
from drbdproxy.relay.links import LinkProtocol
from drbdproxy.relay.inside import InsideFactory
from drbdproxy.relay.streams import DrbdSocket

from lookups import Registry

NAME = "r0"
#: DRBD's first packet on a data socket: an h80 header of P_INITIAL_DATA with no payload.
P_INITIAL_DATA = bytes.fromhex("83740267fff20000")
DATA_HEADER = 21  # frame header (12) + DATA prefix (9): what a raw DATA frame costs beyond its bytes
#: Stream ids the peer (the link client) opens: odd.
PEER_SID = 1


# -- fakes ---------------------------------------------------------------------------------------


class FakeSocket:
    """What ``transport.getHandle()`` gives: records setsockopt calls, and reports the TCP
    state (``tcp_state``, tcpi_state's numbers: 1 established, 7 closed, 8 close-wait)."""

    def __init__(self) -> None:
        self.options: list[tuple[int, int, int | bytes]] = []
        self.tcp_state = 1
        self.congestion = b"cubic"  # the host's default

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert level == socket.IPPROTO_TCP
        if option == socket.TCP_CONGESTION:
            return self.congestion.ljust(size, b"\0")
        assert option == socket.TCP_INFO
        return bytes([self.tcp_state]) + bytes(size - 1)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.options.append((level, option, value))
        if (level, option) == (socket.IPPROTO_TCP, socket.TCP_CONGESTION):
            assert isinstance(value, bytes)
            self.congestion = value


class Transport(StringTransport):
    """A StringTransport that behaves like a TCP transport where the code under test looks, and
    records close calls. It never reports a loss by itself: the test calls connectionLost.

    ``lenient``: a real TCP transport accepts pauseProducing/resumeProducing after
    loseConnection (it just does nothing), so this one does too.
    """

    _next_port = 40000

    def __init__(self) -> None:
        Transport._next_port += 1
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", Transport._next_port),
                         lenient=True)
        self.events: list[str] = []
        self.handle = FakeSocket()

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getHandle(self) -> FakeSocket:
        return self.handle

    def loseConnection(self) -> None:
        self.events.append("lose")
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.events.append("abort")
        self.disconnecting = self.disconnected = True

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            self.events.append("unregister")
        super().unregisterProducer()

    @property
    def aborts(self) -> int:
        return self.events.count("abort")


class SyncEncoder:
    """A ChunkEncoder that always encodes on the spot (compression is off in these tests)."""

    def encodeAll(self, codec: Codec, pieces: list[bytes | memoryview]) -> list[Encoded]:
        return _encode_all(codec, pieces)


class FakeConnector:
    """What ``connect_from`` returns: a connect that stays in progress until the test says.

    ``stopConnecting`` fails the attempt with UserError, as a real tcp.Connector does."""

    def __init__(self, host: str, port: int, factory: Any, source: tuple[str, int]) -> None:
        self.host, self.port, self.factory, self.source = host, port, factory, source
        self.state = "connecting"
        self.stopped = 0

    def stopConnecting(self) -> None:
        if self.state != "connecting":
            raise NotConnectingError()
        self.stopped += 1
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(UserError()))

    def complete(self) -> tuple[DrbdSocket, Transport]:
        """The connect to DRBD succeeds (whatever happened meanwhile)."""
        self.state = "connected"
        transport = Transport()
        sock = self.factory.buildProtocol(None)
        sock.makeConnection(transport)
        return sock, transport


@dataclass
class PeerLink:
    """One link of our connection, and the peer's view of it."""

    link: LinkProtocol
    transport: Transport
    decoder: LinkDecoder  # the peer's decoder of what our connection writes

    def feed(self, *frames: Any) -> None:
        """The peer sends ``frames`` (frame objects or encoded bytes) in one read."""
        self.link.dataReceived(b"".join(f if isinstance(f, bytes) else f.encode() for f in frames))

    def frames(self, heartbeats: bool = False) -> list[Any]:
        """Every frame written since the last call (PING/PONG left out unless asked)."""
        data = self.transport.value()
        self.transport.clear()
        got = self.decoder.feed(data)
        assert not any(isinstance(f, LinkError) for f in got), got
        if heartbeats:
            return got
        return [f for f in got if not isinstance(f, (Ping, Pong))]


@dataclass
class Env:
    reactor: MemoryReactorClock
    conn: ProxyConnection
    meta: PeerLink
    bulk: PeerLink
    connects: list[FakeConnector] = field(default_factory=list)
    _pings: int = 0

    def discarded(self) -> tuple[int, int]:
        return self.conn.table.counters.discardedBytes(self.conn.table.streams.values())

    def totals(self) -> dict[str, dict[str, int]]:
        return self.conn.table.counters.totals(self.conn.table.streams.values())

    def packets(self) -> Counter[tuple[str, str, str]]:
        return self.conn.table.counters.packet_counts(self.conn.table.streams.values())

    def tick(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` pass with a live peer: a PING on the meta link every ``step``,
        so the connection's own ping-timeout never drops the links meanwhile."""
        remaining = seconds
        while remaining > 1e-9:
            if not self.meta.transport.disconnecting:
                self._pings += 1
                self.meta.feed(Ping(self._pings, 0))
            d = min(step, remaining)
            self.reactor.advance(d)
            remaining -= d

    def inside(self, first: bytes | None = P_INITIAL_DATA) -> tuple[DrbdSocket, Transport]:
        """Our DRBD connects to our inside address and (unless None) sends ``first``."""
        sock = InsideFactory(self.conn).buildProtocol(None)
        transport = Transport()
        sock.makeConnection(transport)
        if first is not None:
            sock.dataReceived(first)
        return sock, transport

    def peer_opens(self, sid: int, kind: StreamKind = StreamKind.DATA) -> FakeConnector:
        """The peer's DRBD opened a socket: OPEN on its link; we start connecting to our DRBD."""
        link = self.meta if kind is StreamKind.META else self.bulk
        before = len(self.connects)
        link.feed(Open(sid, kind, Side.CLIENT))
        assert len(self.connects) == before + 1
        return self.connects[-1]


def up_link(conn: ProxyConnection, role: LinkRole, session: bytes) -> PeerLink:
    """A link the peer dialled to us, its handshake completed (conn.peer.linkUp has run)."""
    link = LinkProtocol(conn.peer, Side.SERVER, conn.peer.serverHandshake())
    transport = Transport()
    link.makeConnection(transport)
    peer = ClientHandshake(conn.name, role, session, [0])
    decoder = peer.decoder()
    link.dataReceived(peer.hello())
    (welcome, *rest) = decoder.feed(transport.value())
    transport.clear()
    assert isinstance(peer.receive(welcome), Accepted)
    assert all(isinstance(f, Ping) for f in rest)
    assert link.accepted is not None and link.accepted.role is role
    return PeerLink(link, transport, decoder)


def make_env(monkeypatch: pytest.MonkeyPatch, options: dict[str, int] | None = None) -> Env:
    """A connection with its meta and bulk links up (ProxyConnected), no socket anywhere."""
    reactor = MemoryReactorClock()
    connects: list[FakeConnector] = []

    def connect_from(reactor_: Any, host: str, port: int, factory: Any,
                     source: tuple[str, int], timeout: float = 10) -> FakeConnector:
        assert reactor_ is reactor
        connector = FakeConnector(host, port, factory, source)
        connects.append(connector)
        return connector

    monkeypatch.setattr(streamtable_module, "connect_from", connect_from)
    # The service is not started, so it does not dial: the peer's links are the ones up.
    spec = ConnectionSpec(NAME, ("127.0.0.1", 7789), ("127.0.0.1", 7790), ("127.0.0.2", 7790),
                          ("127.0.0.1", 7788), options or {})
    conn = ProxyConnection(spec, reactor, SyncEncoder())  # type: ignore[arg-type]
    session = new_session()
    control = up_link(conn, LinkRole.META, session)
    bulk = up_link(conn, LinkRole.BULK, session)
    control.frames(heartbeats=True)  # the first PING
    assert conn.meta is control.link and conn.bulk is bulk.link
    assert conn.state == State.PROXY_CONNECTED
    return Env(reactor, conn, control, bulk, connects)


def drbd_data(sid: int, raw: bytes) -> bytes:
    return Data.uncompressed(sid, raw).encode()


# -- 1, 2: the peer closes a stream whose DRBD socket is not reading -----------------------------


def test_peer_close_of_a_stream_whose_drbd_socket_does_not_read_closes_it_within_ping_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer's CLOSE for a stream whose DRBD transport has paused its producer (DRBD reads
    slowly, so the bulk link is paused for it): the producer is unregistered and loseConnection
    called at once, the bulk link reads again at once, and the DRBD socket is aborted exactly
    ping-timeout (7 s here) later if it never reports its loss."""
    env = make_env(monkeypatch, {"ping-timeout": 70})
    connector = env.peer_opens(PEER_SID)
    sock, drbd = connector.complete()
    env.bulk.feed(drbd_data(PEER_SID, b"w" * 1000))
    assert drbd.value() == b"w" * 1000
    drbd.producer.pauseProducing()  # DRBD's socket buffer is full
    assert env.bulk.link.reading.paused and env.bulk.transport.producerState == "paused"

    env.bulk.feed(Close(PEER_SID))

    assert drbd.producer is None
    assert drbd.events == ["unregister", "lose"]
    assert not env.bulk.link.reading.paused
    assert env.bulk.transport.producerState == "producing"
    env.tick(6.9)
    assert drbd.aborts == 0
    env.tick(0.2)
    assert drbd.aborts == 1
    sock.connectionLost(Failure(ConnectionLost()))
    assert env.conn.table.streams == {}
    assert env.bulk.frames() == []  # CLOSE is not answered
    env.tick(20)
    assert drbd.aborts == 1


def test_peer_discard_on_the_meta_link_closes_a_bulk_stream_while_the_bulk_link_is_paused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DISCARD on the meta link for a bulk-link stream (one our DRBD opened) whose DRBD
    transport has paused its producer, so the bulk link is not being read: what we queued for
    the stream is dropped, its producer unregistered and loseConnection called at once, bulk
    reading resumes at once, and the socket is aborted exactly ping-timeout later. Nothing is
    sent back for the stream (not even when the DRBD socket's loss comes)."""
    env = make_env(monkeypatch, {"ping-timeout": 70})
    sock, drbd = env.inside(P_INITIAL_DATA + b"a" * 92)
    (opened, first) = env.bulk.frames()
    assert isinstance(opened, Open) and isinstance(first, Data)
    sid = opened.stream
    env.bulk.feed(drbd_data(sid, b"p" * 500))  # the peer's DRBD writes to the stream
    assert drbd.value() == b"p" * 500
    drbd.producer.pauseProducing()
    assert env.bulk.link.reading.paused
    env.bulk.link.writer.pauseProducing()  # and the bulk link's transport is full
    sock.dataReceived(b"b" * 4000)
    assert env.conn.budget.used == 4000 + DATA_HEADER

    env.meta.feed(Discard(LinkRole.BULK, sid, CloseReason.EOF))

    assert drbd.producer is None
    assert drbd.events == ["unregister", "lose"]
    assert not env.bulk.link.reading.paused
    assert env.bulk.transport.producerState == "producing"
    assert env.conn.budget.used == 0
    env.tick(6.9)
    assert drbd.aborts == 0
    env.tick(0.2)
    assert drbd.aborts == 1
    sock.connectionLost(Failure(ConnectionLost()))
    env.bulk.link.writer.resumeProducing()
    assert env.bulk.frames() == []
    assert env.meta.frames() == []
    assert env.conn.table.streams == {}
    assert env.discarded() == (4000, 0)


def test_counters_of_a_stream_closed_by_the_peer_stay_counted_while_its_drbd_socket_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the peer's DISCARD (or CLOSE) and the
    connectionLost of our DRBD socket (up to ping-timeout), the stream's bytes and packets must
    stay in totals(), discarded() and packet_counts(): `print statistics` and the metrics are
    counters and must never go backwards. Now the stream drops out of conn.table.streams at once but
    is only retired into closed_totals when its socket's loss comes, so for that window its
    counts vanish (to_peer 4100 -> 0 -> 4100)."""
    env = make_env(monkeypatch)
    sock, drbd = env.inside(P_INITIAL_DATA + b"a" * 92)
    (opened, _) = env.bulk.frames()
    env.bulk.feed(drbd_data(opened.stream, b"p" * 1000))
    env.bulk.link.writer.pauseProducing()
    sock.dataReceived(b"b" * 4000)  # queued: discarded by the DISCARD
    expected = {"data": {"to_peer": 4100, "to_peer_wire": 4100,
                         "from_peer": 1000, "from_peer_wire": 1000}}
    assert env.totals() == expected
    packets = ("data", "to_peer", "P_INITIAL_DATA")
    assert env.packets()[packets] == 1

    env.meta.feed(Discard(LinkRole.BULK, opened.stream, CloseReason.EOF))
    assert drbd.events == ["unregister", "lose"]  # closing: its loss comes within ping-timeout

    during = (env.totals(), env.discarded(), env.packets()[packets])
    sock.connectionLost(Failure(ConnectionLost()))
    after = (env.totals(), env.discarded(), env.packets()[packets])
    assert after == (expected, (4000, 0), 1)
    assert during == after


# -- 3, 4: our DRBD socket closes with frames of its stream still queued -------------------------


def test_our_drbd_socket_closing_drops_its_queued_frames_and_tells_the_peer_on_both_links(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Our DRBD closes a data socket while DATA frames of its stream wait in the bulk writer:
    they are dropped (only the other stream's frame stays in the budget), a CLOSE is queued on
    the bulk link, a DISCARD is written on the meta link at once, and the connection counts
    exactly the dropped raw bytes as discarded to the peer."""
    env = make_env(monkeypatch)
    sock, drbd = env.inside(P_INITIAL_DATA + b"a" * 100)
    other, _ = env.inside(P_INITIAL_DATA + b"o" * 100)
    frames = env.bulk.frames()
    assert [type(f) for f in frames] == [Open, Data, Open, Data]
    sid, other_sid = frames[0].stream, frames[2].stream
    assert sid != other_sid

    env.bulk.transport.producer.pauseProducing()  # the bulk link's transport is full
    sock.dataReceived(b"x" * 3000)
    sock.dataReceived(b"y" * 5000)
    other.dataReceived(b"z" * 700)
    assert env.conn.budget.used == 3000 + 5000 + 700 + 3 * DATA_HEADER
    assert env.bulk.transport.value() == b""

    sock.connectionLost(Failure(ConnectionDone()))

    assert env.conn.budget.used == 700 + DATA_HEADER
    assert env.meta.frames() == [Discard(LinkRole.BULK, sid, CloseReason.EOF)]
    assert env.discarded() == (8000, 0)
    assert env.conn.table.counters.discarded_to_peer == 8000
    assert (env.bulk.link, sid) not in env.conn.table.streams
    env.bulk.transport.producer.resumeProducing()
    after = env.bulk.frames()
    assert [type(f) for f in after] == [Data, Close]
    assert after[0].stream == other_sid and bytes(after[0].payload) == b"z" * 700
    assert after[1] == Close(sid, CloseReason.EOF)
    assert env.conn.budget.used == 0


def test_a_stream_whose_open_is_still_queued_vanishes_without_a_trace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Our DRBD socket closes while its stream's OPEN still waits in the bulk writer: OPEN and
    DATA are dropped, and neither CLOSE nor DISCARD is ever sent (the peer never heard of it)."""
    env = make_env(monkeypatch)
    env.bulk.transport.producer.pauseProducing()
    sock, _ = env.inside(P_INITIAL_DATA + b"a" * 100)
    sock.dataReceived(b"b" * 900)
    assert env.conn.budget.used == 108 + 900 + 2 * DATA_HEADER

    sock.connectionLost(Failure(ConnectionDone()))

    assert env.conn.budget.used == 0
    assert env.discarded() == (1008, 0)
    assert env.conn.table.streams == {}
    env.bulk.transport.producer.resumeProducing()
    assert env.bulk.transport.value() == b""
    assert env.meta.frames() == []


# -- 5: counted once -----------------------------------------------------------------------------


def test_a_stream_torn_down_and_then_lost_is_counted_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream with 1000 bytes to the peer and 300 from it is torn down with the links (the
    bulk link's connectionLost), and its DRBD socket's connectionLost arrives afterwards: the
    totals and `print statistics` say 1000 and 300, not twice that."""
    env = make_env(monkeypatch)
    sock, drbd = env.inside(P_INITIAL_DATA + bytes(992))
    (opened, _) = env.bulk.frames()
    env.bulk.feed(drbd_data(opened.stream, b"p" * 300))

    env.bulk.link.connectionLost(Failure(ConnectionLost()))
    assert drbd.aborts == 1
    assert env.conn.state == State.CONNECTING
    sock.connectionLost(Failure(ConnectionLost()))

    totals = env.totals()
    assert totals["data"]["to_peer"] == 1000 and totals["data"]["to_peer_wire"] == 1000
    assert totals["data"]["from_peer"] == 300 and totals["data"]["from_peer_wire"] == 300
    registry = ConnectionRegistry(env.reactor)
    env.conn.setName(NAME)
    env.conn.setServiceParent(registry)
    lines = set(registry.statistics())
    assert f"{NAME}.data.to_peer.bytes 1000" in lines
    assert f"{NAME}.data.to_peer.wire_bytes 1000" in lines
    assert f"{NAME}.data.from_peer.bytes 300" in lines
    assert f"{NAME}.data.from_peer.wire_bytes 300" in lines


# -- 6, 7: connects to DRBD and early DISCARDs ---------------------------------------------------


def test_a_connect_to_drbd_in_progress_at_teardown_is_cancelled_and_never_attached(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect to our DRBD for a peer-opened stream is still in progress when the links go:
    it is cancelled (stopConnecting), the DATA buffered for it counts as discarded, and if it
    completes anyway the socket is aborted at once and never attached (no producer, not a
    budget reader, no stream)."""
    env = make_env(monkeypatch)
    connector = env.peer_opens(PEER_SID)
    env.bulk.feed(drbd_data(PEER_SID, b"p" * 500))  # waits for the connect

    env.bulk.link.connectionLost(Failure(ConnectionLost()))

    assert connector.stopped == 1
    assert len(env.connects) == 1  # no retry from another source port
    assert env.conn.table.streams == {}
    assert env.conn.budget.used == 0
    assert env.discarded() == (0, 500)

    sock, drbd = connector.complete()
    assert drbd.events == ["abort"]
    assert drbd.producer is None and drbd.value() == b""
    assert env.conn.table.streams == {}
    env.conn.budget.add(env.conn.budget.limit)  # every registered reader pauses now
    assert env.conn.budget.paused and drbd.producerState == "producing"
    sock.connectionLost(Failure(ConnectionLost()))
    assert env.conn.table.streams == {}
    assert env.totals()["data"]["from_peer"] == 500


def test_a_discard_that_overtakes_its_open_means_no_connect_and_later_data_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A DISCARD on the meta link for a bulk stream whose OPEN is still on the bulk link:
    when the OPEN comes, no connect to DRBD is made; DATA that follows for the stream is dropped
    and counted in dropped_after_close (and as discarded from the peer)."""
    env = make_env(monkeypatch)
    env.meta.feed(Discard(LinkRole.BULK, PEER_SID, CloseReason.EOF))
    env.bulk.feed(Open(PEER_SID, StreamKind.DATA, Side.CLIENT),
                  drbd_data(PEER_SID, b"p" * 400), drbd_data(PEER_SID, b"q" * 100))

    assert env.connects == []
    assert env.conn.table.streams == {}
    assert env.conn.table.counters.dropped_after_close == 500
    assert env.discarded() == (0, 500)
    assert env.bulk.transport.events == [] and env.meta.transport.events == []
    assert env.bulk.frames() == [] and env.meta.frames() == []


# -- 8: GOAWAY ----------------------------------------------------------------------------------


def test_stop_service_says_goaway_last_and_closes_within_ping_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """stopService writes GOAWAY as the last frame of both links and calls loseConnection (not
    abortConnection); a link whose transport never reports the loss is aborted ping-timeout
    later, one that does is not; the Deferred fires once both links' connectionLost ran."""
    env = make_env(monkeypatch)
    env.conn.startService()
    sock, drbd = env.inside(P_INITIAL_DATA + b"a" * 100)
    env.bulk.frames()

    done = env.conn.stopService()
    fired: list[object] = []
    done.addCallback(fired.append)

    for peer in (env.meta, env.bulk):
        frames = peer.frames()
        assert frames and frames[-1] == GoAway(GoAwayReason.CONNECTION_REMOVED, "")
        assert peer.transport.events == ["unregister", "lose"]
    assert drbd.aborts == 1
    env.reactor.advance(5)
    env.meta.link.connectionLost(Failure(ConnectionDone()))
    assert fired == []
    env.reactor.advance(4.9)
    assert env.meta.transport.aborts == env.bulk.transport.aborts == 0
    env.reactor.advance(0.2)
    assert env.bulk.transport.aborts == 1
    assert env.meta.transport.aborts == 0
    assert fired == []
    env.bulk.link.connectionLost(Failure(ConnectionLost()))
    assert fired == [None]
    assert env.meta.transport.value() == env.bulk.transport.value() == b""


# -- 9: drain rate -------------------------------------------------------------------------------


def test_set_bwlimit_measures_the_drain_rate_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A measured drain rate is forgotten when bwlimit changes (it was measured under another
    limit), but not when another setting changes."""
    env = make_env(monkeypatch)
    conn = env.conn
    conn.drain.sample(100.0, 0, True)
    conn.drain.sample(101.0, 500_000, True)
    measured = conn.drain.rate
    assert measured is not None and measured > 0
    conn.settings.apply("memlimit", 32 << 20)
    conn.settingsChanged()
    assert conn.drain.rate == measured

    conn.settings.apply("bwlimit", 262144)
    conn.settingsChanged()

    assert conn.drain.rate is None
    registry = ConnectionRegistry(env.reactor)
    conn.setName(NAME)
    conn.setServiceParent(registry)
    assert f"{NAME}.link_rate_bytes_per_s -" in set(registry.statistics())
    assert f"{NAME}.bwlimit 262144" in set(registry.statistics())


# -- 10: silent inside sockets -------------------------------------------------------------------


def test_an_inside_socket_that_never_sends_its_first_packet_is_aborted_after_ping_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket to our inside address that sends fewer than 8 bytes is aborted after
    ping-timeout (10 s by default); one that sends its first packet in time, even in pieces, is
    relayed and left alone."""
    env = make_env(monkeypatch)
    _, silent = env.inside(first=P_INITIAL_DATA[:5])
    talker, talking = env.inside(first=P_INITIAL_DATA[:5])
    env.tick(9.0)
    talker.dataReceived(P_INITIAL_DATA[5:])
    env.tick(0.9)
    assert silent.aborts == 0
    env.tick(0.2)
    assert silent.events == ["abort"]
    env.tick(30)
    assert talking.events == []
    assert [type(f) for f in env.bulk.frames()] == [Open, Data]


# -- 11, 12: links --------------------------------------------------------------------------------


def test_a_link_without_a_handshake_is_aborted_after_the_handshake_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server-side link that receives nothing is aborted handshake_timeout seconds after it
    came up (and not before); one whose handshake completes in time is not."""
    reactor = MemoryReactorClock()
    spec = ConnectionSpec(NAME, ("127.0.0.1", 7789), ("127.0.0.1", 7790), ("127.0.0.2", 7790),
                          ("127.0.0.1", 7788))
    conn = ProxyConnection(spec, reactor, SyncEncoder())  # type: ignore[arg-type]
    mute = LinkProtocol(conn.peer, Side.SERVER, conn.peer.serverHandshake())
    assert mute.handshake_timeout == 10.0
    mute_t = Transport()
    mute.makeConnection(mute_t)
    good = LinkProtocol(conn.peer, Side.SERVER, conn.peer.serverHandshake())
    good_t = Transport()
    good.makeConnection(good_t)
    reactor.advance(5)
    good.dataReceived(ClientHandshake(NAME, LinkRole.META, new_session(), [0]).hello())
    assert good.accepted is not None
    reactor.advance(4.9)
    assert mute_t.aborts == 0
    reactor.advance(0.2)
    assert mute_t.events == ["abort"]
    assert good_t.aborts == 0


class Owner:
    """The least a LinkProtocol needs of its owner; close_timeout distinct from any default."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.close_timeout = 7.5
        self.down: list[str] = []

    def linkUp(self, link: LinkProtocol, accepted: Accepted) -> None:
        pass

    def linkFrame(self, link: LinkProtocol, frame: Any) -> None:
        pass

    def linkActivity(self, link: LinkProtocol) -> None:
        pass

    def linkDown(self, link: LinkProtocol, reason: str) -> None:
        self.down.append(reason)

    def linkRefused(self, link: LinkProtocol, rejected: Any) -> None:
        raise AssertionError(rejected)

    def linkBudget(self) -> Budget:
        return Budget(1 << 30)

    def tuneLinkSocket(self, transport: Any) -> None:
        pass

    def checkPeerCertificate(self, transport: Any, side: Side) -> str | None:
        return None


def stalled_link() -> tuple[LinkProtocol, Owner, Transport, LinkDecoder]:
    """A client link, handshake done, whose far side stopped reading: its transport paused the
    frame writer, and a frame waits in the writer's queue."""
    owner = Owner()
    handshake = ClientHandshake(NAME, LinkRole.META, new_session(), [0])
    link = LinkProtocol(owner, Side.CLIENT, handshake)
    transport = Transport()
    link.makeConnection(transport)
    server_decoder = LinkDecoder(Side.SERVER)
    (hello,) = server_decoder.feed(transport.value())
    transport.clear()
    reply, _ = ServerHandshake(Registry(NAME), [0]).receive(hello)
    link.dataReceived(reply)
    assert link.accepted is not None
    transport.producer.pauseProducing()
    link.writer.push(Ping(1, 0).encode())
    assert transport.value() == b""
    return link, owner, transport, server_decoder


def test_fail_with_last_words_writes_them_and_aborts_after_the_close_timeout() -> None:
    """LinkProtocol.fail with an ERROR frame on a transport whose far side does not read: the
    queued frames are dropped, the ERROR is written, the writer unregistered and loseConnection
    called; the transport is aborted once the owner's close_timeout (7.5 s) has passed."""
    link, owner, transport, decoder = stalled_link()
    error = ErrorFrame(ErrorCode.INTERNAL_ERROR, "giving up")

    link.fail("test", error.encode())

    assert decoder.feed(transport.value()) == [error]
    assert transport.events == ["unregister", "lose"]
    owner.clock.advance(7.4)
    assert transport.aborts == 0
    owner.clock.advance(0.2)
    assert transport.events == ["unregister", "lose", "abort"]
    link.connectionLost(Failure(ConnectionLost()))
    assert owner.down == ["test"]


def test_a_protocol_violation_says_error_and_aborts_after_the_close_timeout() -> None:
    """The same bound when the peer breaks the protocol (a frame with a bad magic): ERROR as
    last words, loseConnection, abort close_timeout later."""
    link, owner, transport, decoder = stalled_link()

    link.dataReceived(b"\x00" * 12)

    (error,) = decoder.feed(transport.value())
    assert isinstance(error, ErrorFrame) and error.code == ErrorCode.PROTOCOL_ERROR
    assert transport.events == ["unregister", "lose"]
    owner.clock.advance(7.4)
    assert transport.aborts == 0
    owner.clock.advance(0.2)
    assert transport.aborts == 1


# -- DRBD sockets dropped while reads from them are paused -----------------------------------------


def paused_session(env: Env) -> tuple[Transport, DrbdSocket]:
    """A data and a meta socket from our DRBD, the buffer full: reads from DRBD paused."""
    _, data = env.inside(P_INITIAL_DATA)
    meta, _ = env.inside(bytes.fromhex("83740267fff10000"))  # P_INITIAL_META
    env.bulk.transport.producer.pauseProducing()  # the link drains nothing
    env.conn.budget.add(env.conn.budget.limit)
    assert not env.conn.budget.reading and data.producerState == "paused"
    return data, meta


def test_a_reset_of_a_paused_drbd_socket_is_seen_at_the_next_heartbeat(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A paused transport reads nothing, so never sees DRBD's reset: the heartbeat asks the
    kernel (TCP_INFO) and closes the stream, telling the peer with DISCARD."""
    env = make_env(monkeypatch, {"ping-timeout": 20})
    data, _ = paused_session(env)
    env.meta.frames(heartbeats=True)
    env.tick(1.0)
    assert data.aborts == 0
    data.handle.tcp_state = 7  # reset by DRBD
    env.tick(0.5)
    assert data.aborts == 1


def test_a_paused_data_socket_goes_with_its_meta_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """DRBD's FIN on a data socket waits behind the data its kernel still holds for us, so
    a paused data socket looks alive: once the session's meta socket closes, it is closed too,
    at once."""
    env = make_env(monkeypatch)
    data, meta = paused_session(env)
    meta.connectionLost(Failure(ConnectionDone()))
    assert data.aborts == 1


def test_a_data_socket_is_left_alone_while_its_meta_socket_lives_or_reads_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a paused data socket with a live meta socket, nor a data socket without a meta
    socket while reads run (DRBD connects its data socket first), is taken for dropped."""
    env = make_env(monkeypatch)
    data, _ = paused_session(env)
    env.tick(5.0)
    assert data.aborts == 0
    lone_env = make_env(monkeypatch)
    _, lone = lone_env.inside(P_INITIAL_DATA)
    lone_env.tick(5.0)
    assert lone.aborts == 0


# -- the link's congestion control ---------------------------------------------------------------


def test_link_sockets_ask_for_bbr_by_default_and_follow_set_link_cc(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each link socket asks for BBR unless told otherwise; `set link-cc` changes the live link
    sockets at once, `system` leaves them alone; statistics report what the kernel runs."""
    env = make_env(monkeypatch)
    cc = (socket.IPPROTO_TCP, socket.TCP_CONGESTION)
    for link in (env.meta, env.bulk):
        assert [o[2] for o in link.transport.handle.options if o[:2] == cc] == [b"bbr"]
    registry = ConnectionRegistry(env.reactor)
    env.conn.setName(NAME)
    env.conn.setServiceParent(registry)
    assert f"{NAME}.link_cc bbr" in set(registry.statistics())

    env.conn.settings.apply("link-cc", 2)  # cubic
    env.conn.settingsChanged()
    assert env.bulk.transport.handle.congestion == b"cubic"
    assert f"{NAME}.link_cc cubic" in set(registry.statistics())
    before = list(env.bulk.transport.handle.options)
    env.conn.settings.apply("link-cc", 0)  # system
    env.conn.settingsChanged()
    assert env.bulk.transport.handle.options == before


def test_a_congestion_control_the_kernel_lacks_leaves_the_system_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real socket: asking for BBR works where the kernel has it; asking for one it lacks
    keeps the socket working with the system's default."""
    env = make_env(monkeypatch)
    available = open("/proc/sys/net/ipv4/tcp_available_congestion_control").read().split()
    with socket.socket() as real:
        env.conn.peer._tuning.congestionControl(real, "bbr", asked=False)
        got = real.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0")
        assert got == b"bbr" if "bbr" in available else got.decode() in available

        class Lacking:
            def setsockopt(self, *args: Any) -> None:
                raise OSError(2, "No such file or directory")

        env.conn.peer._tuning.congestionControl(Lacking(), "bbr", asked=False)  # logged, not raised
