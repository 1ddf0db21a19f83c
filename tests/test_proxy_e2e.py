"""drbd-sim through a real proxy pair (two twistd daemons) on loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from daemon import ProxyPair


@pytest.fixture
def pair(tmp_path):
    p = ProxyPair(tmp_path, "set compression {name} on")
    p.wait_linked()
    yield p
    p.stop()


@pytest.mark.parametrize("protocol", ["A", "C"])
def test_replicates_256_mib_through_the_proxy_pair(pair, sims, protocol):
    """256 MiB of disk-like data cross alice and bob with lz4, in order and verified."""
    p, s = pair.replicate(sims, "--protocol", protocol, "--size", "256M")
    assert p["verified"] and s["verified"] and s["bytes"] == 256 << 20
    stats = pair.stats(pair.alice)
    raw = int(stats["r0-bob-alice.data.to_peer.bytes"])
    wire = int(stats["r0-bob-alice.data.to_peer.wire_bytes"])
    assert raw > 256 << 20  # every P_DATA with its headers
    assert raw / wire > 1.5  # lz4 on disk-like data
    assert int(stats["r0-bob-alice.buffered"]) == 0


def test_reverse_roles(pair, sims):
    """bob's DRBD as primary and alice's as secondary: the pair is symmetric."""
    to_alice, to_bob = pair.sim_args("--protocol", "C", "--size", "64M")
    # Swap roles, keeping each node on its own side.
    secondary = sims(*[a if a != "primary" else "secondary" for a in to_alice])
    primary = sims(*[a if a != "secondary" else "primary" for a in to_bob])
    (prc, p), (src, s) = primary.report(), secondary.report()
    assert (prc, src) == (0, 0), (p["error"], s["error"])
    assert s["verified"] and s["bytes"] == 64 << 20


def test_subconnections_show_both_drbd_sockets(pair, sims):
    """While DRBD is connected, list subconnections shows the data and meta sockets with their
    compression ratio in LINBIT's field 13; list hsubconnections the same, aligned."""
    primary_args, secondary_args = pair.sim_args("--rate", "2M", "--size", "1G", "--progress", "0.2")
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    secondary.wait_for_line("progress")  # data is flowing through the pair
    out = pair.alice.ctl("list", "subconnections", check=True).stdout
    header, *rows = [line.split("\t") for line in out.splitlines()]
    assert (header[1], header[12]) == ("Socket", "Ratio"), out
    data = [row for row in rows if row[1] == "data"]
    assert data and float(data[0][12]) > 0, out
    assert any(row[1] == "meta" for row in rows), out
    human = pair.alice.ctl("list", "hsubconnections", check=True).stdout
    assert "\t" not in human and " data " in human and " meta " in human, human
    assert pair.state(pair.alice) == "Connected"
    primary.kill()
    secondary.kill()


def test_ipv6_end_to_end(tmp_path, sims):
    """All addresses on ::1 (drbdadm's bracketless form): the pair links and replicates."""
    pair = ProxyPair(tmp_path, "set compression {name} on", host="::1")
    try:
        pair.wait_linked()
        p, s = pair.replicate(sims, "--size", "16M")
        assert "::1" in pair.alice.ctl("show", check=True).stdout
    finally:
        pair.stop()


def tuned_link_socket(options: dict[str, int]) -> socket.socket:
    """A socket as a connection with ``options`` tunes each new link socket."""
    from drbdproxy.relay.connection import ProxyConnection
    from drbdproxy.spec import ConnectionSpec

    spec = ConnectionSpec("r0", ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3),
                          ("127.0.0.1", 4), options)
    sock = socket.socket()

    class Transport:
        def getHandle(self) -> socket.socket:
            return sock

    ProxyConnection(spec, reactor=None, encoder=None).peer.tuneLinkSocket(Transport())
    return sock


def test_socket_buffer_options_apply_to_link_sockets():
    """sndbuf-size and rcvbuf-size are set on each new link socket."""
    with tuned_link_socket({"sndbuf-size": 1 << 20, "rcvbuf-size": 512 << 10}) as sock:
        # Linux doubles the value it is given, for its own bookkeeping.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 1 << 20
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 512 << 10


def test_root_gets_link_buffers_beyond_the_sysctl_cap():
    """As root, sndbuf-size and rcvbuf-size are honoured past net.core.wmem_max/rmem_max (a
    stock kernel caps them at 208 KiB, far below what a long link needs)."""
    if os.geteuid() != 0:
        pytest.skip("only root may set socket buffers beyond the sysctl caps")
    caps = [int(Path(f"/proc/sys/net/core/{n}_max").read_text()) for n in ("wmem", "rmem")]
    want = 4 * max(caps)  # beyond what the cap allows even after the kernel doubles it
    with tuned_link_socket({"sndbuf-size": want, "rcvbuf-size": want}) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= want
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= want
