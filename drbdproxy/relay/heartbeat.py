"""Heartbeats on the meta link: PING every quarter of ping-timeout, and the two ways a peer proxy
goes bad without closing its socket (silence, or sending while it reads nothing of ours)."""

from __future__ import annotations

import time
from typing import Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from drbdproxy.link import Ping, Pong
from drbdproxy.relay.writer import FrameWriter, PauseReasons


class MetaLink(Protocol):
    """What the heartbeat uses of the meta link (a :class:`LinkProtocol` has all of it)."""

    writer: FrameWriter | None
    reading: PauseReasons | None

    def fail(self, reason: str, last_words: bytes | None = None) -> None: ...


class Heartbeat:
    """Beats on one meta link from :meth:`start` to :meth:`stop`; ``beat`` is called after each
    PING (the connection samples its drain rate and looks for closed DRBD sockets then)."""

    def __init__(self, clock: IReactorTime, ping_timeout: Callable[[], float],
                 beat: Callable[[float], object],
                 now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        #: What PINGs are stamped with: monotonic, so a step of the wall clock (NTP) cannot
        #: make a round trip negative (docs/link-protocol.md, PING).
        self._now_ns = now_ns
        self._ping_timeout = ping_timeout
        self._beat = beat
        self._link: MetaLink | None = None
        self._loop: LoopingCall | None = None
        self._token = 0
        #: When the meta link last brought a frame.
        self.last_rx = 0.0
        #: Since when the meta link's transport has been refusing our writes.
        self._unread_since: float | None = None
        #: The round trip of the last PING answered, in milliseconds.
        self.rtt_ms: float | None = None

    def heard(self) -> None:
        """A frame came on the meta link."""
        self.last_rx = self._clock.seconds()

    def silent(self) -> bool:
        """Nothing came on the meta link for longer than ping-timeout."""
        return self._clock.seconds() - self.last_rx > self._ping_timeout()

    def start(self, link: MetaLink) -> None:
        self.stop()
        self._link = link
        self._unread_since = None
        self.heard()
        interval = min(max(self._ping_timeout() / 4, 0.05), 2.0)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._link = None

    def pong(self, frame: Pong) -> None:
        self.rtt_ms = (self._now_ns() - frame.sent_ns) / 1e6

    def _tick(self) -> None:
        link = self._link
        if link is None or link.writer is None:
            return
        now = self._clock.seconds()
        timeout = self._ping_timeout()
        # While we do not read the meta link (our DRBD is slow), its silence is ours.
        paused = link.reading is not None and link.reading.paused
        if not paused and now - self.last_rx > timeout:
            link.fail("peer proxy timed out (ping-timeout)")
            return
        if not link.writer.paused:
            self._unread_since = None
        elif self._unread_since is None:
            self._unread_since = now
        elif now - self._unread_since > timeout:
            # It sends (PINGs, perhaps a flood of them) but reads nothing of ours.
            link.fail("peer proxy stopped reading the meta link (ping-timeout)")
            return
        self._token += 1
        link.writer.writeNow(Ping(self._token, self._now_ns()).encode())
        self._beat(now)
