"""The daemon's Prometheus endpoint, scraped while DRBD replicates through it."""

from __future__ import annotations

import urllib.request

from daemon import ProxyPair
from helpers import free_ports


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_during_a_replication(tmp_path, sims):
    """Mid-run, /metrics shows the connection Connected, bytes flowing, packets per DRBD type."""
    (port,) = free_ports(1)
    pair = ProxyPair(tmp_path, "set compression {name} on",
                     alice_args=("--metrics", f"tcp:{port}:interface=127.0.0.1"))
    try:
        pair.wait_linked()
        primary_args, secondary_args = pair.sim_args("--rate", "4M", "--size", "1G",
                                                     "--progress", "0.2")
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        secondary.wait_for_line("progress")
        m = scrape(port)
        conn = 'connection="r0-bob-alice"'
        assert m[f'drbdproxy_connection_state{{{conn},state="Connected"}}'] == 1
        assert m[f'drbdproxy_bytes_total{{{conn},direction="to_peer",socket="data"}}'] > 0
        assert m[f'drbdproxy_packets_total{{{conn},direction="to_peer",socket="data",type="P_DATA"}}'] > 0
        assert m[f'drbdproxy_memlimit_bytes{{{conn}}}'] == 16 << 20
        assert any(k.startswith("drbdproxy_link_rtt_seconds") for k in m)
        primary.kill()
        secondary.kill()
    finally:
        pair.stop()
