"""drbdproxy: an open-source DRBD Proxy on Twisted."""

__version__ = "0.1.0"
