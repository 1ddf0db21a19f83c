"""Plugin auto between two real daemons with drbd-sim: it follows the link and the data, and
every stream still verifies byte for byte."""

from __future__ import annotations

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


def test_auto_squeezes_harder_when_bwlimit_drops_to_1M_and_lightens_up_when_the_link_is_fast(
        pair, sims):
    """One replication: at bwlimit 1M auto leaves lz4 for a zstd level; once bwlimit is lifted
    (loopback: the link is fast) it goes back to lz4 or none. Both switches are logged with
    their reason, the peer decodes whatever comes, and the whole stream verifies."""
    pair.alice.ctl("set", "bwlimit", "r0-bob-alice", "1M", check=True)
    primary_args, secondary_args = pair.sim_args("--protocol", "A", "--size", "1G",
                                                 "--progress", "0.5")
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    wait_until(lambda: codec(pair).startswith("auto:zstd-"), "auto to choose zstd at 1M")
    squeezed = codec(pair)
    pair.alice.ctl("set", "bwlimit", "r0-bob-alice", "0", check=True)
    wait_until(lambda: codec(pair) in ("auto:lz4", "auto:none"), "auto to lighten up")
    (prc, p), (src, s) = primary.report(timeout=300), secondary.report(timeout=300)
    assert (prc, src) == (0, 0), (p["error"], s["error"])
    assert p["verified"] and s["verified"] and s["bytes"] == 1 << 30
    changes = [line for line in pair.alice.log if "compression of r0-bob-alice now" in line]
    assert f"now {squeezed[len('auto:'):]} (was lz4): link-bound" in changes[0], changes
    assert any("cpu-bound" in line for line in changes[1:]), changes
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
    assert "now none (was lz4): incompressible data" in changes[0], changes
