"""Unit tests of the link lifecycle machine, the dial backoff and the heartbeat: no sockets, no
reactor. A recording core stands in for the connection's session, so each test shows which
decision the machine took for a sequence of events."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from drbdproxy.link import GoAway, GoAwayReason, Ping, Pong, RejectReason
from drbdproxy.relay.heartbeat import Heartbeat
from drbdproxy.relay.lifecycle import CONNECTED, PROXY_CONNECTED, Lifecycle, new_lifecycle
from drbdproxy.relay.session import Backoff

pytestmark = pytest.mark.unit

OURS, LOWER, HIGHER = b"\x50" * 16, b"\x10" * 16, b"\x90" * 16
BYE = GoAway(GoAwayReason.CONNECTION_REMOVED, "")


class Core:
    """Records what the machine asked for; ``silent`` and ``auth`` are the facts it asks."""

    def __init__(self) -> None:
        self.session: bytes | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.silent = False
        self.auth = False

    def enter(self, state: str, reason: str) -> None:
        self.calls.append(("enter", state))

    def scheduleDial(self, delay: float | None) -> None:
        self.calls.append(("scheduleDial", delay))

    def cancelDial(self) -> None:
        self.calls.append(("cancelDial",))

    def dialMeta(self) -> None:
        self.session = OURS
        self.calls.append(("dialMeta",))

    def adoptMeta(self, link: object) -> None:
        self.calls.append(("adoptMeta", link))

    def adoptBulk(self, link: object) -> None:
        self.calls.append(("adoptBulk", link))

    def dropLink(self, link: object, reason: str) -> None:
        self.calls.append(("dropLink", link))

    def linksUp(self) -> None:
        self.calls.append(("linksUp",))

    def teardown(self, reason: str, goaway: GoAway | None = None) -> None:
        self.calls.append(("teardown", goaway))

    def metaSilent(self) -> bool:
        return self.silent

    def authenticated(self) -> bool:
        return self.auth

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


def machine() -> tuple[Lifecycle, Core]:
    core = Core()
    return new_lifecycle(core), core


def up(m: Lifecycle, core: Core) -> None:
    """Dial, our meta link and then the bulk link come up: ProxyConnected."""
    m.start()
    m.dialDue()
    m.metaUp("meta")
    m.bulkUp("bulk")
    core.take()


def test_a_started_connection_dials_at_once_then_adopts_both_links() -> None:
    """start schedules a dial now; the timer dials the meta link; its handshake adopts it (and
    cancels any timer); the bulk link's makes the pair ProxyConnected (backoff reset and
    heartbeats are linksUp's)."""
    m, core = machine()
    m.start()
    assert core.take() == [("scheduleDial", 0)]
    m.dialDue()
    assert core.take() == [("dialMeta",)]
    m.metaUp("meta")
    assert core.take() == [("cancelDial",), ("adoptMeta", "meta")]
    m.bulkUp("bulk")
    assert core.take() == [("adoptBulk", "bulk"), ("linksUp",)]


def test_a_failed_dial_or_a_lost_link_tears_down_and_dials_after_backoff() -> None:
    """A dial that fails, and a link of the pair that is lost in any state, both mean teardown
    and a dial after the next backoff (None); a second loss before the dial changes nothing."""
    m, core = machine()
    m.start()
    m.dialDue()
    core.take()
    m.dialFailed("refused")
    assert core.take() == [("teardown", None), ("scheduleDial", None)]
    m.linkLost("late news")
    assert core.take() == []
    m.dialDue()
    m.metaUp("meta")
    core.take()
    m.linkLost("meta lost")
    assert core.take() == [("teardown", None), ("scheduleDial", None)]
    up(m, core)
    m.drbdRelayed()
    m.linkLost("bulk lost")
    assert core.take() == [("enter", CONNECTED), ("teardown", None), ("scheduleDial", None)]


def test_drbd_sockets_move_between_proxy_connected_and_connected_only_with_links_up() -> None:
    """drbdRelayed makes a ProxyConnected pair Connected, drbdLost goes back; before the links
    are up both are ignored, and a second drbdRelayed says nothing new."""
    m, core = machine()
    m.drbdRelayed()
    m.drbdLost()
    assert core.take() == []
    up(m, core)
    m.drbdRelayed()
    m.drbdRelayed()
    assert core.take() == [("enter", CONNECTED)]
    m.drbdLost()
    m.drbdLost()
    assert core.take() == [("enter", PROXY_CONNECTED)]


def test_crossed_dials_the_greater_session_wins() -> None:
    """While our dial is on its way, a peer meta link with a smaller session is refused
    DUPLICATE_META and one with a greater session is admitted; waiting, any is admitted."""
    m, core = machine()
    assert m.lookupMeta(LOWER) is None
    m.start()
    m.dialDue()
    assert m.lookupMeta(LOWER) is RejectReason.DUPLICATE_META
    assert m.lookupMeta(HIGHER) is None
    m.metaUp("peer's meta")
    assert core.take()[-1] == ("adoptMeta", "peer's meta")


def test_a_live_meta_link_is_replaced_only_when_silent_or_by_a_greater_authenticated_session() -> None:
    """With both links up, a new meta HELLO is DUPLICATE_META unless the live link is silent, or
    links authenticate and the newcomer's session is greater; the replacement tears down the
    old pair and adopts the new link without dialling."""
    m, core = machine()
    up(m, core)
    assert m.lookupMeta(HIGHER) is RejectReason.DUPLICATE_META
    core.auth = True
    assert m.lookupMeta(LOWER) is RejectReason.DUPLICATE_META
    assert m.lookupMeta(HIGHER) is None
    core.auth, core.silent = False, True
    assert m.lookupMeta(LOWER) is None
    m.metaUp("new meta")
    assert core.take() == [("teardown", None), ("adoptMeta", "new meta")]


def test_a_bulk_link_must_name_the_live_session_and_comes_once() -> None:
    """A bulk HELLO is NO_SUCH_SESSION without a meta link or with another session, admitted
    with the meta link's session, and BUSY once the bulk link is up."""
    m, core = machine()
    assert m.lookupBulk(OURS) is RejectReason.NO_SUCH_SESSION
    m.start()
    m.dialDue()
    assert m.lookupBulk(OURS) is RejectReason.NO_SUCH_SESSION
    m.metaUp("meta")
    assert m.lookupBulk(LOWER) is RejectReason.NO_SUCH_SESSION
    assert m.lookupBulk(OURS) is None
    m.bulkUp("bulk")
    assert m.lookupBulk(OURS) is RejectReason.BUSY
    assert m.lookupBulk(LOWER) is RejectReason.NO_SUCH_SESSION


def test_a_bulk_link_without_its_meta_link_is_dropped() -> None:
    """A bulk link whose handshake completes after its pair broke is closed, not adopted."""
    m, core = machine()
    up(m, core)
    m.linkLost("meta lost")
    core.take()
    m.bulkUp("stale bulk")
    assert core.take() == [("dropLink", "stale bulk")]


def test_stop_says_goaway_once_and_refuses_everything_after() -> None:
    """stop cancels the dial timer and tears down with GOAWAY; after it, lookups answer
    UNKNOWN_CONNECTION, late links are dropped, timers and a second stop do nothing, and a
    start begins again with a dial."""
    m, core = machine()
    up(m, core)
    m.stop(BYE)
    assert core.take() == [("cancelDial",), ("teardown", BYE)]
    assert m.lookupMeta(HIGHER) is RejectReason.UNKNOWN_CONNECTION
    assert m.lookupBulk(OURS) is RejectReason.UNKNOWN_CONNECTION
    m.metaUp("late")
    m.dialDue()
    m.linkLost("late")
    m.stop(BYE)
    assert core.take() == [("dropLink", "late")]
    m.start()  # a service may be started again: it dials again
    assert core.take() == [("scheduleDial", 0)]


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    """Dial delays double from 0.2 s to 10 s, each within +-20 %, from the injected RNG (so two
    runs with one seed agree); reset starts again at 0.2 s."""
    delays = [Backoff(random.Random(7)).next() for _ in range(1)]
    backoff = Backoff(random.Random(7))
    got = [backoff.next() for _ in range(10)]
    assert got[0] == delays[0]
    nominal = [min(0.2 * 2 ** i, 10.0) for i in range(10)]
    assert all(0.8 * n <= d <= 1.2 * n for d, n in zip(got, nominal))
    assert nominal[-1] == 10.0
    backoff.reset()
    assert 0.16 <= backoff.next() <= 0.24


class FakeWriter:
    def __init__(self) -> None:
        self.paused = False
        self.sent: list[bytes] = []

    def writeNow(self, data: bytes) -> None:
        self.sent.append(data)


class FakeMeta:
    def __init__(self) -> None:
        self.writer: Any = FakeWriter()
        self.reading: Any = None
        self.failed: list[str] = []

    def fail(self, reason: str, last_words: bytes | None = None) -> None:
        self.failed.append(reason)


def test_heartbeat_pings_on_the_injected_clock_and_times_out_a_silent_peer() -> None:
    """On a Clock with ping-timeout 4 s: a PING every second stamped with the clock's time, the
    RTT of a PONG from that clock, and the link failed once nothing came for over 4 s."""
    clock = Clock()
    clock.advance(100)
    beats: list[float] = []
    heartbeat = Heartbeat(clock, lambda: 4.0, beats.append, lambda: int(clock.seconds() * 1e9))
    link = FakeMeta()
    heartbeat.start(link)
    assert link.writer.sent == [Ping(1, 100 * 10**9).encode()] and beats == [100]
    heartbeat.pong(Pong(1, 99_750_000_000))  # as if sent a quarter of a second ago
    assert heartbeat.rtt_ms == pytest.approx(250.0)
    for _ in range(4):
        clock.advance(1)
    assert link.failed == [] and len(link.writer.sent) == 5
    clock.advance(1)
    assert link.failed == ["peer proxy timed out (ping-timeout)"]


def test_heartbeat_fails_a_peer_that_sends_but_never_reads() -> None:
    """A meta link heard from all the time but whose writer stays paused for longer than
    ping-timeout is failed as not reading."""
    clock = Clock()
    heartbeat = Heartbeat(clock, lambda: 2.0, lambda now: None)
    link = FakeMeta()
    heartbeat.start(link)
    link.writer.paused = True
    for _ in range(6):
        clock.advance(0.5)
        heartbeat.heard()
    assert link.failed == ["peer proxy stopped reading the meta link (ping-timeout)"]
