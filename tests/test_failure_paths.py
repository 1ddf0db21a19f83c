"""Bad days end to end: a DRBD disconnect drops the dead session's buffer on both proxies, a
close reaches a stalled DRBD within ping-timeout, and connects to DRBD in progress at teardown
are cancelled."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from drbdproxy.relay.connection import MAX_DRBD_CONNECTS

from daemon import ProxyPair, assert_clean_disconnect, wait_until
from helpers import tcp_sockets_of

INITIAL_DATA = bytes.fromhex("83740267fff20000")
MiB = 1 << 20
ESTABLISHED, SYN_SENT, LISTEN = "01", "02", "0A"


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the far side closed ``sock`` (it reads to EOF, or was reset)."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def buffered(pair: ProxyPair) -> int:
    return int(pair.stats(pair.alice)["r0-bob-alice.buffered"])


def arrived(pair: ProxyPair) -> int:
    """Raw bytes of DATA bob has received from alice, delivered or not."""
    stats = pair.stats(pair.bob)
    return (sum(int(v) for k, v in stats.items() if k.endswith(".from_peer.bytes"))
            + int(stats["r0-alice-bob.dropped_after_close_bytes"]))


def test_a_dead_session_buffer_is_dropped_and_drbd_relinks_at_once(tmp_path, sims):
    """Both DRBD nodes die while alice buffers 16M behind a 256 KiB/s link: alice's buffer is
    empty within 3 s, less than 1 MiB of it reaches bob, and a new DRBD pair links and verifies
    4M within 10 s (at 256 KiB/s the dead buffer alone would take a minute)."""
    pair = ProxyPair(tmp_path, "set compression {name} on", "set memlimit {name} 24M",
                     "set bwlimit {name} 256k")
    try:
        pair.wait_linked()
        primary_args, secondary_args = pair.sim_args("--size", "64M", "--workload", "random",
                                                     "--ping-timeout", "600")
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        wait_until(lambda: buffered(pair) >= 16 * MiB, "alice to buffer 16M")
        before, held = arrived(pair), buffered(pair)
        for sim in (primary, secondary):
            sim.proc.kill()
            sim.proc.wait()
        killed = time.monotonic()
        wait_until(lambda: buffered(pair) == 0, "alice to drop the dead buffer", timeout=3)
        dropped_in = time.monotonic() - killed
        wait_until(lambda: all(len(d.ctl("list", "subconnections").stdout.splitlines()) == 1
                               for d in (pair.alice, pair.bob)), "both proxies to close")  # header only
        crossed = arrived(pair) - before
        assert crossed < MiB
        discarded = int(pair.stats(pair.alice)["r0-bob-alice.discarded.to_peer_bytes"])
        assert discarded >= 15 * MiB
        # Zeros: what is measured is the wait behind the dead session, not the link's speed.
        primary_args, secondary_args = pair.sim_args("--size", "4M", "--workload", "zeros",
                                                     "--connect-timeout", "10")
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        started = time.monotonic()
        (prc, p), (src, s) = primary.report(timeout=10), secondary.report(timeout=10)
        assert (prc, src) == (0, 0), (p["error"], s["error"])
        assert p["verified"] and s["verified"]
        print(f"alice held {held} bytes; buffer empty {dropped_in:.2f} s after the kill;"
              f" {crossed} bytes of it reached bob; {discarded} discarded;"
              f" a new pair verified 4M in {time.monotonic() - started:.2f} s")
    finally:
        pair.stop()


def test_a_close_reaches_a_stalled_drbd_within_ping_timeout(tmp_path, sims):
    """bob's DRBD stops reading with alice's buffer full, then alice's DRBD dies: bob closes
    its socket to the stalled DRBD within ping-timeout + 2 s (it cannot flush to it), and
    the resumed secondary reports a lost connection, never a verification error."""
    pair = ProxyPair(tmp_path, "set compression {name} on", "set memlimit {name} 16M",
                     "set ping-timeout {name} 20")  # 2 s
    try:
        pair.wait_linked()
        primary_args, secondary_args = pair.sim_args("--size", "1G", "--progress", "0.2",
                                                     "--ping-timeout", "600")
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        secondary.wait_for_line("progress")
        os.kill(secondary.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: "drbd-reads paused" in pair.alice.ctl("show", "memusage").stdout,
                       "alice's buffer to fill")

            def to_drbd() -> list[tuple[int, int, str]]:
                """bob's sockets to the stalled DRBD, whichever of the two dialled them."""
                ports = {local for local, _, state in tcp_sockets_of(secondary.proc.pid)
                         if state != LISTEN}
                return [s for s in tcp_sockets_of(pair.bob.proc.pid) if s[1] in ports]

            assert any(state == ESTABLISHED for _, _, state in to_drbd())
            primary.proc.kill()
            primary.proc.wait()
            killed = time.monotonic()
            wait_until(lambda: not to_drbd(), "bob to close its sockets to the stalled DRBD",
                       timeout=2 + 2)
            print(f"bob closed its sockets to the stalled DRBD {time.monotonic() - killed:.2f} s"
                  " after the primary died (ping-timeout 2 s)")
        finally:
            os.kill(secondary.proc.pid, signal.SIGCONT)
        assert_clean_disconnect(secondary)
        assert pair.state(pair.alice) in ("ProxyConnected", "Connected")
        pair.replicate(sims, "--size", "16M")
    finally:
        pair.stop()


@pytest.fixture
def unaccepting_drbd():
    """Stands in for a DRBD that does not accept: a listener whose one-slot accept queue is
    taken, so every further connect to it hangs in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    yield listener
    filler.close()
    listener.close()


def test_connects_to_drbd_in_progress_at_teardown_are_cancelled(tmp_path, unaccepting_drbd):
    """bob's connects to a DRBD that does not accept are in progress (as many as bob allows at
    once) when alice removes the connection: bob hears GOAWAY, cancels every connect, holds no
    socket to that DRBD and is back to the descriptors it had before."""
    pair = ProxyPair(tmp_path)
    drbd_port = unaccepting_drbd.getsockname()[1]
    inside: list[socket.socket] = []
    try:
        # Point bob's connection at the DRBD that does not accept.
        pair.bob_drbd = drbd_port
        pair.bob.ctl("-c", f"del connection {pair.name(pair.bob)}", check=True)
        pair.configure(pair.bob)
        pair.wait_linked()
        bob = pair.bob.proc.pid
        fds_before = len(os.listdir(f"/proc/{bob}/fd"))

        def connecting() -> list[tuple[int, int, str]]:
            return [s for s in tcp_sockets_of(bob) if s[1] == drbd_port]

        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", pair.alice_in), timeout=10)
            c.sendall(INITIAL_DATA + b"x" * 1000)
            inside.append(c)
        # At most MAX_DRBD_CONNECTS at once: the other OPENs are refused.
        wait_until(lambda: len(connecting()) == MAX_DRBD_CONNECTS,
                   f"bob to be connecting to its DRBD {MAX_DRBD_CONNECTS} times")
        assert {state for _, _, state in connecting()} == {SYN_SENT}
        pair.alice.ctl("-c", f"del connection {pair.name(pair.alice)}", check=True)
        wait_until(lambda: not connecting(), "bob to cancel its connects to DRBD")
        wait_until(lambda: len(os.listdir(f"/proc/{bob}/fd")) <= fds_before,
                   "bob's descriptors to come back")
        assert any("GOAWAY" in line for line in pair.bob.log), "bob never heard GOAWAY"
    finally:
        for c in inside:
            c.close()
        pair.stop()


def test_sockets_that_never_speak_are_closed(tmp_path):
    """Connections to the inside address that never send DRBD's first packet (a few bytes, or
    nothing) are closed after ping-timeout, and connections to the outside address that never
    complete a handshake after the handshake timeout: the descriptors come back."""
    pair = ProxyPair(tmp_path, "set ping-timeout {name} 10")  # 1 s
    silent: list[socket.socket] = []
    try:
        pair.wait_linked()
        bob = pair.bob.proc.pid
        fds_before = len(os.listdir(f"/proc/{bob}/fd"))
        for i in range(100):
            inside = socket.create_connection(("127.0.0.1", pair.bob_in), timeout=10)
            if i % 2:
                inside.sendall(INITIAL_DATA[:5])
            silent += [inside, socket.create_connection(("127.0.0.1", pair.bob_out), timeout=10)]
        wait_until(lambda: len(os.listdir(f"/proc/{bob}/fd")) <= fds_before,
                   "bob to close the silent connections", timeout=60)
        assert all(closed_by_peer(s) for s in silent)
        assert pair.state(pair.bob) in ("ProxyConnected", "Connected")
    finally:
        for s in silent:
            s.close()
        pair.stop()
