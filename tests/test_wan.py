"""Through a shaped WAN (namespaces, veth, tbf): replication verifies with the buffer full."""

from __future__ import annotations

import pytest

from daemon import Daemon, wait_until
from netns import A_IP, B_IP, Wan, needs_wan
from drbdproxy.units import parse_size

pytestmark = needs_wan
PORTS = dict(drbd=7789, inside=7788, outside=7790)


def start_site(wan_exec, tmp_path, name, own_ip, peer_ip, *extra):
    d = Daemon(tmp_path, name, *extra, prefix=wan_exec)
    p = PORTS
    conn = "r0-bob-alice" if name == "alice" else "r0-alice-bob"
    d.ctl("-c", f"add connection {conn} 127.0.0.1:{p['inside']} {peer_ip}:{p['outside']}"
                f" {own_ip}:{p['outside']} 127.0.0.1:{p['drbd']}",
          "-c", f"set compression {conn} on", check=True)
    return d


@pytest.fixture
def wan():
    w = Wan(rate="100mbit", latency="50ms")
    yield w
    w.close()


def test_replication_over_a_shaped_link_with_the_buffer_full(wan, tmp_path, sims):
    """A 100 Mbit/s link, a primary writing far faster: alice's buffer fills, pings keep
    flowing, and everything arrives verified."""
    alice = start_site(wan.exec_a, tmp_path, "alice", A_IP, B_IP)
    bob = start_site(wan.exec_b, tmp_path, "bob", B_IP, A_IP)
    try:
        for d in (alice, bob):
            wait_until(lambda d=d: "ProxyConnected" in d.ctl("list", "connections").stdout,
                       "the proxies to link over the WAN")
        # About 8 s over the shaped link: the state polled for below (reads paused at memlimit,
        # a drain rate measured from heartbeat samples) lasts most of it. With 64M a fast
        # primary was done writing before the second sample came.
        common = ["--connect-timeout", "60", "--ping-timeout", "10", "--ping-int", "0.2",
                  "--protocol", "A", "--size", "192M"]
        addr = f"127.0.0.1:{PORTS['drbd']}"
        inside = f"127.0.0.1:{PORTS['inside']}"
        secondary = sims("--role", "secondary", "--listen", addr, "--peer", inside, *common,
                         prefix=wan.exec_b)
        primary = sims("--role", "primary", "--listen", addr, "--peer", inside, *common,
                       prefix=wan.exec_a)

        samples: list[str] = []

        def filled() -> bool:
            # One snapshot is both waited for and checked: the state can change between calls.
            samples.append(alice.ctl("show", "memusage", check=True).stdout)
            return "drbd-reads paused" in samples[-1] and "drain-time unknown" not in samples[-1]

        wait_until(filled, "alice's buffer to fill while the link drains")
        line = samples[-1]
        # LINBIT's 90 % of memlimit, in DRBD's raw bytes: times the measured compression ratio.
        ratio = float(line.split("compression-ratio ")[1].split()[0])
        fill = parse_size(line.split("congestion-fill ")[1].split()[0])
        assert fill == pytest.approx((16 << 20) * 0.9 * ratio, rel=0.01), line
        drain = float(line.split("drain-time ")[1].split("s")[0])
        assert drain > 0
        (prc, p), (src, s) = primary.report(), secondary.report()
        assert (prc, src) == (0, 0), (p["error"], s["error"])
        assert s["verified"] and s["bytes"] == 192 << 20
        assert p["pings"] > 0 and p["ping_rtt_ms"]["max"] is not None
        stats = dict(line.split(" ", 1) for line in
                     alice.ctl("print", "statistics", check=True).stdout.splitlines())
        assert int(stats["r0-bob-alice.buffered_peak"]) >= 8 << 20  # the buffer did fill
    finally:
        alice.stop()
        bob.stop()


def test_link_cut_and_restored(wan, tmp_path, sims):
    """The WAN link goes down mid-stream: both proxies notice within ping-timeout and close
    DRBD's sockets (a clean disconnect, not a verification error); once it is back, the
    proxies link up again and a new run verifies."""
    import subprocess

    alice = start_site(wan.exec_a, tmp_path, "alice", A_IP, B_IP)
    bob = start_site(wan.exec_b, tmp_path, "bob", B_IP, A_IP)
    try:
        for d, name in ((alice, "r0-bob-alice"), (bob, "r0-alice-bob")):
            d.ctl("-c", f"set ping-timeout {name} 10", check=True)  # 1 s
        for d in (alice, bob):
            wait_until(lambda d=d: "ProxyConnected" in d.ctl("list", "connections").stdout,
                       "the proxies to link over the WAN")
        addr, inside = f"127.0.0.1:{PORTS['drbd']}", f"127.0.0.1:{PORTS['inside']}"
        common = ["--connect-timeout", "60", "--ping-timeout", "30", "--listen", addr,
                  "--peer", inside]
        secondary = sims("--role", "secondary", *common, "--progress", "0.2", prefix=wan.exec_b)
        primary = sims("--role", "primary", *common, "--size", "1G", prefix=wan.exec_a)
        secondary.wait_for_line("progress")
        device = wan._veth_a
        subprocess.run(["ip", "-n", wan.a, "link", "set", device, "down"], check=True)
        for sim in (primary, secondary):
            rc, report = sim.report()
            assert rc == 1 and "connection lost" in report["error"], report["error"]
        for d in (alice, bob):
            wait_until(lambda d=d: "Connecting" in d.ctl("list", "connections").stdout,
                       "the proxies to notice the dead link")
        subprocess.run(["ip", "-n", wan.a, "link", "set", device, "up"], check=True)
        for d in (alice, bob):
            wait_until(lambda d=d: "ProxyConnected" in d.ctl("list", "connections").stdout,
                       "the proxies to link up again", timeout=120)
        secondary = sims("--role", "secondary", *common, prefix=wan.exec_b)
        primary = sims("--role", "primary", *common, "--size", "8M", prefix=wan.exec_a)
        (prc, p), (src, s) = primary.report(), secondary.report()
        assert (prc, src) == (0, 0), (p["error"], s["error"])
    finally:
        alice.stop()
        bob.stop()
