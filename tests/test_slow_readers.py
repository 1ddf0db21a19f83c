"""A stalled reader on each side of the path: every run ends verified or in a clean disconnect."""

from __future__ import annotations

import os
import signal

import pytest

from daemon import ProxyPair, wait_until


@pytest.fixture
def pair(tmp_path):
    p = ProxyPair(tmp_path, "set compression {name} on", "set memlimit {name} 16M",
                  "set ping-timeout {name} 10")  # the link times out after 1 s of silence
    p.wait_linked()
    yield p
    p.stop()


def load(pair, sims, *extra):
    primary_args, secondary_args = pair.sim_args("--ping-timeout", "600", "--progress", "0.2",
                                                 "--protocol", "C", *extra)
    secondary = sims(*secondary_args)
    primary = sims(*primary_args)
    secondary.wait_for_line("progress")
    return primary, secondary


def test_stalled_primary_drbd(pair, sims):
    """alice's DRBD stops reading (and writing) while alice still has data queued; once it runs
    again the replication completes and verifies."""
    primary, secondary = load(pair, sims, "--size", "128M")
    os.kill(primary.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: pair.stats(pair.alice)["r0-bob-alice.buffered"] == "0",
                   "alice to deliver what it had accepted")
    finally:
        os.kill(primary.proc.pid, signal.SIGCONT)
    (prc, p), (src, s) = primary.report(), secondary.report()
    assert (prc, src) == (0, 0), (p["error"], s["error"])


@pytest.mark.parametrize("stalled", ["bob", "alice"])
def test_a_stalled_peer_proxy_times_out_into_a_clean_disconnect(pair, sims, stalled):
    """One proxy stops reading its link for longer than ping-timeout: the other drops the
    connection, DRBD on both sides sees a clean disconnect, and the pair links up again."""
    primary, secondary = load(pair, sims, "--size", "1G", "--rate", "8M")
    frozen = getattr(pair, stalled)
    other = pair.alice if stalled == "bob" else pair.bob
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: pair.state(other) == "Connecting", "the link to time out")
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    for sim in (primary, secondary):
        rc, report = sim.report()
        assert rc == 1 and "connection lost" in report["error"], report["error"]
    pair.wait_linked()
    p, s = pair.replicate(sims, "--size", "16M")
