"""The long-run count of ping-timeouts (bench/wanlong.py --soak) sees a real one."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import wanlong  # noqa: E402
import wansites  # noqa: E402
from daemon import Daemon, wait_until  # noqa: E402
from wanem import available, wan  # noqa: E402
from wan import wait_linked  # noqa: E402

pytestmark = [
    pytest.mark.skipif(available() is not None, reason=str(available())),
    pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed"),
]


def _timeouts(*daemons: Daemon) -> list[str]:
    return [line for d in daemons for line in wanlong.timeout_lines(list(d.log))]


def test_a_silent_link_is_logged_with_the_line_the_soak_counts(tmp_path):
    """Over the WAN emulator, a link that goes silent (100 % loss) for longer than ping-timeout
    (1 s here) is dropped, and the daemons log it with the very line the soak counts, so the
    soak's zero is a count and not a grep that cannot match."""
    ns = (f"wstA{os.getpid()}", f"wstB{os.getpid()}")
    with wan("100mbit", "20ms", ns=ns) as w, contextlib.ExitStack() as stack:
        conns = [{"ping-timeout": "10"}]  # tenths of a second, as drbd.conf gives it
        alice, actl = wansites.start_site(stack, w, tmp_path, "alice", conns)
        bob, bctl = wansites.start_site(stack, w, tmp_path, "bob", conns)
        wait_linked([(actl, "alice"), (bctl, "bob")], 1)
        assert _timeouts(alice, bob) == []
        w.set(loss="100%")
        wait_until(lambda: _timeouts(alice, bob), "a ping-timeout in the logs", timeout=30)
        wait_until(lambda: actl.stats()["r0-bob-alice.state"] == "Connecting",
                   "alice to drop the link")
        line = _timeouts(alice, bob)[0]
        assert "-> Connecting" in line and "ping-timeout" in line, line
