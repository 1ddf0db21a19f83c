"""drbd-proxy-ctl watch in a real terminal (tmux) against a daemon pair replicating data."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon import ProxyPair, wait_until
from helpers import tool

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """A tmux server of its own (its own socket), one detached session running ``command``."""

    def __init__(self, workdir: Path, command: str) -> None:
        self.socket = str(workdir / "tmux.sock")
        self.run("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40", command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "watch")

    def wait_for(self, pattern: str, what: str) -> str:
        """Poll the screen until ``pattern`` shows (the view redraws every second)."""
        wait_until(lambda: re.search(pattern, self.screen()) is not None, what, timeout=60)
        return self.screen()

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_watch_shows_a_live_connection_and_q_quits(tmp_path, sims):
    """While drbd-sim replicates through the pair, watch shows alice's connection Connected,
    its buffer bar, a measured rate to the peer and the compression ratio of disk-like data,
    and the congestion-fill advice; q ends it with exit status 0."""
    pair = ProxyPair(tmp_path, "set compression {name} on", "set memlimit {name} 32M")
    term = None
    try:
        pair.wait_linked()
        primary_args, secondary_args = pair.sim_args("--size", "1G", "--rate", "4M",
                                                     "--workload", "disk")
        sims(*secondary_args)
        sims(*primary_args)
        command = (f"{tool('drbd-proxy-ctl')} -s {pair.alice.socket} watch r0-bob-alice;"
                   " echo watch-exit=$?; sleep 600")
        term = Tmux(tmp_path, command)
        screen = term.wait_for(r"to peer [0-9.]+[KMG]/s \(link [0-9.]+[KMG]?/s, ratio \d+\.\d\d\)",
                               "a measured rate and ratio on screen")
        assert "r0-bob-alice   Connected" in screen
        assert re.search(r"buffer  \S+ of 32\.0M \(\d+ %\)\s+\[[#.]+\]", screen), screen
        assert re.search(r"congestion-fill advice \d+[kMG] \(90 % of memlimit x ratio\)", screen)
        assert "q quits" in screen
        term.run("send-keys", "-t", "watch", "q")
        term.wait_for(r"watch-exit=0", "watch to quit on q")
    finally:
        if term is not None:
            term.kill()
        pair.stop()


def test_watch_without_a_daemon_says_so_and_quits(tmp_path):
    """With nothing behind the socket, watch keeps its screen and says the daemon is not
    reachable (naming the socket) instead of exiting; q still quits."""
    sock = tmp_path / "none.ctl"
    term = Tmux(tmp_path, f"{tool('drbd-proxy-ctl')} -s {sock} watch; echo watch-exit=$?; sleep 600")
    try:
        screen = term.wait_for(r"daemon not reachable", "the unreachable message")
        assert "none.ctl" in "".join(line.strip() for line in screen.splitlines())  # maybe wrapped
        term.run("send-keys", "-t", "watch", "q")
        term.wait_for(r"watch-exit=0", "watch to quit on q")
    finally:
        term.kill()
