"""A proxy-to-proxy link as a Twisted protocol: bytes to frames and back, nothing more.

Each link is either the connection's meta link (handshake, heartbeats, DRBD meta sockets) or
its bulk link (DRBD data sockets). What a frame means is decided by the link's owner.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer
from twisted.python.failure import Failure

from drbdproxy.relay.closing import BoundedClose
from drbdproxy.admin.logs import logger
from drbdproxy.link import (
    Accepted,
    ClientHandshake,
    Data,
    Frame,
    LinkError,
    LinkProtocolError,
    LinkRole,
    Pending,
    Rejected,
    ServerHandshake,
    Side,
)
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.writer import FrameWriter, PauseReasons
from drbdproxy.relay.sockets import TRANSPORT_BUFFER, tune_transport

#: Raw bytes of DATA frames a link still hands on once reading is paused mid-read: what one
#: read of raw frames can complete (its own bytes and the rest of a frame begun in the read
#: before), so that only compression (a read inflating to many times its size) makes it stop.
PAUSE_SLACK = 2 * TRANSPORT_BUFFER


class LinkOwner(TypingProtocol):
    def linkUp(self, link: LinkProtocol, accepted: Accepted) -> None: ...
    def linkRefused(self, link: LinkProtocol, rejected: Rejected) -> None: ...
    def linkFrame(self, link: LinkProtocol, frame: Frame) -> None: ...
    def linkActivity(self, link: LinkProtocol) -> None: ...
    def linkDown(self, link: LinkProtocol, reason: str) -> None: ...
    def linkBudget(self) -> Budget: ...
    def tuneLinkSocket(self, transport: Any) -> None: ...
    def checkPeerCertificate(self, transport: Any, side: Side) -> str | None: ...
    @property
    def clock(self) -> Any: ...
    @property
    def close_timeout(self) -> float: ...


@implementer(IHandshakeListener)
class LinkProtocol(protocol.Protocol):
    """One TCP link to the peer proxy, in the role its handshake names."""

    _log = logger()

    def __init__(self, owner: LinkOwner, side: Side,
                 handshake: ClientHandshake | ServerHandshake, source: str = "-",
                 settled: Callable[[LinkProtocol], object] | None = None) -> None:
        self.owner = owner
        #: The peer's IP address, for log lines.
        self.source = source
        #: Called once the handshake is over, either way (accepted, refused or lost).
        self._settled = settled
        self.side = side
        self.handshake = handshake
        self.role: LinkRole | None = (
            handshake.hello_frame.role if isinstance(handshake, ClientHandshake) else None
        )
        self.accepted: Accepted | None = None
        #: The peer refused this link (our dial), or we gave it up ourselves (crossed dials).
        self.rejected: Rejected | None = None
        self.abandoned = False
        self.writer: FrameWriter | None = None
        self.reading: PauseReasons | None = None
        self._decoder = handshake.decoder()  # its auth phase and frame limit match the handshake
        #: Frames of the reads so far that wait, still compressed, while reading is paused.
        self._backlog: deque[Frame | LinkError] = deque()
        self._backlog_call: Any = None
        self._down_reason: str | None = None
        self._handshake_timer: Any = None
        self._closer = BoundedClose(owner.clock)
        self._lost = False
        self._whenClosed: list[Deferred[None]] = []

    def __repr__(self) -> str:
        role = self.role.name.lower() if self.role else "?"
        return f"<link {role} {self.side.name.lower()}>"

    #: Seconds a new link may take to complete its handshake before it is dropped.
    handshake_timeout = 10.0

    def connectionMade(self) -> None:
        assert self.transport is not None  # Twisted sets it first
        tune_transport(self.transport)
        self.owner.tuneLinkSocket(self.transport)
        self._handshake_timer = self.owner.clock.callLater(
            self.handshake_timeout, self.fail, "no handshake within"
            f" {self.handshake_timeout:.0f} s"
        )
        self.writer = FrameWriter(self.transport, self.owner.linkBudget(), self._writeFailed)
        self.reading = PauseReasons(self.transport, self._backlogLater)
        if isinstance(self.handshake, ClientHandshake):
            self.transport.write(self.handshake.hello())

    def handshakeCompleted(self) -> None:
        """TLS is up (only with --tls-*): the accepting side checks whom it is talking to."""
        problem = self.owner.checkPeerCertificate(self.transport, self.side)
        if problem is not None:
            self.fail(f"TLS: {problem}")

    def dataReceived(self, data: bytes) -> None:
        self.owner.linkActivity(self)
        self._backlog.extend(self._decoder.feed(data))
        self._handleBacklog()

    def _handleBacklog(self) -> None:
        """Handle frames in arrival order until something asks the link to pause, and then
        only DATA frames of up to PAUSE_SLACK raw bytes more.

        The frames after that wait here as they arrived, compressed: one read of highly
        compressible data (hundreds of frames) never inflates into more than PAUSE_SLACK raw
        bytes beyond the pause, while a read of raw frames is still handled whole, as if the
        pause had come at its end (no extra head-of-line wait for the link's other streams).
        """
        self._backlog_call = None
        backlog, reading = self._backlog, self.reading
        slack = PAUSE_SLACK
        while backlog:
            if self._down_reason is not None:
                backlog.clear()
                return
            item = backlog[0]
            if reading is not None and reading.paused:
                if slack <= 0:
                    return
                if isinstance(item, Data):
                    slack -= item.raw_length
            backlog.popleft()
            if isinstance(item, LinkError):
                self.fail(f"protocol violation: {item}", item.frame().encode())
                return
            try:
                self._frame(item)
            except LinkProtocolError as e:
                self.fail(f"protocol violation: {e}", None if e.from_peer else e.frame().encode())
                return

    def _backlogLater(self) -> None:
        """Reading resumes: the frames left waiting come first, in the next reactor turn (not
        inside whatever resumed us); a read arriving before that queues behind them."""
        if self._backlog and self._backlog_call is None:
            self._backlog_call = self.owner.clock.callLater(0, self._handleBacklog)

    def _frame(self, frame: Frame) -> None:
        if self.accepted is not None:
            self.owner.linkFrame(self, frame)
            return
        if isinstance(self.handshake, ClientHandshake):
            outcome = self.handshake.receive(frame)
            reply = outcome.send if isinstance(outcome, Pending) else b""
        else:
            reply, outcome = self.handshake.receive(frame)
        if reply:
            assert self.transport is not None  # frames come only from a connected link
            self.transport.write(reply)
        if isinstance(outcome, Pending):
            return  # proving the link secret; the handshake timer keeps running
        if isinstance(outcome, Rejected):
            self.rejected = outcome
            self._settle()
            self._down_reason = f"refused: {outcome.message}"
            self.owner.linkRefused(self, outcome)
            self._closer.close(self.transport, self.owner.close_timeout)
            return
        self.accepted = outcome
        self.role = outcome.role
        if self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._settle()
        self.owner.linkUp(self, outcome)

    def fail(self, reason: str, last_words: bytes | None = None) -> None:
        """Drop the link, its queued frames at once. With ``last_words`` (GOAWAY, ERROR) they
        follow what the transport still holds, and the close waits for them within the owner's
        close bound; without, the link is aborted now."""
        if self._down_reason is None:
            self._down_reason = reason
        if self.writer is not None:
            self.writer.close()
        if self.transport is None or self._lost:
            return
        if last_words:
            self._closer.close(self.transport, self.owner.close_timeout, last_words)
        else:
            self._closer.abort(self.transport)

    def abandon(self, reason: str) -> None:
        """We give this link up before its handshake is done (the peer's crossed dial won)."""
        self.abandoned = True
        self.fail(reason)

    def _settle(self) -> None:
        settled, self._settled = self._settled, None
        if settled is not None:
            settled(self)

    def whenClosed(self) -> Deferred[None]:
        """Fires once the link's transport is closed."""
        if self._lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenClosed.append(d)
        return d

    def _writeFailed(self, failure: Failure) -> None:
        self._log.failure("encoding a frame failed on {link}", failure=failure, link=repr(self))
        self.fail(f"internal error: {failure.getErrorMessage()}")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self._closer.connectionLost()
        self._settle()
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._backlog.clear()
        if self._backlog_call is not None and self._backlog_call.active():
            self._backlog_call.cancel()
        if self.writer is not None:
            self.writer.close()
        self.owner.linkDown(self, self._down_reason or _lost(reason))
        waiting, self._whenClosed = self._whenClosed, []
        for d in waiting:
            d.callback(None)


#: Links on one outside address that may wait for their handshake at once; a newer one drops
#: the oldest, so connections that never speak cannot pile up.
MAX_PRE_HANDSHAKE = 16


class LinkServerFactory(protocol.ServerFactory):
    """Accepts the peer proxy's links on the outside address: only from whom the owner admits,
    and at most MAX_PRE_HANDSHAKE of them still in their handshake."""

    noisy = False  # they start and stop with every DRBD socket and link: not news

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self._waiting: dict[LinkProtocol, None] = {}  # in arrival order

    def buildProtocol(self, addr: Any) -> LinkProtocol | None:
        source = str(getattr(addr, "host", addr))
        if not self.owner.admitLink(source):
            return None  # Twisted closes the socket
        if len(self._waiting) >= MAX_PRE_HANDSHAKE:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.fail(f"more than {MAX_PRE_HANDSHAKE} links waiting for their handshake")
        link = LinkProtocol(self.owner, Side.SERVER, self.owner.serverHandshake(source), source,
                            settled=self._settled)
        self._waiting[link] = None
        return link

    def _settled(self, link: LinkProtocol) -> None:
        self._waiting.pop(link, None)


class LinkClientFactory(protocol.ClientFactory):
    """Dials one link to the peer proxy's outside address."""

    noisy = False  # they start and stop with every DRBD socket and link: not news

    def __init__(self, owner: Any, handshake: ClientHandshake) -> None:
        self.owner = owner
        self.handshake = handshake
        #: The dial (set by whoever dials), and the link once connected.
        self.connector: Any = None
        self.link: LinkProtocol | None = None

    def buildProtocol(self, addr: Any) -> LinkProtocol:
        self.link = LinkProtocol(self.owner, Side.CLIENT, self.handshake,
                                 str(getattr(addr, "host", addr)))
        return self.link

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.owner.dialFailed(self, self.handshake.hello_frame.role, reason.getErrorMessage())


def _lost(reason: Failure) -> str:
    """Why a link went down, when nothing of ours or the peer's said so first."""
    if reason.check(error.ConnectionDone):
        # The peer proxy says GOAWAY before a deliberate close: a bare FIN is its process
        # ending otherwise (killed, crashed) or something between us closing for it.
        return "the peer closed the link without a GOAWAY (killed, or a middlebox closed it)"
    return f"the link broke: {reason.getErrorMessage()}"
