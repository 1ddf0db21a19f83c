"""One proxied DRBD connection: its settings, its state, and its listening endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from .codecs import PluginSpec, compression_option
from .control.commands import COMPRESSION_ON, ConnectionSpec

DEFAULT_MEMLIMIT = 16 << 20


class State:
    """Connection states as DRBD Proxy v4 names them."""

    CONNECTING = "Connecting"  # no contact with the peer proxy
    PROXY_CONNECTED = "ProxyConnected"  # the proxy-to-proxy link is up, DRBD's sockets are not
    CONNECTED = "Connected"  # DRBD's sockets are relayed


@dataclass
class Settings:
    """What ``set ...`` and ``add connection --opt=value`` configure for a connection."""

    memlimit: int = DEFAULT_MEMLIMIT
    options: dict[str, int] = field(default_factory=dict)
    plugins: list[PluginSpec] = field(default_factory=list)

    def apply(self, option: str, value: int) -> None:
        """Set one option; ``compression`` replaces the plugin list, as drbdadm means it.

        :raises PluginError: a compression value that names no codec.
        """
        if option == "memlimit":
            self.memlimit = value
            return
        if option == "compression":
            self.plugins = compression_option("on" if value == COMPRESSION_ON else str(value))
        self.options[option] = value


class _RefuseWhileUnlinked(protocol.Protocol):
    """DRBD's inside connects are refused while the peer proxy is unreachable (SPEC 4.6)."""

    _log = Logger()

    def connectionMade(self) -> None:
        conn = self.factory.connection  # type: ignore[attr-defined]
        self._log.info(
            "refusing a DRBD connection from {peer} on {name}: peer proxy not connected",
            peer=str(self.transport.getPeer()),
            name=conn.name,
        )
        self.transport.abortConnection()  # type: ignore[attr-defined]


class _RefuseFactory(protocol.ServerFactory):
    protocol = _RefuseWhileUnlinked

    def __init__(self, connection: ProxyConnection) -> None:
        self.connection = connection


class ProxyConnection(Service):
    """A named child service of the registry; binds its inside and outside addresses."""

    _log = Logger()

    def __init__(self, spec: ConnectionSpec, reactor: Any) -> None:
        self.name = spec.name
        self.spec = spec
        self._reactor = reactor
        self.settings = Settings()
        for option, value in spec.options.items():
            self.settings.apply(option, value)
        self.state = State.CONNECTING
        self.buffered = 0
        self.buffered_peak = 0
        self.reconnects = 0
        self._ports: list[IListeningPort] = []

    def bind(self) -> None:
        """Listen on the inside and outside addresses; raises if either is unavailable."""
        try:
            for host, port in (self.spec.listen_inside, self.spec.listen_outside):
                self._ports.append(
                    self._reactor.listenTCP(port, _RefuseFactory(self), interface=host)
                )
        except Exception:
            self.unbind()
            raise

    def unbind(self) -> None:
        for port in self._ports:
            port.stopListening()
        self._ports.clear()

    def stopService(self) -> None:  # type: ignore[override]
        self.unbind()
        self._log.info("connection {name} removed", name=self.name)
        return super().stopService()
