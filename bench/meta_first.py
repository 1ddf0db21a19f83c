"""P6: DRBD's ping round trip through the proxy pair with a full buffer and a saturated link.

Two network namespaces joined by a veth pair shaped with tbf stand in for the WAN. Each run
replicates disk-like data with protocol A from a primary that writes far faster than the link,
so alice's buffer stays full, while both drbd-sim nodes ping every 0.2 s. Compared, in the same
invocation: the idle round trip (a slow writer), the loaded round trip with meta-first (DRBD's
meta socket on the meta link), and the same load with ``--meta-on-bulk`` (meta behind data).

Usage (root): .venv/bin/python bench/meta_first.py [--runs 3] [--rate 100mbit] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from daemon import Daemon, wait_until  # noqa: E402
from helpers import SimProcess  # noqa: E402
from netns import A_IP, B_IP, Wan, wan_available  # noqa: E402

sys.path.insert(0, str(HERE))
from results import pyplot, save_figure, write_section  # noqa: E402

PORTS = dict(drbd=7789, inside=7788, outside=7790)
#: Seconds between the sims' P_PINGs.
PING_INT = 0.2


def _site(wan_exec, workdir, name, own_ip, peer_ip, extra):
    d = Daemon(workdir, name, *extra, prefix=wan_exec)
    conn = "r0-bob-alice" if name == "alice" else "r0-alice-bob"
    p = PORTS
    d.ctl("-c", f"add connection {conn} 127.0.0.1:{p['inside']} {peer_ip}:{p['outside']}"
                f" {own_ip}:{p['outside']} 127.0.0.1:{p['drbd']}",
          "-c", f"set compression {conn} on", "-c", f"set memlimit {conn} 64M", check=True)
    return d


def one_run(rate: str, sim_extra: list[str], daemon_extra: list[str]) -> dict:
    wan = Wan(rate=rate, latency="100ms")
    with tempfile.TemporaryDirectory() as tmp:
        sites = []
        try:
            sites = [_site(wan.exec_a, Path(tmp), "alice", A_IP, B_IP, daemon_extra),
                     _site(wan.exec_b, Path(tmp), "bob", B_IP, A_IP, daemon_extra)]
            for d in sites:
                wait_until(lambda d=d: "ProxyConnected" in d.ctl("list", "connections").stdout,
                           "link up")
            addr, inside = f"127.0.0.1:{PORTS['drbd']}", f"127.0.0.1:{PORTS['inside']}"
            common = ["--connect-timeout", "60", "--ping-timeout", "30", "--ping-int", str(PING_INT),
                      "--protocol", "A", "--listen", addr, "--peer", inside, *sim_extra]
            secondary = SimProcess(["--role", "secondary", *common], wan.exec_b)
            primary = SimProcess(["--role", "primary", *common], wan.exec_a)
            (prc, p), (src, s) = primary.report(600), secondary.report(600)
            if prc or src:
                raise RuntimeError(f"run failed: {p['error']} / {s['error']}")
            return p
        finally:
            for d in sites:
                d.stop()
            wan.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", default="100mbit", help="tbf rate of the WAN link")
    parser.add_argument("--size", default="96M", help="bytes written in the loaded runs")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--img-dir", default=str(HERE.parent / "docs" / "img"))
    args = parser.parse_args()
    if wan_available():
        print(f"skipped: {wan_available()}")
        return 0
    setups = {
        "idle (writer at 1 MiB/s)": (["--size", "8M", "--rate", "1M"], []),
        "loaded, meta-first": (["--size", args.size], []),
        "loaded, --meta-on-bulk": (["--size", args.size], ["--meta-on-bulk"]),
    }
    results: dict[str, list[dict]] = {name: [] for name in setups}
    for run in range(args.runs):
        for name, (sim_extra, daemon_extra) in setups.items():
            report = one_run(args.rate, sim_extra, daemon_extra)
            results[name].append(report)
            print(f"run {run + 1} {name}: ping p50 {report['ping_rtt_ms']['p50']} ms,"
                  f" p99 {report['ping_rtt_ms']['p99']} ms, {report['mb_per_s']} MB/s", flush=True)
    rows = ["| setup | ping RTT p50 ms (median of runs) | p99 ms | max ms | writer MB/s |",
            "|---|---|---|---|---|"]
    medians = {}
    for name, reports in results.items():
        p50 = statistics.median(r["ping_rtt_ms"]["p50"] for r in reports)
        p99 = statistics.median(r["ping_rtt_ms"]["p99"] for r in reports)
        mx = max(r["ping_rtt_ms"]["max"] for r in reports)
        mbs = statistics.median(r["mb_per_s"] for r in reports)
        medians[name] = p50
        rows.append(f"| {name} | {p50:.2f} | {p99:.2f} | {mx:.2f} | {mbs:.1f} |")
    idle = medians["idle (writer at 1 MiB/s)"]
    body = "\n".join([
        f"WAN: two namespaces, veth, tbf {args.rate} (latency 100ms queue), lz4, memlimit 64M,"
        f" protocol A, pings every 0.2 s; {args.runs} runs per setup, interleaved.",
        "", *rows, "",
        f"P6 (loaded meta-first p50 minus idle p50): {medians['loaded, meta-first'] - idle:+.2f} ms"
        " (target <= +20 ms).",
        f"Without meta-first: {medians['loaded, --meta-on-bulk'] - idle:+.2f} ms.",
        "", f"Command: `{' '.join(sys.argv)}`",
    ])
    image = plot_rtt(results, Path(args.img_dir), args.rate)
    if image is not None:
        body += f"\n\n![ping round trip over time]({os.path.relpath(image, Path(args.out).parent)})"
    print(body)
    write_section(Path(args.out), "meta-first", "P6: DRBD ping round trip under load", body)
    return 0


def plot_rtt(results: dict[str, list[dict]], img_dir: Path, rate: str) -> Path | None:
    """Every ping's round trip over the run, per setup (its median run by p50), on a log scale."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, reports in results.items():
        ranked = sorted(reports, key=lambda r: r["ping_rtt_ms"]["p50"])
        samples = ranked[len(ranked) // 2].get("ping_rtt_samples_ms", [])
        ax.plot([i * PING_INT for i in range(len(samples))], samples, marker=".", linewidth=0.8,
                label=name)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first ping")
    ax.set_ylabel("P_PING round trip, ms (log)")
    ax.set_title(f"DRBD ping round trip, buffer full, tbf {rate} WAN")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, img_dir, "meta-first-ping-rtt.png")


if __name__ == "__main__":
    sys.exit(main())
