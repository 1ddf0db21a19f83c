"""drbd.conf for the proxy: parse DRBD 8.4 and 9 configuration files (sans-IO, no Twisted).

The one call most callers need::

    from drbdproxy.config import load

    for conn in load("/etc/drbd.conf").proxy_connections("alice"):
        conn.name, conn.listen_inside, conn.memlimit, conn.plugins
        conn.to_ctl_commands()   # what `drbdadm proxy-up all` would send on host alice

:func:`load` reads a file and its includes; :func:`loads` parses text. Both raise
:class:`ConfigError` (a ``ValueError``) with a ``FILE:LINE: ...`` message.
"""

from drbdproxy.config.lexer import ConfigError
from drbdproxy.config.model import (
    PROXY_OPTIONS,
    Address,
    Config,
    Connection,
    HostRef,
    HostSection,
    Location,
    Path,
    ProxyConnectionConfig,
    ProxyOption,
    ProxySection,
    ProxySettings,
    Resource,
)
from drbdproxy.config.parser import load, loads

__all__ = [
    "PROXY_OPTIONS",
    "Address",
    "Config",
    "ConfigError",
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
    "load",
    "loads",
]
