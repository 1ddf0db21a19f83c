"""Unit tests of who may bring up a link to the peer proxy, and of the bounds on what a link may
cost us: admission by address, the HELLO lookup (names, DUPLICATE_META, silent meta links,
crossed dials), the cap on links still in their handshake, PONG coalescing for a peer that does
not read, and the caps on streams and connects to DRBD.

No sockets: a ProxyConnection on a MemoryReactorClock, links and DRBD sockets on the
StringTransports of test_relay_units, the peer proxy played by the test with the sans-IO
handshakes and a LinkDecoder.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError, UserError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from drbdproxy.relay.connection import (
    MAX_DRBD_CONNECTS,
    MAX_STREAMS_PER_LINK,
    MAX_UNREAD_OPENS,
    ProxyConnection,
    State,
    peer_names,
)
from drbdproxy.spec import ConnectionSpec
from drbdproxy.link import ErrorCode, ErrorFrame, GoAway, GoAwayReason
from drbdproxy.link import (
    Accepted,
    ClientHandshake,
    Close,
    CloseReason,
    Data,
    Discard,
    LinkDecoder,
    LinkRole,
    Open,
    Pending,
    Ping,
    Pong,
    Reject,
    Rejected,
    RejectReason,
    ServerHandshake,
    Side,
    StreamKind,
    Welcome,
)
from drbdproxy.relay.links import (
    MAX_PRE_HANDSHAKE,
    LinkClientFactory,
    LinkProtocol,
    LinkServerFactory,
)

from helpers import Logged, logged
from test_relay_units import (
    NAME,
    PeerLink,
    SyncEncoder,
    Transport,
    make_env,
)

#: The peer proxy's outside IP in the connections built here (make_env's is 127.0.0.1).
PEER_IP = "192.0.2.7"
LOW_SESSION = bytes(16)
HIGH_SESSION = b"\xff" * 16


# -- helpers -------------------------------------------------------------------------------------


def make_conn(name: str = NAME, **kwargs: Any) -> ProxyConnection:
    """A connection (not started) on its own MemoryReactorClock, its peer proxy at PEER_IP."""
    spec = ConnectionSpec(name, listen_inside=("127.0.0.1", 7789),
                          connect_peer_outside=(PEER_IP, 7790),
                          listen_outside=("127.0.0.1", 7790), connect_drbd=("127.0.0.1", 7788))
    encoder: Any = SyncEncoder()
    return ProxyConnection(spec, MemoryReactorClock(), encoder, **kwargs)


def server_link(conn: ProxyConnection, source: str = "127.0.0.1") -> tuple[LinkProtocol, Transport]:
    """A TCP connection the peer dialled to our outside address, before its HELLO."""
    link = LinkProtocol(conn.peer, Side.SERVER, conn.peer.serverHandshake(source), source)
    transport = Transport()
    link.makeConnection(transport)
    return link, transport


def hello(conn: ProxyConnection, name: str, role: LinkRole, session: bytes,
          source: str = "127.0.0.1") -> tuple[LinkProtocol, Transport, Rejected | Accepted]:
    """The peer dials our outside address and sends its HELLO: what our side answered."""
    link, transport = server_link(conn, source)
    peer = ClientHandshake(name, role, session, [0])
    decoder = peer.decoder()
    link.dataReceived(peer.hello())
    (answer, *rest) = decoder.feed(transport.value())
    transport.clear()
    outcome = peer.receive(answer)
    assert isinstance(outcome, (Rejected, Accepted)), outcome
    if isinstance(outcome, Rejected):
        assert isinstance(answer, Reject) and rest == []
    else:
        assert isinstance(answer, Welcome)
    return link, transport, outcome


def peer_link(conn: ProxyConnection, role: LinkRole, session: bytes,
              name: str = NAME) -> PeerLink:
    """A link the peer dialled, accepted by our side (its handshake done)."""
    link, transport = server_link(conn)
    peer = ClientHandshake(name, role, session, [0])
    decoder = peer.decoder()
    link.dataReceived(peer.hello())
    (welcome, *_) = decoder.feed(transport.value())
    transport.clear()
    assert isinstance(peer.receive(welcome), Accepted)
    return PeerLink(link, transport, decoder)


@pytest.fixture
def warned() -> Iterator[Logged]:
    with logged(LogLevel.warn) as events:
        yield events


def advance(reactor: MemoryReactorClock, seconds: float, step: float = 0.125) -> None:
    """Let time pass in small steps, so that each heartbeat runs at its own time (one large
    advance runs a LoopingCall's overdue call with the clock already at the end)."""
    steps = round(seconds / step)
    assert abs(steps * step - seconds) < 1e-9
    for _ in range(steps):
        reactor.advance(step)


def dial(conn: ProxyConnection) -> tuple[LinkClientFactory, Any]:
    """Start the service and let it dial: our outgoing meta link, connect in progress."""
    reactor = conn.clock
    conn.startService()
    reactor.advance(0)
    (host, port, factory, _, _) = reactor.tcpClients[-1]
    assert (host, port) == (PEER_IP, 7790)
    assert isinstance(factory, LinkClientFactory) and conn.links.outgoing is factory
    assert factory.handshake.hello_frame.role is LinkRole.META
    return factory, factory.connector


def connect_outgoing(factory: LinkClientFactory) -> tuple[LinkProtocol, Transport, LinkDecoder]:
    """Our outgoing link's TCP connect completes; its HELLO is sent. Returns the peer's decoder."""
    link = factory.buildProtocol(IPv4Address("TCP", PEER_IP, 7790))
    transport = Transport()
    link.makeConnection(transport)
    decoder = LinkDecoder(Side.SERVER)
    (sent,) = decoder.feed(transport.value())
    transport.clear()
    assert sent == factory.handshake.hello_frame
    return link, transport, decoder


def refuse(link: LinkProtocol, reason: RejectReason) -> None:
    """The peer's side of our outgoing link refuses it with ``reason``."""
    assert isinstance(link.handshake, ClientHandshake)
    server = ServerHandshake(lambda name, role, session: reason, [0])
    reply, outcome = server.receive(link.handshake.hello_frame)
    assert isinstance(outcome, Rejected)
    link.dataReceived(reply)


# -- 1: names ------------------------------------------------------------------------------------


def test_peer_names_hold_the_name_and_every_drbdadm_mirror() -> None:
    """peer_names gives the name itself and its RESOURCE-PEER-SELF mirror, also when host names
    and the resource hold dashes (every split counts, so the right mirror is among them); a
    name without dashes, or too few to split in three, is only itself."""
    names = peer_names("r0-bob-alice")
    assert "r0-alice-bob" in names and "r0-bob-alice" in names
    dashed = peer_names("res-1-host-a-host-b")
    assert "res-1-host-a-host-b" in dashed
    assert "res-1-host-b-host-a" in dashed  # resource "res-1", hosts "host-a" and "host-b"
    # Every other reading only reorders the same parts.
    assert all(sorted(n.split("-")) == sorted("res-1-host-a-host-b".split("-")) for n in dashed)
    assert peer_names("r0") == frozenset({"r0"})
    assert peer_names("a-b") == frozenset({"a-b"})
    assert peer_names("r0--x") == frozenset({"r0--x"})  # an empty part is no reading


# -- 2, 3: admission by address ------------------------------------------------------------------


def test_admit_link_without_authentication_admits_only_the_peer_or_link_allow() -> None:
    """Without a link secret or TLS, only the configured peer outside IP (also as an IPv4-mapped
    IPv6 address) and the --link-allow networks are admitted; with a secret any address is. The
    listener's factory builds no protocol for a refused address (Twisted closes the socket)."""
    conn = make_conn()
    assert conn.peer.admitLink(PEER_IP)
    assert conn.peer.admitLink(f"::ffff:{PEER_IP}")
    assert not conn.peer.admitLink("192.0.2.8")
    assert not conn.peer.admitLink("10.1.2.3")
    assert not conn.peer.admitLink("not an address")

    allowing = make_conn(link_allow=(ipaddress.ip_network("10.0.0.0/8"),))
    assert allowing.peer.admitLink("10.1.2.3")
    assert allowing.peer.admitLink("::ffff:10.1.2.3")
    assert allowing.peer.admitLink(PEER_IP)
    assert not allowing.peer.admitLink("11.1.2.3")

    secret = make_conn(secret=b"x" * 32)
    assert secret.peer.admitLink("198.51.100.1") and secret.peer.admitLink("2001:db8::1")

    factory = LinkServerFactory(conn.peer)
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.8", 50000)) is None
    admitted = factory.buildProtocol(IPv4Address("TCP", PEER_IP, 50000))
    assert isinstance(admitted, LinkProtocol) and admitted.source == PEER_IP


def test_refusals_are_logged_with_their_source_and_summarised(warned: Logged) -> None:
    """A refused address is logged with the address; a burst of 600 refusals gives one line at
    once, then one summary line (counting the other 599) 10 s later on the connection's clock,
    and refusals that go on give at most one line per 10 s."""
    conn = make_conn()
    reactor = conn.clock
    conn.peer.admitLink("198.51.100.1")
    (first,) = warned.lines()
    assert "198.51.100.1" in first and PEER_IP in first and NAME in first

    warned.events.clear()
    reactor.advance(60)
    for i in range(600):
        conn.peer.admitLink(f"198.51.100.{i % 250 + 2}")
    assert len(warned.lines()) == 1
    reactor.advance(9.9)
    assert len(warned.lines()) == 1
    reactor.advance(0.2)
    (_, summary) = warned.lines()
    assert summary.startswith("599 more in the last 10 s, the last: refused a link")
    assert f"198.51.100.{599 % 250 + 2}" in summary
    reactor.advance(100)
    assert len(warned.lines()) == 2

    conn = make_conn()  # a fresh clock (at 0): steps of 1/8 s add up exactly
    reactor = conn.clock
    warned.events.clear()
    warned.clock = reactor
    for _ in range(600):  # eight a second for 75 s
        conn.peer.admitLink("198.51.100.1")
        reactor.advance(0.125)
    advance(reactor, 10)
    lines = warned.lines()
    assert [event["clock"] for event in warned.events] == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert all("198.51.100.1" in line for line in lines)
    assert all(" more in the last 10 s, the last: refused a link" in line for line in lines[1:])
    assert 1 + sum(int(line.split()[0]) for line in lines[1:]) == 600


# -- 4: the HELLO lookup -------------------------------------------------------------------------


def test_a_hello_naming_another_connection_is_rejected_unknown_connection(
        warned: Logged) -> None:
    """A HELLO naming neither the connection nor its drbdadm mirror gets REJECT
    UNKNOWN_CONNECTION (logged with its source); the mirror and the name itself are accepted."""
    conn = make_conn("r0-bob-alice")
    _, transport, outcome = hello(conn, "r0-carol-alice", LinkRole.META, LOW_SESSION,
                                  source="127.0.0.9")
    assert isinstance(outcome, Rejected) and outcome.reason is RejectReason.UNKNOWN_CONNECTION
    assert conn.meta is None
    assert transport.events == ["unregister", "lose"]  # closed after the REJECT
    (line,) = warned.lines()
    assert "127.0.0.9" in line and "meta link of r0-bob-alice" in line

    _, _, outcome = hello(conn, "r0-alice-bob", LinkRole.META, LOW_SESSION)
    assert isinstance(outcome, Accepted) and conn.meta is not None

    other = make_conn("r0-bob-alice")
    _, _, outcome = hello(other, "r0-bob-alice", LinkRole.META, LOW_SESSION)
    assert isinstance(outcome, Accepted)


def test_a_second_meta_hello_is_duplicate_meta_until_the_live_one_is_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the meta link is alive (heard from within ping-timeout, 10 s), a new control
    HELLO gets DUPLICATE_META, whatever its session. Once the live link has been silent for
    more than ping-timeout but the heartbeat has not dropped it yet (it looks every 2 s), the
    newcomer is accepted and replaces it: the old links are aborted, DRBD's state goes back to
    Connecting and the new meta link is the connection's."""
    env = make_env(monkeypatch)
    conn = env.conn
    for session in (LOW_SESSION, HIGH_SESSION):
        _, _, outcome = hello(conn, NAME, LinkRole.META, session)
        assert isinstance(outcome, Rejected)
        assert outcome.reason is RejectReason.DUPLICATE_META
    advance(env.reactor, 10.0)  # silent for exactly ping-timeout: still alive
    _, _, outcome = hello(conn, NAME, LinkRole.META, LOW_SESSION)
    assert isinstance(outcome, Rejected) and outcome.reason is RejectReason.DUPLICATE_META
    assert env.meta.transport.aborts == 0

    advance(env.reactor, 0.5)
    assert env.meta.transport.aborts == 0  # the heartbeat's next look is at 12 s
    new, _, outcome = hello(conn, NAME, LinkRole.META, LOW_SESSION)
    assert isinstance(outcome, Accepted)
    assert conn.meta is new
    assert env.meta.transport.aborts == 1 and env.bulk.transport.aborts == 1
    assert conn.state == State.CONNECTING and conn.reconnects == 1
    # The old links' loss comes afterwards and changes nothing.
    env.meta.link.connectionLost(Failure(ConnectionLost()))
    env.bulk.link.connectionLost(Failure(ConnectionLost()))
    assert conn.meta is new and new.transport.aborts == 0


def test_a_silent_meta_link_dropped_by_the_heartbeat_makes_way_for_a_new_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat drops a meta link silent for more than ping-timeout at its next beat
    (12 s here); once that link is lost, a new meta HELLO is accepted as the connection's
    meta link, and its bulk link brings the connection back to ProxyConnected."""
    env = make_env(monkeypatch)
    conn = env.conn
    advance(env.reactor, 11.875)
    assert env.meta.transport.aborts == 0
    advance(env.reactor, 0.125)
    assert env.meta.transport.aborts == 1
    env.meta.link.connectionLost(Failure(ConnectionLost()))
    assert conn.meta is None and conn.state == State.CONNECTING
    assert env.bulk.transport.aborts == 1

    new = peer_link(conn, LinkRole.META, LOW_SESSION)
    assert conn.meta is new.link
    peer_link(conn, LinkRole.BULK, LOW_SESSION)
    assert conn.state == State.PROXY_CONNECTED


def authenticated_hello(conn: ProxyConnection, secret: bytes, session: bytes
                        ) -> tuple[LinkProtocol, Transport, Rejected | Accepted]:
    """The peer dials with the link secret and proves it: what our side answered at the end."""
    link, transport = server_link(conn, "198.51.100.1")
    peer = ClientHandshake(NAME, LinkRole.META, session, [0], secret=secret)
    decoder = peer.decoder()
    link.dataReceived(peer.hello())
    outcome: Any = None
    while not isinstance(outcome, (Rejected, Accepted)):
        (frame,) = decoder.feed(transport.value())
        transport.clear()
        outcome = peer.receive(frame)
        if isinstance(outcome, Pending):
            link.dataReceived(outcome.send)
    return link, transport, outcome


def test_with_a_secret_a_greater_authenticated_session_replaces_the_live_meta_link() -> None:
    """With a link secret, a peer that proved it and brings a greater session id than the live
    meta link's (the peer restarted) replaces that link at once; a smaller one gets
    DUPLICATE_META while the live link is not silent."""
    secret = b"x" * 32
    conn = make_conn(secret=secret)
    middle = b"\x80" + bytes(15)
    first, first_t, outcome = authenticated_hello(conn, secret, middle)
    assert isinstance(outcome, Accepted) and conn.meta is first
    _, _, outcome = authenticated_hello(conn, secret, LOW_SESSION)
    assert isinstance(outcome, Rejected) and outcome.reason is RejectReason.DUPLICATE_META
    assert conn.meta is first and first_t.aborts == 0
    second, _, outcome = authenticated_hello(conn, secret, HIGH_SESSION)
    assert isinstance(outcome, Accepted) and conn.meta is second
    assert first_t.aborts == 1


# -- 5: crossed dials ----------------------------------------------------------------------------


def test_crossed_dials_our_pending_dial_wins_against_a_smaller_session() -> None:
    """Our meta dial is in progress (connect not done) and the peer's meta HELLO carries a
    smaller session id than ours: it is refused DUPLICATE_META and our dial goes on."""
    conn = make_conn()
    factory, connector = dial(conn)
    assert conn.links.session is not None and conn.links.session > LOW_SESSION
    _, _, outcome = hello(conn, NAME, LinkRole.META, LOW_SESSION)
    assert isinstance(outcome, Rejected) and outcome.reason is RejectReason.DUPLICATE_META
    assert conn.links.outgoing is factory and not connector._disconnected
    assert conn.meta is None


def test_crossed_dials_a_greater_peer_session_wins_and_our_pending_connect_is_abandoned(
        warned: Logged) -> None:
    """Our meta dial is still connecting and the peer's meta HELLO carries a greater
    session id: it is accepted, our connect is disconnected, and the connection goes on with the
    peer's session (its bulk link is accepted, ProxyConnected). The abandoned dial's failure
    changes nothing, and no redial is scheduled while the peer's link is up."""
    conn = make_conn()
    factory, connector = dial(conn)
    control = peer_link(conn, LinkRole.META, HIGH_SESSION)
    assert conn.meta is control.link and conn.links.outgoing is None
    assert connector._disconnected
    factory.clientConnectionFailed(connector, Failure(UserError()))  # what disconnect() leads to
    peer_link(conn, LinkRole.BULK, HIGH_SESSION)
    assert conn.state == State.PROXY_CONNECTED and conn.reconnects == 0
    clients = len(conn.clock.tcpClients)
    control.feed(Ping(1, 0))
    conn.clock.advance(5)
    assert len(conn.clock.tcpClients) == clients  # no new dial
    assert warned.lines() == []
    conn.stopService()


def test_crossed_dials_a_greater_peer_session_fails_our_connected_outgoing_link() -> None:
    """Our outgoing meta link is connected (HELLO sent, no answer yet) when the peer's meta
    HELLO with a greater session arrives: it is accepted and our link is failed (aborted); our
    link's loss then leaves the peer's link up, the state unchanged, and no redial."""
    conn = make_conn()
    factory, _ = dial(conn)
    ours, ours_t, _ = connect_outgoing(factory)
    control = peer_link(conn, LinkRole.META, HIGH_SESSION)
    assert conn.meta is control.link and conn.links.outgoing is None
    assert ours_t.aborts == 1
    peer_link(conn, LinkRole.BULK, HIGH_SESSION)
    ours.connectionLost(Failure(ConnectionLost()))
    assert conn.meta is control.link and conn.state == State.PROXY_CONNECTED
    assert control.transport.events == [] and conn.reconnects == 0
    clients = len(conn.clock.tcpClients)
    conn.clock.advance(1)
    assert len(conn.clock.tcpClients) == clients
    conn.stopService()


def test_crossed_dials_our_link_refused_duplicate_meta_leaves_the_peer_link_up() -> None:
    """The peer refuses our outgoing meta link with DUPLICATE_META (its session won) and
    its own meta link reaches us: the peer's link is accepted and stays up through our link's
    REJECT and loss, and no redial follows."""
    conn = make_conn()
    factory, _ = dial(conn)
    ours, ours_t, _ = connect_outgoing(factory)
    refuse(ours, RejectReason.DUPLICATE_META)
    assert ours_t.events == ["unregister", "lose"]  # closed after the REJECT
    control = peer_link(conn, LinkRole.META, HIGH_SESSION)
    bulk = peer_link(conn, LinkRole.BULK, HIGH_SESSION)
    assert conn.state == State.PROXY_CONNECTED

    ours.connectionLost(Failure(ConnectionDone()))

    assert conn.meta is control.link and conn.bulk is bulk.link
    assert conn.state == State.PROXY_CONNECTED and conn.reconnects == 0
    assert control.transport.events == [] and bulk.transport.events == []
    clients = len(conn.clock.tcpClients)
    control.feed(Ping(1, 0))
    conn.clock.advance(1)
    assert len(conn.clock.tcpClients) == clients
    conn.stopService()


def test_crossed_dials_our_link_refused_duplicate_meta_before_the_peer_link_arrives() -> None:
    """The peer refuses our outgoing meta link with DUPLICATE_META and the link is gone
    before the peer's own meta link reaches us: the peer's link is accepted, and the redial
    scheduled meanwhile does not dial once the peer's link is up."""
    conn = make_conn()
    factory, _ = dial(conn)
    ours, _, _ = connect_outgoing(factory)
    refuse(ours, RejectReason.DUPLICATE_META)
    ours.connectionLost(Failure(ConnectionDone()))
    assert conn.links.outgoing is None and conn.links.retry is not None and conn.links.retry.active()
    clients = len(conn.clock.tcpClients)
    control = peer_link(conn, LinkRole.META, HIGH_SESSION)
    peer_link(conn, LinkRole.BULK, HIGH_SESSION)
    control.feed(Ping(1, 0))
    conn.clock.advance(1)
    assert len(conn.clock.tcpClients) == clients
    assert conn.meta is control.link and conn.state == State.PROXY_CONNECTED
    conn.stopService()


@pytest.mark.parametrize("loser", ["refused", "abandoned"])
def test_crossed_dials_log_no_warning_for_our_losing_link(loser: str, warned: Logged) -> None:
    """Crossed dials are a normal start (both proxies
    dial; docs/link-protocol.md §4.6, "What drbdproxy does"): when our outgoing meta link
    loses, refused by the peer with DUPLICATE_META (linkRefused logs that at info, on
    purpose) or abandoned here because the peer's link won, neither the REJECT nor the losing
    link's loss is a warning. Now linkDown warns "a link of r0 from 192.0.2.7 failed before its
    handshake completed: refused: duplicate control: ..." (or "...: crossed dials: the peer
    proxy's link won") for it: the check `link.accepted is None` meant for links others dialled
    to us also catches our own outgoing link (and through the shared Summarised, it holds back
    the next real refusal for 10 s)."""
    conn = make_conn()
    factory, _ = dial(conn)
    ours, _, _ = connect_outgoing(factory)
    if loser == "refused":
        refuse(ours, RejectReason.DUPLICATE_META)
        control = peer_link(conn, LinkRole.META, HIGH_SESSION)
    else:
        control = peer_link(conn, LinkRole.META, HIGH_SESSION)
        assert ours.transport.aborts == 1  # type: ignore[union-attr]
    peer_link(conn, LinkRole.BULK, HIGH_SESSION)
    ours.connectionLost(Failure(ConnectionDone() if loser == "refused" else ConnectionLost()))
    assert conn.meta is control.link and conn.state == State.PROXY_CONNECTED
    assert warned.lines() == []
    conn.stopService()


# -- 6: links waiting for their handshake --------------------------------------------------------


def test_at_most_max_pre_handshake_links_wait_for_their_handshake() -> None:
    """MAX_PRE_HANDSHAKE (16) links that never send are kept; one more aborts the oldest (only
    it). A link whose handshake completed, or that was refused, no longer counts: the next
    newcomers drop the oldest links still waiting, never those."""
    conn = make_conn()
    factory = LinkServerFactory(conn.peer)
    address = IPv4Address("TCP", PEER_IP, 50000)

    def connect() -> tuple[LinkProtocol, Transport]:
        link = factory.buildProtocol(address)
        assert link is not None
        transport = Transport()
        link.makeConnection(transport)
        return link, transport

    waiting = [connect() for _ in range(MAX_PRE_HANDSHAKE)]
    assert all(t.aborts == 0 for _, t in waiting)
    extra = connect()
    assert waiting[0][1].events == ["abort"]
    assert all(t.aborts == 0 for _, t in waiting[1:]) and extra[1].aborts == 0
    waiting[0][0].connectionLost(Failure(ConnectionLost()))

    # Now waiting: 1..15 and extra. Link 1 completes its handshake, link 2 is refused.
    up, up_t = waiting[1]
    up.dataReceived(ClientHandshake(NAME, LinkRole.META, LOW_SESSION, [0]).hello())
    assert up.accepted is not None and conn.meta is up
    refused, refused_t = waiting[2]
    refused.dataReceived(ClientHandshake("other", LinkRole.META, LOW_SESSION, [0]).hello())
    assert refused_t.events == ["unregister", "lose"]
    newcomers = [connect(), connect()]  # 16 waiting again: nobody dropped
    assert all(t.aborts == 0 for _, t in waiting[1:] + [extra] + newcomers)
    connect()
    assert waiting[3][1].events == ["abort"]
    assert up_t.aborts == 0 and refused_t.aborts == 0
    assert all(t.aborts == 0 for _, t in waiting[4:] + [extra] + newcomers)
    # A link lost before its handshake no longer counts either.
    waiting[4][0].connectionLost(Failure(ConnectionLost()))
    connect()
    assert all(t.aborts == 0 for _, t in waiting[5:] + [extra] + newcomers)


# -- 7: PONGs to a peer that does not read -------------------------------------------------------


def test_pongs_to_a_peer_that_does_not_read_are_coalesced_into_the_latest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the meta link's transport refuses writes, 10,000 PINGs write nothing and keep
    only the latest PONG; when the transport takes writes again exactly one PONG, the latest
    token's, is written, and later PINGs are answered at once again."""
    env = make_env(monkeypatch)
    writer = env.meta.link.writer
    assert env.meta.transport.producer is writer
    writer.pauseProducing()
    for first in range(1, 10_001, 1000):
        env.meta.feed(*(Ping(token, token * 7) for token in range(first, first + 1000)))
    assert env.meta.transport.value() == b""

    writer.resumeProducing()

    assert env.meta.frames(heartbeats=True) == [Pong(10_000, 70_000)]
    env.meta.feed(Ping(10_001, 1))
    assert env.meta.frames(heartbeats=True) == [Pong(10_001, 1)]


def test_a_peer_that_sends_pings_but_does_not_read_is_dropped_after_ping_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that keeps sending PINGs (so it is not silent) but reads nothing of ours (the
    meta link's transport refuses writes) is dropped once it has not read for more than
    ping-timeout (10 s): not before, and by the heartbeat beat after (2 s interval). Both links
    are aborted and the connection goes back to Connecting."""
    env = make_env(monkeypatch)
    env.meta.link.writer.pauseProducing()
    env.tick(10.0)
    assert env.meta.transport.aborts == 0
    env.tick(4.0)
    assert env.meta.transport.aborts == 1
    env.meta.link.connectionLost(Failure(ConnectionLost()))
    assert env.bulk.transport.aborts == 1
    assert env.conn.state == State.CONNECTING and env.conn.meta is None


def test_a_peer_that_reads_again_in_time_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A meta link whose transport refuses writes for less than ping-timeout, then takes
    them again, is kept (the unread time starts afresh)."""
    env = make_env(monkeypatch)
    writer = env.meta.link.writer
    for _ in range(3):
        writer.pauseProducing()
        env.tick(8.0)
        writer.resumeProducing()
        env.tick(2.0)
    assert env.meta.transport.aborts == 0
    assert env.conn.state == State.PROXY_CONNECTED


# -- 8: stream caps ------------------------------------------------------------------------------


def test_opens_beyond_the_concurrent_drbd_connects_are_refused(
        monkeypatch: pytest.MonkeyPatch, warned: Logged) -> None:
    """With MAX_DRBD_CONNECTS (8) connects to our DRBD in progress (over both links), a further
    OPEN gets CLOSE REFUSED (4) on its link and no connect; DATA the peer sent after it is
    dropped without a protocol error. Once connects complete, OPENs are taken again."""
    env = make_env(monkeypatch)
    sid = 1
    for i in range(MAX_DRBD_CONNECTS):
        env.peer_opens(sid, StreamKind.META if i % 2 else StreamKind.DATA)
        sid += 2
    refused_sid = sid
    env.bulk.feed(Open(refused_sid, StreamKind.DATA, Side.CLIENT),
                  Data.uncompressed(refused_sid, b"x" * 100))
    assert len(env.connects) == MAX_DRBD_CONNECTS
    (close,) = env.bulk.frames()
    assert isinstance(close, Close) and close.stream == refused_sid
    assert close.reason == CloseReason.REFUSED == 4
    assert env.bulk.transport.events == [] and env.conn.state == State.PROXY_CONNECTED
    sid += 2
    env.meta.feed(Open(sid, StreamKind.META, Side.CLIENT))
    (close,) = env.meta.frames()
    assert isinstance(close, Close) and close.stream == sid and close.reason == CloseReason.REFUSED
    assert len(env.connects) == MAX_DRBD_CONNECTS
    assert len(warned.lines("refusing stream")) == 1  # summarised
    # The peer's DISCARD and CLOSE for the refused stream are taken quietly.
    env.meta.feed(Discard(LinkRole.BULK, refused_sid, CloseReason.EOF))
    env.bulk.feed(Close(refused_sid, CloseReason.EOF))
    assert env.bulk.frames() == [] and env.meta.frames() == []
    assert env.bulk.transport.events == [] and env.meta.transport.events == []

    env.connects[0].complete()
    sid += 2
    env.peer_opens(sid)
    assert env.bulk.frames() == []
    for connector in env.connects[1:]:
        connector.complete()
    for _ in range(MAX_DRBD_CONNECTS - 1):
        sid += 2
        env.peer_opens(sid)
    assert env.bulk.frames() == [] and env.meta.frames() == []


def test_a_peer_that_sends_opens_but_reads_none_of_the_answers_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each OPEN is answered (refused, or a CLOSE once our DRBD refuses the connect): while the
    peer reads nothing of the link, MAX_UNREAD_OPENS of them are taken, the next ends the link
    with an ERROR (STREAM_ERROR), so answers cannot pile up without bound."""
    env = make_env(monkeypatch)
    for i in range(MAX_DRBD_CONNECTS):
        env.peer_opens(1 + 2 * i)
    env.bulk.link.writer.pauseProducing()  # the peer reads nothing of the bulk link
    first = 1 + 2 * MAX_DRBD_CONNECTS
    env.bulk.feed(*(Open(first + 2 * i, StreamKind.DATA, Side.CLIENT)
                    for i in range(MAX_UNREAD_OPENS)))
    assert env.bulk.transport.events == [] and env.conn.state == State.PROXY_CONNECTED
    env.bulk.feed(Open(first + 2 * MAX_UNREAD_OPENS, StreamKind.DATA, Side.CLIENT))
    assert env.bulk.transport.events[-1] == "lose"  # after the ERROR, within the close bound
    error = [f for f in env.bulk.frames() if isinstance(f, ErrorFrame)]
    assert error and error[-1].code == ErrorCode.STREAM_ERROR


def test_opens_beyond_the_streams_per_link_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link carries at most MAX_STREAMS_PER_LINK (32) streams: the peer's OPEN beyond that
    gets CLOSE REFUSED and no connect, while the other link still takes streams; once a stream
    closes, the link takes one more."""
    env = make_env(monkeypatch)
    sid = 1
    socks = []
    for _ in range(MAX_STREAMS_PER_LINK):
        socks.append(env.peer_opens(sid).complete())
        sid += 2
    assert len(env.conn.table.streams) == MAX_STREAMS_PER_LINK
    env.bulk.feed(Open(sid, StreamKind.DATA, Side.CLIENT))
    (close,) = env.bulk.frames()
    assert close == Close(sid, CloseReason.REFUSED, close.message) and close.message
    assert len(env.connects) == MAX_STREAMS_PER_LINK
    env.peer_opens(1, StreamKind.META).complete()  # the meta link has its own count

    sock, _ = socks[0]
    sock.connectionLost(Failure(ConnectionDone()))  # our DRBD closes one stream
    (closed,) = env.bulk.frames()
    assert closed == Close(1, CloseReason.EOF)
    sid += 2
    env.peer_opens(sid)
    assert env.bulk.frames() == []


def test_inside_sockets_beyond_the_streams_per_link_are_aborted(
        monkeypatch: pytest.MonkeyPatch, warned: Logged) -> None:
    """Our DRBD's sockets count against the same cap as the peer's OPENs: with the bulk link at
    MAX_STREAMS_PER_LINK streams (ours and the peer's), one more data socket to the inside
    address is aborted once it names its kind, with no OPEN sent, and the refusal is logged."""
    env = make_env(monkeypatch)
    peer_streams = 4
    for i in range(peer_streams):
        env.peer_opens(2 * i + 1).complete()
    inside = [env.inside() for _ in range(MAX_STREAMS_PER_LINK - peer_streams)]
    assert all(t.aborts == 0 for _, t in inside)
    opens = [f for f in env.bulk.frames() if isinstance(f, Open)]
    assert len(opens) == MAX_STREAMS_PER_LINK - peer_streams

    _, extra = env.inside()

    assert extra.events == ["abort"]
    assert env.bulk.frames() == []
    assert len(env.conn.table.streams) == MAX_STREAMS_PER_LINK
    assert len(warned.lines("refusing a DRBD connection")) == 1
    meta, meta_t = env.inside(bytes.fromhex("83740267fff10000"))  # the meta link has room
    assert meta_t.aborts == 0


# -- what an operator reads when the peer proxy is not there ------------------------------------


def test_a_connection_that_dials_itself_is_refused_and_says_so(warned: Logged) -> None:
    """A connection whose peer address is its own outside address gets its own HELLO: it is
    refused (not left Connecting against itself), and the warning names the address."""
    conn = make_conn()
    dial(conn)
    assert conn.links.session is not None
    _, _, outcome = hello(conn, NAME, LinkRole.META, conn.links.session)
    assert isinstance(outcome, Rejected) and outcome.reason is RejectReason.UNKNOWN_CONNECTION
    (line,) = warned.lines("dialled itself")
    assert f"{PEER_IP}:7790" in line and NAME in line
    assert conn.meta is None and conn.state == State.CONNECTING
    conn.stopService()


def test_a_peer_that_stays_unreachable_is_a_warning_with_its_address_and_shows_in_status(
        warned: Logged) -> None:
    """A failed dial shows in the status as the last error with the seconds to the next dial
    (the backoff); it is no warning while the peer may still be starting, but once it has been
    unreachable for 30 s each failure is, with the peer's address (rate-limited)."""
    conn = make_conn()
    factory, connector = dial(conn)
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    status = conn.status()
    assert status.last_error is not None and "dial failed" in status.last_error
    assert status.retry_in is not None and 0.16 <= status.retry_in <= 0.24
    assert warned.lines("cannot reach") == []
    reactor = conn.clock
    while reactor.seconds() < 30:
        reactor.advance(conn.status().retry_in or 0)
        (_, _, factory, _, _) = reactor.tcpClients[-1]
        factory.clientConnectionFailed(factory.connector, Failure(ConnectionRefusedError()))
    (line,) = warned.lines("cannot reach the peer proxy")
    assert f"{PEER_IP}:7790" in line and "refused" in line
    away = re.search(r" for (\d+) s: ", line)
    assert away is not None and 30 <= int(away.group(1)) <= 42  # the first dial after 30 s
    conn.stopService()


def test_a_peer_killed_without_goaway_is_told_apart_from_a_deliberate_shutdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A link closed by a bare FIN reads as closed without a GOAWAY; a GOAWAY names the
    peer's reason; both are the last error the status gives."""
    env = make_env(monkeypatch)
    env.meta.link.connectionLost(Failure(ConnectionDone()))
    assert env.conn.status().last_error == (
        "meta link lost: the peer closed the link without a GOAWAY (killed, or a middlebox"
        " closed it)")
    env = make_env(monkeypatch)
    env.meta.feed(GoAway(GoAwayReason.SHUTDOWN, "daemon stopping"))
    assert env.conn.status().last_error == (
        "the peer proxy said GOAWAY: shutdown (daemon stopping)")


# -- the bulk link that never comes -------------------------------------------------------------


def accept(link: LinkProtocol) -> None:
    """The peer's side of our outgoing link accepts it (WELCOME)."""
    assert isinstance(link.handshake, ClientHandshake)
    server = ServerHandshake(lambda name, role, session: None, [0])
    reply, outcome = server.receive(link.handshake.hello_frame)
    assert isinstance(outcome, Accepted)
    link.dataReceived(reply)


def our_meta_up(conn: ProxyConnection) -> tuple[LinkProtocol, Transport, LinkClientFactory]:
    """Our meta link is dialled and accepted; the bulk link's dial is in progress."""
    factory, _ = dial(conn)
    meta, meta_t, _ = connect_outgoing(factory)
    accept(meta)
    assert conn.meta is meta and conn.links.bulk_dial is not None
    (_, _, bulk_factory, _, _) = conn.clock.tcpClients[-1]
    assert bulk_factory is conn.links.bulk_dial
    return meta, meta_t, bulk_factory


@pytest.mark.parametrize("how", ["lost", "refused"])
def test_a_bulk_link_that_fails_in_its_handshake_breaks_the_pair_and_redials(how: str) -> None:
    """Our bulk link connects but is lost, or refused, before its handshake completes: the pair
    cannot come up, so the meta link is dropped and a dial follows after backoff (not stuck
    in Connecting with a meta link and no bulk link)."""
    conn = make_conn()
    meta, meta_t, bulk_factory = our_meta_up(conn)
    bulk, _, _ = connect_outgoing(bulk_factory)
    if how == "refused":
        refuse(bulk, RejectReason.NO_SUCH_SESSION)
    bulk.connectionLost(Failure(ConnectionDone()))
    assert conn.meta is None and meta_t.aborts == 1
    assert conn.state == State.CONNECTING and conn.links.retry is not None
    assert conn.links.retry.active()
    conn.stopService()


def test_a_pair_whose_bulk_link_never_comes_is_dropped_after_the_handshake_bound() -> None:
    """The peer's meta link is accepted but its bulk link never arrives: after a link's
    handshake bound (10 s) the meta link is dropped and this side dials again."""
    conn = make_conn()
    conn.startService()
    meta = peer_link(conn, LinkRole.META, HIGH_SESSION)
    assert conn.meta is meta.link
    advance(conn.clock, 9.875)
    assert meta.transport.aborts == 0
    advance(conn.clock, 0.25)
    assert meta.transport.aborts == 1 and conn.meta is None
    assert conn.status().last_error == "no bulk link came"
    assert conn.links.retry is not None and conn.links.retry.active()
    conn.stopService()


def test_teardown_gives_up_our_bulk_dial_in_progress() -> None:
    """When the pair breaks while our bulk link is still connecting, that connect is given up
    (a late bulk link would be refused by the peer and warned about for nothing)."""
    conn = make_conn()
    meta, _, bulk_factory = our_meta_up(conn)
    meta.connectionLost(Failure(ConnectionLost()))
    assert bulk_factory.connector._disconnected
    assert conn.links.bulk_dial is None
    conn.stopService()


def test_connects_to_drbd_refused_for_a_while_are_a_warning_with_drbds_address(
        monkeypatch: pytest.MonkeyPatch, warned: Logged) -> None:
    """A connect to our DRBD that is refused (DRBD still connecting itself) is no warning; once
    no connect has worked for 30 s, each refusal is one, with DRBD's address (rate-limited); a
    connect that works starts the count again."""
    env = make_env(monkeypatch, {"ping-timeout": 70})
    sid = 1

    def refused_open() -> None:
        nonlocal sid
        env.bulk.feed(Open(sid, StreamKind.DATA, Side.CLIENT))
        sid += 2
        connector = env.connects[-1]
        connector.state = "disconnected"
        connector.factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    refused_open()
    assert warned.lines("local DRBD") == []
    env.tick(31)
    refused_open()
    (line,) = warned.lines("local DRBD")
    assert "at 127.0.0.1:7788 " in line and "bulk/3" in line and "31 s without a connect" in line
    env.bulk.feed(Open(sid, StreamKind.DATA, Side.CLIENT))
    sid += 2
    env.connects[-1].complete()
    refused_open()
    assert len(warned.lines("local DRBD")) == 1
