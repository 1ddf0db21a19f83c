"""What a drbd.conf says about proxies, as plain frozen objects, and what drbdadm makes of it.

The parser (:mod:`.parser`) fills the section objects (:class:`Resource`, :class:`HostSection`,
:class:`Connection`, :class:`ProxySection`, :class:`ProxySettings`) with what the file says,
nothing inherited yet. :meth:`Config.proxy_connections` then applies drbd-utils' rules and returns
exactly the connections ``drbdadm proxy-up all`` adds on one node, in its order.

Rules measured against drbdadm 9.22.0 and drbdadm-84 (``drbdadm -d``; see tests/test_config.py):

* **Who am I.** A node is "me" in a connection when it is named in that side's ``proxy on`` list,
  not in ``on``/``host`` (drbdadm matches on the proxy for proxy-up; a dedicated proxy host works).
  DRBD 9 compares host names like drbd-utils' ``hostnames_equal`` (case-insensitive; a short name
  matches a fully qualified one); drbdadm-84 compares them exactly.
* **Name.** ``<resource>-<peer proxy hosts>-<my proxy hosts>``, host lists joined with ``_``. A
  connection's own name is ignored: drbdadm 9.22 warns that named connections are deprecated and
  uses the resource name. (drbd-utils from 2026-03 names DRBD nodes instead; not what 9.22 does.)
* **Inheritance** (common, or the resource's ``template-file``, then resource, then the
  ``proxy on`` section's ``options``) is drbd-utils' ``expand_opts``: each option of the upper
  level that the lower level lacks is inserted at the *front*. That is why a single level comes
  out reversed and lower levels win. Plugin lines inherit the same way, line by line (a line is
  its own key), so per-proxy plugins are *added to* the inherited ones, not replacing them.
  drbdadm-84 differs in one point: a resource takes the common plugin lines only when it has none.
* **Order sent.** Options, then plugins, in the resulting list order; plugin ``i`` is sent as
  ``set plugin NAME i LINE`` and the list ends with ``set plugin NAME n END`` (only if there are
  plugins). drbdadm 9.22 forgets the ``-c`` before that last command; drbdadm-84 does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from drbdproxy.config.lexer import ConfigError
from drbdproxy.units import parse_size

__all__ = [
    "Address",
    "Config",
    "Connection",
    "HostRef",
    "HostSection",
    "Location",
    "Path",
    "ProxyConnectionConfig",
    "ProxyOption",
    "ProxySection",
    "ProxySettings",
    "Resource",
    "PROXY_OPTIONS",
]

# The proxy options drbd-utils knows (config_flags.c proxy_options_ctx; v84 scanner), in its order.
PROXY_OPTIONS = ("memlimit", "read-loops", "compression", "bwlimit", "sndbuf-size", "rcvbuf-size",
                 "ping-timeout")

@dataclass(frozen=True)
class Location:
    """A place in a configuration file, printed ``FILE:LINE``."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def error(self, message: str) -> ConfigError:
        """A :class:`ConfigError` pointing here."""
        return ConfigError(self.file, self.line, message)


@dataclass(frozen=True)
class Address:
    """``[family] HOST:PORT`` as written; ``host`` has no brackets (``fd00::1``)."""

    family: str  # ipv4, ipv6, ssocks, sdp
    host: str
    port: int

    @property
    def pair(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        # drbdadm prints addresses bare, IPv6 too ("fd00::1:7789"): the proxy splits at the last ':'.
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxyOption:
    """One ``name value;`` line of a proxy section, value as written (``128M`` stays ``128M``)."""

    name: str
    value: str
    location: Location


@dataclass(frozen=True)
class ProxySettings:
    """The contents of one ``proxy { }`` (or ``options { }``) block, in file order."""

    options: tuple[ProxyOption, ...] = ()
    plugins: tuple[str, ...] = ()
    location: Location | None = None


@dataclass(frozen=True)
class ProxySection:
    """``proxy on HOSTS { inside A; outside A; [options { ... }] }``."""

    on_hosts: tuple[str, ...]
    inside: Address
    outside: Address
    settings: ProxySettings
    location: Location


@dataclass(frozen=True)
class HostSection:
    """``on HOSTS { ... }``, ``stacked-on-top-of RES { ... }`` or ``floating ADDR { ... }``."""

    names: tuple[str, ...]
    address: Address | None
    proxy: ProxySection | None
    location: Location
    kind: str = "on"  # "on", "stacked" or "floating"


@dataclass(frozen=True)
class HostRef:
    """A ``host NAME [address A | port P] [via proxy on ...]`` statement of a connection or path.

    ``name`` is None for the ``address A ...`` form, which names its host by address.
    """

    name: str | None
    address: Address | None
    port: int | None
    proxy: ProxySection | None
    location: Location


@dataclass(frozen=True)
class Path:
    """The host pair of a ``path { }`` (or the ``host`` lines written straight in a connection)."""

    hosts: tuple[HostRef, ...]
    location: Location


@dataclass(frozen=True)
class Connection:
    """A DRBD 9 ``connection [NAME] { ... }`` section."""

    name: str | None
    paths: tuple[Path, ...]
    location: Location


@dataclass(frozen=True)
class Resource:
    """A ``resource NAME { ... }`` section: what matters to the proxy, nothing inherited."""

    name: str
    hosts: tuple[HostSection, ...]
    connections: tuple[Connection, ...]
    proxy: ProxySettings
    location: Location
    template: ProxySettings | None = None  # the proxy section of its template-file, if any


@dataclass(frozen=True)
class ProxyConnectionConfig:
    """One connection ``drbdadm proxy-up`` adds on this node, with everything resolved.

    The four addresses are ``(ip, port)`` in ``add connection`` order. ``options`` holds every
    proxy option, memlimit included, as written; ``plugins`` the plugin lines. Both are in the
    order drbdadm sends them (for a single level that is the *reverse* of the file order), so
    plugin ``i`` here is plugin ``i`` in the proxy.
    """

    name: str
    resource: str
    listen_inside: tuple[str, int]
    connect_peer_outside: tuple[str, int]
    listen_outside: tuple[str, int]
    connect_drbd: tuple[str, int]
    options: dict[str, str] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)
    # Exactly what drbdadm sends, duplicates included (a per-proxy section may repeat an option).
    option_items: tuple[tuple[str, str], ...] = ()
    drbd84: bool = False  # commands as drbdadm-84 sends them (the END line keeps its "-c")
    location: str = ""  # FILE:LINE of this node's "proxy on" section

    @property
    def memlimit(self) -> int | None:
        """The memory limit in bytes, or None when the configuration sets none."""
        value = self.options.get("memlimit")
        return None if value is None else parse_size(value, drbd=True)

    def add_command(self) -> str:
        """``add connection NAME INSIDE PEER_OUTSIDE MY_OUTSIDE MY_DRBD``."""
        addresses = (self.listen_inside, self.connect_peer_outside, self.listen_outside,
                     self.connect_drbd)
        return " ".join(["add connection", self.name, *(f"{h}:{p}" for h, p in addresses)])

    def set_commands(self) -> list[str]:
        """The ``set`` commands drbdadm sends in its second call, in its order."""
        commands = [f"set {name} {self.name} {value}" for name, value in self.option_items]
        commands += [f"set plugin {self.name} {i} {line}" for i, line in enumerate(self.plugins)]
        if self.plugins:
            commands.append(f"set plugin {self.name} {len(self.plugins)} END")
        return commands

    def to_ctl_commands(self) -> list[str]:
        """Every drbd-proxy-ctl command drbdadm sends for this connection, in order."""
        return [self.add_command(), *self.set_commands()]

    def ctl_invocations(self) -> list[list[str]]:
        """The argument lists of each drbd-proxy-ctl process drbdadm starts (program name left off).

        Reproduces drbdadm 9.22's missing ``-c`` before ``set plugin ... END``; drbdadm-84 has it.
        """
        calls = [["-c", self.add_command()]]
        sets = self.set_commands()
        if sets:
            argv = [arg for command in sets for arg in ("-c", command)]
            if self.plugins and not self.drbd84:
                argv.pop(-2)  # drbdadm 9.22's quirk: the END command comes without its "-c"
            calls.append(argv)
        return calls


@dataclass(frozen=True)
class Config:
    """A parsed drbd.conf with all its includes: resources in the order drbdadm reads them."""

    resources: tuple[Resource, ...]
    common: ProxySettings = ProxySettings()
    files: tuple[str, ...] = ()  # every file read, the main one first

    def resource(self, name: str) -> Resource:
        """The resource called ``name``; KeyError if there is none."""
        for res in self.resources:
            if res.name == name:
                return res
        raise KeyError(name)

    def proxy_connections(self, node: str, *, drbd84: bool = False) -> list[ProxyConnectionConfig]:
        """What ``drbdadm proxy-up all`` adds on host ``node``, in drbdadm's order.

        ``node`` is the name drbdadm would use (``uname -n`` or ``__DRBD_NODE__``). With
        ``drbd84=True`` the rules of drbdadm-84 apply (DRBD 8.4 kernels), otherwise drbdadm 9's.

        :raises ConfigError: for what drbdadm would refuse while doing so.
        """
        result: list[ProxyConnectionConfig] = []
        for res in self.resources:
            result.extend(_resource_connections(self, res, node, drbd84))
        return result


# --- resolution -------------------------------------------------------------------------------


@dataclass
class _Opt:
    """An option (or plugin line, value "") while inheriting; ``inherited`` as in drbd-utils."""

    name: str
    value: str
    inherited: bool = False


def _own(settings: ProxySettings) -> list[_Opt]:
    return [_Opt(o.name, o.value) for o in settings.options]


def _own_plugins(settings: ProxySettings) -> list[_Opt]:
    return [_Opt(line, "") for line in settings.plugins]


def _same_value(a: str, b: str) -> bool:
    """drbd-utils compares numeric options by value, so ``1M`` and ``1024k`` agree."""
    try:
        return parse_size(a, drbd=True) == parse_size(b, drbd=True)
    except ValueError:
        return a == b


def _expand(upper: list[_Opt], lower: list[_Opt], res: Resource, check: bool) -> list[_Opt]:
    """drbd-utils' ``expand_opts``: what ``lower`` lacks of ``upper`` goes in front, one by one.

    With ``check`` (drbdadm 9, options only), an option that arrives twice by inheritance with two
    values is an error, as drbdadm reports it.
    """
    result = list(lower)
    for opt in upper:
        existing = next((o for o in result if o.name == opt.name), None)
        if existing is None:
            result.insert(0, _Opt(opt.name, opt.value, inherited=True))
        elif check and existing.inherited and not _same_value(existing.value, opt.value):
            raise res.location.error(
                f"in resource {res.name}, ambiguous inheritance for proxy option '{opt.name}': "
                f"it should be '{existing.value}' and '{opt.value}' at the same time "
                "(set it only once per section)")
    return result


def _resource_level(config: Config, res: Resource, drbd84: bool) -> tuple[list[_Opt], list[_Opt]]:
    """Options and plugin lines of ``res`` after inheriting from common (or its template)."""
    upper = res.template if res.template is not None else config.common
    options = _expand(_own(upper), _own(res.proxy), res, check=not drbd84)
    if drbd84 and res.proxy.plugins:
        plugins = _own_plugins(res.proxy)  # drbdadm-84: own plugin lines hide the common ones
    else:
        plugins = _expand(_own_plugins(upper), _own_plugins(res.proxy), res, check=False)
    return options, plugins


@dataclass(frozen=True)
class _Side:
    """One end of a proxied connection: the DRBD address and its proxy section."""

    drbd: Address
    proxy: ProxySection
    stacked: bool


def _resource_connections(config: Config, res: Resource, node: str,
                          drbd84: bool) -> Iterator[ProxyConnectionConfig]:
    """The proxied connections of ``res`` that ``node`` serves, in config order."""
    if drbd84 and res.connections:
        raise res.connections[0].location.error(
            "'connection' sections need DRBD 9; drbdadm 8.4 does not know them")
    res_options, res_plugins = _resource_level(config, res, drbd84)
    sides_list = _proxied_pairs(res, drbd84)
    if not drbd84:
        # drbdadm 9 inherits into every proxy of the resource, so an ambiguity anywhere fails.
        for sides, _ in sides_list:
            for side in sides:
                _expand(res_options, _own(side.proxy.settings), res, check=True)
    for sides, conn in sides_list:
        mine = [s for s in sides if _node_in(node, s.proxy.on_hosts, drbd84)]
        if not mine:
            continue
        if conn is not None and len(conn.paths) > 1:
            raise conn.location.error(
                f"in resource {res.name}: a connection through a proxy may have only one path")
        me = mine[0]
        if me.stacked:
            continue  # a stacked side is only brought up with "drbdadm -S", never by "all"
        peer = sides[1] if me is sides[0] else sides[0]
        yield _connection_config(res, me, peer, res_options, res_plugins, drbd84)


def _connection_config(res: Resource, me: _Side, peer: _Side, res_options: list[_Opt],
                       res_plugins: list[_Opt], drbd84: bool) -> ProxyConnectionConfig:
    """Everything drbdadm sends for one connection, options inherited into my proxy section."""
    settings = me.proxy.settings
    options = _expand(res_options, _own(settings), res, check=not drbd84)
    plugins = _expand(res_plugins, _own_plugins(settings), res, check=False)
    items = tuple((o.name, o.value) for o in options)
    name = f"{res.name}-{'_'.join(peer.proxy.on_hosts)}-{'_'.join(me.proxy.on_hosts)}"
    return ProxyConnectionConfig(
        name=name,
        resource=res.name,
        listen_inside=me.proxy.inside.pair,
        connect_peer_outside=peer.proxy.outside.pair,
        listen_outside=me.proxy.outside.pair,
        connect_drbd=me.drbd.pair,
        options=dict(items),
        plugins=[p.name for p in plugins],
        option_items=items,
        drbd84=drbd84,
        location=str(me.proxy.location),
    )


def _proxied_pairs(res: Resource,
                   drbd84: bool) -> list[tuple[tuple[_Side, _Side], Connection | None]]:
    """The two proxied sides of every connection of ``res`` that goes through proxies.

    DRBD 9: the ``connection`` sections, or, without any, the implicit connection of the two
    ``on`` sections (the 8.4 form). DRBD 8.4: always the two host sections.
    """
    if res.connections and not drbd84:
        return [(pair, conn) for conn in res.connections
                if (pair := _connection_sides(res, conn)) is not None]
    hosts = [h for h in res.hosts if h.proxy is not None]
    if len(hosts) < 2:
        return []
    if len(res.hosts) > 2:
        raise res.location.error(
            f"in resource {res.name}: more than two host sections; "
            "use explicit 'connection' sections (DRBD 9) to say which hosts talk to which")
    sides = tuple(_host_side(res, h) for h in hosts)
    return [((sides[0], sides[1]), None)]


def _host_side(res: Resource, host: HostSection) -> _Side:
    """The side of an 8.4-style host section with a proxy subsection."""
    assert host.proxy is not None
    if host.address is None:
        raise host.location.error(
            f"in resource {res.name}, on {' '.join(host.names)} {{ ... }}: "
            "'address' keyword missing (the proxy connects to it)")
    return _Side(host.address, host.proxy, stacked=host.kind == "stacked")


def _connection_sides(res: Resource, conn: Connection) -> tuple[_Side, _Side] | None:
    """The two sides of a proxied DRBD 9 connection (first path), or None if it has no proxy."""
    path = conn.paths[0]
    if not any(ref.proxy is not None for ref in path.hosts):
        return None
    sides = [_ref_side(res, ref) for ref in path.hosts]
    return (sides[0], sides[1])


def _ref_side(res: Resource, ref: HostRef) -> _Side:
    """Resolve a ``host`` statement: its address falls back to its ``on`` section's."""
    host = find_host(res, ref)
    assert ref.proxy is not None and host is not None  # checked by validate()
    address = ref.address or host.address
    if address is not None and ref.port is not None:
        address = Address(address.family, address.host, ref.port)
    if address is None:
        raise ref.location.error(
            f"in resource {res.name}, host {ref.name}: cannot tell which address to use: "
            f"give 'address' here or in 'on {ref.name} {{ ... }}'")
    return _Side(address, ref.proxy, stacked=False)


def find_host(res: Resource, ref: HostRef) -> HostSection | None:
    """The host section a ``host`` statement refers to: by name, or by address."""
    for host in res.hosts:
        if ref.name is not None and any(hostnames_equal(ref.name, n) for n in host.names):
            return host
        if ref.name is None and host.address is not None and host.address == ref.address:
            return host
    return None


def hostnames_equal(a: str, b: str) -> bool:
    """drbd-utils' rule: case-insensitive; if either name is short, only the short parts count."""
    if "." in a and "." in b:
        return a.lower() == b.lower()
    return a.split(".", 1)[0].lower() == b.split(".", 1)[0].lower()


def _node_in(node: str, names: Iterable[str], drbd84: bool) -> bool:
    if drbd84:
        return node in names  # drbdadm-84's name_in_names: plain strcmp
    return any(hostnames_equal(node, name) for name in names)


# --- validation (what drbdadm refuses whatever the node) ----------------------------------------


def validate(res: Resource) -> None:
    """Check the proxy rules drbdadm enforces on every resource, for any node.

    :raises ConfigError: unknown hosts, connections without two hosts, proxies on only some sides.
    """
    _check_all_or_none(res)
    for conn in res.connections:
        for path in conn.paths:
            _check_path(res, conn, path)


def _check_all_or_none(res: Resource) -> None:
    with_proxy = {host.proxy is not None for host in res.hosts}
    if len(with_proxy) > 1:
        raise res.location.error(
            f"in resource {res.name}: Either all 'on' sections must contain a proxy subsection, "
            "or none")


def _check_path(res: Resource, conn: Connection, path: Path) -> None:
    if len(path.hosts) != 2:
        raise path.location.error(
            f"in resource {res.name}: a connection needs exactly two 'host' statements, "
            f"found {len(path.hosts)}")
    for ref in path.hosts:
        if find_host(res, ref) is None:
            what = f"'host {ref.name}'" if ref.name else f"'address {ref.address}'"
            raise ref.location.error(
                f"in resource {res.name}: {what} names an unknown host: there is no matching "
                f"'on {ref.name or 'HOST'} {{ ... }}' section")
    if len({ref.proxy is not None for ref in path.hosts}) > 1:
        raise conn.location.error(
            f"in connection in resource {res.name}: Either all 'host' statements must have a "
            "proxy subsection, or none")
