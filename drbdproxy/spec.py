"""What one proxied connection is configured with: its addresses and its settings.

Neutral ground for the control syntax (``drbdproxy.control``), which builds these, and the data
path (``drbdproxy.relay``), which runs them; neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from drbdproxy.codecs import PluginSpec, compression_option

Address = tuple[str, int]

#: ``compression on`` (lz4), told apart from ``compression 1`` (zstd level 1).
COMPRESSION_ON = -1

#: Congestion controls of the link's TCP sockets, as ``set link-cc`` names them (the option's
#: value is the index). ``system`` keeps the host's default. BBR, the default where the kernel
#: has it, keeps a long lossy link full where CUBIC (most hosts' default) collapses: measured
#: over 100 Mbit/s, 150 ms, 1 % loss, one stream got 66.8 Mbit/s with BBR, 1.1 with CUBIC.
LINK_CC = ("system", "bbr", "cubic", "reno")
DEFAULT_LINK_CC = LINK_CC.index("bbr")

#: memlimit when none is set: LINSTOR's default (its smallest allowed value) for the proxy.
DEFAULT_MEMLIMIT = 16 << 20
#: What compresses when neither plugins nor the compression option are set: lz4 (fast mode),
#: as the SPEC asks. LINBIT documents 1:2 to 1:4 for lz4 on DRBD data, and it costs less CPU per
#: byte than the link saves; ``set compression NAME off`` (or ``plugin { none; }``) turns it off.
DEFAULT_COMPRESSION = "on"
#: ping-timeout (tenths of a second) of the proxy-to-proxy link when none is set.
DEFAULT_PING_TIMEOUT = 100


@dataclass(frozen=True)
class ConnectionSpec:
    """What ``add connection`` configures: addresses in drbdadm's argument order, and options."""

    name: str
    listen_inside: Address
    connect_peer_outside: Address
    listen_outside: Address
    connect_drbd: Address
    #: option name (as in :data:`OPTIONS`) -> converted value (bytes, bytes/s, count, tenths)
    options: Mapping[str, int] = field(default_factory=dict, hash=False)


@dataclass
class Settings:
    """What ``set ...`` and ``add connection --opt=value`` configure for a connection."""

    memlimit: int = DEFAULT_MEMLIMIT
    options: dict[str, int] = field(default_factory=dict)
    #: The explicit plugin list (``set plugin``), exactly as drbdadm sent it.
    plugins: list[PluginSpec] = field(default_factory=list)

    def apply(self, option: str, value: int) -> None:
        """Set one option.

        :raises PluginError: a compression value that names no codec.
        """
        if option == "memlimit":
            self.memlimit = value
            return
        if option == "compression":
            compression_option(self._compression_word(value))  # refuse a bad value now
        self.options[option] = value

    @property
    def link_cc(self) -> str:
        """The congestion control the link sockets ask for (``system``: none)."""
        return LINK_CC[self.options.get("link-cc", DEFAULT_LINK_CC)]

    @staticmethod
    def _compression_word(value: int) -> str:
        return "on" if value == COMPRESSION_ON else str(value)

    @property
    def effective_plugins(self) -> list[PluginSpec]:
        """What compresses: the explicit plugins, else the ``compression`` option's codec, else
        :data:`DEFAULT_COMPRESSION`.

        drbdadm keeps the two apart (adjust compares only the plugin list), and so do we.
        """
        if self.plugins:
            return self.plugins
        if "compression" not in self.options:
            return compression_option(DEFAULT_COMPRESSION)
        return compression_option(self._compression_word(self.options["compression"]))

    @property
    def ping_timeout(self) -> float:
        return self.options.get("ping-timeout", DEFAULT_PING_TIMEOUT) / 10
