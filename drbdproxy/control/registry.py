"""The connection registry: named connections as child services, driven by the control protocol."""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from drbdproxy import __version__
from drbdproxy.admin import logs
from drbdproxy.codecs import PluginError, parse_plugin
from drbdproxy.relay.connection import Network, ProxyConnection
from drbdproxy.status import ConnectionStatus, Traffic
from drbdproxy.spec import ConnectionSpec
from drbdproxy.control.interface import ControlError, IProxyControl
from drbdproxy.admin.logs import logger
from drbdproxy.runtime.malloc import HeapTrimmer, resident_bytes, trim_heap
from drbdproxy.relay.encoder import ChunkEncoder
from drbdproxy.relay.tls import TlsConfig
from drbdproxy.units import format_address, format_drbd_size, format_size
from drbdproxy.relay.workers import Workers
from drbdproxy.control import views
from drbdproxy.control.rates import RATE_INTERVAL, RateMeter

#: Seconds between looks at whether drained buffers should go back to the kernel.
TRIM_INTERVAL = 2.0



def physical_memory() -> int:
    """Bytes of RAM this host has."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@implementer(IProxyControl)
class ConnectionRegistry(MultiService):
    """Every configured connection, by name; implements what drbd-proxy-ctl can ask for."""

    _log = logger()

    def __init__(self, reactor: Any, meta_first: bool = True, tls: TlsConfig | None = None,
                 link_secret: bytes | None = None, link_allow: tuple[Network, ...] = (),
                 memory: int | None = None) -> None:
        super().__init__()
        #: A memlimit above this is refused: the buffer could never be held.
        self._memory = physical_memory() if memory is None else memory
        self._reactor = reactor
        self._link_allow = link_allow
        self._meta_first = meta_first
        self._tls = tls
        self._link_secret = link_secret
        self._stopping = False
        # Compression workers: one per core, shared by every connection.
        self._pool = Workers(reactor, threads=max(2, os.cpu_count() or 2))
        self._encoder = ChunkEncoder(self._pool)
        self._trimmer = HeapTrimmer()
        self._trim_loop = LoopingCall(self._maybeTrimHeap)
        self._trim_loop.clock = reactor
        # Rates are measured here, from the snapshots, once a second.
        self.rates = RateMeter()
        self._rate_loop = LoopingCall(self._sampleRates)
        self._rate_loop.clock = reactor

    def startService(self) -> None:
        self._pool.start()
        self._trim_loop.start(TRIM_INTERVAL, now=False)
        self._rate_loop.start(RATE_INTERVAL, now=True)
        super().startService()

    def _maybeTrimHeap(self) -> None:
        held = sum(c.budget.used for c in self)
        resident = resident_bytes()
        if self._trimmer.observe(held, resident):
            trim_heap()
            self._log.debug("free heap given back to the kernel: resident {resident} bytes,"
                            " {held} held", resident=resident, held=held)

    def _sampleRates(self) -> None:
        try:
            self.rates.sample(self._reactor.seconds(), self.traffic())
        except Exception:
            # One bad snapshot must not stop the rates for good (a LoopingCall that raises stops).
            self._log.failure("rates not measured this time")

    def stopService(self) -> Any:
        for loop in (self._trim_loop, self._rate_loop):
            if loop.running:
                loop.stop()
        d = super().stopService()

        def stopPool(result: object) -> object:
            self._pool.stop()
            return result

        d.addBoth(stopPool)
        return d

    # -- lookup ----------------------------------------------------------------------------------
    def connection(self, name: str) -> ProxyConnection:
        try:
            return self.getServiceNamed(name)
        except KeyError:
            raise ControlError(f"no connection named {name!r}") from None

    @property
    def connections_by_name(self) -> list[ProxyConnection]:
        return sorted(self, key=lambda c: c.name)

    # -- mutating commands -----------------------------------------------------------------------
    def add_connection(self, spec: ConnectionSpec) -> Optional[Iterable[str]]:
        if spec.name in self.namedServices:
            raise ControlError(f"connection {spec.name!r} already exists")
        if "memlimit" in spec.options:
            self._checkMemlimit(spec.options["memlimit"])
        # The inside port is shared with our own connects to DRBD (SO_REUSEPORT), so the kernel
        # would let two connections listen on it: refuse that here.
        for other in self.connections_by_name:
            taken = {other.spec.listen_inside, other.spec.listen_outside}
            for addr in (spec.listen_inside, spec.listen_outside):
                if addr in taken:
                    raise ControlError(f"cannot listen on {format_address(*addr)}:"
                                       f" address already in use by connection {other.name}")
        try:
            conn = ProxyConnection(spec, self._reactor, self._encoder, self._meta_first, self._tls,
                                   self._link_secret, self._link_allow)
        except PluginError as e:
            raise ControlError(str(e)) from None
        try:
            conn.bind()
        except CannotListenError as e:
            raise ControlError(
                f"cannot listen on {format_address(e.interface, e.port)}: {e.socketError}"
            ) from None
        conn.setName(spec.name)
        conn.setServiceParent(self)
        self._log.info("connection {name} added", name=spec.name)
        if not conn.authenticated:
            self._log.warn("connection {name}: links to the peer proxy are not authenticated;"
                           " they are accepted only from {peer}{allowed}. Anyone who can send"
                           " from there can take part: use --link-secret or --tls-*",
                           name=spec.name, peer=spec.connect_peer_outside[0],
                           allowed=" and --link-allow" if self._link_allow else "")
        return None

    def del_connection(self, name: str) -> Any:
        return self.removeService(self.connection(name))

    def set_memlimit(self, name: str, size: int) -> Optional[Iterable[str]]:
        return self.set_option(name, "memlimit", size)

    def _checkMemlimit(self, size: int) -> None:
        if size > self._memory:
            raise ControlError(f"memlimit {format_size(size)} is more than this host's"
                               f" {format_size(self._memory)} of physical memory")

    def set_option(self, name: str, option: str, value: int) -> Optional[Iterable[str]]:
        conn = self.connection(name)
        if option == "memlimit":
            self._checkMemlimit(value)
        try:
            conn.settings.apply(option, value)
        except PluginError as e:
            raise ControlError(str(e)) from None
        conn.settingsChanged()
        self._log.info("{option} of {name} set to {value}", option=option, name=name, value=value)
        return None

    def set_plugin(self, name: str, index: int, words: Optional[list[str]]) -> Optional[Iterable[str]]:
        conn = self.connection(name)
        plugins = conn.settings.plugins
        if index > len(plugins):
            raise ControlError(f"plugin index {index} leaves a gap: {name} has {len(plugins)} plugins")
        if words is None:
            del plugins[index:]
        else:
            try:
                spec = parse_plugin(words)
            except PluginError as e:
                raise ControlError(str(e)) from None
            if index == len(plugins):
                plugins.append(spec)
            else:
                plugins[index] = spec
        conn.settingsChanged()
        self._log.info("plugins of {name}: {plugins}", name=name,
                       plugins=[p.render() for p in plugins])
        return None

    def set_loglevel(self, level: str) -> Optional[Iterable[str]]:
        logs.set_level(level)
        self._log.warn("log level set to {loglevel}", loglevel=level)
        return None

    # -- read-side commands ----------------------------------------------------------------------
    def show(self, as_json: bool = False) -> Iterable[str]:
        if as_json:
            return views.connections_json(self.status(), self.rates)
        return views.show_lines(self.status())

    def proxy_settings(self, name: str, as_json: bool = False) -> Iterable[str]:
        conn = self.connection(name)
        settings = conn.settings
        if as_json:
            return views.document(name=name, memlimit=settings.memlimit,
                                  options=dict(sorted(settings.options.items())),
                                  plugins=[p.render() for p in settings.plugins])
        lines = ["proxy {", f"    memlimit {format_drbd_size(settings.memlimit)};"]
        for option, value in sorted(settings.options.items()):
            # drbdadm 9 cannot parse `compression on;` here, and adjust never compares it;
            # link-cc is ours, not drbd.conf's.
            if option not in ("compression", "link-cc"):
                lines.append(f"    {option} {value};")
        if settings.plugins:
            lines.append("    plugin {")
            lines += [f"        {p.render()};" for p in settings.plugins]
            lines.append("    }")
        lines.append("}")
        return lines

    def status(self) -> list[ConnectionStatus]:
        """Every connection as it is now, by name: what every view renders."""
        return [c.status() for c in self.connections_by_name]

    def traffic(self) -> list[Traffic]:
        """Every connection's byte counters, for the rates."""
        return [c.traffic() for c in self.connections_by_name]

    def memusage(self, human: bool, as_json: bool = False) -> Iterable[str]:
        if as_json:
            return views.connections_json(self.status(), self.rates)
        return views.memusage_lines(self.status(), human)

    def connections(self, human: bool, as_json: bool = False) -> Iterable[str]:
        if as_json:
            return views.connections_json(self.status(), self.rates)
        return views.connections_table(self.status(), self.rates, human)

    def subconnections(self, human: bool, as_json: bool = False) -> Iterable[str]:
        if as_json:
            return views.subconnections_json(self.status(), self.rates)
        return views.subconnections_table(self.status(), self.rates, human)

    def details(self, as_json: bool = False) -> Iterable[str]:
        if as_json:
            return views.details_json(self.status())
        return views.details_lines(self.status())

    def statistics(self, as_json: bool = False) -> Iterable[str]:
        lines = views.statistics_lines(self.status(), self.rates)
        return views.statistics_json(lines) if as_json else lines

    def version(self, as_json: bool = False) -> Iterable[str]:
        if as_json:
            return views.document(version=__version__)
        return [f"drbdproxy {__version__}"]

    def shutdown(self) -> None:
        if self._stopping:
            return  # several sessions may ask; once is enough
        self._stopping = True
        self._log.info("shutdown requested over the control socket")
        self._reactor.stop()
