"""DRBD sockets and the link streams that carry them (a "subconnection" in DRBD Proxy terms).

A :class:`Stream` joins one DRBD TCP socket on this proxy to one stream id on a link. It moves
bytes both ways: what DRBD writes becomes DATA frames (compressed off the reactor thread, counted
in the connection's budget), and DATA frames from the peer are checked and written to DRBD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import protocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from ..logs import logger
from ..codecs import RAW_CODEC, CodecError, decode_chunk
from ..drbd.header import encode_h80
from ..drbd.packets import Cmd
from ..drbd.scanner import PacketScanner
from ..link import Close, CloseReason, Data, ErrorCode, LinkProtocolError, StreamKind
from ..pipeline import Encoded, chunks
from ..vectored import write_pieces

if TYPE_CHECKING:
    from ..connection import ProxyConnection
    from .links import LinkProtocol

_INITIAL_DATA = encode_h80(Cmd.P_INITIAL_DATA, 0)
_INITIAL_META = encode_h80(Cmd.P_INITIAL_META, 0)
#: Bytes a stream may hold for a DRBD socket that is still connecting before the link pauses.
_PENDING_LIMIT = 256 << 10
#: Read size and write-buffer mark of every transport on the data path. Twisted's 64 KiB means
#: four times the per-read Python work.
TRANSPORT_BUFFER = 256 << 10
#: Read size (and write-buffer mark) of DRBD's sockets: a read of DRBD's data costs the same
#: Python work whatever its size, and is split into DATA frames of at most CHUNK_LIMIT, which all
#: go to one compression job. One read past memlimit is the fixed slack. (1 MiB measured a
#: little faster still, but its transient buffers fragmented the heap: RSS under overload grew
#: from 1.03 to 1.15 times memlimit.)
DRBD_READ = 512 << 10
#: Raw bytes per DATA frame: a frame no larger than the peer's link reads (TRANSPORT_BUFFER)
#: arrives whole in one or two reads; a larger one would have to be joined from several.
CHUNK_LIMIT = TRANSPORT_BUFFER


def tune_transport(transport: Any, read_size: int = TRANSPORT_BUFFER) -> None:
    """Every data-path socket: no Nagle delay, ``read_size`` per read and as the write-buffer
    mark, TRANSPORT_BUFFER per send() (Twisted's SEND_LIMIT of 128 KiB would halve every 256 KiB
    frame)."""
    transport.setTcpNoDelay(True)
    transport.bufferSize = read_size
    transport.SEND_LIMIT = TRANSPORT_BUFFER


def kind_of_first_bytes(first: bytes) -> StreamKind:
    """DRBD's first packet says what a socket is for; anything else is relayed as opaque."""
    if first == _INITIAL_DATA:
        return StreamKind.DATA
    if first == _INITIAL_META:
        return StreamKind.META
    return StreamKind.UNKNOWN


class DrbdSocket(protocol.Protocol):
    """A TCP socket to or from the local DRBD: hands every event to its handler."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def connectionMade(self) -> None:
        tune_transport(self.transport, DRBD_READ)
        self.handler.drbdConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.handler.drbdData(self, data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.handler.drbdLost(self, reason)


class InsideAcceptor:
    """A socket DRBD opened to our inside address, until its first packet names its kind."""

    _log = logger()

    def __init__(self, connection: ProxyConnection) -> None:
        self._connection = connection
        self._first = b""
        self.stream: Stream | None = None

    def drbdConnected(self, sock: DrbdSocket) -> None:
        if not self._connection.acceptsDrbd():
            self._log.info(
                "refusing a DRBD connection from {peer} on {name}: peer proxy not connected",
                peer=str(sock.transport.getPeer()), name=self._connection.name,
            )
            sock.transport.abortConnection()  # type: ignore[attr-defined]

    def drbdData(self, sock: DrbdSocket, data: bytes) -> None:
        if self.stream is not None:
            self.stream.drbdData(sock, data)
            return
        self._first += data
        if len(self._first) < len(_INITIAL_DATA):
            return
        kind = kind_of_first_bytes(self._first[: len(_INITIAL_DATA)])
        self.stream = self._connection.openStream(kind, sock)
        if self.stream is None:
            sock.transport.abortConnection()  # type: ignore[attr-defined]
            return
        first, self._first = self._first, b""
        self.stream.drbdData(sock, first)

    def drbdLost(self, sock: DrbdSocket, reason: Failure) -> None:
        if self.stream is not None:
            self.stream.drbdLost(sock, reason)


@implementer(IPushProducer)
class _WriteBackpressure:
    """Registered on a DRBD socket's transport: while DRBD reads slowly, stop reading the link."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def pauseProducing(self) -> None:
        self._stream.link.reading.pause(self._stream)  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._stream.link.reading.resume(self._stream)  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.resumeProducing()


class Stream:
    """One DRBD socket relayed over one link stream, in both directions."""

    _log = logger()

    def __init__(self, connection: ProxyConnection, link: LinkProtocol, sid: int,
                 kind: StreamKind) -> None:
        self.connection = connection
        self.link = link
        self.sid = sid
        self.kind = kind
        self.sock: DrbdSocket | None = None
        self.peer: str = "-"
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._remote_closed = False
        self._local_closed = False
        self.to_peer = 0
        self.to_peer_wire = 0
        self.from_peer = 0
        self.from_peer_wire = 0
        #: DRBD packets per type, in each direction (what this DRBD wrote, what it was sent).
        self.scan_to_peer = PacketScanner()
        self.scan_from_peer = PacketScanner()

    @property
    def opaque(self) -> str | None:
        return self.scan_to_peer.opaque or self.scan_from_peer.opaque

    def _scan(self, scanner: PacketScanner, data: bytes, direction: str) -> None:
        if scanner.opaque is None:
            scanner.feed(data)
            if scanner.opaque is not None:
                self._log.info("{name}: {kind} socket stream {sid} is not DRBD any more ({why});"
                               " relaying it unparsed", name=self.connection.name, kind=self.name,
                               sid=self.sid, why=f"{direction}: {scanner.opaque}")

    @property
    def name(self) -> str:
        return {StreamKind.DATA: "data", StreamKind.META: "meta"}.get(self.kind, "opaque")

    @property
    def bulk(self) -> bool:
        return self.kind is not StreamKind.META

    # -- the DRBD socket -------------------------------------------------------------------------
    def drbdConnected(self, sock: DrbdSocket) -> None:
        """Our connect to the local DRBD succeeded (streams the peer opened)."""
        self.attach(sock)
        if self._remote_closed:
            sock.transport.loseConnection()
            return
        pending, self._pending = self._pending, []
        if pending:
            for raw in pending:
                self._deliver(raw)
            self._pending_bytes = 0
            self.link.reading.resume((self, "pending"))  # type: ignore[union-attr]

    def attach(self, sock: DrbdSocket) -> None:
        self.sock = sock
        sock.handler = self
        self.peer = str(sock.transport.getPeer())
        sock.transport.registerProducer(_WriteBackpressure(self), True)
        if self.bulk:  # meta traffic is tiny and must never wait: it is not paused at memlimit
            self.connection.budget.register(sock.transport)
        self.connection.streamAttached(self)

    def drbdConnectFailed(self, message: str) -> None:
        self._local_closed = True
        self.link.writer.push(  # type: ignore[union-attr]
            Close(self.sid, CloseReason.CONNECT_FAILED, message[:200]).encode()
        )
        self.connection.streamGone(self)

    def drbdData(self, sock: DrbdSocket, data: bytes) -> None:
        conn = self.connection
        writer = self.link.writer
        assert writer is not None
        self.to_peer += len(data)
        self._scan(self.scan_to_peer, data, "to peer")
        codec = conn.codec if self.bulk else RAW_CODEC
        pieces = chunks(data, min(conn.max_chunk(self.link), CHUNK_LIMIT))
        conn.budget.addRaw(len(data))
        encoded = conn.encoder.encodeAll(codec, pieces)
        writer.pushDataAll(self.sid, encoded, [len(piece) for piece in pieces], self._countWire)

    def _countWire(self, encoded: Encoded) -> None:
        self.to_peer_wire += len(encoded.payload)

    def drbdLost(self, sock: DrbdSocket, reason: Failure) -> None:
        self.connection.budget.unregister(sock.transport)
        self.link.reading.resume(self)  # type: ignore[union-attr]
        if not self._local_closed and not self._remote_closed:
            self._local_closed = True
            # After every DATA frame already queued: the peer delivers them, then closes.
            self.link.writer.push(Close(self.sid).encode())  # type: ignore[union-attr]
        self.connection.streamGone(self)

    # -- frames from the peer --------------------------------------------------------------------
    def fromPeer(self, frame: Data) -> None:
        try:
            raw = decode_chunk(frame.codec, frame.payload, frame.raw_length)
        except CodecError as e:
            raise LinkProtocolError(ErrorCode.DATA_CORRUPT, f"stream {self.sid}: {e}") from None
        frame.verify(raw)
        self.from_peer += len(raw)
        self.from_peer_wire += len(frame.payload)
        if self._local_closed:
            return  # our DRBD socket is gone; what was in flight is dropped with it
        if self.sock is None:
            self._pending.append(bytes(raw))  # not a view pinning the whole read it came in
            self._pending_bytes += len(raw)
            if self._pending_bytes > _PENDING_LIMIT:
                self.link.reading.pause((self, "pending"))  # type: ignore[union-attr]
            return
        self._deliver(raw)

    def _deliver(self, raw: bytes | memoryview) -> None:
        # Counted as it is handed to DRBD's socket, so the counts match what DRBD receives.
        self._scan(self.scan_from_peer, raw, "from peer")
        write_pieces(self.sock.transport, (raw,))  # type: ignore[union-attr]

    def remoteClosed(self, frame: Close) -> None:
        self._remote_closed = True
        if frame.reason != CloseReason.EOF:
            self._log.info("peer proxy closed stream {sid} of {name}: {reason} {message}",
                           sid=self.sid, name=self.connection.name,
                           reason=CloseReason(frame.reason).name if frame.reason in
                           CloseReason._value2member_map_ else frame.reason,
                           message=frame.message)
        if self.sock is not None:
            self.sock.transport.loseConnection()  # after what it still has to write

    def abort(self) -> None:
        """The connection is going down: drop the DRBD socket now, buffered or not."""
        self._local_closed = True
        if self.sock is not None and self.sock.transport is not None:
            self.sock.transport.abortConnection()  # type: ignore[attr-defined]


class DrbdConnectFactory(protocol.ClientFactory):
    """Connects to the local DRBD for a stream the peer proxy opened.

    :param retry: what to try if this attempt fails for a reason other than a refusal (the
        source address pair was taken); None: report the failure to the peer.
    """

    noisy = False  # they start and stop with every DRBD socket and link: not news

    def __init__(self, stream: Stream, retry: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.retry = retry

    def buildProtocol(self, addr: Any) -> DrbdSocket:
        return DrbdSocket(self.stream)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.retry is not None and not reason.check(ConnectionRefusedError):
            self.retry()
            return
        self.stream.drbdConnectFailed(reason.getErrorMessage())


class InsideFactory(protocol.ServerFactory):
    """Accepts the local DRBD's connects on the inside address."""

    noisy = False  # they start and stop with every DRBD socket and link: not news

    def __init__(self, connection: ProxyConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> DrbdSocket:
        return DrbdSocket(InsideAcceptor(self.connection))
