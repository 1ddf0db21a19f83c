"""Mutual TLS on the proxy-to-proxy link: replication works; wrong or missing certificates fail."""

from __future__ import annotations

import pytest

from certs import CA
from daemon import Daemon, ProxyPair, wait_until


def tls_args(ca: CA, name: str, ips: list[str], ca_path=None) -> tuple[str, ...]:
    cert, key = ca.issue(name, ips)
    return ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca_path or ca.path))


def make_pair(tmp_path, alice_tls, bob_tls) -> ProxyPair:
    pair = ProxyPair.__new__(ProxyPair)
    from helpers import free_ports

    pair.host = "127.0.0.1"
    (pair.alice_drbd, pair.alice_in, pair.alice_out,
     pair.bob_drbd, pair.bob_in, pair.bob_out) = free_ports(6)
    pair.alice = Daemon(tmp_path, "alice", *alice_tls)
    pair.bob = Daemon(tmp_path, "bob", *bob_tls)
    for d in (pair.alice, pair.bob):
        pair.configure(d, "set compression {name} on")
    return pair


def test_replication_over_mutual_tls(tmp_path, sims):
    """Both proxies with certificates from one CA: the link comes up and DRBD replicates; the
    link's socket options reach the TCP socket under TLS (its congestion control shows)."""
    ca = CA(tmp_path)
    pair = make_pair(tmp_path, tls_args(ca, "alice", ["127.0.0.1"]), tls_args(ca, "bob", ["127.0.0.1"]))
    try:
        pair.wait_linked()
        p, s = pair.replicate(sims, "--size", "32M")
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            if "bbr" in f.read().split():
                assert pair.stats(pair.alice)["r0-bob-alice.link_cc"] == "bbr"
    finally:
        pair.stop()


@pytest.mark.parametrize("bad_side", ["alice", "bob"])
@pytest.mark.parametrize("case", ["wrong-name", "other-ca", "plain-peer"])
def test_the_link_stays_down_without_a_valid_peer_certificate(tmp_path, case, bad_side):
    """A certificate for another address, one from another CA, or no TLS at all, on the
    dialling or the accepting side: no link, and the reason is logged."""
    ca = CA(tmp_path)
    good = tls_args(ca, "good", ["127.0.0.1"])
    if case == "wrong-name":
        bad = tls_args(ca, "bob", ["127.0.0.9"])  # signed by the CA, but for another address
    elif case == "other-ca":
        bad = tls_args(CA(tmp_path, "rogue CA"), "bob", ["127.0.0.1"], ca_path=ca.path)
    else:
        bad = ()
    pair = make_pair(tmp_path, *((bad, good) if bad_side == "alice" else (good, bad)))
    try:
        def refused() -> bool:
            logs = "".join(pair.alice.log) + "".join(pair.bob.log)
            return "failed before its handshake completed" in logs

        wait_until(refused, "a refused link attempt, logged with its reason")
        for d in (pair.alice, pair.bob):
            assert pair.state(d) == "Connecting"
    finally:
        pair.stop()
