"""Who may open a link to a connection's outside address, and which names its HELLO may give."""

from __future__ import annotations

import ipaddress
from typing import Any

from drbdproxy.admin.logs import Summarised, logger
from drbdproxy.link import LinkRole, RejectReason

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_REFUSALS = {
    RejectReason.UNKNOWN_CONNECTION: "it names another connection",
    RejectReason.DUPLICATE_META: "the meta link is alive",
    RejectReason.NO_SUCH_SESSION: "no such session",
    RejectReason.BUSY: "the bulk link is up",
}


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peer_names(name: str) -> frozenset[str]:
    """The names the peer proxy may give this connection in its HELLO: ``name`` itself, and
    every reading of it as drbdadm's RESOURCE-PEER-SELF with PEER and SELF swapped (host names
    may hold dashes too, so every split counts)."""
    names = {name}
    dashes = [i for i, c in enumerate(name) if c == "-"]
    for n, a in enumerate(dashes):
        for b in dashes[n + 1:]:
            resource, peer, own = name[:a], name[a + 1:b], name[b + 1:]
            if resource and peer and own:
                names.add(f"{resource}-{own}-{peer}")
    return frozenset(names)


class LinkAdmission:
    """The checks before a link's handshake decides anything: its source address (unless links
    authenticate) and its HELLO's name. What a remote host repeats is logged as a summary."""

    _log = logger()

    def __init__(self, name: str, peer_host: str, authenticated: bool,
                 link_allow: tuple[Network, ...], clock: Any) -> None:
        self.name = name
        self.authenticated = authenticated
        self._names = peer_names(name)
        self._peer_host = peer_host
        self._link_allow = link_allow
        self.refusals = Summarised(self._log, clock)

    def admit(self, source: str) -> bool:
        """Whether a TCP connection from ``source`` (an IP) may start a handshake. Without
        authentication, only the peer proxy's address (or --link-allow) may."""
        if self.authenticated:
            return True
        ip = _ip(source)
        if ip is not None and (ip == _ip(self._peer_host)
                               or any(ip in net for net in self._link_allow)):
            return True
        self.refusals.warn("refused a link of {name} from {source}: not the peer proxy's"
                           " address {peer} (links are not authenticated: use --link-secret or"
                           " TLS, or --link-allow for an address behind NAT)", name=self.name,
                           source=source, peer=self._peer_host)
        return False

    def names(self, name: str) -> bool:
        """Whether a HELLO naming ``name`` is for this connection."""
        return name in self._names

    def refused(self, role: LinkRole, source: str, reason: RejectReason) -> None:
        self.refusals.warn("refused a {role} link of {name} from {source}: {why}",
                           role=role.name.lower(), name=self.name, source=source,
                           why=_REFUSALS.get(reason, reason.name))
