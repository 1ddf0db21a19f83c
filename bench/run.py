"""``make bench``: every benchmark script, each writing its section of docs/benchmarks.md.

So far: throughput (P1 proxy vs two socat hops, P2 proxy with lz4 vs the codec's own speed),
scale (P7 aggregate goodput of 64 connections on one proxy pair vs one, idle memory per
connection), meta_first (P6 DRBD ping round trip under load through a shaped WAN), wan (P3
goodput over a 100 Mbit/s link, P4 burst absorption, P5 memory under overload), p8 (goodput over
the WAN emulator at RTT {1, 50, 150} ms x loss {0, 0.1, 1} %, hosts on CUBIC and on BBR, beside
DRBD connected directly), wanlong (P4 and P6 at 150 ms RTT over the WAN emulator) and adaptive
(P9: goodput of each compression choice, none, lz4, zstd 1/3/9 and auto, at 10 Mbit/s, 100 Mbit/s,
1 Gbit/s and on loopback, on drbd-sim's disk-like data and on a tar of system files: auto vs the
best fixed choice per link rate); the WAN ones need root (adaptive then runs loopback only).
Not run here: ``bench/wanlong.py --only "" --soak 600`` counts ping-timeouts over ten minutes at
150 ms and 1 % loss, and ``bench/p8.py --sndbuf 4M --rtts 150 --losses 0,1`` compares the link's
autotuned send buffer with ``sndbuf-size``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["throughput.py", "scale.py", "meta_first.py", "wan.py", "p8.py", "wanlong.py",
           "adaptive.py"]


def main() -> int:
    failed = []
    for script in SCRIPTS:
        print(f"== bench/{script}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]]).returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
