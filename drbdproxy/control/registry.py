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
from drbdproxy.status import ConnectionStatus
from drbdproxy.spec import ConnectionSpec
from drbdproxy.control.interface import ControlError, IProxyControl
from drbdproxy.admin.logs import logger
from drbdproxy.runtime.malloc import HeapTrimmer, resident_bytes, trim_heap
from drbdproxy.relay.encoder import ChunkEncoder
from drbdproxy.relay.tls import TlsConfig
from drbdproxy.units import format_address, format_size
from drbdproxy.relay.workers import Workers

#: Seconds between looks at whether drained buffers should go back to the kernel.
TRIM_INTERVAL = 2.0



#: DRBD's defaults: ko-count 7 x timeout 6 s. A peer slower than this to ack is declared dead.
KO_SECONDS = 42


def _ratio(raw: int, wire: int) -> str:
    return f"{raw / wire:.2f}" if wire else "-"


def drbd_size(n: int) -> str:
    """A size as drbd.conf writes it: ``128M`` when exact, else bytes."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


@implementer(IProxyControl)
class ConnectionRegistry(MultiService):
    """Every configured connection, by name; implements what drbd-proxy-ctl can ask for."""

    _log = logger()

    def __init__(self, reactor: Any, meta_first: bool = True, tls: TlsConfig | None = None,
                 link_secret: bytes | None = None, link_allow: tuple[Network, ...] = ()) -> None:
        super().__init__()
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

    def startService(self) -> None:
        self._pool.start()
        self._trim_loop.start(TRIM_INTERVAL, now=False)
        super().startService()

    def _maybeTrimHeap(self) -> None:
        held = sum(c.budget.used for c in self)
        resident = resident_bytes()
        if self._trimmer.observe(held, resident):
            trim_heap()
            self._log.debug("free heap given back to the kernel: resident {resident} bytes,"
                            " {held} held", resident=resident, held=held)

    def stopService(self) -> Any:
        if self._trim_loop.running:
            self._trim_loop.stop()
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

    def set_option(self, name: str, option: str, value: int) -> Optional[Iterable[str]]:
        conn = self.connection(name)
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
    def show(self) -> Iterable[str]:
        for c in self.connections_by_name:
            s = c.spec
            yield (
                f"{c.name}: inside {format_address(*s.listen_inside)}"
                f" peer-outside {format_address(*s.connect_peer_outside)}"
                f" outside {format_address(*s.listen_outside)}"
                f" drbd {format_address(*s.connect_drbd)}"
            )

    def proxy_settings(self, name: str) -> Iterable[str]:
        conn = self.connection(name)
        lines = ["proxy {", f"    memlimit {drbd_size(conn.settings.memlimit)};"]
        for option, value in sorted(conn.settings.options.items()):
            # drbdadm 9 cannot parse `compression on;` here, and adjust never compares it;
            # link-cc is ours, not drbd.conf's.
            if option not in ("compression", "link-cc"):
                lines.append(f"    {option} {value};")
        if conn.settings.plugins:
            lines.append("    plugin {")
            lines += [f"        {p.render()};" for p in conn.settings.plugins]
            lines.append("    }")
        lines.append("}")
        return lines

    def status(self) -> list[ConnectionStatus]:
        """Every connection as it is now, by name: what every view renders."""
        return [c.status() for c in self.connections_by_name]

    def memusage(self, human: bool) -> Iterable[str]:
        size = format_size if human else str
        for c in self.status():
            reads = "paused" if c.reads_paused else "running"
            drain = c.drain_seconds
            drain_text = f"{drain:.1f}s" if drain is not None else "unknown"
            # LINBIT's advice: DRBD's congestion-fill at 90 % of the proxy's buffer.
            yield (f"{c.name}: buffered {size(c.buffered)} memlimit {size(c.memlimit)}"
                   f" peak {size(c.buffered_peak)} drbd-reads {reads} drain-time {drain_text}"
                   f" congestion-fill {size(c.memlimit * 9 // 10)}")
            if drain is not None and drain > KO_SECONDS:
                yield (f"{c.name}: warning: draining the buffer takes {drain:.0f}s, more than"
                       f" DRBD's default ko-count x timeout ({KO_SECONDS}s): DRBD may drop"
                       " the connection; lower memlimit or use on-congestion pull-ahead")
            if c.out_of_sync:
                yield (f"{c.name}: DRBD pulled ahead: {c.out_of_sync} P_OUT_OF_SYNC sent"
                       " (Ahead/Behind); a resync follows when the buffer drains")

    def connections(self, human: bool) -> Iterable[str]:
        for c in self.status():
            rtt = f" link-rtt {c.link_rtt_ms:.1f}ms" if c.link_rtt_ms is not None else ""
            yield f"{c.name}: {c.state} reconnects {c.reconnects}{rtt}"

    def subconnections(self, human: bool) -> Iterable[str]:
        size = format_size if human else str
        for c in self.status():
            for s in c.streams:
                yield (f"{c.name} {s.kind} stream {s.sid} drbd {s.peer}:"
                       f" to-peer {size(s.to_peer)} (wire {size(s.to_peer_wire)},"
                       f" ratio {_ratio(s.to_peer, s.to_peer_wire)})"
                       f" from-peer {size(s.from_peer)} (wire {size(s.from_peer_wire)},"
                       f" ratio {_ratio(s.from_peer, s.from_peer_wire)})")

    def details(self) -> Iterable[str]:
        for c in self.status():
            for s in c.streams:
                opaque = f" opaque: {s.opaque}" if s.opaque else ""
                yield f"{c.name} {s.kind} stream {s.sid} drbd {s.peer}{opaque}"
                for label, counts in (("to-peer", s.packets_to_peer),
                                      ("from-peer", s.packets_from_peer)):
                    text = " ".join(f"{n} {k}" for n, k in sorted(counts.items()))
                    yield f"  {label:9} {text or '-'}"

    def statistics(self) -> Iterable[str]:
        for c in self.status():
            yield f"{c.name}.state {c.state}"
            yield f"{c.name}.memlimit {c.memlimit}"
            yield f"{c.name}.bwlimit {c.bwlimit}"
            yield f"{c.name}.codec {c.codec.replace(' ', '-')}"
            yield f"{c.name}.link_cc {c.link_cc or '-'}"
            yield f"{c.name}.buffered {c.buffered}"
            yield f"{c.name}.buffered_peak {c.buffered_peak}"
            rtt = f"{c.link_rtt_ms:.3f}" if c.link_rtt_ms is not None else "-"
            yield f"{c.name}.link_rtt_ms {rtt}"
            rate = f"{c.drain_rate:.0f}" if c.drain_rate is not None else "-"
            yield f"{c.name}.link_rate_bytes_per_s {rate}"
            drain = f"{c.drain_seconds:.3f}" if c.drain_seconds is not None else "-"
            yield f"{c.name}.drain_seconds {drain}"
            yield f"{c.name}.out_of_sync {c.out_of_sync}"
            yield f"{c.name}.reconnects {c.reconnects}"
            yield f"{c.name}.dropped_after_close_bytes {c.dropped_after_close}"
            yield f"{c.name}.discarded_bytes {c.discarded_to_peer + c.discarded_from_peer}"
            yield f"{c.name}.discarded.to_peer_bytes {c.discarded_to_peer}"
            yield f"{c.name}.discarded.from_peer_bytes {c.discarded_from_peer}"
            for kind, t in sorted(c.totals.items()):
                prefix = f"{c.name}.{kind}"
                yield f"{prefix}.to_peer.bytes {t['to_peer']}"
                yield f"{prefix}.to_peer.wire_bytes {t['to_peer_wire']}"
                yield f"{prefix}.from_peer.bytes {t['from_peer']}"
                yield f"{prefix}.from_peer.wire_bytes {t['from_peer_wire']}"
            for (kind, direction, name), count in sorted(c.packets.items()):
                yield f"{c.name}.{kind}.{direction}.packets.{name} {count}"

    def version(self) -> Iterable[str]:
        return [f"drbdproxy {__version__}"]

    def shutdown(self) -> None:
        if self._stopping:
            return  # several sessions may ask; once is enough
        self._stopping = True
        self._log.info("shutdown requested over the control socket")
        self._reactor.stop()
