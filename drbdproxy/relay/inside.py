"""DRBD's sockets on the inside: those DRBD opens to our inside address (each becomes a stream
once its first packet says what it is for) and those we open to DRBD for the peer's streams."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import protocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from drbdproxy.admin.logs import logger
from drbdproxy.drbd.header import encode_h80
from drbdproxy.drbd.packets import Cmd
from drbdproxy.link import StreamKind
from drbdproxy.relay.streams import DrbdSocket, Stream, StreamOwner, format_peer

_INITIAL_DATA = encode_h80(Cmd.P_INITIAL_DATA, 0)
_INITIAL_META = encode_h80(Cmd.P_INITIAL_META, 0)


def kind_of_first_bytes(first: bytes) -> StreamKind:
    """DRBD's first packet says what a socket is for; anything else is relayed as opaque."""
    if first == _INITIAL_DATA:
        return StreamKind.DATA
    if first == _INITIAL_META:
        return StreamKind.META
    return StreamKind.UNKNOWN


class InsideAcceptor:
    """A socket DRBD opened to our inside address, until its first packet names its kind.

    DRBD sends its first packet at once; a socket that has not within ping-timeout is closed,
    so sockets that never speak cannot pile up.
    """

    _log = logger()

    def __init__(self, connection: StreamOwner) -> None:
        self._connection = connection
        self._first = b""
        self._silence: IDelayedCall | None = None
        self.stream: Stream | None = None

    def drbdConnected(self, sock: DrbdSocket) -> None:
        if not self._connection.acceptsDrbd():
            self._log.info(
                "refusing a DRBD connection from {peer} on {name}: peer proxy not connected",
                peer=format_peer(sock.transport), name=self._connection.name,
            )
            sock.transport.abortConnection()
            return
        timeout = self._connection.close_timeout
        self._silence = self._connection.clock.callLater(timeout, self._silent, sock, timeout)

    def _silent(self, sock: DrbdSocket, timeout: float) -> None:
        self._silence = None
        self._log.info("closing a connection from {peer} to the inside address of {name}: no"
                       " DRBD packet within {timeout:g} s", peer=format_peer(sock.transport),
                       name=self._connection.name, timeout=timeout)
        sock.transport.abortConnection()

    def _stopWaiting(self) -> None:
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        self._silence = None

    def drbdData(self, sock: DrbdSocket, data: bytes) -> None:
        if self.stream is not None:
            self.stream.drbdData(sock, data)
            return
        self._first += data
        if len(self._first) < len(_INITIAL_DATA):
            return
        self._stopWaiting()
        kind = kind_of_first_bytes(self._first[: len(_INITIAL_DATA)])
        self.stream = self._connection.openStream(kind, sock)
        if self.stream is None:
            sock.transport.abortConnection()
            return
        first, self._first = self._first, b""
        self.stream.drbdData(sock, first)

    def drbdLost(self, sock: DrbdSocket, reason: Failure) -> None:
        self._stopWaiting()
        if self.stream is not None:
            self.stream.drbdLost(sock, reason)




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
        retry = not self.stream.closed and not reason.check(ConnectionRefusedError)
        if self.retry is not None and retry:
            self.retry()
            return
        self.stream.drbdConnectFailed(reason.getErrorMessage())


class InsideFactory(protocol.ServerFactory):
    """Accepts the local DRBD's connects on the inside address."""

    noisy = False  # they start and stop with every DRBD socket and link: not news

    def __init__(self, connection: StreamOwner) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> DrbdSocket:
        return DrbdSocket(InsideAcceptor(self.connection))
