"""The control plane: the ``drbd-proxy-ctl`` command language, its line protocol and its client.

- :mod:`.commands`: sans-IO parser, one control line -> one command object (declarative table).
- :mod:`.interface`: ``IProxyControl``, what the daemon's connection registry implements.
- :mod:`.protocol`: ``ControlProtocol`` (a thin ``LineReceiver``) and ``ControlFactory``.
- :mod:`.ctl`: the ``drbd-proxy-ctl`` client (standard library only, for a fast start).

This package file imports nothing, so that ``drbd-proxy-ctl`` starts without loading Twisted.
"""
