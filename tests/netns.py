"""A two-site WAN on one machine: two network namespaces joined by a veth pair shaped with tbf.

Only addresses inside the namespaces this module creates are used. Everything is removed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

A_IP, B_IP = "10.77.0.1", "10.77.0.2"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def wan_available() -> str | None:
    """None if namespaces with tbf can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


needs_wan = pytest.mark.skipif(wan_available() is not None, reason=str(wan_available()))


class Wan:
    """Namespaces ``a`` and ``b``; ``exec_a``/``exec_b`` prefix a command to run inside one."""

    def __init__(self, rate: str = "50mbit", latency: str = "100ms", burst: str = "32kbit") -> None:
        """``burst``: tbf's bucket; 32kbit holds a fast link below its rate (1gbit gets about
        800 Mbit/s through it here), about a millisecond's worth of the rate does not."""
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"dpa{tag}", f"dpb{tag}"
        self._veth_a, self._veth_b = f"va{tag}", f"vb{tag}"
        _run("ip", "netns", "add", self.a)
        try:
            _run("ip", "netns", "add", self.b)
            _run("ip", "link", "add", self._veth_a, "type", "veth", "peer", "name", self._veth_b)
            for ns, dev, ip in ((self.a, self._veth_a, A_IP), (self.b, self._veth_b, B_IP)):
                _run("ip", "link", "set", dev, "netns", ns)
                _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                     "rate", rate, "burst", burst, "latency", latency)
        except Exception:
            self.close()
            raise

    @property
    def exec_a(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.a)

    @property
    def exec_b(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.b)

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
