"""The life of a connection's pair of links to the peer proxy, as a state machine.

``Connecting`` (in DRBD Proxy's words) is three states here: *waiting* for the next dial,
*dialling* our meta link, and *linking* (the meta link is up, the bulk link is not yet).
``ProxyConnected`` has both links, ``Connected`` also relays DRBD's data and meta sockets. Every
decision about links lives here: when to dial, which of two crossed dials wins, when a newcomer
may replace a live meta link, which bulk link belongs to which meta link. What the decisions do
(sockets, timers, log lines) is the :class:`LinkCore`'s.
"""

from __future__ import annotations

from typing import Protocol

from automat import TypeMachineBuilder

from drbdproxy.link import GoAway, RejectReason

#: Connection states as DRBD Proxy v4 names them.
CONNECTING = "Connecting"
PROXY_CONNECTED = "ProxyConnected"
CONNECTED = "Connected"
#: All of them, in the order a connection comes up.
STATES = (CONNECTING, PROXY_CONNECTED, CONNECTED)


class Lifecycle(Protocol):
    """What happens to a connection's links (the machine's inputs)."""

    def start(self) -> None:
        """The connection is configured: dial soon."""

    def dialDue(self) -> None:
        """The dial timer fired."""

    def dialFailed(self, reason: str) -> None:
        """Our dial of a link failed before its handshake completed."""

    def metaUp(self, link: object) -> None:
        """A meta link completed its handshake (ours, or one the peer dialled)."""

    def bulkUp(self, link: object) -> None:
        """The bulk link completed its handshake."""

    def linkLost(self, reason: str) -> None:
        """A link of the pair went down, timed out, or the peer said GOAWAY or ERROR."""

    def drbdRelayed(self) -> None:
        """DRBD's data and meta sockets are both relayed."""

    def drbdLost(self) -> None:
        """One of DRBD's data or meta sockets closed."""

    def stop(self, goaway: GoAway) -> None:
        """The connection is removed: say ``goaway`` and close."""

    def lookupMeta(self, session: bytes) -> RejectReason | None:
        """May a meta link of ``session`` complete its handshake? None, or why not."""

    def lookupBulk(self, session: bytes) -> RejectReason | None:
        """May a bulk link of ``session`` complete its handshake? None, or why not."""


class LinkCore(Protocol):
    """What the machine's decisions do."""

    #: The session of our meta link: the one being dialled, or the live one.
    session: bytes | None

    def enter(self, state: str, reason: str) -> None:
        """The connection's state (as operators see it) is now ``state``."""

    def scheduleDial(self, delay: float | None) -> None:
        """Dial after ``delay`` seconds (None: after the next backoff)."""

    def cancelDial(self) -> None: ...

    def dialMeta(self) -> None:
        """Dial our meta link, with a new session."""

    def adoptMeta(self, link: object) -> None:
        """``link`` is the connection's meta link (any dial of ours still on its way is given up;
        the side that dialled it dials the bulk link)."""

    def adoptBulk(self, link: object) -> None: ...

    def dropLink(self, link: object, reason: str) -> None:
        """Close a link that came up where it has no place (the pair it belonged to is gone)."""

    def linksUp(self) -> None:
        """Both links are up: backoff starts afresh, heartbeats start."""

    def teardown(self, reason: str, goaway: GoAway | None = None) -> None:
        """Drop both links, every DRBD socket and everything buffered."""

    def metaSilent(self) -> bool:
        """Nothing came on the live meta link for longer than ping-timeout."""

    def authenticated(self) -> bool:
        """Links prove who they are (a link secret or mutual TLS)."""


_builder = TypeMachineBuilder(Lifecycle, LinkCore)  # type: ignore[type-abstract]
waiting = _builder.state("waiting")
dialling = _builder.state("dialling")
linking = _builder.state("linking")
proxyConnected = _builder.state("proxyConnected")
connected = _builder.state("connected")
stopped = _builder.state("stopped")

_UP = (linking, proxyConnected, connected)
_CONNECTING = (waiting, dialling, linking)


# -- dialling ------------------------------------------------------------------------------------
@waiting.upon(Lifecycle.start).loop()
def _start(machine: Lifecycle, core: LinkCore) -> None:
    core.scheduleDial(0)


@stopped.upon(Lifecycle.start).to(waiting)
def _restart(machine: Lifecycle, core: LinkCore) -> None:
    core.scheduleDial(0)


@waiting.upon(Lifecycle.dialDue).to(dialling)
def _dial(machine: Lifecycle, core: LinkCore) -> None:
    core.dialMeta()


@dialling.upon(Lifecycle.dialFailed).to(waiting)
@linking.upon(Lifecycle.dialFailed).to(waiting)
def _dialFailed(machine: Lifecycle, core: LinkCore, reason: str) -> None:
    core.teardown(f"dial failed: {reason}")
    core.scheduleDial(None)


# -- links up ------------------------------------------------------------------------------------
@waiting.upon(Lifecycle.metaUp).to(linking)
@dialling.upon(Lifecycle.metaUp).to(linking)
def _metaUp(machine: Lifecycle, core: LinkCore, link: object) -> None:
    core.cancelDial()
    core.adoptMeta(link)


@linking.upon(Lifecycle.metaUp).loop()
@proxyConnected.upon(Lifecycle.metaUp).to(linking)
@connected.upon(Lifecycle.metaUp).to(linking)
def _metaReplaced(machine: Lifecycle, core: LinkCore, link: object) -> None:
    # The lookup let it in: the peer restarted (our link is silent) or proved who it is.
    core.teardown("the peer proxy opened a new meta link")
    core.adoptMeta(link)


@linking.upon(Lifecycle.bulkUp).to(proxyConnected)
def _bulkUp(machine: Lifecycle, core: LinkCore, link: object) -> None:
    core.adoptBulk(link)
    core.linksUp()


@proxyConnected.upon(Lifecycle.drbdRelayed).to(connected)
def _relayed(machine: Lifecycle, core: LinkCore) -> None:
    core.enter(CONNECTED, "DRBD data and meta sockets relayed")


@connected.upon(Lifecycle.drbdLost).to(proxyConnected)
def _drbdLost(machine: Lifecycle, core: LinkCore) -> None:
    core.enter(PROXY_CONNECTED, "a DRBD socket closed")


# -- links down ----------------------------------------------------------------------------------
@dialling.upon(Lifecycle.linkLost).to(waiting)
@linking.upon(Lifecycle.linkLost).to(waiting)
@proxyConnected.upon(Lifecycle.linkLost).to(waiting)
@connected.upon(Lifecycle.linkLost).to(waiting)
def _lost(machine: Lifecycle, core: LinkCore, reason: str) -> None:
    core.teardown(reason)
    core.scheduleDial(None)


def _stray(machine: Lifecycle, core: LinkCore, link: object) -> None:
    core.dropLink(link, "its meta link is gone")


for _state in (waiting, dialling, proxyConnected, connected, stopped):
    _state.upon(Lifecycle.bulkUp).loop()(_stray)
stopped.upon(Lifecycle.metaUp).loop()(_stray)


def _stop(machine: Lifecycle, core: LinkCore, goaway: GoAway) -> None:
    core.cancelDial()
    core.teardown("connection removed", goaway)


for _state in (waiting, dialling, linking, proxyConnected, connected):
    _state.upon(Lifecycle.stop).to(stopped)(_stop)


# -- handshake lookups ---------------------------------------------------------------------------
@waiting.upon(Lifecycle.lookupMeta).loop()
def _anyMeta(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    return None


@dialling.upon(Lifecycle.lookupMeta).loop()
def _crossedDials(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    # Both proxies dialled at once: the greater session wins on both sides.
    if core.session is not None and core.session > session:
        return RejectReason.DUPLICATE_META
    return None


def _replacement(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    # A restarted peer's new link replaces a live one only once that is silent, or if the
    # newcomer proved who it is (and is no crossed dial we already won).
    if core.metaSilent():
        return None
    if core.authenticated() and core.session is not None and session > core.session:
        return None
    return RejectReason.DUPLICATE_META


@linking.upon(Lifecycle.lookupBulk).loop()
def _pairBulk(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    return None if session == core.session else RejectReason.NO_SUCH_SESSION


def _bulkBusy(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    return RejectReason.BUSY if session == core.session else RejectReason.NO_SUCH_SESSION


def _noSession(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    return RejectReason.NO_SUCH_SESSION


def _gone(machine: Lifecycle, core: LinkCore, session: bytes) -> RejectReason | None:
    return RejectReason.UNKNOWN_CONNECTION


for _state in _UP:
    _state.upon(Lifecycle.lookupMeta).loop()(_replacement)
for _state in (proxyConnected, connected):
    _state.upon(Lifecycle.lookupBulk).loop()(_bulkBusy)
for _state in (waiting, dialling):
    _state.upon(Lifecycle.lookupBulk).loop()(_noSession)
stopped.upon(Lifecycle.lookupMeta).loop()(_gone)
stopped.upon(Lifecycle.lookupBulk).loop()(_gone)


# -- events that change nothing where they come ------------------------------------------------
def _nothing(machine: Lifecycle, core: LinkCore, *args: object) -> None:
    return None


_IGNORED = {
    # A timer or a dial result that a link from the peer overtook; a loss the teardown it
    # caused has dealt with already; a DRBD socket's news in a state that does not count them.
    Lifecycle.start: (dialling, linking, proxyConnected, connected),
    Lifecycle.dialDue: (dialling, linking, proxyConnected, connected, stopped),
    Lifecycle.dialFailed: (waiting, proxyConnected, connected, stopped),
    Lifecycle.linkLost: (waiting, stopped),
    Lifecycle.drbdRelayed: (waiting, dialling, linking, connected, stopped),
    Lifecycle.drbdLost: (waiting, dialling, linking, proxyConnected, stopped),
    Lifecycle.stop: (stopped,),
}
for _input, _states in _IGNORED.items():
    for _state in _states:
        _state.upon(_input).loop()(_nothing)  # type: ignore[arg-type]

#: Builds the machine of one connection around its core.
new_lifecycle = _builder.build()
