"""``make soak``: replicate through a proxy pair for a while, injecting random faults.

Every run must end verified or in a clean disconnect ("connection lost" on the sims); a
verification error on the secondary, or anything else, fails the soak. Faults: none, the peer
proxy killed (SIGKILL) and restarted, the secondary DRBD stalled (SIGSTOP) and resumed,
`del connection` + `add connection` under load, alice's `shutdown` and restart, memlimit lowered
and raised live, the codec changed live. Prints a table of faults and outcomes.

Usage: .venv/bin/python bench/soak.py [--minutes 10] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from daemon import Daemon, ProxyPair, wait_until  # noqa: E402
from helpers import SimProcess  # noqa: E402

FAULTS = ["none", "kill-peer-proxy", "stall-secondary", "del-add-connection", "shutdown-restart",
          "memlimit-live", "codec-live"]


def relink(pair: ProxyPair, workdir: Path) -> None:
    for attr in ("alice", "bob"):
        daemon = getattr(pair, attr)
        if daemon.proc.poll() is not None:
            fresh = Daemon(workdir, f"{attr}{time.monotonic_ns()}")
            setattr(pair, attr, fresh)
            pair.configure(fresh, "set compression {name} on", "set memlimit {name} 32M")
        elif pair.name(daemon) not in daemon.ctl("show").stdout:
            pair.configure(daemon, "set compression {name} on", "set memlimit {name} 32M")
    pair.wait_linked()


def inject(fault: str, pair: ProxyPair, secondary: SimProcess, rng: random.Random) -> None:
    alice = pair.name(pair.alice)
    if fault == "kill-peer-proxy":
        pair.bob.proc.kill()
        pair.bob.proc.wait()
    elif fault == "stall-secondary":
        os.kill(secondary.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: "drbd-reads paused" in pair.alice.ctl("show", "memusage").stdout,
                       "alice's buffer to fill", timeout=120)
        finally:
            os.kill(secondary.proc.pid, signal.SIGCONT)
    elif fault == "del-add-connection":
        pair.alice.ctl("-c", f"del connection {alice}")
    elif fault == "shutdown-restart":
        pair.alice.ctl("shutdown")
        pair.alice.proc.wait(timeout=60)
    elif fault == "memlimit-live":
        pair.alice.ctl("-c", f"set memlimit {alice} 4M")
        pair.alice.ctl("-c", f"set memlimit {alice} 64M")
    elif fault == "codec-live":
        plugin = rng.choice(["zstd level 3", "lz4", "none", "zlib level 1"])
        pair.alice.ctl("-c", f"set plugin {alice} 0 {plugin}", "-c", f"set plugin {alice} 1 END")


def outcome(rc: int, report: dict) -> str:
    if rc == 0 and report.get("verified"):
        return "verified"
    error = report.get("error") or ""
    if "connection lost" in error or "PingAck" in error:
        return "clean disconnect"
    return f"FAILED: {error}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    table: collections.Counter[tuple[str, str]] = collections.Counter()
    deadline = time.monotonic() + args.minutes * 60
    print(f"soak: {args.minutes} minutes, seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="drbd-proxy-soak-") as tmp:
        workdir = Path(tmp)
        pair = ProxyPair(workdir, "set compression {name} on", "set memlimit {name} 32M")
        try:
            pair.wait_linked()
            run = 0
            while time.monotonic() < deadline:
                run += 1
                fault = rng.choice(FAULTS)
                size = rng.choice(["64M", "128M", "256M"])
                rate = rng.choice(["16M", "32M", "64M"])  # so that faults land mid-stream
                protocol = rng.choice("ABC")
                workload = rng.choice(["disk", "random", "zeros"])
                primary_args, secondary_args = pair.sim_args(
                    "--size", size, "--rate", rate, "--protocol", protocol, "--workload", workload,
                    "--ping-timeout", "600", "--progress", "0.2")
                secondary = SimProcess(secondary_args)
                primary = SimProcess(primary_args)
                try:
                    secondary.wait_for_line("progress", timeout=120)
                    time.sleep(rng.uniform(0, 2))  # a random moment of the run (a soak, not a test)
                    inject(fault, pair, secondary, rng)
                except AssertionError:
                    pass  # the run ended before the fault could be injected: still judged below
                results = [outcome(*s.report(timeout=900)) for s in (secondary, primary)]
                for result in results:
                    table[(fault, result)] += 1
                print(f"run {run}: {fault:20} {size:>5} protocol {protocol} {workload:6}"
                      f" -> secondary {results[0]}, primary {results[1]}", flush=True)
                relink(pair, workdir)
        finally:
            pair.stop()
    print("\n| fault | outcome | sims |\n|---|---|---|")
    for (fault, result), count in sorted(table.items()):
        print(f"| {fault} | {result} | {count} |")
    bad = sum(c for (_, r), c in table.items() if r.startswith("FAILED"))
    print(f"\nsoak {'FAILED' if bad else 'passed'}: {sum(table.values())} sim reports, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
