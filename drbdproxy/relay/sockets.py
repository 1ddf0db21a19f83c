"""Data-path sockets: tuned for bulk transfer, and sharing the inside port with our connects.

Every data-path transport reads and buffers TRANSPORT_BUFFER at a time (:func:`tune_transport`).

DRBD 9 recognises its proxy by exact (IP, port): the proxy listens on the inside address and also connects to the local DRBD *from* that same
address and port, as LINBIT's proxy does (DRBD 9 first matches an incoming peer by IP and port,
then by IP). Linux allows a connecting socket to bind a listening socket's address when both set
SO_REUSEPORT. Only one connection can use a given address pair, so later connects fall back to an
ephemeral port on the inside IP.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from zope.interface import Attribute


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """What a protocol here uses of its transport: all of a Twisted TCP or UNIX socket
    transport (``tcp.Connection``), which Twisted types as a bare ``ITransport``.

    Only a static type: Twisted's transports do not declare it, so never ask ``providedBy``.
    """

    disconnecting = Attribute("True once the transport is closing")
    bufferSize = Attribute("Bytes per read, and the mark above which writes pause producers")


def _reuse(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


class _SharedPort(tcp.Port):
    def createInternetSocket(self) -> socket.socket:
        return _reuse(super().createInternetSocket())


class _SharedClient(tcp.Client):
    def createInternetSocket(self) -> socket.socket:
        return _reuse(super().createInternetSocket())


class _SharedConnector(tcp.Connector):
    def _makeTransport(self) -> tcp.Client:
        return _SharedClient(self.host, self.port, self.bindAddress, self, self.reactor)


def listen_shared(reactor: Any, port: int, factory: Any, interface: str) -> tcp.Port:
    """listenTCP whose address a connecting socket may also bind."""
    p = _SharedPort(port, factory, 50, interface, reactor)
    p.startListening()
    return p


def connect_from(reactor: Any, host: str, port: int, factory: Any, source: tuple[str, int],
                 timeout: float = 10) -> tcp.Connector:
    """connectTCP from ``source``, even when ``source`` is one of our listening addresses."""
    connector = _SharedConnector(host, port, factory, timeout, source, reactor)
    connector.connect()
    return connector


#: Read size and write-buffer mark of every transport on the data path. Twisted's 64 KiB means
#: four times the per-read Python work.
TRANSPORT_BUFFER = 256 << 10


def tune_transport(transport: Any, read_size: int = TRANSPORT_BUFFER) -> None:
    """Every data-path socket: no Nagle delay, ``read_size`` per read and as the write-buffer
    mark, TRANSPORT_BUFFER per send() (Twisted's SEND_LIMIT of 128 KiB would halve every 256 KiB
    frame)."""
    transport.setTcpNoDelay(True)
    transport.bufferSize = read_size
    transport.SEND_LIMIT = TRANSPORT_BUFFER


#: Linux's SO_SNDBUFFORCE and SO_RCVBUFFORCE (Python names neither): what root may ask for
#: beyond net.core.wmem_max / rmem_max, which are 208 KiB on a stock kernel while a link at
#: 150 ms needs megabytes (docs/benchmarks.md, P8 with sndbuf-size).
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33


def set_buffer(handle: Any, force: int, plain: int, size: int) -> None:
    """Ask for a socket buffer of ``size`` bytes: past the sysctl cap where we may (root),
    else as far as the cap allows."""
    try:
        handle.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:  # not root (EPERM), or a kernel without it
        handle.setsockopt(socket.SOL_SOCKET, plain, size)


def os_socket(transport: Any) -> Any:
    """The OS socket under a link's transport: a TLS transport's own handle is its OpenSSL
    connection, the socket is its TCP transport's."""
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    return transport.getHandle()


class LinkSocketTuning:
    """A connection's socket options for its links: ``sndbuf-size`` and ``rcvbuf-size`` for
    each new link socket (so: on reconnect), ``link-cc`` for each one, live."""

    def __init__(self, name: str, log: Any) -> None:
        self._name = name
        self._log = log
        self._cc_refused = False

    def tune(self, transport: Any, options: dict[str, Any], cc: str) -> None:
        handle = os_socket(transport)
        for option, (force, plain) in (("sndbuf-size", (_SO_SNDBUFFORCE, socket.SO_SNDBUF)),
                                       ("rcvbuf-size", (_SO_RCVBUFFORCE, socket.SO_RCVBUF))):
            size = options.get(option, 0)
            if size > 0:
                set_buffer(handle, force, plain, size)
        self.congestionControl(handle, cc, asked="link-cc" in options)

    def retune(self, transports: list[Any], cc: str, asked: bool) -> None:
        """``link-cc`` changed: apply it to the live links, and say again if it is missing."""
        self._cc_refused = False
        for transport in transports:
            self.congestionControl(os_socket(transport), cc, asked)

    def congestionControl(self, handle: Any, cc: str, asked: bool) -> None:
        if cc == "system":
            return
        try:
            handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        except OSError as e:
            if not self._cc_refused:
                self._cc_refused = True
                # Asked for, it matters; bbr by default, where the kernel lacks it, less so.
                log = self._log.warn if asked else self._log.info
                log("link sockets of {name} keep the system's congestion control: {cc} is not"
                    " available ({error}; modprobe tcp_{cc})", name=self._name, cc=cc,
                    error=e.strerror)


def congestion_control(transport: Any) -> str | None:
    """The congestion control a link's socket runs, as the kernel says."""
    try:
        name = os_socket(transport).getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except (AttributeError, OSError):
        return None
    return bytes(name).split(b"\0", 1)[0].decode("ascii", "replace")


#: struct tcp_info (linux/tcp.h, Linux 4.10 on): tcpi_snd_mss and tcpi_unacked (u32), and
#: tcpi_busy_time and tcpi_sndbuf_limited (u64, microseconds).
_TCPI_SND_MSS, _TCPI_UNACKED = 16, 24
_TCPI_BUSY_TIME, _TCPI_SNDBUF_LIMITED, _TCPI_SIZE = 168, 184, 192


class SendBufferGrowth:
    """Grows a bulk link socket's send buffer while that buffer is what limits the link: its
    autotuning stops at ``net.ipv4.tcp_wmem``'s maximum (4 MiB by default), less than a fast
    link with a long round trip keeps in flight (P8 at 150 ms: 0.72-0.86 of the link's rate).
    The kernel says so (send-buffer-limited for a tenth of the busy time or more), or half the
    buffer is in flight while the link is busy: at 150 ms the kernel did not count the limit
    without loss, where a window that big was what held the link back (docs/benchmarks.md). Doubles
    at most once per look, up to ``ceiling``; root only, since below root the cap
    (``net.core.wmem_max``) is smaller than what autotuning already gives."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None
        self.gave_up = False

    def look(self, handle: Any, ceiling: int) -> int | None:
        """Sample the socket; the new send buffer (bytes) if it grew, else None."""
        if self.gave_up:
            return None
        try:
            info = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_SIZE)
        except OSError:
            return None
        if len(info) < _TCPI_SIZE:
            self.gave_up = True  # a kernel before 4.10 does not say
            return None
        (busy,) = struct.unpack_from("=Q", info, _TCPI_BUSY_TIME)
        (limited,) = struct.unpack_from("=Q", info, _TCPI_SNDBUF_LIMITED)
        last, self._last = self._last, (busy, limited)
        if last is None or busy - last[0] <= 0:
            return None  # idle since the last look
        current = handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        (mss,) = struct.unpack_from("=I", info, _TCPI_SND_MSS)
        (unacked,) = struct.unpack_from("=I", info, _TCPI_UNACKED)
        said = (limited - last[1]) * 10 >= busy - last[0]
        full = unacked * mss * 2 >= current
        if current >= ceiling or not (said or full):
            return None
        try:
            # The kernel doubles what it is given: asking for the current size doubles it.
            handle.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, min(current, ceiling // 2))
        except OSError:
            self.gave_up = True
            return None
        return int(handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
