"""A connection's session with its peer proxy: the pair of links (meta and bulk), dialling them
with backoff, and dropping everything when the pair breaks. The :mod:`lifecycle` machine decides;
a :class:`PeerSession` is what its decisions do."""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall

from drbdproxy.admin.logs import logger
from drbdproxy.link import ClientHandshake, GoAway, LinkRole, Side, new_session
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.heartbeat import Heartbeat
from drbdproxy.relay.lifecycle import CONNECTING, PROXY_CONNECTED, Lifecycle, new_lifecycle
from drbdproxy.relay.links import LinkClientFactory, LinkProtocol
from drbdproxy.relay.streamtable import StreamTable
from drbdproxy.spec import ConnectionSpec


class Backoff:
    """Seconds to wait before the next dial: doubling from ``low`` to ``high``, each one spread
    by +-20 % so that many connections that broke together do not dial together."""

    def __init__(self, rng: random.Random, low: float = 0.2, high: float = 10.0) -> None:
        self._rng = rng
        self._low, self._high = low, high
        self._next = low

    def next(self) -> float:
        delay = self._next * self._rng.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self._high)
        return delay

    def reset(self) -> None:
        self._next = self._low


class PeerSession:
    """The links of one connection to its peer proxy (a :class:`lifecycle.LinkCore`)."""

    _log = logger()

    def __init__(self, owner: Any, spec: ConnectionSpec, reactor: Any, rng: random.Random,
                 handshake: Callable[[LinkRole, bytes], ClientHandshake], connect: Callable[
                     [str, int, LinkClientFactory, tuple[str, int] | None], Any],
                 table: StreamTable, heartbeat: Heartbeat, budget: Budget,
                 authenticated: bool, running: Callable[[], bool]) -> None:
        self._owner = owner
        self._name = spec.name
        self._spec = spec
        self._reactor = reactor
        self._handshake = handshake
        self._connect = connect
        self._table = table
        self._heartbeat = heartbeat
        self._budget = budget
        self._authenticated = authenticated
        #: Whether the connection's service runs: only then is a dial scheduled.
        self._owner_running = running
        self.backoff = Backoff(rng)
        self.state = CONNECTING
        self.reconnects = 0
        self.session: bytes | None = None
        self.meta: LinkProtocol | None = None
        self.bulk: LinkProtocol | None = None
        #: Our meta link being dialled, until it is up or gone. Both proxies dial (neither can
        #: tell from its addresses whether the other can reach it, behind NAT); when the dials
        #: cross, the greater session id wins on both sides (docs/link-protocol.md §4.6).
        self.outgoing: LinkClientFactory | None = None
        #: Our bulk link being dialled, and how long the pair may wait for its bulk link.
        self.bulk_dial: LinkClientFactory | None = None
        self._linking: IDelayedCall | None = None
        self.retry: IDelayedCall | None = None
        #: Why the pair last broke (or a dial failed), for operators.
        self.last_error: str | None = None
        self.machine: Lifecycle = new_lifecycle(self)

    # -- what the lifecycle asks -----------------------------------------------------------------
    def enter(self, state: str, reason: str) -> None:
        if state == self.state:
            return
        self._log.info("connection {name}: {old} -> {new} ({reason})",
                       name=self._name, old=self.state, new=state, reason=reason)
        self.state = state

    def scheduleDial(self, delay: float | None) -> None:
        if not self._owner_running() or (self.retry is not None and self.retry.active()):
            return
        if delay is None:
            delay = self.backoff.next()
        self.retry = self._reactor.callLater(delay, self.machine.dialDue)

    @property
    def retry_in(self) -> float | None:
        """Seconds until the next dial, if one is due."""
        if self.retry is None or not self.retry.active():
            return None
        return max(self.retry.getTime() - self._reactor.seconds(), 0.0)

    def cancelDial(self) -> None:
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        self.retry = None

    def dialMeta(self) -> None:
        self.session = new_session()
        self.outgoing = self._dial(LinkRole.META)

    def _dial(self, role: LinkRole) -> LinkClientFactory:
        assert self.session is not None
        factory = LinkClientFactory(self._owner, self._handshake(role, self.session))
        host, port = self._spec.connect_peer_outside
        # From our outside address: the peer admits links only from the address it knows us by,
        # and the route's default source may be another of this host's addresses.
        own = self._spec.listen_outside[0]
        source = (own, 0) if (":" in own) == (":" in host) else None
        factory.connector = self._connect(host, port, factory, source)
        return factory

    def dialFailed(self, factory: LinkClientFactory, reason: str) -> bool:
        """A dial of ours failed: news (True) only if it is a dial the session waits for."""
        if factory is self.outgoing:
            self.outgoing = None
        elif factory is self.bulk_dial:
            self.bulk_dial = None
        else:
            return False  # abandoned: the peer's link won, or the session it was for is gone
        self.machine.dialFailed(reason)
        return True

    def abandonOutgoing(self, why: str) -> None:
        """Give up our meta link being dialled (the peer's won, or we are going down)."""
        factory, self.outgoing = self.outgoing, None
        _abandon(factory, why)

    def adoptMeta(self, link: object) -> None:
        assert isinstance(link, LinkProtocol) and link.accepted is not None
        if link.side is Side.CLIENT:
            self.outgoing = None  # ours is up
        else:
            self.abandonOutgoing("crossed dials: the peer proxy's link won")
        self.meta = link
        self.session = link.accepted.session
        self._table.linkUp(link, link.side)
        self._heartbeat.heard()
        # The bulk link follows at once, or the pair is broken (its dial or handshake failed
        # on either side): it may take as long as a link's handshake may.
        self._linking = self._reactor.callLater(LinkProtocol.handshake_timeout,
                                                self.machine.linkLost, "no bulk link came")
        if link.side is Side.CLIENT:
            self.bulk_dial = self._dial(LinkRole.BULK)

    def adoptBulk(self, link: object) -> None:
        assert isinstance(link, LinkProtocol)
        self.bulk_dial = None
        self._stopLinking()
        self.bulk = link
        self._table.linkUp(link, link.side)

    def _stopLinking(self) -> None:
        if self._linking is not None and self._linking.active():
            self._linking.cancel()
        self._linking = None

    def dropLink(self, link: object, reason: str) -> None:
        assert isinstance(link, LinkProtocol)
        link.fail(reason)

    def linksUp(self) -> None:
        self.backoff.reset()
        self.enter(PROXY_CONNECTED, "links up")
        assert self.meta is not None
        self._heartbeat.start(self.meta)

    def metaSilent(self) -> bool:
        return self._heartbeat.silent()

    def authenticated(self) -> bool:
        return self._authenticated

    def teardown(self, reason: str, goaway: GoAway | None = None) -> None:
        """Drop both links, every DRBD socket and everything buffered. With ``goaway``, it is
        the links' last frame before their close; without, they are aborted at once."""
        was = self.state
        self.last_error = reason
        self.abandonOutgoing(reason)
        bulk_dial, self.bulk_dial = self.bulk_dial, None
        _abandon(bulk_dial, reason)
        self._stopLinking()
        self._heartbeat.stop()
        links = [link for link in (self.meta, self.bulk) if link is not None]
        dropped = sum(link.writer.close() for link in links if link.writer is not None)
        self._table.counters.discarded_to_peer += dropped
        self._table.abortAll()
        # Forgotten before they fail: their losses are no news of the next pair.
        self.meta = self.bulk = None
        for link in links:
            link.fail(reason, goaway.encode() if goaway is not None else None)
        if dropped:
            self._log.info("connection {name}: discarded {dropped} buffered bytes not yet sent",
                           name=self._name, dropped=dropped)
        self._budget.reset()
        if was != CONNECTING:
            self.reconnects += 1
            self.enter(CONNECTING, reason)


def _abandon(factory: LinkClientFactory | None, why: str) -> None:
    """Give up a dial of ours: its link if it connected, else the connect in progress."""
    if factory is None:
        return
    if factory.link is not None:
        factory.link.abandon(why)
    elif factory.connector is not None:
        factory.connector.disconnect()
