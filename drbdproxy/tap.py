"""``twistd drbd-proxy``: command-line options and a makeService that only wires things."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage

from .control.protocol import ControlFactory
from .registry import ConnectionRegistry

DEFAULT_CONTROL = "unix:/run/drbd-proxy/drbd-proxy-ctl.socket:mode=600"


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
        ["control", "c", DEFAULT_CONTROL,
         "Twisted server endpoint of the control socket (its directory is created)."],
    ]

    def postOptions(self) -> None:
        self["control"] = self["control"].strip()
        if not self["control"]:
            raise usage.UsageError("--control needs an endpoint, e.g. unix:/run/drbd-proxy/ctl.socket")


def _unix_socket_dir(endpoint: str) -> str | None:
    """The directory a ``unix:PATH[:opts]`` endpoint's socket lives in, or None for other kinds."""
    if not endpoint.startswith("unix:"):
        return None
    path = endpoint[len("unix:"):].split(":", 1)[0]
    if path.startswith("address="):
        path = path[len("address="):]
    return os.path.dirname(path) or None


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    top = MultiService()
    registry = ConnectionRegistry(reactor, meta_first=not config["meta-on-bulk"])
    registry.setServiceParent(top)
    directory = _unix_socket_dir(config["control"])
    if directory:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    # strports raises at start-up if the control socket cannot be bound (one clear error).
    strports.service(config["control"], ControlFactory(registry)).setServiceParent(top)
    return top
