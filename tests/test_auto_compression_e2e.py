"""Plugin auto between two real daemons with drbd-sim: it follows the link and the data, and
every stream still verifies byte for byte."""

from __future__ import annotations

import os
import signal

import pytest

from daemon import ProxyPair, wait_until


@pytest.fixture
def pair(tmp_path):
    p = ProxyPair(tmp_path, "set plugin {name} 0 auto", "set memlimit {name} 4M")
    p.wait_linked()
    yield p
    p.stop()


def codec(pair: ProxyPair) -> str:
    return pair.stats(pair.alice)["r0-bob-alice.codec"]


def test_auto_follows_the_link_fast_then_1M_then_fast_again_and_the_stream_verifies(pair, sims):
    """One replication that only ends when told to. On loopback (a fast link) auto leaves its
    zstd-3 start for lz4 or none; at bwlimit 1M it moves to a zstd level; with bwlimit lifted
    it goes back to lz4 or none. Each change is logged with its reason, the peer decodes
    whatever comes, and the whole stream verifies."""
    primary_args, secondary_args = pair.sim_args("--protocol", "A", "--size", "1T",
                                                 "--progress", "0.5")
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    light = ("auto:lz4", "auto:none")
    wait_until(lambda: codec(pair) in light, "auto to lighten up on a fast link")
    pair.alice.ctl("set", "bwlimit", "r0-bob-alice", "1M", check=True)
    wait_until(lambda: codec(pair).startswith("auto:zstd-"), "auto to choose zstd at 1M")
    squeezed = codec(pair)
    pair.alice.ctl("set", "bwlimit", "r0-bob-alice", "0", check=True)
    wait_until(lambda: codec(pair) in light, "auto to lighten up once bwlimit is lifted")
    os.kill(primary.proc.pid, signal.SIGUSR1)
    (prc, p), (src, s) = primary.report(timeout=300), secondary.report(timeout=300)
    assert (prc, src) == (0, 0), (p["error"], s["error"])
    assert p["verified"] and s["verified"] and s["bytes"] == p["bytes"] > 0
    changes = [line for line in pair.alice.log if "compression of r0-bob-alice now" in line]
    assert "(was zstd-3): cpu-bound" in changes[0], changes
    down = next(i for i, line in enumerate(changes) if f"now {squeezed[5:]} (was " in line)
    assert "link-bound" in changes[down], changes
    assert any("cpu-bound" in line for line in changes[down + 1:]), changes
    assert pair.alice.ctl("show", "proxy-settings", "r0-bob-alice",
                          check=True).stdout.split()[-5:] == "plugin { auto; } }".split()
    memusage = pair.alice.ctl("show", "memusage", check=True).stdout
    assert f"codec {codec(pair)}" in memusage, memusage


def test_auto_sends_random_data_uncompressed(pair, sims):
    """Incompressible data: auto drops to none as soon as the first chunks show it, says why,
    and the replication verifies."""
    pair.replicate(sims, "--workload", "random", "--size", "64M")
    assert codec(pair) == "auto:none"
    changes = [line for line in pair.alice.log if "compression of r0-bob-alice now" in line]
    assert "now none (was zstd-3): incompressible data" in changes[0], changes
