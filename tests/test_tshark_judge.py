"""tshark's DRBD dissector, an independent judge, agrees with what drbd-sim says it sent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from drbdproxy.drbd.packets import packet_name
from helpers import free_ports, have, sim_pair_args

pytestmark = [
    pytest.mark.skipif(not have("tshark"), reason="tshark is not installed (.ci/run installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="capturing on loopback needs root"),
]


class Capture:
    """tshark capturing loopback traffic on some ports into a pcap file."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self._marker_port = free_ports(1)[0]
        bpf = " or ".join(f"tcp port {p}" for p in [*ports, self._marker_port])
        self.proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", bpf, "-B", "64", "-F", "pcap", "-w", str(path)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # the event: tshark says it is capturing
            if "Capturing on" in line:
                break
        else:
            raise AssertionError(f"tshark did not start capturing (rc {self.proc.wait()})")

    def stop(self) -> str:
        """Stop once everything sent so far is in the file.

        tshark can stop before it has written what the kernel already handed it, so the event
        we wait for is a unique marker, sent after the traffic under test, appearing in the file.
        """
        marker = f"drbdproxy-capture-mark-{uuid.uuid4()}".encode()
        with socket.create_server(("127.0.0.1", self._marker_port)) as server:
            with socket.create_connection(("127.0.0.1", self._marker_port)) as client:
                client.sendall(marker)
                server.accept()[0].close()
        deadline = time.monotonic() + 60
        while marker not in self.path.read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("the capture never showed the end marker")
            time.sleep(0.05)  # polling for the marker event, not a fixed wait
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        return err

    def fields(self, *fields: str, display_filter: str = "drbd") -> list[list[str]]:
        args = ["tshark", "-r", str(self.path), "--enable-heuristic", "drbd_tcp",
                "-Y", display_filter, "-T", "fields"]
        for f in fields:
            args += ["-e", f]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        return [line.split("\t") for line in out.splitlines() if line.strip()]


def test_tshark_decodes_a_sim_run_exactly_as_the_sims_count_it(sims, tmp_path):
    """Capture a sim-to-sim run: every packet is DRBD to tshark, none malformed, same counts."""
    p_port, s_port = free_ports(2)
    capture = Capture(tmp_path / "sim.pcap", [p_port, s_port])
    try:
        primary_args, secondary_args = sim_pair_args(
            p_port, s_port, "--size", "8M", "--block-size", "4k", "--epoch", "300"
        )
        secondary = sims(*secondary_args)
        primary = sims(*primary_args)
        (prc, p), (src, s) = primary.report(), secondary.report()
        assert (prc, src) == (0, 0), (p["error"], s["error"])
    finally:
        stderr = capture.stop()
    assert "dropped" not in stderr or " 0 packets dropped" in stderr or "(0.0%)" in stderr, stderr

    seen: Counter[str] = Counter()
    for (commands,) in capture.fields("drbd.command"):
        for value in commands.split(","):
            seen[packet_name(int(value, 16))] += 1
    sent = Counter(p["packets_sent"]) + Counter(s["packets_sent"])
    assert seen == sent
    assert sent["P_DATA"] == 2048 and seen["P_BARRIER"] == 7
    assert Counter(p["packets_received"]) + Counter(s["packets_received"]) == sent
    malformed = capture.fields("frame.number", display_filter="_ws.malformed || _ws.expert.severity >= error")
    assert malformed == []
