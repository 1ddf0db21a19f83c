"""DRBD sockets and the link streams that carry them (a "subconnection" in DRBD Proxy terms).

A :class:`Stream` joins one DRBD TCP socket on this proxy to one stream id on a link. It moves
bytes both ways: what DRBD writes becomes DATA frames (compressed off the reactor thread, counted
in the connection's budget), and DATA frames from the peer are checked and written to DRBD.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol as TypingProtocol

from twisted.internet import protocol
from twisted.internet.interfaces import IConnector, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from drbdproxy.relay.closing import BoundedClose
from drbdproxy.admin.logs import logger
from drbdproxy.codecs import RAW_CODEC, CodecError, decode_chunk
from drbdproxy.drbd.scanner import PacketScanner
from drbdproxy.link import (
    Accepted,
    CloseReason,
    Data,
    ErrorCode,
    LinkProtocolError,
    LinkRole,
    StreamKind,
)
from drbdproxy.relay.budget import Budget
from drbdproxy.relay.compression import Compression
from drbdproxy.relay.encoder import ChunkEncoder, Encoded, chunks
from drbdproxy.relay.sockets import TRANSPORT_BUFFER, IStreamTransport, tune_transport
from drbdproxy.relay.writer import Discarded, FrameWriter, PauseReasons
from drbdproxy.relay.vectored import write_pieces
from drbdproxy.units import format_address


class StreamLink(TypingProtocol):
    """What a stream uses of its link: the writer its frames go to, the reading it may pause,
    and what its handshake agreed (the owner sizes the stream's DATA frames by it)."""

    role: LinkRole | None
    accepted: Accepted | None
    writer: FrameWriter | None
    reading: PauseReasons | None


class StreamOwner(TypingProtocol):
    """What a stream asks of the connection it belongs to."""

    name: str
    budget: Budget
    encoder: ChunkEncoder

    @property
    def clock(self) -> IReactorTime: ...
    @property
    def close_timeout(self) -> float: ...
    compression: Compression
    def max_chunk(self, link: StreamLink) -> int: ...
    def acceptsDrbd(self) -> bool: ...
    def openStream(self, kind: StreamKind, sock: DrbdSocket) -> Stream | None: ...
    def streamAttached(self, stream: Stream) -> None: ...
    def streamGone(self, stream: Stream) -> None: ...
    def tellPeerClosed(self, stream: Stream, reason: CloseReason, message: str = "") -> None: ...

#: Bytes a stream may hold for a DRBD socket that is still connecting before the link pauses.
_PENDING_LIMIT = 256 << 10
#: Read size (and write-buffer mark) of DRBD's sockets: a read of DRBD's data costs the same
#: Python work whatever its size, and is split into DATA frames of at most CHUNK_LIMIT, which all
#: go to one compression job. One read past memlimit is the fixed slack. (1 MiB measured a
#: little faster still, but its transient buffers fragmented the heap: RSS under overload grew
#: from 1.03 to 1.15 times memlimit.)
DRBD_READ = 512 << 10
#: Raw bytes per DATA frame: a frame no larger than the peer's link reads (TRANSPORT_BUFFER)
#: arrives whole in one or two reads; a larger one would have to be joined from several.
CHUNK_LIMIT = TRANSPORT_BUFFER




#: tcpi_state values of a socket whose peer has closed (FIN received) or reset it.
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8


def peer_closed(transport: Any) -> bool:
    """Whether the far end of a TCP transport has closed or reset it.

    A transport that is not reading (paused at memlimit) never sees the close, and DRBD does
    not write to a socket it has given up on: the kernel's view of the socket tells.
    """
    try:
        info = transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (AttributeError, OSError):
        return False
    return info[0] in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


class DrbdSocket(protocol.Protocol):
    """A TCP socket to or from the local DRBD: hands every event to its handler."""

    #: Set by Twisted before connectionMade, and the handler hears of nothing before that.
    transport: IStreamTransport

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def connectionMade(self) -> None:
        tune_transport(self.transport, DRBD_READ)
        self.handler.drbdConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.handler.drbdData(self, data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.handler.drbdLost(self, reason)


def format_peer(transport: Any) -> str:
    """``host:port`` of a transport's peer, as an operator writes it."""
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer)
    return format_address(host, peer.port)


@implementer(IPushProducer)
class _WriteBackpressure:
    """Registered on a DRBD socket's transport: while DRBD reads slowly, stop reading the link."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def pauseProducing(self) -> None:
        reading = self._stream.link.reading
        assert reading is not None  # streams live only on connected links
        reading.pause(self._stream)

    def resumeProducing(self) -> None:
        reading = self._stream.link.reading
        assert reading is not None
        reading.resume(self._stream)

    def stopProducing(self) -> None:
        self.resumeProducing()


class Stream:
    """One DRBD socket relayed over one link stream, in both directions.

    When either end closes (our DRBD socket, or the peer's CLOSE or DISCARD), the stream is
    closed for good: whatever it still holds in either direction is discarded on the spot, and
    our DRBD socket is closed within the connection's close bound whatever DRBD is doing. DRBD
    closes a socket only when it tears its connection down, and resyncs what was not acked.
    """

    _log = logger()

    def __init__(self, connection: StreamOwner, link: StreamLink, sid: int,
                 kind: StreamKind) -> None:
        self.connection = connection
        self.link = link
        self.sid = sid
        self.kind = kind
        self.sock: DrbdSocket | None = None
        self.peer: str = "-"
        #: Our connect to the local DRBD while it is in progress (streams the peer opened).
        self.connector: IConnector | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        #: No byte moves any more, in either direction.
        self.closed = False
        #: Counted into the connection's totals (exactly once).
        self.retired = False
        self._closer = BoundedClose(connection.clock)
        self.to_peer = 0
        self.to_peer_wire = 0
        self.from_peer = 0
        self.from_peer_wire = 0
        #: Raw bytes thrown away when the stream closed: read from DRBD but never sent, and
        #: received from the peer but never written to DRBD.
        self.discarded_to_peer = 0
        self.discarded_from_peer = 0
        #: DRBD packets per type, in each direction (what this DRBD wrote, what it was sent).
        self.scan_to_peer = PacketScanner()
        self.scan_from_peer = PacketScanner()

    @property
    def opaque(self) -> str | None:
        return self.scan_to_peer.opaque or self.scan_from_peer.opaque

    def _scan(self, scanner: PacketScanner, data: bytes | memoryview, direction: str) -> None:
        if scanner.opaque is None:
            scanner.feed(data)
            if scanner.opaque is not None:
                self._log.info("{name}: {kind} socket stream {sid} is not DRBD any more ({why});"
                               " relaying it unparsed", name=self.connection.name, kind=self.name,
                               sid=self.label, why=f"{direction}: {scanner.opaque}")

    @property
    def name(self) -> str:
        return {StreamKind.DATA: "data", StreamKind.META: "meta"}.get(self.kind, "opaque")

    @property
    def label(self) -> str:
        """How logs name the stream: ids are per link, so the link's role goes with the id
        (the same on both proxies: the one that opened the stream chose it)."""
        role = self.link.role.name.lower() if self.link.role is not None else "link"
        return f"{role}/{self.sid}"

    @property
    def bulk(self) -> bool:
        return self.kind is not StreamKind.META

    # -- the DRBD socket -------------------------------------------------------------------------
    def drbdConnected(self, sock: DrbdSocket) -> None:
        """Our connect to the local DRBD succeeded (streams the peer opened)."""
        self.connector = None
        if self.closed:
            # Closed or torn down while connecting: this socket never joins the dead stream.
            sock.transport.abortConnection()
            return
        self.attach(sock)
        pending, self._pending = self._pending, []
        if pending:
            for raw in pending:
                self._deliver(raw)
            self._pending_bytes = 0
            reading = self.link.reading
            assert reading is not None  # the pending frames came from it
            reading.resume((self, "pending"))

    def attach(self, sock: DrbdSocket) -> None:
        self.sock = sock
        sock.handler = self
        self.peer = format_peer(sock.transport)
        sock.transport.registerProducer(_WriteBackpressure(self), True)
        if self.bulk:  # meta traffic is tiny and must never wait: it is not paused at memlimit
            self.connection.budget.register(sock.transport)
        self.connection.streamAttached(self)

    def drbdConnectFailed(self, message: str) -> None:
        self.connector = None
        if self.closed:
            return  # we cancelled it
        self._close()
        self.connection.tellPeerClosed(self, CloseReason.CONNECT_FAILED, message[:200])
        self.connection.streamGone(self)

    def drbdData(self, sock: DrbdSocket, data: bytes) -> None:
        if self.closed:
            return
        conn = self.connection
        writer = self.link.writer
        assert writer is not None
        self.to_peer += len(data)
        self._scan(self.scan_to_peer, data, "to peer")
        pieces = chunks(data, min(conn.max_chunk(self.link), CHUNK_LIMIT))
        codec = conn.compression.codecFor(pieces) if self.bulk else RAW_CODEC
        conn.budget.addRaw(len(data))
        encoded = conn.encoder.encodeAll(codec, pieces)
        writer.pushDataAll(self.sid, encoded, [len(piece) for piece in pieces], self._countWire)

    def checkDrbdClosed(self, orphaned: bool = False) -> None:
        """While reads are paused, see whether DRBD dropped the socket meanwhile: if so, close
        the stream now rather than when reads resume, which they may never do.

        A reset shows in the kernel's state of the socket. A close often does not: DRBD's FIN
        waits behind the data its kernel still has to send us. So a data socket is also taken
        for dropped once DRBD's meta socket of the session is gone (``orphaned``): DRBD never
        runs a connection without its meta socket.
        """
        sock = self.sock
        if sock is None or self.closed or sock.transport is None:
            return
        if peer_closed(sock.transport):
            why = "closed it"
        elif orphaned:
            why = "closed its meta socket"
        else:
            return
        self._log.info("DRBD {why} while reads from its {kind} socket {peer} of {name} were"
                       " paused: closing that too", why=why, kind=self.name, peer=self.peer,
                       name=self.connection.name)
        self._closer.abort(sock.transport)

    def _countWire(self, encoded: Encoded) -> None:
        self.to_peer_wire += len(encoded.payload)
        if self.bulk:
            self.connection.compression.encoded(encoded.codec, encoded.raw_length,
                                                len(encoded.payload))

    def drbdLost(self, sock: DrbdSocket, reason: Failure) -> None:
        if sock is not self.sock:
            return
        self._closer.connectionLost()
        self.connection.budget.unregister(sock.transport)
        if not self.closed:
            unopened = self._close()
            if not unopened:
                self.connection.tellPeerClosed(self, CloseReason.EOF)
        self.connection.streamGone(self)

    def _close(self) -> bool:
        """Close the stream for good: discard what it holds both ways, stop holding up the
        link. Returns whether the peer never heard of it (its OPEN was still queued)."""
        self.closed = True
        if self.sock is not None:
            self.connection.budget.unregister(self.sock.transport)
        discarded = Discarded()
        if self.link.writer is not None:
            discarded = self.link.writer.discard(self.sid)
        self.discarded_to_peer += discarded.raw
        self._dropPending()
        reading = self.link.reading
        if reading is not None:
            reading.resume((self, "pending"))
            reading.resume(self)
        return discarded.unopened

    def _dropPending(self) -> None:
        """What came for a DRBD socket still connecting goes with the stream."""
        self.discarded_from_peer += self._pending_bytes
        self._pending, self._pending_bytes = [], 0

    # -- frames from the peer --------------------------------------------------------------------
    def fromPeer(self, frame: Data) -> None:
        try:
            raw = decode_chunk(frame.codec, frame.payload, frame.raw_length)
        except CodecError as e:
            raise LinkProtocolError(ErrorCode.DATA_CORRUPT, f"stream {self.sid}: {e}") from None
        frame.verify(raw)
        self.from_peer += len(raw)
        self.from_peer_wire += len(frame.payload)
        if self.closed:
            self.discarded_from_peer += len(raw)
            return
        if self.sock is None:
            self._pending.append(bytes(raw))  # not a view pinning the whole read it came in
            self._pending_bytes += len(raw)
            if self._pending_bytes > _PENDING_LIMIT:
                reading = self.link.reading
                assert reading is not None  # the frame came from it
                reading.pause((self, "pending"))
            return
        self._deliver(raw)

    def _deliver(self, raw: bytes | memoryview) -> None:
        # Counted as it is handed to DRBD's socket, so the counts match what DRBD receives.
        self._scan(self.scan_from_peer, raw, "from peer")
        assert self.sock is not None  # fromPeer holds data until attach()
        write_pieces(self.sock.transport, (raw,))

    def remoteClosed(self, reason: int, message: str = "") -> None:
        """The peer's DRBD socket is gone (CLOSE or DISCARD): discard, and close ours."""
        if self.closed:
            return
        if reason != CloseReason.EOF:
            # The peer logs its own connect failures (with its DRBD's address) as warnings.
            emit = self._log.debug if reason == CloseReason.CONNECT_FAILED else self._log.info
            emit("peer proxy closed stream {sid} of {name}: {reason} {message}",
                           sid=self.label, name=self.connection.name,
                           reason=CloseReason(reason).name if reason in
                           CloseReason._value2member_map_ else reason, message=message)
        self._close()
        if self.sock is not None:
            self._closer.close(self.sock.transport, self.connection.close_timeout)
        elif self.connector is not None:
            self.connector.stopConnecting()
        # Nothing it counts changes any more: into the totals now, not when the socket is gone.
        self.connection.streamGone(self)

    def abort(self) -> None:
        """The connection is going down: drop the DRBD socket now, or the connect to it."""
        self.closed = True
        self._dropPending()
        if self.connector is not None:
            self.connector.stopConnecting()
            self.connector = None
        if self.sock is not None and self.sock.transport is not None:
            self._closer.abort(self.sock.transport)
