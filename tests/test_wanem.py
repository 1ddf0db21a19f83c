"""The WAN emulator (bench/wanem.py) delivers the delay, rate and loss it is configured with."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import wanem  # noqa: E402

_missing = [tool for tool in ("ip", "ping", "iperf3") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the WAN emulator needs root (netns, TUN)"),
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun (CONFIG_TUN)"),
]

RATE_MBIT, RTT_MS, LOSS = 20, 40, 0.02
PROBES = 20_000  # UDP datagrams for the loss count, half each way: 1 s at 20,000/s
ALPHA = 1e-4  # accepted chance that a correct emulator fails the loss check by bad luck


def test_short_check_measures_the_configured_link():
    """A short ``wanem.py check`` (20 Mbit/s, 40 ms RTT, 2 % loss; about 8 s) measures what was
    configured, within tolerances suited to its small samples:

    - RTT: ping's average of 20 pings within 5 % (2 ms). The emulator holds every packet exactly
      20 ms each way; what it adds is the kernels' and its own path, about 0.1 ms each way
      (0.2-0.3 ms measured), and ping prints to the microsecond.
    - Rate: iperf3's TCP goodput over 2 s after 1 s of slow start, with the IP and TCP headers
      added back (the rate applies to IP packets, so a 1448-byte MSS gets 96.5 % of it), within
      10 %. Two seconds are 50 RTTs: a few of BBR's 8-RTT gain cycles, whose probing (pacing
      1.25x, then 0.75x) moves a window this short by a few percent; 10 % still fails a wrong
      rate (a unit slip, a lost serialisation) by far.
    - Loss: with n = 20,000 independent probes each lost with probability p = 2 %, the count is
      binomial, the estimate has standard error sqrt(p (1 - p) / n) = 0.099 percentage points,
      and a correct emulator stays within z = 3.89 of them (two-sided, ALPHA = 1e-4) except once
      in 10,000 runs: +-0.385 points, 1.62-2.38 %. Moreover every lost probe must be one the
      emulator dropped on purpose (its own count, within 0.05 % of the probes for strays), and
      the probes (3.5 Mbit/s each way) never overflow the bottleneck queue.
    """
    ns = (f"wemtA{os.getpid()}", f"wemtB{os.getpid()}")
    out = subprocess.run(
        [sys.executable, str(BENCH / "wanem.py"), "check", "--rate", f"{RATE_MBIT}mbit",
         "--rtt", f"{RTT_MS}ms", "--loss", f"{LOSS * 100:g}%", "--pings", "20",
         "--rate-seconds", "2", "--omit", "1", "--loss-probes", str(PROBES),
         "--ns-a", ns[0], "--ns-b", ns[1]],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    res = json.loads(lines[0])
    for name in ns:
        assert not wanem.netns_exists(name), f"namespace {name} left behind"

    assert (res["rtt_cfg_ms"], res["rate_cfg_mbit"], res["loss_cfg_pct"]) == (RTT_MS, RATE_MBIT,
                                                                              LOSS * 100)
    assert abs(res["rtt_ms"] - RTT_MS) <= 0.05 * RTT_MS, res
    assert abs(res["rate_ip_mbit"] - RATE_MBIT) <= 0.10 * RATE_MBIT, res

    z = statistics.NormalDist().inv_cdf(1 - ALPHA / 2)
    half = z * math.sqrt(LOSS * (1 - LOSS) / res["loss_probes"])
    assert res["loss_probes"] == PROBES
    assert abs(res["loss_pct"] / 100 - LOSS) <= half, (res, f"tolerance +-{half * 100:.3f} %")
    assert abs(res["loss_lost"] - res["fwd_lost"]) <= 0.0005 * PROBES, res
    assert res["fwd_qdrops"] == 0, res
