"""tshark as an independent judge: capture loopback traffic, read it back with the DRBD dissector."""

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
from helpers import free_ports, have

needs_tshark = [
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



    def lost_segments(self) -> int:
        """TCP segments tshark finds missing from the capture (then it cannot judge a count)."""
        return len(self.fields("frame.number", display_filter="tcp.analysis.lost_segment"))

    def drbd_counts(self, sent_from) -> Counter[str]:
        """DRBD packets per type in the TCP segments that ``sent_from(src, dst)`` selects."""
        counts: Counter[str] = Counter()
        for src, dst, commands in self.fields("tcp.srcport", "tcp.dstport", "drbd.command"):
            if sent_from(int(src), int(dst)):
                for value in commands.split(","):
                    counts[packet_name(int(value, 16))] += 1
        return counts
