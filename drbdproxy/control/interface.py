"""What the control protocol asks of the daemon: :class:`IProxyControl`.

The daemon's connection registry provides it; tests substitute an in-memory fake.

Conventions for every method:

- Mutating methods (``add_connection`` ... ``set_loglevel``) return ``None`` or an iterable of
  warning messages (each sent to the client as a ``%warn`` line before ``%ok``).
- Read-side methods return an iterable of text lines (the reply's data lines, without line ends).
  With ``as_json`` (the command's ``-j``/``--json``) they return one line instead: a JSON
  document, whose schema ``docs/control-protocol.md`` describes.
- Any method may instead return a ``Deferred`` that fires with that value; the session answers
  when it fires and reads no further command from that client meanwhile.
- A request the implementation refuses (unknown connection name, name already in use, port in
  use, ...) raises (or fails the Deferred with) :class:`ControlError`; its message becomes the
  ``%error`` reply. Any other exception is logged and answered ``%error internal error: ...``.
"""

from __future__ import annotations

from typing import Iterable, Optional

from zope.interface import Interface

from drbdproxy.spec import ConnectionSpec

#: What a mutating method returns: nothing, or warnings for the client.
Warnings = Optional[Iterable[str]]
#: What a read-side method returns: the reply's data lines.
Lines = Iterable[str]


class ControlError(Exception):
    """A control request the daemon refuses; ``str(error)`` is the one-line message for the client."""


class IProxyControl(Interface):
    """The operations of ``drbd-proxy-ctl``, as the daemon's connection registry implements them."""

    def add_connection(spec: ConnectionSpec) -> Warnings:
        """Add a proxied connection: listen on its inside and outside addresses, connect out.

        :raises ControlError: NAME already exists, an address is in use, an option is refused.
        """

    def del_connection(name: str) -> Warnings:
        """Remove connection NAME: close its DRBD sockets and its link, free its buffer.

        :raises ControlError: no connection NAME.
        """

    def set_memlimit(name: str, size: int) -> Warnings:
        """Set NAME's buffer limit in bytes. Raising applies live; lowering keeps buffered data."""

    def set_option(name: str, option: str, value: int) -> Warnings:
        """Set one per-connection option of :data:`~drbdproxy.control.commands.OPTIONS`.

        ``option`` is ``read-loops`` (count), ``compression`` (0 off, 1 on, or a number),
        ``bwlimit`` (bytes/s, 0 unlimited), ``sndbuf-size`` / ``rcvbuf-size`` (bytes, 0 auto) or
        ``ping-timeout`` (tenths of a second).
        """

    def set_plugin(name: str, index: int, words: Optional[list[str]]) -> Warnings:
        """Set entry ``index`` of NAME's ordered plugin list to ``words`` (``["lz4", "level", "9"]``);
        ``None`` (``END``) truncates the list at ``index``.

        :raises ControlError: the words do not name a valid plugin, or ``index`` leaves a gap.
        """

    def set_loglevel(level: str) -> Warnings:
        """Set the daemon's log level: one of debug, info, warn, error, critical."""

    def show(as_json: bool = False) -> Lines:
        """The configured connections."""

    def proxy_settings(name: str, as_json: bool = False) -> Lines:
        """NAME's settings as the drbd.conf block ``drbdadm adjust`` parses::

            proxy {
                memlimit 128M;
                plugin {
                    zstd level 4;
                }
            }

        :raises ControlError: no connection NAME.
        """

    def memusage(human: bool, as_json: bool = False) -> Lines:
        """Per connection: buffered bytes, memlimit, peak, drain time, congestion-fill advice;
        ``human``: sizes as 1.5M."""

    def connections(human: bool, as_json: bool = False) -> Lines:
        """Configured connections: a header, then one tab-separated row each with its Status
        (Connecting, ProxyConnected, Connected), buffer and rates; ``human``: aligned, sizes as 1.5M."""

    def subconnections(human: bool, as_json: bool = False) -> Lines:
        """Established DRBD sockets: a header, then one tab-separated row each with byte counters,
        rates and compression ratios; ``human``: aligned, sizes as 1.5M."""

    def details(as_json: bool = False) -> Lines:
        """Per DRBD socket, counters for each DRBD packet type."""

    def statistics(as_json: bool = False) -> Lines:
        """All counters, one ``key value`` per line, with stable dotted keys (SPEC 3.4)."""

    def version(as_json: bool = False) -> Lines:
        """The daemon's version."""

    def shutdown() -> None:
        """Stop the daemon, terminating every DRBD connection (called after the reply is sent)."""
