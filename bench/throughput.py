#!/usr/bin/env python3
"""Goodput benchmark for SPEC section 5, targets P1 and P2.

Runs drbd-sim (protocol A, 64 KiB writes) as the load over six paths, all measured in the same
run on loopback:

1. ``direct``     -- primary and secondary connect to each other;
2. ``socat x2``   -- two ``socat -b 131072`` hops per direction of TCP connects;
3. ``haproxy x2`` -- two single-threaded haproxy processes in TCP mode, one hop of each direction
   each;
4. ``proxy off``  -- a drbd-proxy pair (alice, bob), compression off, random (incompressible) data;
5. ``proxy lz4``  -- the same pair with ``set compression NAME on`` (lz4), disk-like data;
6. ``proxy zstd`` -- the same with ``set compression NAME 3`` (zstd level 3), disk-like data;

then ``direct``, ``socat x2``, ``proxy off`` and ``proxy lz4`` again with iperf3 as the load (one
client sending the same bytes, one ``-s -1`` server; C, so the load takes less of the two cores,
as kernel DRBD would), plus the single-thread ``lz4.block`` and zstd level 3 compress speeds on
the same disk-like data, in this process. P1 = proxy off / socat x2, P2 = proxy lz4 / lz4 codec
speed (medians, for each load); proxy off / haproxy x2 and proxy zstd / zstd speed are shown for
comparison. Goodput is what the secondary
reports (``mb_per_s`` = bytes / duration, MB = 10^6 bytes). Runs are interleaved round-robin over
the setups, each run with fresh relays or daemons, so slow drift of this noisy VM spreads over
all setups instead of biasing one. A bar chart goes to ``--img-dir``/throughput-goodput.png.
Beside goodput, every run records the CPU seconds per GB of each relay process group (socat's
forked children included) and of the two sims (their ``cpu_s``): throughput-cpu.png stacks them
per setup against the most the whole machine may spend per GB for P2 = 0.5.

    .venv/bin/python bench/throughput.py [--size 512M] [--runs 3] [--out docs/benchmarks.md]

The markdown section between ``<!-- throughput:begin -->`` and ``<!-- throughput:end -->`` of
``--out`` is replaced (the file is created if missing); the table is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import lz4
import lz4.block
import zstandard

from drbdproxy.daemon import ProxyDaemon
from drbdproxy.sim.workload import Workload
from drbdproxy.units import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import (  # noqa: E402
    cpu_seconds, listening_ports, proc_stat, pyplot, save_figure, write_section,
)

BIN = Path(sys.executable).parent
IPERF3 = shutil.which("iperf3") or "/usr/bin/iperf3"
IP = "127.0.0.1"
CHUNK = 64 << 10
TARGETS = {"P1": (0.7, 1.0), "P2": (0.5, 1.0)}  # (target, goal), SPEC section 5


@dataclass
class Run:
    """One sim run: the secondary's goodput, or why it failed."""
    ok: bool
    mb_per_s: float = 0.0
    duration_s: float = 0.0
    error: str = ""
    wire_ratio: float | None = None  # raw / wire bytes alice sent (proxy setups only)
    #: CPU seconds per GB (10^9 bytes) replicated: each relay process group's, and "sims"
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Endpoints:
    """Where each sim listens and which address it connects to (its --peer)."""
    a_drbd: int
    b_drbd: int
    a_peer: int
    b_peer: int
    wire_ratio: Callable[[], float | None] = lambda: None
    #: Proxy setups: (bytes alice read from her side's sockets, bytes bob delivered or dropped
    #: for a socket already closed), once alice's buffer is empty.
    relayed: Callable[[], tuple[int, int] | None] = lambda: None
    #: The relays' process groups by the name their CPU is reported under ("relays": summed).
    relays: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    workload: str
    runs: list[Run] = field(default_factory=list)

    def goodputs(self) -> list[float]:
        return [r.mb_per_s for r in self.runs if r.ok]

    def cpu(self) -> dict[str, float]:
        """Median CPU seconds per GB of each part over the verified runs."""
        runs = [r.cpu for r in self.runs if r.ok and r.cpu]
        return {k: statistics.median(c[k] for c in runs) for k in (runs[0] if runs else {})}


class Processes:
    """Every child this script starts, each in its own process group so that socat's forked
    children are stopped with it; ``stop_all`` runs on success, failure and Ctrl-C alike."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start argv with stdout to ``LOGDIR/NAME.out`` and stderr to ``NAME.err``."""
        with open(self.logdir / f"{name}.out", "wb") as out, \
                open(self.logdir / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.logdir)
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):  # forked socat children, if any remain
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            self.stop(proc, grace=3.0)


def relay_cpu(relays: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system, reaped children's included) of every relay, summed over its
    process groups (socat forks a child per connection): one pass over /proc."""
    by_group: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = proc_stat(entry.name)
                group = int(fields[2])
                by_group[group] = by_group.get(group, 0.0) + cpu_seconds(fields, children=True)
    return {name: sum(by_group.get(g, 0.0) for g in groups) for name, groups in relays.items()}


def p2_budget(lz4_speed: float) -> float:
    """The most CPU seconds per GB the whole 2-core machine may spend for P2 = 0.5."""
    return 2 / (0.5 * lz4_speed / 1000)


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((IP, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll predicate until true; RuntimeError after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# --- the setups: each yields the Endpoints for one sim run and stops what it started ---------

@contextlib.contextmanager
def direct(procs: Processes, compression: str | None) -> Iterator[Endpoints]:
    a, b = free_ports(2)
    yield Endpoints(a, b, a_peer=b, b_peer=a)


@contextlib.contextmanager
def socat_hops(procs: Processes, compression: str | None) -> Iterator[Endpoints]:
    """Two chains: A's peer s1 -> s2 -> B's listen, and B's peer s3 -> s4 -> A's listen."""
    a, b, s1, s2, s3, s4 = free_ports(6)
    started = []
    try:
        for name, port, target in (("socat1", s1, s2), ("socat2", s2, b),
                                   ("socat3", s3, s4), ("socat4", s4, a)):
            started.append(procs.start(name, [
                "socat", "-b", "131072", f"TCP-LISTEN:{port},reuseaddr,fork,bind={IP}",
                f"TCP:{IP}:{target}"]))
        wait_for(lambda: {s1, s2, s3, s4} <= listening_ports(), "socat to listen")
        yield Endpoints(a, b, a_peer=s1, b_peer=s3, relays={"relays": [p.pid for p in started]})
    finally:
        for proc in started:
            procs.stop(proc)


#: ``set compression NAME WORD`` per plugin: ``on`` is lz4, a number is that zstd level.
COMPRESSION_WORDS = {"lz4": "on", "zstd": "3"}


@contextlib.contextmanager
def proxy_pair(procs: Processes, compression: str | None) -> Iterator[Endpoints]:
    """Daemons alice (primary side) and bob (secondary side), linked on loopback."""
    a_drbd, a_in, a_out, b_drbd, b_in, b_out = free_ports(6)
    sides = {"alice": ("r0-bob-alice", (a_in, b_out, a_out, a_drbd)),
             "bob": ("r0-alice-bob", (b_in, a_out, b_out, b_drbd))}
    started: list[ProxyDaemon] = []
    try:
        for side, (name, ports) in sides.items():
            daemon = ProxyDaemon(procs.logdir, side)
            started.append(daemon)
            daemon.wait_ready()
            add = f"add connection {name} " + " ".join(f"{IP}:{p}" for p in ports)
            word = COMPRESSION_WORDS[compression] if compression else "off"
            daemon.ctl("-c", add, "-c", f"set compression {name} {word}", check=True)
        for daemon in started:
            wait_for(lambda: "ProxyConnected" in daemon.ctl("-c", "list connections").stdout,
                     "the proxies to link up")

        def stats(side: int) -> dict[str, str]:
            return started[side].stats()

        def total(st: dict[str, str], suffix: str) -> int:
            # Every kind of stream: DRBD's data socket, or iperf3's opaque ones.
            return sum(int(v) for k, v in st.items() if k.endswith(suffix))

        def wire_ratio() -> float | None:
            st = stats(0)
            raw, wire = total(st, ".to_peer.bytes"), total(st, ".to_peer.wire_bytes")
            return raw / wire if wire else None

        def relayed() -> tuple[int, int]:
            wait_for(lambda: stats(0)["r0-bob-alice.buffered"] == "0", "alice's buffer to drain")
            bob = stats(1)
            alice = stats(0)
            # What alice read went to bob (delivered there, or dropped for a socket already
            # closed), or was discarded unsent when its socket closed at alice.
            return (total(alice, ".to_peer.bytes"),
                    total(bob, ".from_peer.bytes") + total(bob, ".dropped_after_close_bytes")
                    + total(alice, ".discarded.to_peer_bytes"))

        yield Endpoints(a_drbd, b_drbd, a_peer=a_in, b_peer=b_in, wire_ratio=wire_ratio,
                        relayed=relayed,
                        relays={side: [d.proc.pid] for side, d in zip(sides, started)})
    finally:
        for daemon in started:
            daemon.stop(grace=10)


HAPROXY_CONFIG = """global
    nbthread 1
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
"""


@contextlib.contextmanager
def haproxy_hops(procs: Processes, compression: str | None) -> Iterator[Endpoints]:
    """Like socat_hops with two single-threaded haproxy processes: the first one carries both
    directions' first hop (s1 -> s2, s3 -> s4), the second both last hops (s2 -> B, s4 -> A)."""
    a, b, s1, s2, s3, s4 = free_ports(6)
    started = []
    try:
        for name, routes in (("haproxy1", ((s1, s2), (s3, s4))), ("haproxy2", ((s2, b), (s4, a)))):
            config = HAPROXY_CONFIG + "".join(
                f"listen hop{port}\n    bind {IP}:{port}\n    server next {IP}:{target}\n"
                for port, target in routes)
            path = procs.logdir / f"{name}.cfg"
            path.write_text(config)
            started.append(procs.start(name, ["haproxy", "-db", "-f", str(path)]))
        wait_for(lambda: {s1, s2, s3, s4} <= listening_ports(), "haproxy to listen")
        yield Endpoints(a, b, a_peer=s1, b_peer=s3, relays={"relays": [p.pid for p in started]})
    finally:
        for proc in started:
            procs.stop(proc)


SETUPS = [  # name, workload, setup, compression (a plugin, or None: off), load
    ("direct", "random", direct, None, "drbd-sim"),
    ("socat x2", "random", socat_hops, None, "drbd-sim"),
    ("haproxy x2", "random", haproxy_hops, None, "drbd-sim"),
    ("proxy off", "random", proxy_pair, None, "drbd-sim"),
    ("proxy lz4", "disk", proxy_pair, "lz4", "drbd-sim"),
    ("proxy zstd", "disk", proxy_pair, "zstd", "drbd-sim"),
    # The same paths with a load in C that costs next to nothing per byte, as kernel DRBD does.
    ("direct, iperf3", "random", direct, None, "iperf3"),
    ("socat x2, iperf3", "random", socat_hops, None, "iperf3"),
    ("proxy off, iperf3", "random", proxy_pair, None, "iperf3"),
    ("proxy lz4, iperf3", "disk", proxy_pair, "lz4", "iperf3"),
]


def ended_in_time(procs: Processes, load: tuple[subprocess.Popen, ...], size: int) -> bool:
    """Wait for the load's processes to end (90 s plus 5 MB/s for ``size``), then stop them."""
    deadline = time.monotonic() + 90 + size / 5e6
    try:
        for proc in load:
            proc.wait(max(1.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        return False
    finally:
        for proc in load:
            procs.stop(proc)


def relay_cost(ends: Endpoints, before: dict[str, float], gb: float) -> dict[str, float]:
    """CPU seconds per GB each relay spent since ``before`` (a ``relay_cpu`` reading)."""
    return {name: (after - before[name]) / gb for name, after in relay_cpu(ends.relays).items()}


def run_sims(procs: Processes, ends: Endpoints, workload: str, size: int) -> Run:
    """One replication of ``size`` bytes; the secondary's report decides goodput."""
    common = ["--protocol", "A", "--block-size", "64k", "--ping-timeout", "30"]
    sim = str(BIN / "drbd-sim")
    cpu_before = relay_cpu(ends.relays)
    secondary = procs.start("secondary", [sim, "--role", "secondary", "--listen",
                                          f"{IP}:{ends.b_drbd}", "--peer", f"{IP}:{ends.b_peer}",
                                          *common])
    primary = procs.start("primary", [sim, "--role", "primary", "--listen", f"{IP}:{ends.a_drbd}",
                                      "--peer", f"{IP}:{ends.a_peer}", "--size", str(size),
                                      "--workload", workload, *common])
    if not ended_in_time(procs, (primary, secondary), size):
        return Run(False, error="timed out; " + tail(procs.logdir / "secondary.err"))
    gb = size / 1e9
    cpu = relay_cost(ends, cpu_before, gb)
    reports = {}
    for role in ("primary", "secondary"):
        try:
            reports[role] = json.loads((procs.logdir / f"{role}.out").read_text())
        except ValueError:
            return Run(False, error=f"{role}: no report; " + tail(procs.logdir / f"{role}.err"))
    s, p = reports["secondary"], reports["primary"]
    ok = (primary.returncode == secondary.returncode == 0 and s["verified"] and p["verified"]
          and s["bytes"] == size)
    error = "" if ok else (s.get("error") or p.get("error")
                           or f"exit {primary.returncode}/{secondary.returncode}, {s['bytes']} bytes")
    if s.get("cpu_s") is not None and p.get("cpu_s") is not None:
        cpu["sims"] = (s["cpu_s"] + p["cpu_s"]) / gb
    return Run(ok, s["mb_per_s"], s["duration_s"], error or "", ends.wire_ratio(), cpu)


def disk_blocks(count: int) -> list[bytes]:
    """The sims' first ``count`` disk-like 64 KiB writes, as a primary writes them."""
    wl = Workload("disk")
    return [wl.block(i, i * 128, CHUNK) for i in range(count)]


def disk_file(path: Path, size: int) -> Path:
    """``size`` bytes of the sims' disk-like blocks, for iperf3 -F."""
    with open(path, "wb") as f:
        for i, block in enumerate(disk_blocks(-(-size // CHUNK))):
            f.write(block[: size - i * CHUNK])
    return path


def children_cpu() -> float:
    """CPU seconds of every child this process has reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_iperf3(procs: Processes, ends: Endpoints, workload: str, size: int,
               disk: Path | None) -> Run:
    """One iperf3 test of ``size`` bytes from A's side to B's listen address; goodput is what
    the server reports received over its test. iperf3 checks no content: the proxies' CRC-32C
    over every chunk does, and a proxy pair must have relayed exactly what the client sent."""
    data = ["-F", str(disk)] if workload == "disk" and disk is not None else ["-n", str(size)]
    cpu_before, load_before = relay_cpu(ends.relays), children_cpu()
    server = procs.start("iperf3-server", [IPERF3, "-s", "-1", "-J", "-B", IP,
                                           "-p", str(ends.b_drbd)])
    wait_for(lambda: ends.b_drbd in listening_ports(), "the iperf3 server to listen")
    client = procs.start("iperf3-client", [IPERF3, "-c", IP, "-p", str(ends.a_peer), "-J",
                                           *data])
    if not ended_in_time(procs, (client, server), size):
        return Run(False, error="timed out; " + tail(procs.logdir / "iperf3-server.out"))
    gb = size / 1e9
    cpu = relay_cost(ends, cpu_before, gb)
    cpu["load"] = (children_cpu() - load_before) / gb
    try:
        sent = json.loads((procs.logdir / "iperf3-client.out").read_text())["end"]["sum_sent"]
        got = json.loads((procs.logdir / "iperf3-server.out").read_text())["end"]["sum_received"]
    except (ValueError, KeyError):
        return Run(False, error="iperf3: no report; " + tail(procs.logdir / "iperf3-client.out"))
    relayed = ends.relayed()
    errors = [f"client sent {sent['bytes']} of {size} bytes" if sent["bytes"] != size else "",
              f"exit {client.returncode}/{server.returncode}" if client.returncode or server.returncode
              else "",
              f"the proxies relayed {relayed[1]} of {relayed[0]} bytes"
              if relayed is not None and relayed[0] != relayed[1] else ""]
    error = "; ".join(e for e in errors if e)
    return Run(not error, got["bytes"] / got["seconds"] / 1e6, got["seconds"], error,
               ends.wire_ratio(), cpu)


def tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def codec_speeds(runs: int, total: int = 64 << 20) -> dict[str, tuple[list[float], float]]:
    """Single-thread compress speed (MB/s of input) per pass over ``total`` bytes of disk-like
    64 KiB blocks, after one warm-up pass, with the compression ratio: lz4.block fast mode
    (acceleration 1, what ``compression on`` uses) and zstd level 3."""
    chunks = disk_blocks(total // CHUNK)
    zstd = zstandard.ZstdCompressor(level=3)
    compressors = {
        "lz4": lambda c: lz4.block.compress(c, mode="fast", acceleration=1, store_size=False),
        "zstd": zstd.compress,
    }
    result = {}
    for name, compress in compressors.items():
        out_bytes = sum(len(compress(c)) for c in chunks)
        speeds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for c in chunks:
                compress(c)
            speeds.append(total / (time.perf_counter() - t0) / 1e6)
        result[name] = (speeds, total / out_bytes)
    return result


# --- report ----------------------------------------------------------------------------------

def machine_facts() -> list[str]:
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent)
    socat_v = subprocess.run(["socat", "-V"], capture_output=True, text=True).stdout.splitlines()
    import twisted
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        f"command: `{shlex.join(sys.orig_argv)}`",
        f"nproc: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}); "
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"kernel: {platform.release()}; python: {platform.python_version()}; "
        f"twisted {twisted.__version__}; lz4 {lz4.__version__}; "
        f"{next((l for l in socat_v if 'version' in l), 'socat ?').split(' on ')[0]}",
        f"tree: {git.stdout.strip() or 'unknown'}",
    ]


def fmt(values: list[float]) -> tuple[str, str]:
    if not values:
        return "—", "—"
    return f"{statistics.median(values):.0f}", f"{min(values):.0f}–{max(values):.0f}"


def render(results: list[Result], codecs: dict[str, tuple[list[float], float]], args,
           facts: list[str], image: Path | None, cpu_image: Path | None = None) -> str:
    """The markdown section's body."""
    rows = ["| setup | workload | verified runs | goodput median MB/s | min–max MB/s | "
            "median duration s | CPU s per GB, median | note |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        med, rng = fmt(r.goodputs())
        durations = [x.duration_s for x in r.runs if x.ok]
        ratios = [x.wire_ratio for x in r.runs if x.ok and x.wire_ratio]
        note = f"wire ratio {statistics.median(ratios):.2f}" if ratios else ""
        dur = f"{statistics.median(durations):.2f}" if durations else "—"
        ok = sum(x.ok for x in r.runs)
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu().items())
        rows.append(f"| {r.name} | {r.workload} | {ok}/{len(r.runs)} | {med} | {rng} | {dur} | "
                    f"{cpu} | {note} |")
    for name, (speeds, ratio) in codecs.items():
        med, rng = fmt(speeds)
        rows.append(f"| {CODEC_LABELS[name]} | disk | passes: {len(speeds)} | {med} | {rng} | "
                    f"| {1000 / statistics.median(speeds):.2f} | ratio {ratio:.2f}, 64 MiB in "
                    "64 KiB blocks, one pass per round |")
    by_name = {r.name: r.goodputs() for r in results}

    def ratio_row(key: str, label: str, num: list[float], den: list[float]) -> str:
        target, goal = TARGETS.get(key, (None, None))
        if not num or not den:
            return f"| {key} | {label} | — | | | no verified runs |"
        value = statistics.median(num) / statistics.median(den)
        if target is None:
            return f"| {key} | {label} | {value:.2f} | | | for comparison |"
        verdict = "meets goal" if value >= goal else "meets target" if value >= target else "MISSES target"
        return f"| {key} | {label} | {value:.2f} | ≥ {target} | ≥ {goal} | {verdict} |"

    ratios = ["| # | ratio of medians | value | target | goal | result |", "|---|---|---|---|---|---|",
              ratio_row("P1", "proxy off / socat x2", by_name["proxy off"], by_name["socat x2"]),
              ratio_row("P2", "proxy lz4 / lz4.block compress", by_name["proxy lz4"],
                        codecs["lz4"][0]),
              ratio_row("P1", "iperf3 load: proxy off / socat x2", by_name["proxy off, iperf3"],
                        by_name["socat x2, iperf3"]),
              ratio_row("P2", "iperf3 load: proxy lz4 / lz4.block compress",
                        by_name["proxy lz4, iperf3"], codecs["lz4"][0]),
              ratio_row("—", "proxy off / haproxy x2", by_name["proxy off"], by_name["haproxy x2"]),
              ratio_row("—", "proxy zstd / zstd compress", by_name["proxy zstd"],
                        codecs["zstd"][0])]
    budget = cpu_budget({r.name: r for r in results}, codecs["lz4"][0])
    failures = [f"- {r.name} run {i + 1}: {x.error}" for r in results
                for i, x in enumerate(r.runs) if not x.ok]
    plot = [f"![{alt}]({os.path.relpath(path, args.out.parent)})\n"
            for alt, path in (("goodput per setup", image), ("CPU seconds per GB", cpu_image))
            if path is not None]
    return "\n".join([
        f"drbd-sim primary → secondary, protocol A, 64 KiB writes, {args.size} per run, "
        f"{args.runs} runs per setup interleaved round-robin, fresh relays/daemons per run. "
        "Goodput = the secondary's bytes / duration, MB = 10⁶ bytes. `socat x2` = two "
        "`socat -b 131072` hops per direction; `haproxy x2` = two single-threaded haproxy "
        "processes in TCP mode, each one hop of both directions; `proxy` = a drbd-proxy pair on "
        "loopback (`compression on` = lz4, `compression 3` = zstd level 3). All of them share "
        "the machine's 2 cores with the two drbd-sim processes. CPU s per GB = each process "
        "group's user + system CPU seconds (/proc/PID/stat, forked children included) from "
        "before the sims started to after they ended, and the two sims' own CPU over the "
        "replication (their `cpu_s`), per 10⁹ bytes replicated; for a codec, 1 / its speed. "
        "The `, iperf3` rows run the same paths with iperf3 (C) as the load instead of the two "
        "drbd-sim processes in Python: one `iperf3 -c` sending the same bytes (the sims' 64 KiB "
        "disk-like blocks from a file with `-F`, or `-n` bytes of iperf3's random buffer) in "
        "128 KiB writes to a one-off `iperf3 -s -1` at B's address; the proxies relay its streams "
        "as opaque ones through the same pipeline. Goodput = what the server reports received "
        "over its test; the load's CPU = both iperf3 processes' (reaped children's rusage). "
        "iperf3 checks no content: every chunk's CRC-32C in the proxies does, and a proxy run "
        "counts only if the bytes alice read are exactly those bob delivered, or dropped for a "
        "socket iperf3 had already closed, or that alice discarded unsent when iperf3 closed.", "",
        *rows, "", *ratios, "", *budget, *plot,
        "Failed runs: " + ("none" if not failures else ""), *failures, "",
        *(f"- {f}" for f in facts)])


def cpu_budget(by_name: dict[str, Result], lz4_speeds: list[float]) -> list[str]:
    """What caps P2: the CPU seconds one GB costs the whole machine with lz4 on, lz4's share, and
    what an ideal pair would cost: two socat hops plus the codec, with the same sims."""
    lz4_run, off, socat = by_name["proxy lz4"], by_name["proxy off"].cpu(), by_name["socat x2"].cpu()
    cpu = lz4_run.cpu()
    if not cpu or not lz4_run.goodputs() or not lz4_speeds:
        return []
    total = sum(cpu.values())
    speed = statistics.median(lz4_speeds)
    lz4_cost = 1000 / speed
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
    lines = [f"**What limits P2.** With lz4 on, one GB replicated costs the machine {total:.2f} "
             f"CPU seconds ({parts}); compressing it once costs {lz4_cost:.2f} of them (the "
             f"single-thread speed above). Two cores at that cost carry at most "
             f"{2000 / total:.0f} MB/s; the pair carried "
             f"{statistics.median(lz4_run.goodputs()):.0f} MB/s. P2 = 0.5 needs the whole machine "
             f"to spend at most {p2_budget(speed):.2f} CPU seconds per GB, sims included."]
    if {"relays"} <= socat.keys() and {"bob"} <= off.keys() and {"bob", "sims"} <= cpu.keys():
        decompress = max(0.0, cpu["bob"] - off["bob"])
        pair_floor = socat["relays"] + lz4_cost + decompress
        floor = pair_floor + cpu["sims"]
        lines.append(
            f"A pair that relayed at socat's cost ({socat['relays']:.2f} for both hops) and spent "
            f"on top only the compression ({lz4_cost:.2f}) and bob's decompression (bob's lz4 "
            f"minus bob's off cost, {decompress:.2f}) would, with these sims ({cpu['sims']:.2f}), "
            f"cost {floor:.2f} per GB: at most {2000 / floor:.0f} MB/s, P2 = "
            f"{2000 / floor / speed:.2f}. The pair's own cost above that floor is "
            f"{cpu.get('alice', 0) + cpu['bob'] - pair_floor:.2f}.")
    cheap = by_name.get("proxy lz4, iperf3")
    if cheap is not None and cheap.cpu() and cheap.goodputs() and "sims" in cpu:
        c = cheap.cpu()
        lines.append(
            f"With iperf3 as the load, the load costs {c.get('load', 0):.2f} CPU seconds per GB "
            f"instead of the sims' {cpu['sims']:.2f}, the pair itself {c.get('alice', 0):.2f} + "
            f"{c.get('bob', 0):.2f} instead of {cpu.get('alice', 0):.2f} + {cpu['bob']:.2f} "
            "(fuller reads and writes: iperf3 keeps the sockets full), and the pair carried "
            f"{statistics.median(cheap.goodputs()):.0f} MB/s.")
    return [" ".join(lines), ""]


CODEC_LABELS = {"lz4": "lz4.block compress, 1 thread", "zstd": "zstd level 3 compress, 1 thread"}


def plot_goodput(results: list[Result], codecs: dict[str, tuple[list[float], float]],
                 img_dir: Path) -> Path | None:
    """Bars: the median goodput of every setup and codec reference, min–max as error bars."""
    plt = pyplot()
    if plt is None:
        return None
    bars = [(r.name, r.goodputs(), "tab:blue" if r.name.startswith("proxy") else "tab:gray")
            for r in results]
    bars += [(CODEC_LABELS[n].replace(" compress, 1 thread", "\n1 thread"), v[0], "tab:orange")
             for n, v in codecs.items()]
    bars = [b for b in bars if b[1]]
    medians = [statistics.median(v) for _, v, _ in bars]
    low = [m - min(v) for m, (_, v, _) in zip(medians, bars)]
    high = [max(v) - m for m, (_, v, _) in zip(medians, bars)]
    fig, ax = plt.subplots(figsize=(13, 4.5))
    ax.bar([b[0].replace(", ", ",\n") for b in bars], medians, yerr=[low, high], capsize=4, color=[b[2] for b in bars])
    for x, m in enumerate(medians):
        ax.annotate(f"{m:.0f}", (x, m), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("MB/s (median, min–max)")
    ax.set_title("Goodput on loopback, 2 cores shared with the load (drbd-sim pair, or iperf3)")
    ax.tick_params(axis="x", labelsize=8)
    return save_figure(fig, img_dir, "throughput-goodput.png")


#: Colours of the parts of a replication's CPU cost, in stacking order.
CPU_PARTS = {"relays": "tab:gray", "alice": "tab:blue", "bob": "tab:cyan", "sims": "tab:olive",
             "load": "tab:green"}


def plot_cpu(results: list[Result], codecs: dict[str, tuple[list[float], float]],
             img_dir: Path) -> Path | None:
    """Stacked bars: CPU seconds per GB of every part of each setup (medians), the codecs' own
    cost beside them, and the most the whole machine may spend for P2 = 0.5."""
    plt = pyplot()
    if plt is None or not any(r.cpu() for r in results):
        return None
    fig, ax = plt.subplots(figsize=(13, 4.5))
    names = [r.name.replace(", ", ",\n") for r in results] + [CODEC_LABELS[n].split(" compress")[0] for n in codecs]
    bottoms = [0.0] * len(names)
    for part, colour in CPU_PARTS.items():
        heights = [r.cpu().get(part, 0.0) for r in results] + [0.0] * len(codecs)
        if any(heights):
            ax.bar(names, heights, bottom=bottoms, color=colour, label=part)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    codec_costs = [0.0] * len(results) + [1000 / statistics.median(v[0]) for v in codecs.values()]
    ax.bar(names, codec_costs, bottom=bottoms, color="tab:orange", label="codec, 1 thread")
    lz4 = statistics.median(codecs["lz4"][0]) if codecs.get("lz4") else None
    if lz4:
        ax.axhline(p2_budget(lz4), color="tab:red", linestyle="--", linewidth=1,
                   label="whole machine's most for P2 = 0.5 (2 cores)")
    ax.set_ylabel("CPU seconds per GB replicated (median)")
    ax.set_title("Where the 2 cores go, per GB")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    return save_figure(fig, img_dir, "throughput-cpu.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512M", help="bytes per run, k/M/G (default 512M)")
    parser.add_argument("--runs", type=int, default=3, help="runs per setup (default 3)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    parser.add_argument("--keep-logs", action="store_true", help="keep the log directory")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if shutil.which("socat") is None:
        parser.error("socat is not installed")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below runs

    facts = machine_facts()
    codecs: dict[str, tuple[list[float], float]] = {}
    results = [Result(name, workload) for name, workload, _, _, _ in SETUPS]
    logroot = Path(tempfile.mkdtemp(prefix="drbdproxy-bench-"))
    procs = Processes(logroot)
    disk = disk_file(logroot / "disk.bin", size)
    try:
        for i in range(args.runs):
            # The references are measured in every round, so they see the same drift of this
            # VM's speed as the setups do (lz4 alone has measured 780 to 1060 MB/s in one day).
            for codec, (speeds, ratio) in codec_speeds(1).items():
                codecs[codec] = (codecs.get(codec, ([], ratio))[0] + speeds, ratio)
            print(f"run {i + 1}/{args.runs} codecs: " + ", ".join(
                f"{codec} {speeds[-1]:.0f} MB/s" for codec, (speeds, _) in codecs.items()), flush=True)
            for result, (name, workload, setup, compression, load) in zip(results, SETUPS):
                procs.logdir = logroot / f"run{i + 1}-{name.replace(',', '').replace(' ', '-')}"
                procs.logdir.mkdir()
                try:
                    with setup(procs, compression) as ends:
                        run = (run_sims(procs, ends, workload, size) if load == "drbd-sim"
                               else run_iperf3(procs, ends, workload, size, disk))
                except RuntimeError as e:
                    run = Run(False, error=f"setup failed: {e}")
                result.runs.append(run)
                status = f"{run.mb_per_s:8.1f} MB/s" if run.ok else f"FAILED: {run.error}"
                print(f"run {i + 1}/{args.runs} {name:17} {workload:6} {status}", flush=True)
    except (KeyboardInterrupt, SystemExit) as e:
        procs.stop_all()
        print(f"interrupted: nothing written; logs in {logroot}", file=sys.stderr)
        if isinstance(e, SystemExit):
            raise
        return 130
    finally:
        procs.stop_all()
    image = plot_goodput(results, codecs, args.img_dir)
    section = render(results, codecs, args, facts, image, plot_cpu(results, codecs, args.img_dir))
    write_section(args.out, "throughput", "Throughput (P1, P2)", section)
    print("\n" + section)
    failed = any(not x.ok for r in results for x in r.runs)
    if failed or args.keep_logs:
        print(f"logs kept in {logroot}")
    else:
        shutil.rmtree(logroot, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
