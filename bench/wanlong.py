"""P4 and P6 at 150 ms RTT over the WAN emulator, and a long run that counts ping-timeouts.

Over bench/wanem.py at 100 Mbit/s and 150 ms RTT, with fresh proxies (alice in namespace A,
bob in B, lz4, memlimit 512M for P4, 64M otherwise) and drbd-sim, protocol A, disk-like data:

- **P4**: a 256 MiB burst; the rate the writer gets (from the primary's ``--progress`` lines) vs
  the link's TCP goodput ceiling (100 Mbit/s less the IP and TCP headers: 12.06 MB/s).
- **P6**: DRBD's P_PING round trip (drbd-sim pings every 0.2 s): directly over the idle WAN,
  through the idle proxy pair (a writer at 1 MiB/s), and through the proxy pair with alice's
  buffer full and the link saturated.
- ``--soak S``: S seconds at 150 ms and 1 % loss through a proxy pair with default heartbeat
  and ping-timeout settings and a writer that keeps the link full; counts the daemons' log lines
  that say a link timed out (``peer proxy timed out (ping-timeout)``, ``stopped reading the
  meta link (ping-timeout)``) and every state change away from ProxyConnected.

Usage (root): .venv/bin/python bench/wanlong.py [--runs 3] [--only p4,p6] [--soak 600]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import wansites as ws  # noqa: E402
from results import write_section  # noqa: E402
from wan import check_reports, progress_curve, time_to_reach, wait_linked  # noqa: E402
from wanem import available, wan  # noqa: E402

from drbdproxy.units import parse_size  # noqa: E402

MiB = 1 << 20
NS = ("wlA", "wlB")
TIMEOUT_LINES = ("peer proxy timed out (ping-timeout)",
                 "stopped reading the meta link (ping-timeout)")


def timeout_lines(log: list[str]) -> list[str]:
    """The lines of a daemon's log that say a link was dropped for its ping-timeout."""
    return [x.strip() for x in log if any(t in x for t in TIMEOUT_LINES)]


def link_ceiling(rate_bit: float, mtu: int = 1500) -> float:
    """TCP goodput ceiling of the emulated link in MB/s: full segments of MTU - 52 bytes (IP and
    TCP headers with timestamps) per MTU bytes on the wire."""
    return rate_bit / 8 * (mtu - 52) / mtu / 1e6


def run_p4(rtt: str, size: str, memlimit: str) -> dict:
    target = parse_size(size)
    with tempfile.TemporaryDirectory() as tmp, wan("100mbit", rtt, ns=NS) as w, \
            contextlib.ExitStack() as stack:
        _, actl = ws.start_site(stack, w, Path(tmp), "alice", [{"memlimit": memlimit}])
        _, bctl = ws.start_site(stack, w, Path(tmp), "bob", [{"memlimit": memlimit}])
        wait_linked([(actl, "alice"), (bctl, "bob")], 1)
        primary, secondary = ws.sims(stack, w, 0, ["--size", size], ["--progress", "0.05"])
        p, s = check_reports(primary, secondary, timeout=600)
        st = actl.stats()
        name = ws.conn_name(0, "alice")
        start, curve = progress_curve(primary)
        write_s = time_to_reach(start, curve, target)
        link = link_ceiling(w.params.rate, w.params.mtu)
        return dict(writer=target / write_s / 1e6, write_s=write_s, link=link,
                    peak=int(st[f"{name}.buffered_peak"]), goodput=s["mb_per_s"],
                    total_s=s["duration_s"],
                    ratio=int(st[f"{name}.data.to_peer.bytes"])
                    / max(1, int(st[f"{name}.data.to_peer.wire_bytes"])))


def run_p6(rtt: str, setup: str, size: str) -> dict:
    extra = (["--size", "8M", "--rate", "1M"] if setup != "loaded" else ["--size", size])
    extra += ["--ping-int", "0.2"]
    with tempfile.TemporaryDirectory() as tmp, wan("100mbit", rtt, ns=NS) as w, \
            contextlib.ExitStack() as stack:
        conn = None
        if setup != "direct":
            _, actl = ws.start_site(stack, w, Path(tmp), "alice", [{"memlimit": "64M"}])
            _, bctl = ws.start_site(stack, w, Path(tmp), "bob", [{"memlimit": "64M"}])
            wait_linked([(actl, "alice"), (bctl, "bob")], 1)
            conn = 0
        # ICMP pings across the same bottleneck meanwhile: the WAN's own queueing, no proxy.
        icmp = subprocess.Popen([*w.exec_a, "ping", "-n", "-i", "0.2", w.b_ip],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        stack.callback(icmp.kill)
        primary, secondary = ws.sims(stack, w, conn, extra)
        p, _ = check_reports(primary, secondary, timeout=600)
        icmp.send_signal(signal.SIGINT)
        out = icmp.communicate(timeout=10)[0]
        times = [float(x) for x in re.findall(r"time=([0-9.]+) ms", out)]
        return dict(p50=p["ping_rtt_ms"]["p50"], p99=p["ping_rtt_ms"]["p99"],
                    max=p["ping_rtt_ms"]["max"], pings=p["pings"], mb_per_s=p["mb_per_s"],
                    icmp_p50=statistics.median(times) if times else None)


def soak(seconds: float, rtt: str, loss: str) -> dict:
    """A full link for ``seconds`` at ``rtt`` and ``loss``, default ping-timeout; the daemons'
    log lines about timeouts and state changes."""
    with tempfile.TemporaryDirectory() as tmp, wan("100mbit", rtt, loss, ns=NS) as w, \
            contextlib.ExitStack() as stack:
        alice, actl = ws.start_site(stack, w, Path(tmp), "alice", [{"memlimit": "64M"}])
        bob, bctl = ws.start_site(stack, w, Path(tmp), "bob", [{"memlimit": "64M"}])
        wait_linked([(actl, "alice"), (bctl, "bob")], 1)
        t0 = time.monotonic()
        primary, secondary = ws.sims(stack, w, 0, ["--duration", f"{seconds:g}", "--progress",
                                                   "10"])
        p, s = check_reports(primary, secondary, timeout=seconds + 600)
        elapsed = time.monotonic() - t0
        ast, bst = actl.stats(), bctl.stats()
        fwd = w.stats()
        logs = {"alice": list(alice.log), "bob": list(bob.log)}
    res: dict = dict(seconds=round(elapsed, 1), rtt=rtt, loss=loss, bytes=s["bytes"],
                     goodput=s["mb_per_s"], verified=p["verified"] and s["verified"],
                     sim_ping_p50=p["ping_rtt_ms"]["p50"], sim_ping_max=p["ping_rtt_ms"]["max"],
                     link_cc=ast.get("r0-bob-alice.link_cc"),
                     reconnects=dict(alice=int(ast["r0-bob-alice.reconnects"]),
                                     bob=int(bst["r0-alice-bob.reconnects"])),
                     fwd_lost=sum(fwd[d]["lost"] for d in ("a_to_b", "b_to_a")),
                     fwd_pkts=sum(fwd[d]["pkts_in"] for d in ("a_to_b", "b_to_a")))
    for site, lines in logs.items():
        res[f"{site}_timeouts"] = timeout_lines(lines)
        res[f"{site}_states"] = [x.strip() for x in lines if " -> " in x and "connection r0" in x]
    res["ping_timeouts"] = len(res["alice_timeouts"]) + len(res["bob_timeouts"])
    return res


def _med_text(values: list) -> str:
    vals = [v for v in values if v is not None]
    return f"{statistics.median(vals):.1f}" if vals else "-"


def command() -> str:
    return shlex.join([".venv/bin/python", *sys.argv])


def report(args: argparse.Namespace, p4: list[dict], p6: dict[str, list[dict]],
           soaked: dict | None, cmd: str) -> str:
    out = []
    if p4 or p6:
        out += [f"WAN: bench/wanem.py, 100 Mbit/s, {args.rtt} RTT, no loss; proxies alice in"
                " namespace A and bob in B, lz4, drbd-sim protocol A, disk-like data, fresh"
                f" daemons and a fresh WAN per run; {args.runs} run(s), interleaved. Link ceiling"
                f" = 100 Mbit/s x 1448/1500 = {link_ceiling(100e6):.2f} MB/s of TCP goodput.", ""]
    if p4:
        w = [r["writer"] for r in p4]
        x = [r["writer"] / r["link"] for r in p4]
        rows = [("writer MB/s", w, "{:.1f}"), ("writer / link ceiling", x, "{:.1f}"),
                ("alice buffered peak MiB", [r["peak"] / MiB for r in p4], "{:.0f}"),
                ("burst to last byte at bob, s", [r["total_s"] for r in p4], "{:.1f}"),
                ("secondary goodput MB/s", [r["goodput"] for r in p4], "{:.1f}")]
        out += [f"**P4** ({args.p4_size} burst, memlimit {args.p4_memlimit}):", "",
                "| quantity | median | per run |", "|---|---|---|",
                *(f"| {label} | {fmt.format(statistics.median(v))} |"
                  f" {', '.join(fmt.format(x) for x in v)} |" for label, v, fmt in rows), "",
                f"P4 target ≥ 20x: {'meets' if statistics.median(x) >= 20 else 'MISSES'} it.", ""]
    if p6:
        out += ["**P6** (DRBD P_PING round trip, pings every 0.2 s):", "",
                "| setup | p50 ms (median of runs) | p99 ms | max ms | writer MB/s |"
                " ICMP ping across the WAN meanwhile, p50 ms |",
                "|---|---|---|---|---|---|"]
        for setup, runs in p6.items():
            if runs:
                out.append(f"| {setup} | {statistics.median(r['p50'] for r in runs):.1f} |"
                           f" {statistics.median(r['p99'] for r in runs):.1f} |"
                           f" {max(r['max'] for r in runs):.1f} |"
                           f" {statistics.median(r['mb_per_s'] for r in runs):.1f} |"
                           f" {_med_text([r.get('icmp_p50') for r in runs])} |")
        if p6.get("proxy, idle") and p6.get("proxy, loaded"):
            idle = statistics.median(r["p50"] for r in p6["proxy, idle"])
            loaded = statistics.median(r["p50"] for r in p6["proxy, loaded"])
            out += ["", f"P6 (loaded minus idle p50, through the proxies): {loaded - idle:+.1f} ms"
                    f" (target ≤ +20 ms): {'meets' if loaded - idle <= 20 else 'MISSES'} it."]
            icmp = [[r.get("icmp_p50") for r in p6[k]] for k in ("proxy, idle", "proxy, loaded")]
            if all(None not in x for x in icmp):
                wan_q = statistics.median(icmp[1]) - statistics.median(icmp[0])
                out.append(f"ICMP pings across the WAN at the same time, which cross the same"
                           f" bottleneck but no proxy, rose by {wan_q:+.1f} ms (p50): that much"
                           " is the WAN's bottleneck queue, which the bulk link keeps filled;"
                           f" {loaded - idle - wan_q:+.1f} ms is left for the proxies (ping"
                           " prints its times to 1 ms above 100 ms).")
            out.append("")
    if soaked:
        out += [f"**Long run**: {soaked['seconds']:.0f} s at"
                f" {soaked['rtt']} RTT and {soaked['loss']} loss, link-cc {soaked['link_cc']},"
                " default ping-timeout (10 s; heartbeat every 2 s), a writer keeping the link"
                f" full: {soaked['bytes'] / 1e9:.2f} GB replicated and verified"
                f" ({soaked['goodput']:.1f} MB/s), the emulator dropped {soaked['fwd_lost']} of"
                f" {soaked['fwd_pkts']} packets; DRBD's own P_PING (drbd-sim, end to end through"
                f" the proxies) p50 {soaked['sim_ping_p50']:.0f} ms, max"
                f" {soaked['sim_ping_max']:.0f} ms. **Ping-timeouts: {soaked['ping_timeouts']}**"
                f" (log lines with `{TIMEOUT_LINES[0]}` or `{TIMEOUT_LINES[1]}` in alice's and"
                f" bob's logs); reconnects alice {soaked['reconnects']['alice']}, bob"
                f" {soaked['reconnects']['bob']}. State changes logged:", "", "```",
                *(x for site in ("alice", "bob") for x in soaked[f"{site}_states"]), "```", ""]
    out.append(f"Command: `{cmd}`")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rtt", default="150ms")
    parser.add_argument("--p4-size", default="256M")
    parser.add_argument("--p4-memlimit", default="512M")
    parser.add_argument("--p6-size", default="256M", help="bytes written in the loaded P6 run")
    parser.add_argument("--only", default="p4,p6", help="subset of p4,p6 (empty: none)")
    parser.add_argument("--soak", type=float, default=0,
                        help="also run this many seconds at 1%% loss counting ping-timeouts")
    parser.add_argument("--soak-loss", default="1%")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--from-json", default=None,
                        help="no measurement: write the sections from a --json file")
    args = parser.parse_args()
    if args.from_json:
        args.runs, args.soak = 0, 0
    if available():
        print(f"skipped: {available()}")
        return 0
    only = set(filter(None, args.only.split(",")))
    p4: list[dict] = []
    p6: dict[str, list[dict]] = {"direct, idle": [], "proxy, idle": [], "proxy, loaded": []}
    for run in range(args.runs if only else 0):
        if "p4" in only:
            r = run_p4(args.rtt, args.p4_size, args.p4_memlimit)
            p4.append(r)
            print(f"run {run + 1} P4: writer {r['writer']:.1f} MB/s ({r['writer'] / r['link']:.1f}x"
                  f" link), peak {r['peak'] / MiB:.0f} MiB", flush=True)
        if "p6" in only:
            for setup in p6:
                r = run_p6(args.rtt, setup.split(", ")[-1] if setup.startswith("proxy")
                           else "direct", args.p6_size)
                p6[setup].append(r)
                print(f"run {run + 1} P6 {setup}: p50 {r['p50']} ms, p99 {r['p99']} ms", flush=True)
    soaked = soak(args.soak, args.rtt, args.soak_loss) if args.soak else None
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        p4, p6, soaked = saved["p4"], saved["p6"], saved["soak"]
        only = {k for k in ("p4", "p6") if saved[k] and (k != "p6" or any(saved[k].values()))}
        args.runs = max([len(p4), *(len(v) for v in p6.values())])
    elif soaked:
        soaked["command"] = command()
        print(json.dumps(soaked, indent=1), flush=True)
    if args.json and not args.from_json:
        Path(args.json).write_text(json.dumps(dict(p4=p4, p6=p6, soak=soaked, command=command()),
                                              indent=1))
    if p4 or any(p6.values()):
        cmd = saved.get("command", "") if args.from_json else command()
        body = report(args, p4, p6 if "p6" in only else {}, None, cmd)
        print(body)
        write_section(Path(args.out), "wan150", f"P4, P6 at {args.rtt} RTT over the WAN emulator",
                      body)
    if soaked:
        body = report(args, [], {}, soaked, soaked.get("command") or command())
        print(body)
        write_section(Path(args.out), "wan-soak", "Ping-timeouts over a long lossy WAN", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
