"""Byte-for-byte relaying of streams that are not DRBD, and the source address DRBD sees."""

from __future__ import annotations

import os
import queue
import socket
import threading

import pytest

from daemon import Daemon, wait_until
from helpers import free_ports

INITIAL_DATA = bytes.fromhex("83740267fff20000")
INITIAL_META = bytes.fromhex("83740267fff10000")


class FakeDrbd:
    """A TCP server standing in for bob's DRBD: records who connects and what arrives."""

    def __init__(self, host: str, port: int) -> None:
        self.server = socket.create_server((host, port))
        self.accepted: queue.Queue[tuple[socket.socket, tuple]] = queue.Queue()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.put(self.server.accept())
            except OSError:
                return

    def close(self) -> None:
        self.server.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


@pytest.fixture
def sites(tmp_path):
    """alice and bob with distinct loopback addresses for DRBD, inside and outside."""
    a_drbd_ip, a_in_ip, b_drbd_ip, b_in_ip = "127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.22"
    (a_in,) = free_ports(1, a_in_ip)
    (b_in,) = free_ports(1, b_in_ip)
    (b_drbd,) = free_ports(1, b_drbd_ip)
    a_out, b_out, a_drbd = free_ports(3)
    alice, bob = Daemon(tmp_path, "alice"), Daemon(tmp_path, "bob")
    alice.ctl("-c", f"add connection r0-bob-alice {a_in_ip}:{a_in} 127.0.0.1:{b_out}"
                    f" 127.0.0.1:{a_out} {a_drbd_ip}:{a_drbd}", check=True)
    bob.ctl("-c", f"add connection r0-alice-bob {b_in_ip}:{b_in} 127.0.0.1:{a_out}"
                  f" 127.0.0.1:{b_out} {b_drbd_ip}:{b_drbd}", check=True)
    for d in (alice, bob):
        wait_until(lambda d=d: "ProxyConnected" in d.ctl("list", "connections").stdout, "link up")
    drbd = FakeDrbd(b_drbd_ip, b_drbd)
    yield dict(alice=alice, bob=bob, drbd=drbd, a_in=(a_in_ip, a_in), b_in=(b_in_ip, b_in),
               a_drbd_ip=a_drbd_ip)
    drbd.close()
    alice.stop()
    bob.stop()


def dial_inside(sites) -> socket.socket:
    s = socket.socket()
    s.bind((sites["a_drbd_ip"], 0))  # like DRBD, from its own address
    s.connect(sites["a_in"])
    return s


def test_a_non_drbd_stream_is_relayed_byte_for_byte_both_ways(sites):
    """Random bytes after a DRBD initial packet cross the pair unchanged in both directions."""
    forward = INITIAL_DATA + os.urandom(3 << 20)
    backward = os.urandom(1 << 20)
    with dial_inside(sites) as client:
        client.sendall(forward)
        conn, _ = sites["drbd"].accepted.get(timeout=30)
        with conn:
            assert recv_exactly(conn, len(forward)) == forward
            conn.sendall(backward)
            assert recv_exactly(client, len(backward)) == backward
            details = sites["alice"].ctl("list", "details", check=True).stdout
            assert "opaque" in details and "magic" in details


def test_drbd_sees_the_inside_address_and_port_as_its_peer(sites):
    """The first socket comes from the inside IP and port; the next one, from the inside IP."""
    with dial_inside(sites) as first, dial_inside(sites) as second:
        first.sendall(INITIAL_DATA)
        conn1, peer1 = sites["drbd"].accepted.get(timeout=30)
        second.sendall(INITIAL_META)
        conn2, peer2 = sites["drbd"].accepted.get(timeout=30)
        with conn1, conn2:
            assert peer1 == sites["b_in"]
            assert peer2[0] == sites["b_in"][0] and peer2[1] != sites["b_in"][1]
            assert recv_exactly(conn1, 8) == INITIAL_DATA
            assert recv_exactly(conn2, 8) == INITIAL_META
