"""The embedded demo that `make demo` runs ends verified and says so."""

import subprocess
from pathlib import Path

from helpers import tool


def test_demo_replicates_through_the_proxy_pair_and_verifies():
    """drbd-proxy-demo (smaller size) fills alice's buffer, drains it, exits 0 with PASSED."""
    root = Path(__file__).resolve().parent.parent  # etc/demo/drbd.conf, as `make demo` finds it
    out = subprocess.run([tool("drbd-proxy-demo"), "--size", "64M", "--memlimit", "16M",
                          "--bwlimit", "48M"], capture_output=True, text=True, timeout=300,
                         cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "end-to-end verification PASSED" in out.stdout
    assert "buffered at alice" in out.stdout and "alice buffer peak" in out.stdout
