"""The embedded demo that `make demo` runs ends verified and says so."""

import subprocess

from helpers import tool


def test_demo_replicates_and_verifies():
    """drbd-proxy-demo (small size) exits 0, prints the summary and a PASSED verification."""
    out = subprocess.run([tool("drbd-proxy-demo"), "--size", "16M"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "end-to-end verification PASSED" in out.stdout
    assert "verified" in out.stdout and "16.0M" in out.stdout
