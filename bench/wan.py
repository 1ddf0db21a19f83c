"""P3, P4, P5: the proxy pair over a 100 Mbit/s WAN (network namespaces, veth, tbf).

Every run builds two namespaces joined by a tbf-shaped veth (``tests/netns.py``), measures the
link with iperf3 (falling back to a plain drbd-sim run without proxies), then runs three setups,
each with fresh daemons (alice in namespace a buffers and compresses, bob in b), lz4 on, disk-like
data from drbd-sim, protocol A:

- **P3** goodput of a proxied replication (the secondary's bytes / duration) vs
  link rate x compression ratio, the ratio being alice's raw / wire byte counters of the run.
- **P4** a write burst into a memlimit large enough to hold it: the rate the writer gets vs the
  link rate. Under protocol A a DRBD write completes once it is in the local send buffer, so the
  writer's rate is how fast the primary hands its writes to the socket: from drbd-sim's
  ``--progress`` lines, time-stamped as they arrive. Alice's own view (her ``data.to_peer.bytes``
  counter, polled on the control socket) is shown beside it; it also gives the buffer plot.
- **P5** alice's RSS growth under sustained overload (writers far faster than the link, every
  buffer at memlimit) vs the sum of her connections' memlimits, sampled from /proc.

Runs are interleaved (run 1 of every setup, then run 2, ...), so drift of this VM spreads over all.
Every process and namespace is removed again, also on failure or Ctrl-C.

Usage (root): .venv/bin/python bench/wan.py [--runs 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from daemon import Daemon, wait_until  # noqa: E402
from helpers import SimProcess  # noqa: E402
from netns import A_IP, B_IP, Wan, wan_available  # noqa: E402

sys.path.insert(0, str(HERE))
from results import proc_stat, write_section  # noqa: E402

from drbdproxy.units import parse_size  # noqa: E402

MiB = 1 << 20
IPERF_PORT = 5201
#: First port of each setup; connection i of a setup uses base + 10 i (+0 DRBD, +1 inside, +2 outside).
PORT_BASE = dict(link=7690, p3=7700, p4=7720, p5=7740)


# -- small pieces ---------------------------------------------------------------------------------
class TimedSim(SimProcess):
    """A drbd-sim whose stderr lines are time-stamped (time.monotonic()) as they arrive."""

    def __init__(self, args: list[str], prefix: tuple[str, ...] = ()) -> None:
        self.stamped: list[tuple[float, str]] = []
        super().__init__(args, prefix)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stamped.append((time.monotonic(), line))
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)


class Control:
    """A session on a daemon's control socket, kept open for polling (no process per poll)."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(30)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("r", encoding="utf-8", newline="\n")
        self._lock = threading.Lock()

    def command(self, line: str) -> list[str]:
        with self._lock:
            self._sock.sendall(line.encode() + b"\n")
            data = []
            for raw in self._file:
                text = raw.rstrip("\r\n")
                if text.startswith("%%"):
                    data.append(text[1:])
                elif text.startswith("%ok"):
                    return data
                elif text.startswith("%error"):
                    raise RuntimeError(f"{line!r}: {text}")
                elif not text.startswith("%"):
                    data.append(text)
            raise RuntimeError(f"{line!r}: control session closed")

    def stats(self) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in self.command("print statistics") if " " in line)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


class Sampler:
    """Calls ``probe()`` every ``interval`` seconds in a thread; keeps (time, value) pairs."""

    def __init__(self, interval: float, probe: Callable[[], Any]) -> None:
        self.samples: list[tuple[float, Any]] = []
        self.errors: list[str] = []
        self._interval, self._probe = interval, probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            before = time.monotonic()
            try:
                value = self._probe()
            except Exception as e:  # a dying daemon at the end of a run: keep what we have
                self.errors.append(str(e))
            else:
                self.samples.append(((before + time.monotonic()) / 2, value))
            due += self._interval
            self._stop.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> list[tuple[float, Any]]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.samples


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def stop_daemon(d: Daemon) -> None:
    stop_process(d.proc)


def _alive(pid: int) -> bool:
    try:
        return proc_stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def close_wan(wan: Wan) -> None:
    """Kill whatever still runs inside the run's own two namespaces, then delete them."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        for ns in (wan.a, wan.b):
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids += [int(p) for p in out.stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.05)
        if not pids:
            break
    wan.close()


def conn_name(i: int, site: str) -> str:
    return f"r{i}-bob-alice" if site == "alice" else f"r{i}-alice-bob"


def ports(setup: str, i: int) -> tuple[int, int, int]:
    base = PORT_BASE[setup] + 10 * i
    return base, base + 1, base + 2  # DRBD, inside, outside


def start_site(stack: contextlib.ExitStack, wan: Wan, workdir: Path, site: str, setup: str,
               conns: int, memlimit: str) -> tuple[Daemon, Control]:
    own_ip, peer_ip, prefix = ((A_IP, B_IP, wan.exec_a) if site == "alice"
                               else (B_IP, A_IP, wan.exec_b))
    d = Daemon(workdir, f"{site}-{setup}", prefix=prefix)
    stack.callback(stop_daemon, d)
    args = []
    for i in range(conns):
        drbd, inside, outside = ports(setup, i)
        name = conn_name(i, site)
        args += ["-c", f"add connection {name} 127.0.0.1:{inside} {peer_ip}:{outside}"
                       f" {own_ip}:{outside} 127.0.0.1:{drbd}",
                 "-c", f"set compression {name} on", "-c", f"set memlimit {name} {memlimit}"]
    d.ctl(*args, check=True)
    ctl = Control(d.socket)
    stack.callback(ctl.close)
    return d, ctl


def wait_linked(ctls: list[tuple[Control, str]], conns: int, timeout: float = 60) -> None:
    def linked() -> bool:
        for ctl, site in ctls:
            s = ctl.stats()
            for i in range(conns):
                if s.get(f"{conn_name(i, site)}.state") not in ("ProxyConnected", "Connected"):
                    return False
        return True

    wait_until(linked, "the proxies to link over the WAN", timeout=timeout)


def sim_pair(stack: contextlib.ExitStack, wan: Wan, setup: str, i: int, sim_extra: list[str],
             primary_extra: list[str] = ()) -> tuple[TimedSim, TimedSim]:
    drbd, inside, _ = ports(setup, i)
    common = ["--connect-timeout", "60", "--ping-timeout", "30", "--protocol", "A",
              "--workload", "disk", "--listen", f"127.0.0.1:{drbd}", "--peer",
              f"127.0.0.1:{inside}", *sim_extra]
    secondary = TimedSim(["--role", "secondary", *common], wan.exec_b)
    stack.callback(secondary.kill)
    primary = TimedSim(["--role", "primary", *common, *primary_extra], wan.exec_a)
    stack.callback(primary.kill)
    return primary, secondary


def check_reports(*sims: TimedSim, timeout: float) -> list[dict]:
    reports = []
    for sim in sims:
        rc, rep = sim.report(timeout)
        if rc or not rep.get("verified"):
            raise RuntimeError(f"drbd-sim {sim.args[1]} failed (rc {rc}): {rep.get('error')}")
        reports.append(rep)
    return reports


# -- the link -------------------------------------------------------------------------------------
def link_rate(wan: Wan, seconds: int) -> tuple[float, str]:
    """The link's TCP goodput in MB/s (10^6 bytes): iperf3, or a plain drbd-sim run without it."""
    try:
        return iperf3_rate(wan, seconds), "iperf3"
    except Exception as e:  # noqa: BLE001 - any trouble with iperf3: measure it with drbd-sim
        print(f"  iperf3 failed ({e}); measuring the link with drbd-sim instead", flush=True)
    return sim_link_rate(wan), "drbd-sim, no proxy"


def iperf3_rate(wan: Wan, seconds: int) -> float:
    with contextlib.ExitStack() as stack:
        server = subprocess.Popen(
            [*wan.exec_b, "iperf3", "-s", "-1", "--forceflush", "-B", B_IP, "-p", str(IPERF_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stack.callback(stop_process, server)
        assert server.stdout is not None
        ready = threading.Event()

        def read() -> None:
            for line in server.stdout:  # type: ignore[union-attr]
                if "listening" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(10) or server.poll() is not None:
            raise RuntimeError("iperf3 server did not start")
        out = subprocess.run([*wan.exec_a, "iperf3", "-c", B_IP, "-p", str(IPERF_PORT),
                              "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 30)
        if out.returncode:
            raise RuntimeError(f"iperf3 client rc {out.returncode}: {out.stdout[-300:]}")
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8e6


def sim_link_rate(wan: Wan) -> float:
    drbd = PORT_BASE["link"]
    common = ["--connect-timeout", "60", "--ping-timeout", "30", "--protocol", "A",
              "--workload", "random", "--size", "64M"]
    with contextlib.ExitStack() as stack:
        secondary = TimedSim(["--role", "secondary", "--listen", f"{B_IP}:{drbd}",
                              "--peer", f"{A_IP}:{drbd}", *common], wan.exec_b)
        stack.callback(secondary.kill)
        primary = TimedSim(["--role", "primary", "--listen", f"{A_IP}:{drbd}",
                            "--peer", f"{B_IP}:{drbd}", *common], wan.exec_a)
        stack.callback(primary.kill)
        _, s = check_reports(primary, secondary, timeout=120)
        return s["mb_per_s"]


# -- the three setups -----------------------------------------------------------------------------
def run_p3(wan: Wan, tmp: Path, size: str) -> dict:
    with contextlib.ExitStack() as stack:
        alice, actl = start_site(stack, wan, tmp, "alice", "p3", 1, "64M")
        bob, bctl = start_site(stack, wan, tmp, "bob", "p3", 1, "64M")
        wait_linked([(actl, "alice"), (bctl, "bob")], 1)
        primary, secondary = sim_pair(stack, wan, "p3", 0, ["--size", size])
        _, s = check_reports(primary, secondary, timeout=300)
        st = actl.stats()
        raw = int(st["r0-bob-alice.data.to_peer.bytes"])
        wire = int(st["r0-bob-alice.data.to_peer.wire_bytes"])
        return dict(goodput=s["mb_per_s"], duration=s["duration_s"], raw=raw, wire=wire,
                    ratio=raw / wire)


def progress_curve(sim: TimedSim) -> tuple[float, list[tuple[float, int]]]:
    """(time the sim connected, [(time, bytes written)]) from its --progress lines."""
    start, points = None, []
    for t, line in sim.stamped:
        if start is None and "connected:" in line:
            start = t
        m = re.search(r"progress: (\d+) bytes", line)
        if m:
            points.append((t, int(m.group(1))))
    if start is None:
        raise RuntimeError("the primary never logged 'connected'")
    return start, points


def time_to_reach(start: float, points: list[tuple[float, int]], target: int) -> float:
    """Seconds from ``start`` until ``target`` bytes were written.

    The first sample at the target is an upper bound (writing stopped somewhere before it); the
    end is extrapolated from the previous sample at the rate up to it, never past that bound.
    """
    prev_t, prev_b = start, 0
    for t, b in points:
        if b >= target:
            if prev_b > 0 and prev_t > start:
                guess = prev_t + (target - prev_b) / (prev_b / (prev_t - start))
                return min(t, guess) - start
            return t - start
        prev_t, prev_b = t, b
    raise RuntimeError(f"{target} bytes were never reached")


def run_p4(wan: Wan, tmp: Path, size: str, memlimit: str, poll: float) -> dict:
    target = parse_size(size)
    with contextlib.ExitStack() as stack:
        alice, actl = start_site(stack, wan, tmp, "alice", "p4", 1, memlimit)
        bob, bctl = start_site(stack, wan, tmp, "bob", "p4", 1, memlimit)
        wait_linked([(actl, "alice"), (bctl, "bob")], 1)
        name = conn_name(0, "alice")

        def probe() -> tuple[int, int, int]:
            s = actl.stats()
            return (int(s[f"{name}.buffered"]), int(s[f"{name}.data.to_peer.bytes"]),
                    int(s[f"{name}.data.to_peer.wire_bytes"]))

        sampler = Sampler(poll, probe)
        stack.callback(sampler.stop)
        primary, secondary = sim_pair(stack, wan, "p4", 0, ["--size", size],
                                      ["--progress", "0.05"])
        p, s = check_reports(primary, secondary, timeout=300)
        end = time.monotonic()
        st = actl.stats()
        samples = sampler.stop()
        start, curve = progress_curve(primary)
        write_s = time_to_reach(start, curve, target)
        # Alice's view: from the same start until her counter reached the burst size, interpolated
        # between polls (it counts DRBD headers too, so it gets there a hair before the last
        # payload byte: < 0.1 % with 64 KiB writes).
        accept_s = None
        prev = None
        for t, (_, b, _) in samples:
            if b >= target and prev is not None and prev[1] < target:
                pt, pb = prev
                accept_s = pt + (t - pt) * (target - pb) / (b - pb) - start
                break
            prev = (t, b)
        return dict(
            writer=target / write_s / 1e6, write_s=write_s,
            accepted=(target / accept_s / 1e6) if accept_s else None,
            total_s=end - start, peak=int(st[f"{name}.buffered_peak"]),
            memlimit=int(st[f"{name}.memlimit"]), sim_mb_per_s=p["mb_per_s"],
            goodput=s["mb_per_s"],
            trace=[(t - start, buf, acc) for t, (buf, acc, _) in samples],
            written=[(t - start, b) for t, b in curve],
        )


def run_p5(wan: Wan, tmp: Path, conns: int, memlimit: str, seconds: float) -> dict:
    with contextlib.ExitStack() as stack:
        alice, actl = start_site(stack, wan, tmp, "alice", "p5", conns, memlimit)
        bob, bctl = start_site(stack, wan, tmp, "bob", "p5", conns, memlimit)
        wait_linked([(actl, "alice"), (bctl, "bob")], conns)
        apid, bpid = alice.proc.pid, bob.proc.pid
        if "twistd" not in Path(f"/proc/{apid}/cmdline").read_text():
            raise RuntimeError(f"pid {apid} is not alice's twistd")
        st = actl.stats()
        limits = sum(int(st[f"{conn_name(i, 'alice')}.memlimit"]) for i in range(conns))
        rss0 = min(rss_bytes(apid) for _ in range(3))
        bob0 = rss_bytes(bpid)

        def probe() -> tuple[int, int, int]:
            s = actl.stats()
            buffered = sum(int(s[f"{conn_name(i, 'alice')}.buffered"]) for i in range(conns))
            return rss_bytes(apid), rss_bytes(bpid), buffered

        sampler = Sampler(0.5, probe)
        stack.callback(sampler.stop)
        start = time.monotonic()
        sims = []
        for i in range(conns):
            sims += sim_pair(stack, wan, "p5", i, ["--duration", str(seconds + 60)])
        for sim in sims[::2]:  # primaries
            sim.wait_for_line("connected:", timeout=60)
        loaded = time.monotonic()
        time.sleep(seconds)  # the overload runs for this long; the samples are the measurement
        for sim in sims:
            if sim.proc.poll() is not None:
                raise RuntimeError(f"drbd-sim ended early: {''.join(sim.stderr)[-500:]}")
        samples = sampler.stop()
        st = actl.stats()
        peak_sum = sum(int(st.get(f"{conn_name(i, 'alice')}.buffered_peak", 0)) for i in range(conns))
        rss = [a for _, (a, _, _) in samples]
        return dict(
            limits=limits, rss0=rss0, rss_max=max(rss), growth=max(rss) - rss0,
            bob_growth=max(b for _, (_, b, _) in samples) - bob0,
            peak_sum=peak_sum, seconds=seconds,
            full_s=sum(0.5 for t, (_, _, buf) in samples if t >= loaded and buf >= 0.8 * limits),
            loaded=loaded - start,
            trace=[(t - start, a - rss0, buf) for t, (a, _, buf) in samples],
        )


# -- report ---------------------------------------------------------------------------------------
def med_range(values: list[float], fmt: str = "{:.1f}") -> tuple[str, str]:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-", "-"
    return fmt.format(statistics.median(vals)), f"{fmt.format(min(vals))}–{fmt.format(max(vals))}"


def plots(out: Path, p4: list[dict], p5: list[dict], p4_memlimit: int) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(No plots: matplotlib is not installed.)"]
    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines = []
    if p4:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        for k, r in enumerate(p4):
            c = f"C{k}"
            ax.plot([t for t, _, _ in r["trace"]], [b / MiB for _, b, _ in r["trace"]], c,
                    label=f"run {k + 1}: alice buffered (compressed)")
            ax.plot([t for t, _ in r["written"]], [b / MiB for _, b in r["written"]], c,
                    ls="--", lw=1, label=f"run {k + 1}: written by the primary (raw)")
            ax.axvline(r["write_s"], color=c, ls=":", lw=1)
        ax.axhline(p4_memlimit / MiB, color="red", lw=1.2, label="memlimit")
        ax.set_xlabel("seconds since the primary connected")
        ax.set_ylabel("MiB")
        ax.set_title("P4: a write burst goes into alice's buffer, which drains over the link")
        ax.legend(fontsize=7, loc="center right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "wan-p4-buffer.png", dpi=100)
        plt.close(fig)
        lines.append("![P4 buffer fill and drain](img/wan-p4-buffer.png)")
    if p5:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        limits = p5[0]["limits"]
        for k, r in enumerate(p5):
            c = f"C{k}"
            ax.plot([t for t, _, _ in r["trace"]], [g / MiB for _, g, _ in r["trace"]], c,
                    label=f"run {k + 1}: alice RSS growth")
            ax.plot([t for t, _, _ in r["trace"]], [b / MiB for _, _, b in r["trace"]], c,
                    ls="--", lw=1, label=f"run {k + 1}: alice buffered (sum)")
            ax.axvline(r["loaded"], color=c, ls=":", lw=1)
        ax.axhline(limits / MiB, color="gray", lw=1, label="sum of memlimits")
        ax.axhline((1.15 * limits + 32 * MiB) / MiB, color="red", lw=1.2,
                   label="target: 1.15 x memlimits + 32 MiB")
        ax.set_xlabel("seconds since the writers were started (dotted: all connected)")
        ax.set_ylabel("MiB")
        ax.set_title("P5: alice's RSS under overload")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "wan-p5-rss.png", dpi=100)
        plt.close(fig)
        lines.append("![P5 RSS over time](img/wan-p5-rss.png)")
    return lines


def report(args: argparse.Namespace, links: list[tuple[float, str]], p3: list[dict],
           p4: list[dict], p5: list[dict], failures: list[str], started: str, load: str) -> str:
    link = [x for x, _ in links]
    methods = sorted({m for _, m in links})
    rows = ["| quantity | median | min–max | per run |", "|---|---|---|---|"]

    def row(label: str, values: list, fmt: str = "{:.1f}") -> None:
        m, r = med_range(values, fmt)
        rows.append(f"| {label} | {m} | {r} | "
                    + ", ".join("-" if v is None else fmt.format(v) for v in values) + " |")

    row(f"link rate MB/s ({', '.join(methods)}, {args.link_seconds} s)", link, "{:.2f}")
    verdicts = []
    if p3:
        row(f"P3 compression ratio (alice raw / wire), {args.p3_size} disk", [r["ratio"] for r in p3],
            "{:.2f}")
        row("P3 expected = link x ratio, MB/s", [r["link"] * r["ratio"] for r in p3], "{:.2f}")
        row("P3 goodput (secondary) MB/s", [r["goodput"] for r in p3], "{:.2f}")
        p3r = [r["goodput"] / (r["link"] * r["ratio"]) for r in p3]
        row("**P3** goodput / expected", p3r, "{:.2f}")
        v = statistics.median(p3r)
        verdicts.append(("P3", "goodput / (link rate x compression ratio)", f"{v:.2f}", "≥ 0.9",
                         v >= 0.9))
    if p4:
        row(f"P4 writer rate MB/s ({args.p4_size} burst, primary's progress)",
            [r["writer"] for r in p4])
        row("P4 write time s", [r["write_s"] for r in p4], "{:.2f}")
        row("P4 alice accepting MB/s (her to_peer counter)", [r["accepted"] for r in p4])
        row("P4 alice buffered peak MiB (compressed)", [r["peak"] / MiB for r in p4])
        row("P4 burst to drained s", [r["total_s"] for r in p4])
        p4r = [r["writer"] / r["link"] for r in p4]
        row("**P4** writer rate / link rate", p4r)
        v = statistics.median(p4r)
        verdicts.append(("P4", "writer rate / link rate", f"{v:.1f}", "≥ 20", v >= 20))
    if p5:
        limits = p5[0]["limits"]
        row("P5 alice RSS before MiB", [r["rss0"] / MiB for r in p5])
        row("P5 alice RSS max MiB", [r["rss_max"] / MiB for r in p5])
        row("P5 alice RSS growth MiB", [r["growth"] / MiB for r in p5])
        row("P5 bob RSS growth MiB (not part of the target)", [r["bob_growth"] / MiB for r in p5])
        row("P5 seconds with alice's buffers ≥ 80 % of memlimits", [r["full_s"] for r in p5], "{:.0f}")
        allow = 1.15 * limits + 32 * MiB
        p5r = [(r["growth"] - 32 * MiB) / limits for r in p5]
        row("**P5** (growth - 32 MiB) / sum of memlimits", p5r, "{:.2f}")
        growth = statistics.median(r["growth"] for r in p5)
        worst = max(r["growth"] for r in p5)
        verdicts.append(("P5", f"alice's RSS growth vs {limits // MiB} MiB of memlimits",
                         f"{growth / MiB:.0f} MiB = {(growth - 32 * MiB) / limits:.2f}x + 32 MiB"
                         f" (worst run {worst / MiB:.0f} MiB)",
                         f"≤ 1.15x + 32 MiB = {allow / MiB:.0f} MiB", growth <= allow))
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=HERE.parent)
    body = [
        f"WAN: namespaces a and b, veth, tbf {args.rate} (burst 32kbit, latency 100ms queue), no"
        " added delay (netem is not available here). Proxies: alice in a (buffers, compresses),"
        " bob in b, lz4 on, drbd-sim protocol A with 64 KiB writes of disk-like data. Every run:"
        f" link rate first ({', '.join(methods)}), then P3, P4, P5 with fresh daemons each;"
        f" {args.runs} run(s). MB = 10⁶ bytes, MiB = 2²⁰.",
        "",
        f"- **P3**: {args.p3_size}, memlimit 64M. Goodput = the secondary's bytes / its duration"
        " (first block received to disconnect). Ratio = alice's `data.to_peer.bytes` /"
        " `data.to_peer.wire_bytes` of the same run (wire = compressed payload, frame headers not"
        " counted).",
        f"- **P4**: a {args.p4_size} burst, memlimit {args.p4_memlimit}. Under protocol A a DRBD"
        " write completes when it is in the local send buffer, i.e. once alice has accepted it"
        " (modulo the socket buffers between them). Writer rate = burst / time from the primary's"
        " `connected` line to the moment its `--progress 0.05` lines reached the burst size"
        " (time-stamped on arrival; the end is extrapolated from the last sample below the size at"
        " the rate so far, bounded by the first sample at it). Cross-check: alice's"
        f" `data.to_peer.bytes` polled every {args.poll} s on her control socket,"
        " from the same start to the burst size, interpolated between polls. alice's buffer holds"
        " compressed chunks (a chunk is counted raw until its compression is done).",
        f"- **P5**: {args.p5_conns} connection(s) x memlimit {args.p5_memlimit}, a writer per"
        f" connection with no size limit, for {args.p5_seconds:g} s"
        f"{'' if args.p5_seconds >= 60 else ' (shortened from the 60 s of SPEC P5 to fit the time budget)'}."
        " alice's VmRSS from /proc every 0.5 s; growth = max RSS - RSS before the writers"
        " connected (linked, idle daemon). Target: growth ≤ 1.15 x sum of memlimits + 32 MiB.",
        "",
        *rows,
        "",
        "| # | measure | value (median of runs) | target | result |",
        "|---|---|---|---|---|",
        *(f"| {n} | {what} | {v} | {t} | {'meets target' if ok else 'MISSES target'} |"
          for n, what, v, t, ok in verdicts),
        "",
        f"Failed runs: {'; '.join(failures) if failures else 'none'}",
        "",
        *plots(Path(args.out), p4, p5, parse_size(args.p4_memlimit)),
        "",
        f"- date: {started}",
        f"- command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        f"- nproc: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))});"
        f" load average at start: {load}",
        f"- kernel: {platform.release()}; python: {platform.python_version()};"
        f" MALLOC_ARENA_MAX: {os.environ.get('MALLOC_ARENA_MAX', 'unset')}",
        f"- tree: {git.stdout.strip() or 'unknown'}",
    ]
    return "\n".join(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", default="100mbit", help="tbf rate of the WAN link")
    parser.add_argument("--link-seconds", type=int, default=5, help="iperf3 -t")
    parser.add_argument("--p3-size", default="192M")
    parser.add_argument("--p4-size", default="256M")
    parser.add_argument("--p4-memlimit", default="512M")
    parser.add_argument("--poll", type=float, default=0.1, help="P4: seconds between polls")
    parser.add_argument("--p5-seconds", type=float, default=60)
    parser.add_argument("--p5-conns", type=int, default=2)
    parser.add_argument("--p5-memlimit", default="128M", help="per connection")
    parser.add_argument("--only", default="p3,p4,p5", help="comma-separated subset of p3,p4,p5")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if wan_available():
        print(f"skipped: {wan_available()}")
        return 0

    def terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C, so everything is cleaned up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    only = set(args.only.split(","))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t_begin = time.monotonic()
    links: list[tuple[float, str]] = []
    results: dict[str, list[dict]] = dict(p3=[], p4=[], p5=[])
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            wan = Wan(rate=args.rate, latency="100ms")
            try:
                rate, method = link_rate(wan, args.link_seconds)
                print(f"run {run + 1}: link {rate:.2f} MB/s ({method})", flush=True)
                setups = dict(
                    p3=lambda: run_p3(wan, Path(tmp), args.p3_size),
                    p4=lambda: run_p4(wan, Path(tmp), args.p4_size, args.p4_memlimit, args.poll),
                    p5=lambda: run_p5(wan, Path(tmp), args.p5_conns, args.p5_memlimit,
                                      args.p5_seconds),
                )
                got = {}
                for name, fn in setups.items():
                    if name not in only:
                        continue
                    try:
                        got[name] = fn()
                    except (RuntimeError, AssertionError, subprocess.SubprocessError) as e:
                        failures.append(f"run {run + 1} {name.upper()}: {e}")
                        print(f"run {run + 1} {name}: FAILED {e}", flush=True)
                        continue
                    r = got[name]
                    if name == "p3":
                        print(f"  P3 goodput {r['goodput']:.1f} MB/s, ratio {r['ratio']:.2f},"
                              f" {r['goodput'] / (rate * r['ratio']):.2f} of expected", flush=True)
                    elif name == "p4":
                        print(f"  P4 writer {r['writer']:.1f} MB/s in {r['write_s']:.2f} s"
                              f" (alice accepting {r['accepted'] or 0:.1f} MB/s),"
                              f" {r['writer'] / rate:.1f}x link; peak {r['peak'] / MiB:.0f} MiB,"
                              f" drained after {r['total_s']:.1f} s", flush=True)
                    else:
                        print(f"  P5 RSS {r['rss0'] / MiB:.0f} -> {r['rss_max'] / MiB:.0f} MiB,"
                              f" growth {r['growth'] / MiB:.0f} MiB vs {r['limits'] / MiB:.0f} MiB"
                              f" memlimits", flush=True)
                links.append((rate, method))
                for name, r in got.items():
                    r["link"] = rate  # each setup is compared with its own run's link rate
                    results[name].append(r)
            finally:
                close_wan(wan)
    print(f"total {time.monotonic() - t_begin:.0f} s", flush=True)
    if not links:
        print("no run completed")
        return 1
    body = report(args, links, *(results[n] for n in ("p3", "p4", "p5")), failures,
                  started, load)
    print(body)
    write_section(Path(args.out), "wan", "WAN: P3 goodput, P4 burst, P5 memory (netns + tbf)",
                  body)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process and namespace of this run was removed", file=sys.stderr)
        sys.exit(130)
