"""A connection's streams: which DRBD socket each stream id of each link stands for, the frames
that open, close and discard them, the bounds on what a peer may open, and their counters."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Iterator

from drbdproxy.admin.logs import Persisting, Summarised, logger
from drbdproxy.link import (
    Close,
    CloseReason,
    Data,
    Discard,
    ErrorCode,
    LinkProtocolError,
    LinkRole,
    Open,
    Side,
    StreamIdAllocator,
    StreamKind,
)
from drbdproxy.relay.sockets import connect_from
from drbdproxy.status import StreamTraffic, Traffic
from drbdproxy.units import format_address
from drbdproxy.relay.inside import DrbdConnectFactory
from drbdproxy.relay.streams import (
    DrbdSocket,
    Stream,
    StreamLink,
    StreamOwner,
    format_peer,
)

#: Streams one link may carry at once, and connects to our DRBD in progress at once: DRBD uses
#: two sockets per path, and a few more for a moment while it connects. More is a peer gone
#: wrong (or not a peer at all), and is refused.
MAX_STREAMS_PER_LINK = 32
MAX_DRBD_CONNECTS = 8
#: OPENs a peer may send while it does not read our link (each one gets an answer: a CLOSE
#: when refused or when our DRBD refuses the connect); more is a flood, and ends the link.
MAX_UNREAD_OPENS = 64
#: DISCARDs remembered for streams whose OPEN has not arrived yet (it may still be on its way on
#: the bulk link, behind data, while the DISCARD came on the meta link).
EARLY_DISCARDS = 256

_COUNTERS = ("to_peer", "to_peer_wire", "from_peer", "from_peer_wire")
Key = tuple[StreamLink, int]


class _LinkStreams:
    """Per link: the ids we allocate, the highest id the peer opened, the ids it discarded
    before their OPEN arrived, and its OPENs while it reads none of our frames."""

    def __init__(self, side: Side) -> None:
        self.ids = StreamIdAllocator(side)
        self.side = side
        self.peer_last = 0
        self.early_discards: set[int] = set()
        self.unread_opens = 0

    def ours(self, sid: int) -> bool:
        return (sid & 1) == (1 if self.side is Side.CLIENT else 0)


class StreamTable:
    """The streams of one connection, over its current pair of links."""

    _log = logger()

    def __init__(self, owner: StreamOwner, reactor: Any, drbd: Callable[[], tuple[str, int]],
                 inside: Callable[[], tuple[str, int]], refusals: Summarised) -> None:
        self._owner = owner
        self._reactor = reactor
        self._drbd = drbd
        self._inside = inside
        self._refusals = refusals
        self.streams: dict[Key, Stream] = {}
        self._links: dict[StreamLink, _LinkStreams] = {}
        self.counters = StreamCounters(owner.name)
        self._drbdFailures = Summarised(self._log, reactor)
        self._drbdFailing = Persisting(reactor)

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self.streams.values()))

    def linkUp(self, link: StreamLink, side: Side) -> None:
        self._links[link] = _LinkStreams(side)

    # -- our DRBD ------------------------------------------------------------------------------
    def open(self, link: StreamLink, kind: StreamKind, sock: DrbdSocket) -> Stream | None:
        """DRBD opened a socket to our inside address: announce it to the peer proxy."""
        state = self._links.get(link)
        if state is None or link.writer is None:
            return None
        if self._live(link) >= MAX_STREAMS_PER_LINK:
            self._refusals.warn("refusing a DRBD connection from {peer} on {name}: already"
                                " {limit} streams on the link",
                                peer=format_peer(sock.transport),
                                name=self._owner.name, limit=MAX_STREAMS_PER_LINK)
            return None
        sid = state.ids.allocate()
        stream = Stream(self._owner, link, sid, kind)
        self.streams[(link, sid)] = stream
        link.writer.pushOpen(sid, Open(sid, kind, state.side).encode())
        stream.attach(sock)
        return stream

    def tellPeerClosed(self, stream: Stream, meta: StreamLink | None, reason: CloseReason,
                       message: str = "") -> None:
        """Our DRBD socket of ``stream`` is gone (or never came up): CLOSE ends the stream on
        its link, and for a stream of the bulk link a DISCARD on the meta link gets there even
        while the peer is not reading the bulk link."""
        if reason is CloseReason.CONNECT_FAILED:
            self._drbdConnectFailed(stream, message)
        link = stream.link
        if link.writer is None:
            return
        link.writer.push(Close(stream.sid, reason, message).encode())
        if link is not meta and meta is not None and meta.writer is not None:
            meta.writer.writeNow(Discard(link.role or LinkRole.BULK, stream.sid, reason).encode())

    def _drbdConnectFailed(self, stream: Stream, message: str) -> None:
        # Refused now and then while DRBD itself (re)connects: news only once no connect to
        # it has worked for a while (the resource is down, or this is not its address).
        failing, persists = self._drbdFailing.failed()
        emit = self._drbdFailures.warn if persists else self._log.debug
        emit("cannot connect to the local DRBD of {name} at {drbd} for stream {sid} of the peer"
             " ({failing:.0f} s without a connect): {message} (is the resource up, and is this"
             " its address?)", name=self._owner.name, drbd=format_address(*self._drbd()),
             sid=stream.label, failing=failing, message=message)

    def attached(self) -> None:
        """A DRBD socket came up: DRBD is there."""
        self._drbdFailing.ok()

    def stop(self) -> None:
        self._drbdFailures.stop()

    def traffic(self) -> Traffic:
        """The byte counters of the connection and of each live DRBD socket."""
        live = list(self.streams.values())
        return Traffic(self._owner.name, self.counters.totals(live), tuple(
            StreamTraffic(s.name, s.sid, s.to_peer, s.to_peer_wire, s.from_peer,
                          s.from_peer_wire) for s in live))

    def relaying(self) -> bool:
        """DRBD's data and meta sockets are both relayed."""
        kinds = {s.kind for s in self.streams.values() if s.sock is not None}
        return {StreamKind.DATA, StreamKind.META} <= kinds

    def gone(self, stream: Stream) -> None:
        """A stream is over: count it into the totals (once), forget it."""
        self.counters.retire(stream)
        if self.streams.get((stream.link, stream.sid)) is stream:
            del self.streams[(stream.link, stream.sid)]

    def checkPausedDrbd(self) -> None:
        """Reads from DRBD are paused: find the DRBD sockets DRBD has dropped meanwhile (a data
        socket goes with its session's last meta socket)."""
        streams = list(self.streams.values())
        meta = any(s.kind is StreamKind.META and not s.closed for s in streams)
        for stream in streams:
            stream.checkDrbdClosed(orphaned=not meta and stream.kind is StreamKind.DATA)

    # -- the peer's frames ---------------------------------------------------------------------
    def data(self, link: StreamLink, frame: Data) -> None:
        stream = self.streams.get((link, frame.stream))
        if stream is not None:
            stream.fromPeer(frame)
            return
        self._checkKnown(link, frame.stream)
        self.counters.droppedAfterClose(frame.raw_length)

    def closed(self, link: StreamLink, frame: Close) -> None:
        stream = self.streams.pop((link, frame.stream), None)
        if stream is not None:
            stream.remoteClosed(frame.reason, frame.message)

    def opened(self, link: StreamLink, frame: Open, meta: StreamLink | None) -> None:
        """The peer's DRBD opened a socket: open ours to the local DRBD, from the inside IP."""
        state = self._links[link]
        self._countUnreadOpen(link, state, meta)
        state.peer_last = frame.stream
        if frame.stream in state.early_discards:
            state.early_discards.discard(frame.stream)  # closed at the peer already: never connect
            return
        refusal = None
        if self._live(link) >= MAX_STREAMS_PER_LINK:
            refusal = f"already {MAX_STREAMS_PER_LINK} streams on the link"
        elif sum(1 for s in self.streams.values() if s.connector is not None) >= MAX_DRBD_CONNECTS:
            refusal = f"already {MAX_DRBD_CONNECTS} connects to DRBD in progress"
        if refusal is not None:
            self._refusals.warn("refusing stream {sid} the peer proxy opened on {name}: {why}",
                                sid=frame.stream, name=self._owner.name, why=refusal)
            assert link.writer is not None  # the OPEN came from it
            link.writer.push(Close(frame.stream, CloseReason.REFUSED, refusal).encode())
            return
        stream = Stream(self._owner, link, frame.stream, frame.kind)
        self.streams[(link, frame.stream)] = stream
        self._connectDrbd(stream, self._inside())

    def discarded(self, link: StreamLink | None, frame: Discard) -> None:
        """The peer's DRBD socket of a stream on either link is gone: so is ours, at once."""
        if link is None:
            return
        stream = self.streams.pop((link, frame.target), None)
        if stream is not None:
            stream.remoteClosed(frame.reason)
            return
        state = self._links[link]
        if not state.ours(frame.target) and frame.target > state.peer_last:
            # Its OPEN is still on its way on the other link: drop the stream when it comes.
            if len(state.early_discards) >= EARLY_DISCARDS:
                raise LinkProtocolError(ErrorCode.STREAM_ERROR,
                                        f"more than {EARLY_DISCARDS} DISCARDs ahead of their OPEN")
            state.early_discards.add(frame.target)
            return
        self._checkKnown(link, frame.target)

    def _checkKnown(self, link: StreamLink, sid: int) -> None:
        """DATA for a stream already closed is dropped; for one never opened it is a violation."""
        state = self._links.get(link)
        if state is not None and state.ours(sid) and sid > state.ids.last:
            raise LinkProtocolError(ErrorCode.STREAM_ERROR, f"DATA for stream {sid} never opened")

    def _countUnreadOpen(self, link: StreamLink, state: _LinkStreams,
                         meta: StreamLink | None) -> None:
        """Every OPEN is answered sooner or later: a peer that sends them while it reads none of
        our frames would have the answers pile up here."""
        unread = any(l is not None and l.writer is not None and l.writer.paused
                     for l in (link, meta))
        state.unread_opens = state.unread_opens + 1 if unread else 0
        if state.unread_opens > MAX_UNREAD_OPENS:
            raise LinkProtocolError(ErrorCode.STREAM_ERROR, f"more than {MAX_UNREAD_OPENS} OPENs"
                                    " while the peer reads none of our answers")

    def _live(self, link: StreamLink) -> int:
        return sum(1 for stream_link, _ in self.streams if stream_link is link)

    def _connectDrbd(self, stream: Stream, source: tuple[str, int]) -> None:
        # DRBD 9 matches an incoming peer by (IP, port), then by IP: connect from the inside
        # address DRBD knows as its peer; if that exact pair is taken, from the inside IP.
        host, port = self._drbd()
        retry = None
        if source[1]:
            retry = lambda: self._connectDrbd(stream, (source[0], 0))  # noqa: E731
        stream.connector = connect_from(self._reactor, host, port,
                                        DrbdConnectFactory(stream, retry), source)

    # -- the end of a session ------------------------------------------------------------------
    def abortAll(self) -> None:
        """The links are gone: every stream goes, and what it held is discarded."""
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.abort()
            self.counters.retire(stream)
        self._links.clear()


class StreamCounters:
    """What the streams of a connection carried and threw away, over closed and live ones."""

    _log = logger()

    def __init__(self, name: str) -> None:
        self._name = name
        #: Raw bytes of DATA frames that came for a stream already gone here (its DRBD socket
        #: closed first): dropped, so the peer's to_peer bytes are our from_peer plus these.
        self.dropped_after_close = 0
        #: Raw bytes thrown away because their DRBD socket or the whole session closed: read
        #: from our DRBD but never sent, and received for our DRBD but never written to it
        #: (dropped_after_close included).
        self.discarded_to_peer = 0
        self.discarded_from_peer = 0
        #: Byte counters of DRBD sockets that have closed, per kind (data, meta, opaque).
        self.closed_totals: dict[str, dict[str, int]] = {}
        self.closed_packets: Counter[tuple[str, str, str]] = Counter()

    def droppedAfterClose(self, raw: int) -> None:
        self.dropped_after_close += raw
        self.discarded_from_peer += raw

    def retire(self, stream: Stream) -> None:
        if stream.retired:
            return
        stream.retired = True
        discarded = ""
        if stream.discarded_to_peer or stream.discarded_from_peer:
            discarded = (f"; discarded {stream.discarded_to_peer} bytes not yet sent and"
                         f" {stream.discarded_from_peer} not yet written to DRBD")
        self._log.info("DRBD {kind} socket {peer} of {name} (stream {sid}) closed ({to_peer} bytes"
                       " to the peer, {from_peer} from it{discarded})", kind=stream.name,
                       peer=stream.peer, sid=stream.label,
                       name=self._name, to_peer=stream.to_peer, from_peer=stream.from_peer,
                       discarded=discarded)
        self.discarded_to_peer += stream.discarded_to_peer
        self.discarded_from_peer += stream.discarded_from_peer
        _addCounters(self.closed_totals.setdefault(stream.name, {}), stream)
        _addPackets(self.closed_packets, stream)

    def totals(self, live: Iterable[Stream]) -> dict[str, dict[str, int]]:
        """Byte counters per DRBD socket kind, over closed and ``live`` sockets."""
        result = {kind: dict(counters) for kind, counters in self.closed_totals.items()}
        for stream in live:
            _addCounters(result.setdefault(stream.name, {}), stream)
        return result

    def discardedBytes(self, live: Iterable[Stream]) -> tuple[int, int]:
        """Raw bytes discarded so far (to the peer, from the peer), ``live`` streams included."""
        to_peer, from_peer = self.discarded_to_peer, self.discarded_from_peer
        for stream in live:
            if not stream.retired:
                to_peer += stream.discarded_to_peer
                from_peer += stream.discarded_from_peer
        return to_peer, from_peer

    def packet_counts(self, live: Iterable[Stream]) -> Counter[tuple[str, str, str]]:
        """DRBD packets per (socket kind, direction, packet name), over closed and ``live``."""
        result = Counter(self.closed_packets)
        for stream in live:
            _addPackets(result, stream)
        return result


def _addCounters(into: dict[str, int], stream: Stream) -> None:
    for key in _COUNTERS:
        into[key] = into.get(key, 0) + getattr(stream, key)


def _addPackets(into: Counter[tuple[str, str, str]], stream: Stream) -> None:
    for direction, scanner in (("to_peer", stream.scan_to_peer), ("from_peer", stream.scan_from_peer)):
        for name, count in scanner.counts.items():
            into[(stream.name, direction, name)] += count
