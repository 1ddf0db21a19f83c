"""``twistd drbd-proxy``: command-line options and a makeService that only wires things."""

from __future__ import annotations

import grp
import ipaddress
import socket
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.python import usage

from drbdproxy import __version__
from drbdproxy.config import Config, ConfigError, ProxyConnectionConfig, load
from drbdproxy.config.model import hostnames_equal
from drbdproxy.runtime.collector import tune_gc
from drbdproxy.control.commands import CommandError, parse_command
from drbdproxy.control.interface import ControlError
from drbdproxy.control.protocol import ControlFactory
from drbdproxy.link import load_secret
from drbdproxy.runtime.malloc import tune_malloc
from drbdproxy.admin.logs import logger
from drbdproxy.admin.manhole import ManholeError, load_authorized_keys, manhole_service
from drbdproxy.admin.manhole import check_endpoint as check_manhole_endpoint
from drbdproxy.admin.metrics import MetricsError, metrics_service
from drbdproxy.admin.metrics import check_endpoint as check_metrics_endpoint
from drbdproxy.control.registry import ConnectionRegistry
from drbdproxy.relay.tls import TlsConfig, TlsError
from drbdproxy.startup import (SYSTEMD_CONTROL, ControlSocket, Guarded, StartupError,
                               check_endpoint, fail, notify_ready, systemd_passed_sockets)

DEFAULT_CONTROL = "unix:/run/drbd-proxy/drbd-proxy-ctl.socket:mode=600"

__all__ = ["DEFAULT_CONTROL", "Options", "StartupError", "makeService"]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "An open DRBD Proxy: buffers DRBD replication in memory up to memlimit per connection, "
        "compresses it and relays it to a peer proxy over the WAN. Configure it with "
        "drbd-proxy-ctl (or drbdadm proxy-up, which runs drbd-proxy-ctl)."
    )
    optFlags = [
        ["meta-on-bulk", None,
         "For comparison only: carry DRBD's meta sockets on the bulk link, behind buffered data"
         " (by default they have their own link, so pings and acks never wait)."],
    ]
    optParameters = [
        ["control", "c", None,
         "Twisted server endpoint of the control socket (its directory is created; default: the"
         f" socket systemd passes, from drbd-proxy.socket, else {DEFAULT_CONTROL})."],
        ["control-group", None, None,
         "group allowed to use a unix control socket (it becomes mode 0660, that group's)."],
        ["drbd-conf", None, None,
         "drbd.conf to read at start: add every proxied connection of --node, as"
         " `drbdadm proxy-up all` would."],
        ["node", None, None,
         "the host this proxy acts for in --drbd-conf (default: uname -n, like drbdadm)."],
        ["manhole", None, None,
         "SSH manhole endpoint, e.g. tcp:6022:interface=127.0.0.1 (a bare port means loopback);"
         " needs --manhole-keys."],
        ["manhole-keys", None, None,
         "authorized_keys file of the public keys allowed into the manhole; the manhole's host"
         " key is generated beside it (manhole_host_ed25519_key, mode 0600)."],
        ["link-secret", None, None,
         "file with a secret shared with the peer proxies (mode 0600): each link proves it with"
         " an HMAC challenge before any frame flows."],
        ["link-allow", None, None,
         "comma-separated networks (CIDR) from which links are also accepted when they are not"
         " authenticated (no --link-secret, no TLS): a peer proxy behind NAT. Without it only"
         " each connection's peer outside address may connect."],
        ["tls-cert", None, None, "PEM certificate of this proxy, for mutual TLS on the link."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-ca", None, None,
         "PEM CA certificate: peers must present a certificate it signed; the dialled peer's"
         " must also name the address dialled."],
        ["metrics", None, None,
         "Prometheus /metrics endpoint, e.g. tcp:9942:interface=127.0.0.1"
         " (a bare port means loopback)."],
    ]

    def opt_version(self) -> None:
        """Print drbdproxy's version and exit."""
        print(f"drbdproxy {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self["control"] is None:
            self["control"] = SYSTEMD_CONTROL if systemd_passed_sockets() else DEFAULT_CONTROL
        self["control"] = loopback_by_default(self["control"].strip())
        if not self["control"]:
            raise usage.UsageError("--control needs an endpoint, e.g. unix:/run/drbd-proxy/ctl.socket")
        check_endpoint("control", self["control"])
        if self["control-group"]:
            if _unix_socket_path(self["control"]) is None:
                raise usage.UsageError("--control-group needs a unix: control endpoint")
            try:
                self["control-gid"] = grp.getgrnam(self["control-group"]).gr_gid
            except KeyError:
                raise StartupError(f"--control-group: no group {self['control-group']!r}") from None
        if self["node"] and not self["drbd-conf"]:
            raise usage.UsageError("--node only makes sense with --drbd-conf FILE")
        if self["drbd-conf"]:
            self["node"] = self["node"] or socket.gethostname()
            try:
                config = load(self["drbd-conf"])
                _check_node(config, self["node"], self["drbd-conf"])
                self["connections"] = config.proxy_connections(self["node"])
            except (ConfigError, OSError) as e:
                raise StartupError(f"--drbd-conf: {e}") from None
        self["secret"] = None
        if self["link-secret"]:
            try:
                self["secret"] = load_secret(self["link-secret"])
            except ValueError as e:
                raise StartupError(f"--link-secret: {e}") from None
        self["link-networks"] = ()
        if self["link-allow"]:
            try:
                self["link-networks"] = tuple(ipaddress.ip_network(word.strip(), strict=False)
                                              for word in self["link-allow"].split(",")
                                              if word.strip())
            except ValueError as e:
                raise StartupError(f"--link-allow: {e}") from None
        tls = [self["tls-cert"], self["tls-key"], self["tls-ca"]]
        self["tls"] = None
        if any(tls):
            if not all(tls):
                raise usage.UsageError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
            try:
                self["tls"] = TlsConfig.from_files(*tls)
            except TlsError as e:
                raise StartupError(str(e)) from None
        if self["manhole"] and not self["manhole-keys"]:
            raise usage.UsageError("--manhole needs --manhole-keys FILE (authorized_keys format)")
        if self["manhole-keys"] and not self["manhole"]:
            raise usage.UsageError("--manhole-keys needs --manhole ENDPOINT")
        try:
            if self["manhole"]:
                self["manhole"] = check_manhole_endpoint(self["manhole"])
                load_authorized_keys(self["manhole-keys"])
            if self["metrics"]:
                self["metrics"] = check_metrics_endpoint(self["metrics"])
        except (ManholeError, MetricsError) as e:
            raise StartupError(str(e)) from None


def _check_node(config: Config, node: str, path: str) -> None:
    """``node`` is a host of ``path``, as drbdadm requires of the name it runs as.

    :raises StartupError: naming the hosts the file has (drbdadm: "Misspelled name ...?").
    """
    hosts = sorted({name for res in config.resources for host in res.hosts
                    if host.kind == "on" for name in host.names})
    if hosts and not any(hostnames_equal(node, name) for name in hosts):
        raise StartupError(f"--drbd-conf: no host {node!r} in {path} (its hosts: "
                           f"{', '.join(hosts)}); misspelled --node or host name?")


def loopback_by_default(endpoint: str) -> str:
    """A control endpoint is private unless told otherwise: the protocol has no authentication.

    TCP without an interface listens on loopback only; a unix socket without a mode is 0600.
    """
    kind = endpoint.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "interface=" not in endpoint:
        loopback = "\\:\\:1" if kind == "tcp6" else "127.0.0.1"
        return f"{endpoint}:interface={loopback}"
    if kind == "unix" and ":mode=" not in endpoint:
        return f"{endpoint}:mode=600"
    return endpoint


def _unix_socket_path(endpoint: str) -> str | None:
    """The socket path of a ``unix:PATH[:opts]`` endpoint, or None for other kinds."""
    if not endpoint.startswith("unix:"):
        return None
    path = endpoint[len("unix:"):].split(":", 1)[0]
    if path.startswith("address="):
        path = path[len("address="):]
    return path


class _Ready(Service):
    """Started last: says the daemon is listening everywhere it should (scripts wait for it)."""

    _log = logger()

    def __init__(self, control: str) -> None:
        self._control = control

    def startService(self) -> None:
        super().startService()
        self._log.info("drbd-proxy ready: control socket {control}", control=self._control)
        notify_ready()


class _StartupWarnings(Service):
    """Started just before :class:`_Ready`: a WARN line for what a stranger could reach.

    A stranger is anyone who can reach a port. The control protocol has no authentication, so a
    control endpoint that is not a unix socket (whose file mode keeps others out) is one. (Each
    connection whose links are not authenticated, from --drbd-conf or added later, is warned of
    by the registry as it is added.)
    """

    _log = logger()

    def __init__(self, control: str) -> None:
        self._control = control

    def startService(self) -> None:
        super().startService()
        if _unix_socket_path(self._control) is None and not self._control.startswith(
                "systemd:domain=UNIX"):
            loopback = any(f"interface={ip}" in self._control for ip in ("127.", "\\:\\:1", "::1"))
            self._log.warn(
                "control endpoint {control} is not a unix socket, and the control protocol has no"
                " authentication: {who} can reconfigure or shut down this proxy; bind the control"
                " socket to a unix path (--control unix:PATH, mode 0600, the default)",
                control=self._control,
                who="any local user or process" if loopback else "anyone who can reach it")


class _ProcessTuning(Service):
    """Heap and garbage-collector settings for a process that relays bulk data: applied when the
    daemon starts, not when its service tree is built."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        tune_malloc()
        tune_gc(self._reactor)


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    _ProcessTuning(reactor).setServiceParent(top)
    registry = ConnectionRegistry(reactor, meta_first=not config["meta-on-bulk"],
                                  tls=config.get("tls"), link_secret=config.get("secret"),
                                  link_allow=config.get("link-networks", ()))
    registry.setServiceParent(top)
    _DrbdConfConnections(registry, config.get("connections") or []).setServiceParent(top)
    # Every endpoint binds when the daemon starts, a failure being one line and exit status 1.
    ControlSocket(config["control"], ControlFactory(registry), reactor,
                  path=_unix_socket_path(config["control"]),
                  gid=config.get("control-gid")).setServiceParent(top)
    if config["manhole"]:
        try:
            manhole = manhole_service(config["manhole"], config["manhole-keys"],
                                      lambda: _manhole_namespace(registry, reactor),
                                      reactor=reactor)
        except ManholeError as e:  # e.g. the host key cannot be written
            raise StartupError(str(e)) from None
        Guarded("the manhole", config["manhole"], manhole).setServiceParent(top)
    if config["metrics"]:
        Guarded("metrics", config["metrics"],
                metrics_service(config["metrics"], registry, reactor=reactor)).setServiceParent(top)
    _StartupWarnings(config["control"]).setServiceParent(top)
    _Ready(config["control"]).setServiceParent(top)
    return top


def _manhole_namespace(registry: ConnectionRegistry, reactor: Any) -> dict[str, Any]:
    """A manhole session's locals: the registry, by name the connections of this moment, and
    ``status()`` for their snapshots."""
    return {
        "registry": registry,
        "reactor": reactor,
        "connections": {c.name: c for c in registry.connections_by_name},
        # What the control protocol and /metrics render, as typed snapshots: show(status()[0]).
        "status": registry.status,
    }


class _DrbdConfConnections(Service):
    """--drbd-conf's connections, added as the daemon starts (each binds its ports then) through
    the very commands drbdadm would send; one that cannot be added stops start-up in one line."""

    _log = logger()

    def __init__(self, registry: ConnectionRegistry,
                 connections: list[ProxyConnectionConfig]) -> None:
        self._registry = registry
        self._connections = connections
        self._added = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._added:
            return
        self._added = True
        for connection in self._connections:
            if connection.name in self._registry.namedServices:
                continue  # drbdadm 9.22 can list one name twice (a dedicated proxy for two nodes)
            for line in connection.to_ctl_commands():
                try:
                    parse_command(line).call(self._registry)
                except (CommandError, ControlError) as e:
                    fail(self._log, f"--drbd-conf: {connection.name}: {line}: {e}")

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()  # started without it (tests, embedding): add them now
