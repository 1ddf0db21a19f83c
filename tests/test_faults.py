"""Faults under load: each ends in a verified replication or a clean disconnect, never in a
verification error on the secondary."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from daemon import ProxyPair, assert_clean_disconnect, wait_until

INITIAL_DATA = bytes.fromhex("83740267fff20000")


@pytest.fixture
def pair(tmp_path):
    p = ProxyPair(tmp_path, "set compression {name} on", "set memlimit {name} 16M")
    p.wait_linked()
    yield p
    p.stop()


def start_load(pair: ProxyPair, sims, *extra: str):
    primary_args, secondary_args = pair.sim_args("--size", "1G", "--progress", "0.2", *extra)
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    secondary.wait_for_line("progress")
    return primary, secondary


def test_local_drbd_disconnecting_while_the_buffer_is_full(pair, sims):
    """alice's DRBD dies with alice's buffer full: the buffer is discarded, not drained, bob's
    (stalled) DRBD sees the close, and a new run verifies."""
    primary, secondary = start_load(pair, sims, "--ping-timeout", "600")
    os.kill(secondary.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "drbd-reads paused" in pair.alice.ctl("show", "memusage").stdout,
                   "alice's buffer to fill")
        primary.proc.kill()
        primary.proc.wait()
    finally:
        os.kill(secondary.proc.pid, signal.SIGCONT)
    assert_clean_disconnect(secondary)
    wait_until(lambda: pair.stats(pair.alice)["r0-bob-alice.buffered"] == "0", "the buffer to go")
    assert int(pair.stats(pair.alice)["r0-bob-alice.discarded.to_peer_bytes"]) > 0
    pair.replicate(sims, "--size", "16M")


def test_receiving_drbd_dying_with_the_buffer_full_drops_only_what_is_counted(pair, sims):
    """bob's DRBD dies while alice's buffer is full: the primary sees a clean disconnect, and
    every byte one proxy read from its DRBD is accounted for, in both directions: discarded
    unsent by the sender (discarded.to_peer_bytes), or received by the other (from_peer),
    including what arrived for a stream already closed there (dropped_after_close_bytes)."""
    primary, secondary = start_load(pair, sims, "--ping-timeout", "600")
    os.kill(secondary.proc.pid, signal.SIGSTOP)
    wait_until(lambda: "drbd-reads paused" in pair.alice.ctl("show", "memusage").stdout,
               "alice's buffer to fill")
    secondary.proc.kill()
    secondary.proc.wait()
    assert_clean_disconnect(primary)

    def quiet() -> bool:
        return all(pair.stats(d)[f"{pair.name(d)}.buffered"] == "0"
                   and "stream" not in d.ctl("list", "subconnections").stdout
                   for d in (pair.alice, pair.bob))

    wait_until(quiet, "both proxies to close the streams and drain")
    alice, bob = pair.stats(pair.alice), pair.stats(pair.bob)
    for sender, receiver in ((alice, bob), (bob, alice)):
        read = sum(int(v) for k, v in sender.items() if k.endswith(".to_peer.bytes"))
        unsent = next(int(v) for k, v in sender.items() if k.endswith(".discarded.to_peer_bytes"))
        got = sum(int(v) for k, v in receiver.items() if k.endswith(".from_peer.bytes"))
        dropped = next(int(v) for k, v in receiver.items()
                       if k.endswith(".dropped_after_close_bytes"))
        assert read == unsent + got + dropped, (read, unsent, got, dropped)
    # alice's full buffer was thrown away at alice, not sent to a stream already gone.
    assert int(alice[f"{pair.name(pair.alice)}.discarded.to_peer_bytes"]) > 0
    pair.replicate(sims, "--size", "16M")


def test_del_connection_under_load_and_add_again(pair, sims):
    """del connection mid-stream closes DRBD's sockets cleanly; added again, it replicates."""
    primary, secondary = start_load(pair, sims)
    pair.alice.ctl("-c", f"del connection {pair.name(pair.alice)}", check=True)
    assert_clean_disconnect(primary, secondary)
    pair.configure(pair.alice, "set compression {name} on")
    pair.wait_linked()
    pair.replicate(sims, "--size", "16M")


def test_shutdown_under_load(pair, sims):
    """shutdown mid-stream: the daemon exits 0 and both DRBD sides see a clean disconnect."""
    primary, secondary = start_load(pair, sims)
    assert pair.alice.ctl("shutdown").returncode == 0
    assert pair.alice.proc.wait(timeout=60) == 0
    assert_clean_disconnect(primary, secondary)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_100_connect_disconnect_cycles_leak_nothing(pair):
    """100 DRBD sockets opened and closed through the pair leave no descriptors or memory."""
    drbd = socket.create_server(("127.0.0.1", pair.bob_drbd))  # stands in for bob's DRBD
    drbd.settimeout(30)
    try:
        def cycle() -> None:
            with socket.create_connection(("127.0.0.1", pair.alice_in), timeout=30) as c:
                c.sendall(INITIAL_DATA + b"x" * 1000)
                conn, _ = drbd.accept()
                with conn:
                    got = b""
                    while len(got) < 1008:
                        got += conn.recv(4096)
            # Both ends closed: wait until the pair has forgotten this stream.
            wait_until(lambda: "stream" not in pair.alice.ctl("list", "subconnections").stdout,
                       "the stream to close")

        for _ in range(10):  # warm up: imports, caches, the first frames
            cycle()
        before = {d: (fds(d.proc.pid), rss(d.proc.pid)) for d in (pair.alice, pair.bob)}
        for _ in range(100):
            cycle()
        for d, (fd0, rss0) in before.items():
            assert fds(d.proc.pid) <= fd0 + 2, "file descriptors leaked"
            assert rss(d.proc.pid) - rss0 < 8 << 20, "memory grew"
    finally:
        drbd.close()
