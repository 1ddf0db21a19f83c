"""drbd-sim end to end: two real processes replicating over loopback sockets."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest

from drbdproxy.sim.report import Stats
from helpers import free_ports, sim_pair_args, tool


def run_pair(sims, *extra: str) -> tuple[tuple[int, dict], tuple[int, dict]]:
    p_port, s_port = free_ports(2)
    primary_args, secondary_args = sim_pair_args(p_port, s_port, *extra)
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    return primary.report(), secondary.report()


@pytest.mark.parametrize("protocol", ["A", "C"])
def test_replicates_64_mib_and_verifies(sims, protocol):
    """64 MiB of disk-like data replicate directly under protocol A and C; both sides verify."""
    (prc, primary), (src, secondary) = run_pair(sims, "--protocol", protocol, "--size", "64M")
    assert (prc, src) == (0, 0), (primary["error"], secondary["error"])
    assert primary["verified"] and secondary["verified"]
    assert primary["bytes"] == secondary["bytes"] == 64 << 20
    assert secondary["workload"] == "disk"
    writes = primary["packets_sent"]["P_DATA"]
    assert secondary["packets_received"]["P_DATA"] == writes == 1024
    assert primary["packets_sent"]["P_BARRIER"] == secondary["packets_sent"]["P_BARRIER_ACK"]
    if protocol == "C":
        assert secondary["packets_sent"]["P_WRITE_ACK"] == writes
    else:
        assert "P_WRITE_ACK" not in secondary["packets_sent"]
        assert "P_RECV_ACK" not in secondary["packets_sent"]
    assert primary["write_latency_ms"]["p50"] is not None
    assert primary["cpu_s"] > 0 and secondary["cpu_s"] > 0  # the load's own cost is reported


def test_protocol_b_small_blocks_and_epochs(sims):
    """Protocol B with 4 KiB writes and 100-write epochs: receive acks and exact barrier counts."""
    (prc, primary), (src, secondary) = run_pair(
        sims, "--protocol", "B", "--size", "4M", "--block-size", "4k", "--epoch", "100",
        "--workload", "random",
    )
    assert (prc, src) == (0, 0), (primary["error"], secondary["error"])
    assert secondary["packets_sent"]["P_RECV_ACK"] == 1024
    assert primary["packets_sent"]["P_BARRIER"] == 11  # 10 full epochs and the last 24 writes
    assert secondary["workload"] == "random"


def test_mismatched_protocols_are_refused(sims):
    """Protocol C against protocol A: the handshake is refused with the reason, both exit 1.

    Like DRBD, the node that notices goes away and the other keeps trying until its timeout.
    """
    p_port, s_port = free_ports(2)
    primary_args, secondary_args = sim_pair_args(p_port, s_port)
    secondary = sims(*secondary_args, "--protocol", "C", "--connect-timeout", "5")
    primary = sims(*primary_args, "--protocol", "A", "--connect-timeout", "5")
    reports = [secondary.report(), primary.report()]
    assert [rc for rc, _ in reports] == [1, 1]
    errors = [r["error"] for _, r in reports]
    assert any("incompatible communication protocols" in e for e in errors), errors


class CorruptingRelay:
    """A TCP relay that flips one bit at a given offset of any stream direction that gets there."""

    def __init__(self, listen_port: int, target_port: int, flip_at: int) -> None:
        self.flip_at = flip_at
        self.flipped = threading.Event()
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", listen_port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()  # like a proxy whose far side is not up yet
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, corrupt: bool) -> None:
        seen = 0
        try:
            while data := src.recv(65536):
                if corrupt and seen <= self.flip_at < seen + len(data):
                    buf = bytearray(data)
                    buf[self.flip_at - seen] ^= 0x01
                    data = bytes(buf)
                    self.flipped.set()
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def test_a_corrupted_byte_is_detected_by_the_secondary(sims):
    """One flipped bit inside block data on the wire makes the secondary fail verification.

    Each node reaches the other through a relay that flips the bit 1 MiB into any stream
    direction; only the data socket's primary-to-secondary direction carries that much.
    """
    r1, r2, s_port, p_port = free_ports(4)
    flip_at = (1 << 20) + 12345
    relays = [CorruptingRelay(r1, s_port, flip_at), CorruptingRelay(r2, p_port, flip_at)]
    try:
        common = ["--connect-timeout", "30", "--ping-timeout", "5", "--size", "8M"]
        secondary = sims("--role", "secondary", "--listen", f"127.0.0.1:{s_port}",
                         "--peer", f"127.0.0.1:{r2}", *common)
        primary = sims("--role", "primary", "--listen", f"127.0.0.1:{p_port}",
                       "--peer", f"127.0.0.1:{r1}", *common)
        rc, report = secondary.report()
        assert any(relay.flipped.is_set() for relay in relays)
        assert rc == 1 and report["verified"] is False
        assert "content differs from what the primary wrote" in report["error"]
        prc, preport = primary.report()
        assert prc == 1 and not preport["verified"]
    finally:
        for relay in relays:
            relay.close()


def _corpus(path, seed: int) -> str:
    """A 3 MiB compressible file: the corpus workload's data in these tests."""
    import random

    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)) for _ in range(300)]
    data = bytearray()
    while len(data) < 3 << 20:
        data += b" ".join(rng.choices(words, k=50)) + b"\n"
    path.write_bytes(bytes(data[: 3 << 20]))
    return str(path)


def test_corpus_workload_replicates_and_verifies(sims, tmp_path):
    """Blocks sliced from a file both sims are given replicate and verify byte for byte; the
    secondary reports which corpus it checked against."""
    corpus = _corpus(tmp_path / "corpus.bin", 0)
    p_port, s_port = free_ports(2)
    primary_args, secondary_args = sim_pair_args(p_port, s_port, "--corpus", corpus)
    secondary = sims(*secondary_args)
    primary = sims(*primary_args, "--workload", "corpus", "--size", "16M", "--protocol", "C")
    (prc, p), (src, s) = primary.report(), secondary.report()
    assert (prc, src) == (0, 0), (p["error"], s["error"])
    assert s["verified"] and s["bytes"] == 16 << 20 and s["workload"] == "corpus"
    assert s["corpus"]["bytes"] == 3 << 20 and s["corpus"] == p["corpus"]


@pytest.mark.parametrize("secondary_corpus", [None, 1])
def test_corpus_mismatch_is_one_clear_line(sims, tmp_path, secondary_corpus):
    """A secondary without --corpus, or with another file, ends with one line saying so, not
    with a verification error on the first block."""
    p_port, s_port = free_ports(2)
    primary_args, secondary_args = sim_pair_args(p_port, s_port, "--connect-timeout", "30")
    extra = ([] if secondary_corpus is None
             else ["--corpus", _corpus(tmp_path / "other.bin", secondary_corpus)])
    secondary = sims(*secondary_args, *extra)
    primary = sims(*primary_args, "--workload", "corpus", "--size", "8M",
                   "--corpus", _corpus(tmp_path / "corpus.bin", 0))
    rc, report = secondary.report()
    assert rc == 1 and not report["verified"]
    needle = "--corpus FILE" if secondary_corpus is None else "not the same file"
    assert needle in report["error"] and "differs" not in report["error"]
    assert [line for line in secondary.stderr if "error:" in line] == [
        f"drbd-sim[secondary]: error: {report['error']}\n"]
    primary.report()


def test_a_killed_peer_makes_the_other_side_exit_nonzero(sims):
    """SIGKILL of the secondary mid-stream: the primary exits 1 and says the connection was lost."""
    p_port, s_port = free_ports(2)
    primary_args, secondary_args = sim_pair_args(p_port, s_port, "--rate", "4M", "--size", "1G")
    secondary = sims(*secondary_args, "--progress", "0.2")
    primary = sims(*primary_args)
    secondary.wait_for_line("connected")
    secondary.wait_for_line("progress")  # data is flowing
    secondary.proc.kill()
    rc, report = primary.report()
    assert rc == 1 and report["verified"] is False
    assert "connection lost" in report["error"]
    assert any("error: connection lost" in line for line in primary.stderr)


def test_no_peer_is_a_clear_timeout(sims):
    """With nobody at the peer address the node gives up after --connect-timeout, exit 1."""
    p_port, s_port = free_ports(2)
    primary_args, _ = sim_pair_args(p_port, s_port)
    node = sims(*primary_args, "--connect-timeout", "1")
    rc, report = node.report()
    assert rc == 1 and "no connection to the peer" in report["error"]


def _connection_args(pairs: list[tuple[int, int]]) -> list[str]:
    """--listen/--peer for each (own port, peer port), in that order."""
    return [arg for own, peer in pairs
            for arg in ("--listen", f"127.0.0.1:{own}", "--peer", f"127.0.0.1:{peer}")]


def test_one_process_runs_several_connections(sims):
    """Three --listen/--peer pairs in one primary and one secondary process: three separate
    replications, each verified on its own, and reports that list them with their totals."""
    ports = free_ports(6)
    ends = list(zip(ports[0::2], ports[1::2]))  # (primary's, secondary's) per connection
    common = ["--connect-timeout", "60", "--ping-timeout", "5", "--protocol", "A"]
    secondary = sims("--role", "secondary", *_connection_args([(s, p) for p, s in ends]), *common)
    primary = sims("--role", "primary", *_connection_args(ends), *common, "--size", "8M")
    (prc, p_report), (src, s_report) = primary.report(), secondary.report()
    assert (prc, src) == (0, 0), (p_report["error"], s_report["error"])
    for report in (p_report, s_report):
        assert report["verified"] and report["bytes"] == 3 * (8 << 20)
        assert [c["bytes"] for c in report["connections"]] == [8 << 20] * 3
        assert all(c["verified"] for c in report["connections"])
    assert {f"drbd-sim[secondary#{i}]: replication complete, peer disconnected cleanly"
            for i in range(3)} <= {line.strip() for line in secondary.stderr}


def test_one_failed_connection_ends_the_whole_process(sims):
    """Of two connections, the one whose peer never comes times out: the process stops the other
    one too, exits 1, and its report says which connection failed first."""
    p1, s1, p2, s2 = free_ports(4)
    common = ["--connect-timeout", "2", "--ping-timeout", "5"]
    secondary = sims("--role", "secondary", *_connection_args([(s1, p1)]), *common, "--size", "1G")
    primary = sims("--role", "primary", *_connection_args([(p1, s1), (p2, s2)]), *common,
                   "--rate", "4M", "--size", "1G")
    rc, report = primary.report()
    assert rc == 1 and report["verified"] is False
    assert report["error"].startswith("connection 1: no connection to the peer")
    assert report["connections"][0]["error"] == "stopped: connection 1 failed"
    assert not [line for line in primary.stderr if "Unhandled" in line or "Traceback" in line]
    secondary.report()


def test_help_explains_every_option():
    """--help mentions every option the SPEC lists, each with an explanation."""
    out = subprocess.run([tool("drbd-sim"), "--help"], capture_output=True, text=True, check=True)
    for option in ("--role", "--listen", "--peer", "--protocol", "--workload", "--corpus",
                   "--size", "--duration", "--block-size", "--epoch", "--rate", "--ping-int",
                   "--ping-timeout", "--connect-timeout", "--report"):
        assert option in out.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--role", "boss", "--listen", "127.0.0.1:1", "--peer", "127.0.0.1:2"], "--role"),
        (["--role", "primary", "--listen", "nowhere", "--peer", "127.0.0.1:2"], "bad address"),
        (["--role", "primary", "--listen", "127.0.0.1:1", "--peer", "127.0.0.1:2",
          "--size", "12Q"], "bad size"),
        (["--role", "primary", "--listen", "127.0.0.1:1", "--peer", "127.0.0.1:2",
          "--block-size", "1000"], "multiple of 512"),
        (["--listen", "127.0.0.1:1"], "required"),
        (["--role", "primary", "--listen", "127.0.0.1:1", "--peer", "127.0.0.1:2",
          "--workload", "corpus"], "needs --corpus FILE"),
        (["--role", "secondary", "--listen", "127.0.0.1:1", "--peer", "127.0.0.1:2",
          "--corpus", "/dev/null"], "needs at least 2 MiB"),
        (["--role", "primary", "--listen", "127.0.0.1:1", "--listen", "127.0.0.1:3",
          "--peer", "127.0.0.1:2"], "in pairs"),
        (["--role", "primary", "--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1",
          "--peer", "127.0.0.1:2", "--peer", "127.0.0.1:3"], "must differ"),
    ],
)
def test_bad_options_give_one_line_errors(args, needle):
    """Each bad option is one stderr line naming the problem, and exit status 2."""
    out = subprocess.run([tool("drbd-sim"), *args], capture_output=True, text=True)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr


def test_cpu_seconds_cover_the_run_only():
    """The report's cpu_s is the process CPU clock from the run's start to its end, not what
    start-up (building the workload pool) cost before; None until the run has both."""
    readings = iter([10.0, 12.5])
    stats = Stats(cpu_clock=lambda: next(readings))
    assert stats.cpu_seconds is None
    stats.start(100.0)
    assert stats.cpu_seconds is None
    stats.finish(101.0)
    assert stats.cpu_seconds == 2.5 and stats.duration == 1.0


def test_sigusr1_ends_a_primary_cleanly_and_verified(sims):
    """A primary told to stop with SIGUSR1 while it writes without end ends as at --size: the
    last epoch acknowledged, both reports verified, the secondary with every byte written."""
    import os
    import signal

    p_port, s_port = free_ports(2)
    primary_args, secondary_args = sim_pair_args(p_port, s_port, "--size", "1T",
                                                 "--progress", "0.1")
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    secondary.wait_for_line("progress")
    os.kill(primary.proc.pid, signal.SIGUSR1)
    (prc, p), (src, s) = primary.report(), secondary.report()
    assert (prc, src) == (0, 0), (p["error"], s["error"])
    assert p["verified"] and s["verified"]
    assert 0 < p["bytes"] == s["bytes"] < 1 << 40
