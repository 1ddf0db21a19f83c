"""Sockets that share the inside port: DRBD 9 recognises its proxy by exact (IP, port).

The proxy listens on the inside address and also connects to the local DRBD *from* that same
address and port, as LINBIT's proxy does (DRBD 9 first matches an incoming peer by IP and port,
then by IP). Linux allows a connecting socket to bind a listening socket's address when both set
SO_REUSEPORT. Only one connection can use a given address pair, so later connects fall back to an
ephemeral port on the inside IP.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp


def _reuse(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


class _SharedPort(tcp.Port):
    def createInternetSocket(self) -> socket.socket:  # type: ignore[override]
        return _reuse(super().createInternetSocket())


class _SharedClient(tcp.Client):
    def createInternetSocket(self) -> socket.socket:  # type: ignore[override]
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
