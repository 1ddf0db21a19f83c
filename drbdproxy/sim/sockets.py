"""DRBD's two TCP sockets per peer pair, and how a node gets exactly one of each.

Like DRBD, a node both listens and connects. An outgoing socket announces its kind with
``P_INITIAL_DATA`` or ``P_INITIAL_META``; an accepted socket is classified by that first packet.
When both nodes open the same kind at once ("initial packet crossed") the accepted socket wins and
the next attempt waits a random time, which breaks the symmetry the way DRBD's coin flip does.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol as TypingProtocol

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from drbdproxy.drbd.decoder import Packet, PacketDecoder, StreamError
from drbdproxy.drbd.header import HeaderVersion, encode_h80, encode_header
from drbdproxy.drbd.packets import Cmd, Sock, packet_name, socket_of_initial
from drbdproxy.units import address_bytes
from drbdproxy.relay.sockets import IStreamTransport
from drbdproxy.relay.vectored import write_pieces

#: Read size and write-buffer mark of a simulated DRBD socket.
SOCKET_BUFFER = 512 << 10


#: While corked, a socket writes what it holds once it holds this much.
CORK_LIMIT = 256 << 10


class SocketOwner(TypingProtocol):
    def socketMade(self, sock: DrbdSocket) -> None: ...
    def socketIdentified(self, sock: DrbdSocket) -> None: ...
    def packetReceived(self, sock: DrbdSocket, packet: Packet) -> None: ...
    def socketFailed(self, sock: DrbdSocket, message: str) -> None: ...
    def socketLost(self, sock: DrbdSocket, reason: Failure) -> None: ...
    def countSent(self, name: str) -> None: ...
    def countReceived(self, name: str) -> None: ...


class DrbdSocket(protocol.Protocol):
    """One DRBD TCP socket: frames packets out, decodes packets in, hands them to its owner."""

    #: Set by Twisted before connectionMade; the owner gets the socket only from then on.
    transport: IStreamTransport

    def __init__(self, owner: SocketOwner, kind: Sock | None) -> None:
        self.owner = owner
        #: None for an accepted socket until its initial packet arrives.
        self.kind = kind
        self.outgoing = kind is not None
        self.agreed_version = 80
        self.connected = False
        self._decoder = PacketDecoder()
        #: Packets that arrived before this node finished its own socket check.
        self.early: list[Packet] = []
        #: While corked, what send() frames waits here to be written as one buffer.
        self._corked: list[bytes | memoryview] | None = None
        self._corked_bytes = 0

    def __repr__(self) -> str:
        way = "out" if self.outgoing else "in"
        return f"<DrbdSocket {self.kind.value if self.kind else '?'} {way}>"

    def connectionMade(self) -> None:
        self.connected = True
        self.transport.setTcpNoDelay(True)
        # Like DRBD's own socket buffers: many blocks per reactor turn, not one 64 KiB at a time.
        self.transport.bufferSize = SOCKET_BUFFER
        self.owner.socketMade(self)

    def announce(self, kind: Sock) -> None:
        """Send this outgoing socket's first packet, which tells the peer what it is for."""
        self.kind = kind
        cmd = Cmd.P_INITIAL_DATA if kind is Sock.DATA else Cmd.P_INITIAL_META
        self.owner.countSent(cmd.name)
        self.transport.write(encode_h80(cmd, 0))

    def send(self, cmd: Cmd, payload: bytes = b"", *data: bytes | memoryview,
             volume: int = 0) -> None:
        """Frame one packet; ``data`` (a block, possibly in parts) follows ``payload``."""
        length = len(payload) + sum(map(len, data))
        header = encode_header(cmd, length, self.agreed_version, volume)
        self.owner.countSent(cmd.name)
        if self._corked is None:
            write_pieces(self.transport, (header, payload, *data))
            return
        self._corked += (header, payload, *data)
        self._corked_bytes += len(header) + length
        if self._corked_bytes >= CORK_LIMIT:
            self._flushCork()  # the transport may now ask its producer to pause, as DRBD would

    def cork(self) -> None:
        """Hold what send() frames until uncork(), writing it CORK_LIMIT at a time: a burst of
        writes then goes out in a few sendmsg() calls straight from the blocks' pieces."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        self._flushCork()
        self._corked = None

    def _flushCork(self) -> None:
        parts, self._corked = self._corked, []
        self._corked_bytes = 0
        if parts and self.connected:
            write_pieces(self.transport, parts)

    def dataReceived(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if isinstance(event, StreamError):
                self.owner.socketFailed(self, f"{self!r}: {event.message}")
                self.transport.abortConnection()
                return
            self.owner.countReceived(event.name)
            if self.kind is None:
                if not self._identify(event):
                    return
                continue
            if self.agreed_version >= 100 and event.header.version is not HeaderVersion.H100:
                self.owner.socketFailed(
                    self,
                    f"peer sent {event.name} with an h{event.header.version.value} header"
                    f" after agreeing on protocol {self.agreed_version}",
                )
                return
            self.owner.packetReceived(self, event)
            if not self.connected:
                return

    def _identify(self, packet: Packet) -> bool:
        kind = socket_of_initial(packet.command)
        if kind is None or packet.header.length:
            self.owner.socketFailed(
                self, f"first packet on an accepted socket is {packet_name(packet.command)},"
                " not P_INITIAL_DATA or P_INITIAL_META"
            )
            self.transport.loseConnection()
            return False
        self.kind = kind
        self.owner.socketIdentified(self)
        return True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.connected = False
        self.owner.socketLost(self, reason)

    def close(self) -> None:
        if self.connected:
            self.transport.loseConnection()


class _AcceptFactory(protocol.ServerFactory):
    def __init__(self, owner: SocketOwner) -> None:
        self.owner = owner

    def buildProtocol(self, addr: object) -> DrbdSocket:
        return DrbdSocket(self.owner, None)


class _ConnectFactory(protocol.ClientFactory):
    def __init__(self, owner: SocketOwner, failed: Callable[[Failure], None]) -> None:
        self.owner = owner
        self.failed = failed

    def buildProtocol(self, addr: object) -> DrbdSocket:
        sock = DrbdSocket(self.owner, None)
        sock.outgoing = True
        return sock

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.failed(reason)


class Establisher:
    """Gets one data and one meta socket to the peer, then hands them over.

    :param ready: called with (data, meta) once both have survived the socket check.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        owner: SocketOwner,
        listen: tuple[str, int],
        peer: tuple[str, int],
        connect_int: float,
        sock_check: float,
        log: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._owner = owner
        self._listen = listen
        self._peer = peer
        self._connect_int = connect_int
        self._sock_check = sock_check
        self._log = log
        self.slots: dict[Sock, DrbdSocket] = {}
        self._connecting = False
        self._retry: IDelayedCall | None = None
        self._check: IDelayedCall | None = None
        self._port: IListeningPort | None = None
        self.active = False
        self.ready: Callable[[DrbdSocket, DrbdSocket], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def listen(self) -> None:
        self._port = self._reactor.listenTCP(
            self._listen[1], _AcceptFactory(self._owner), interface=self._listen[0]
        )

    def start(self) -> None:
        self.active = True
        self._schedule(0)

    def stop(self) -> None:
        self.active = False
        for call in (self._retry, self._check):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._check = None

    def stopListening(self) -> None:
        if self._port is not None:
            self._port.stopListening()
            self._port = None

    def dropAll(self) -> None:
        for sock in list(self.slots.values()):
            sock.close()
        self.slots.clear()

    # -- connecting ----------------------------------------------------------------------------
    def _schedule(self, delay: float | None = None) -> None:
        if not self.active or (self._retry is not None and self._retry.active()):
            return
        if delay is None:
            delay = random.uniform(0.2, 1.0) * self._connect_int
        self._retry = self._clock.callLater(delay, self._connect)

    def _wantedKind(self) -> Sock | None:
        if Sock.DATA in self.slots and Sock.META in self.slots:
            return None
        if not self.slots:
            # DRBD 9: the node whose address compares greater opens the data socket first.
            greater = address_bytes(self._listen) > address_bytes(self._peer)
            return Sock.DATA if greater else Sock.META
        return Sock.META if Sock.DATA in self.slots else Sock.DATA

    def _connect(self) -> None:
        self._retry = None
        if not self.active or self._connecting or self._wantedKind() is None:
            return
        self._connecting = True
        factory = _ConnectFactory(self._owner, self._connectFailed)
        self._reactor.connectTCP(
            self._peer[0], self._peer[1], factory, timeout=10, bindAddress=(self._listen[0], 0)
        )

    def _connectFailed(self, reason: Failure) -> None:
        self._connecting = False
        self._schedule()

    # -- events from sockets -------------------------------------------------------------------
    def made(self, sock: DrbdSocket) -> None:
        if not sock.outgoing:
            return
        self._connecting = False
        kind = self._wantedKind() if self.active else None
        if kind is None:
            sock.close()  # nothing sent yet, so the peer just sees a closed socket
            return
        sock.announce(kind)
        self.slots[kind] = sock
        self._progress()

    def identified(self, sock: DrbdSocket) -> None:
        assert sock.kind is not None
        if not self.active:
            sock.close()
            return
        current = self.slots.get(sock.kind)
        self.slots[sock.kind] = sock
        if current is not None:
            self._log(f"initial packet {sock.kind.value} crossed")
            current.close()
            self._schedule()  # back off a random time, like DRBD's coin flip
        self._progress()

    def lost(self, sock: DrbdSocket) -> None:
        if sock.kind is not None and self.slots.get(sock.kind) is sock:
            del self.slots[sock.kind]
            if self._check is not None and self._check.active():
                self._check.cancel()
            self._schedule()

    def _progress(self) -> None:
        if self._wantedKind() is not None:
            self._schedule()
            return
        if self._check is None or not self._check.active():
            self._check = self._clock.callLater(self._sock_check, self._checkSockets)

    def _checkSockets(self) -> None:
        self._check = None
        if not self.active:
            return
        data, meta = self.slots.get(Sock.DATA), self.slots.get(Sock.META)
        if data is None or meta is None or not (data.connected and meta.connected):
            self._schedule()
            return
        self.active = False
        assert self.ready is not None  # the node sets it before it starts us
        self.ready(data, meta)
