"""The P8 section of docs/benchmarks.md and its plot, from bench/p8.py's results."""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from results import pyplot, save_figure

SETUPS = ("direct", "proxy, link-cc bbr", "proxy, link-cc cubic")
MB = 1e6


def _cells(results: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        if "goodput" in r:
            cells.setdefault((r["host_cc"], r["rtt"], r["loss"], r["setup"]), []).append(r)
    return cells


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _p8(r: dict) -> float | None:
    return r["goodput"] / (r["ceiling"] * r["ratio"]) if r.get("ratio") else None


def _fmt(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _spread(values: list[float | None], fmt: str = "{:.2f}") -> str:
    """median (min–max) of the runs."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    m = fmt.format(statistics.median(vals))
    return m if len(vals) == 1 else f"{m} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def goodput_table(cells: dict[tuple, list[dict]], host_cc: str, rtts: list[float],
                  losses: list[float]) -> list[str]:
    rows = ["| RTT | loss | direct MB/s (÷ ceiling) | proxy, link bbr: MB/s | ratio | **P8** |"
            " × direct | proxy, link cubic: MB/s | **P8** |",
            "|---|---|---|---|---|---|---|---|---|"]
    for rtt in rtts:
        for loss in losses:
            d = cells.get((host_cc, rtt, loss, "direct"), [])
            b = cells.get((host_cc, rtt, loss, "proxy, link-cc bbr"), [])
            c = cells.get((host_cc, rtt, loss, "proxy, link-cc cubic"), [])
            dg = _med([r["goodput"] for r in d])
            bg = _med([r["goodput"] for r in b])
            ceil = (d or b or c)[0]["ceiling"] if (d or b or c) else None
            direct = (f"{dg:.2f} ({dg / ceil:.2f})" if dg is not None and ceil else "-")
            gain = f"{bg / dg:.1f}×" if bg is not None and dg else "-"
            rows.append(
                f"| {rtt:g} ms | {loss:g} % | {direct} | {_spread([r['goodput'] for r in b])} |"
                f" {_fmt(_med([r.get('ratio') for r in b]))} | {_spread([_p8(r) for r in b])} |"
                f" {gain} | {_spread([r['goodput'] for r in c])} |"
                f" {_spread([_p8(r) for r in c])} |")
    return rows


def buffer_table(cells: dict[tuple, list[dict]], host_ccs: list[str], rtts: list[float],
                 losses: list[float]) -> list[str]:
    rows = ["| host cc | RTT | loss | setup | sender cc | BDP MB | cwnd MB | in flight MB (max) |"
            " sndbuf MB | send-buffer-limited | receiver rcvbuf MB | receive-window-limited |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.0f} %"

    for host_cc in host_ccs:
        for rtt in rtts:
            for loss in losses:
                for setup in SETUPS:
                    runs = cells.get((host_cc, rtt, loss, setup), [])
                    if not runs:
                        continue
                    snd = [r["snd"] for r in runs]
                    rcv = [r["rcv"] for r in runs]
                    bdp = runs[0]["ceiling"] * 1500 / 1448 * rtt / 1e3

                    def mb(key: str, snd: list[dict] = snd) -> str:
                        return _fmt(_med([(s.get(key) or 0) / MB for s in snd]))

                    rows.append(
                        f"| {host_cc} | {rtt:g} ms | {loss:g} % | {setup} |"
                        f" {snd[-1].get('cc') or '-'} | {bdp:.2f} | {mb('cwnd_bytes')} |"
                        f" {mb('inflight_max')} | {mb('sndbuf_max')} |"
                        f" {pct(_med([s.get('sndbuf_limited') for s in snd]))} |"
                        f" {_fmt(_med([(s.get('rcvbuf_max') or 0) / MB for s in rcv]))} |"
                        f" {pct(_med([s.get('rwnd_limited') for s in snd]))} |")
    return rows


def _shorter(cells: dict[tuple, list[dict]], rtts: list[float]) -> list[str]:
    """One line for the shorter RTTs' send buffers, which the table leaves out."""
    short = [r["snd"].get("sndbuf_limited") for (_, rtt, _, _), rs in cells.items()
             if rtt < max(rtts) for r in rs]
    short = [v for v in short if v is not None]
    if not short:
        return []
    return [f"At {', '.join(f'{r:g}' for r in rtts[:-1])} ms no sender was send-buffer-limited"
            f" for more than {max(short) * 100:.1f} % of its busy time in any run (`--json`"
            " keeps every figure)."]


def plot(cells: dict[tuple, list[dict]], host_ccs: list[str], rtts: list[float],
         losses: list[float], img_dir: Path, name: str = "wan-p8-goodput.png") -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(host_ccs), figsize=(11, 4.4), sharey=True, squeeze=False)
    labels = [f"{rtt:g} ms\n{loss:g} %" for rtt in rtts for loss in losses]
    width = 0.27
    for ax, host_cc in zip(axes[0], host_ccs):
        for k, setup in enumerate(SETUPS):
            vals = [_med([r["goodput"] for r in cells.get((host_cc, rtt, loss, setup), [])])
                    for rtt in rtts for loss in losses]
            ax.bar([i + (k - 1) * width for i in range(len(labels))],
                   [v or 0 for v in vals], width, label=setup, color=f"C{k}")
        ceil = next((rs[0]["ceiling"] for rs in cells.values()), 12.07)
        ratios = [r.get("ratio") for rs in cells.values() for r in rs if r.get("ratio")]
        ax.axhline(ceil, color="gray", lw=1, ls="--", label="link ceiling (no compression)")
        if ratios:
            ax.axhline(ceil * statistics.median(ratios), color="red", lw=1, ls="--",
                       label="ceiling × lz4 ratio")
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(f"hosts' default congestion control: {host_cc}")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("goodput at the secondary, MB/s (log)")
    axes[0][0].set_ylim(top=150)  # room for the legend above the bars
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle("P8: drbd-sim replication over a 100 Mbit/s WAN (RTT / loss), median of runs")
    return save_figure(fig, img_dir, name)


def mathis(rtt_ms: float, loss_pct: float, mss: int = 1448) -> float | None:
    """One Reno/CUBIC-like TCP stream's bound under random loss, MB/s: MSS/RTT x 1.22/sqrt(p)."""
    if not loss_pct:
        return None
    return mss / (rtt_ms / 1e3) * 1.22 / (loss_pct / 100) ** 0.5 / MB


def findings(cells: dict[tuple, list[dict]], host_ccs: list[str], rtts: list[float],
             losses: list[float]) -> list[str]:
    """The table's gist, computed: P8 of the default link, direct vs proxy at the worst cell,
    the cubic link against the one-stream bound, the send buffer at the longest RTT."""
    out = []

    def med(host: str, rtt: float, loss: float, setup: str, f: Any = lambda r: r["goodput"]
            ) -> float | None:
        return _med([f(r) for r in cells.get((host, rtt, loss, setup), [])])

    for host in host_ccs:
        p8s = [(med(host, rtt, loss, SETUPS[1], _p8), rtt, loss) for rtt in rtts
               for loss in losses]
        p8s = [x for x in p8s if x[0] is not None]
        if p8s:
            low = min(p8s)
            out.append(f"- Hosts on {host.upper()}: P8 of the default (bbr) link is"
                       f" {statistics.median(v for v, _, _ in p8s):.2f} over the cells (median),"
                       f" lowest {low[0]:.2f} at {low[1]:g} ms / {low[2]:g} %.")
    worst = (max(rtts), max(losses)) if rtts and losses else None
    if worst:
        rtt, loss = worst
        parts = []
        for host in host_ccs:
            d, b = med(host, rtt, loss, SETUPS[0]), med(host, rtt, loss, SETUPS[1])
            if d and b:
                parts.append(f"{host.upper()} hosts: direct {d:.2f} MB/s, through the proxies"
                             f" {b:.2f} MB/s ({b / d:.0f}×)")
        if parts:
            out.append(f"- At {rtt:g} ms and {loss:g} % loss: " + "; ".join(parts) + ".")
        bound = mathis(rtt, loss)
        c = [r for host in host_ccs for r in cells.get((host, rtt, loss, SETUPS[2]), [])]
        wire = _med([r["goodput"] / r["ratio"] for r in c if r.get("ratio")])
        if bound and wire is not None:
            out.append(
                f"- The cubic link at {rtt:g} ms / {loss:g} % carries {wire:.2f} MB/s on the wire"
                f" (compressed); one CUBIC (or Reno) TCP stream is bounded by MSS/RTT ×"
                f" 1.22/√p = {bound:.2f} MB/s there (Mathis et al.). The limit is the single TCP"
                " connection that carries the bulk link: N parallel link connections would raise"
                " the bound N-fold, which this proxy does not do (one bulk link per connection);"
                " with BBR, the default, the link does not need it.")
        snd = [r["snd"] for host in host_ccs for r in cells.get((host, rtt, loss, SETUPS[1]), [])]
        tb = _med([s.get("sndbuf_max") for s in snd])
        lim = _med([s.get("sndbuf_limited") for s in snd])
        cwnd = _med([s.get("cwnd_bytes") for s in snd])
        per_loss = ", ".join(
            f"{_fmt(_med([med(h, rtt, x, SETUPS[1], _p8) for h in host_ccs]))} at {x:g} %"
            for x in losses)
        if tb and lim is not None and cwnd:
            out.append(f"- At {rtt:g} ms the bbr link reaches P8 {per_loss} (both host"
                       f" defaults). Its send buffer is {tb / MB:.2f} MB (the kernel autotunes it"
                       " up to `tcp_wmem` max, and the proxy, as root, grows it past that while it"
                       f" limits the link) while BBR's cwnd is {cwnd / MB:.2f} MB (about 2 BDP);"
                       f" at {loss:g} % ss counts the link send-buffer-limited"
                       f" {lim * 100:.0f} % of its busy time.")
    return out


def report(results: list[dict], args: argparse.Namespace, env: dict[str, Any]) -> str:
    cells = _cells(results)
    host_ccs = list(dict.fromkeys(r["host_cc"] for r in results))
    rtts = sorted({r["rtt"] for r in results})
    losses = sorted({r["loss"] for r in results})
    runs = max((r["run"] for r in results), default=0)
    failed = [r for r in results if "error" in r]
    ceil = results[0]["ceiling"] if results else 0
    body = [
        "WAN: `bench/wanem.py` (TUN delay line between two namespaces), 100 Mbit/s, bottleneck"
        " queue one BDP, random loss each way. drbd-sim protocol A, disk-like data, 64 KiB"
        " writes, no size limit; goodput = the secondary's verified bytes per second over"
        f" {args.window:g} s after {args.warmup:g} s of warm-up. Setups, one after the other on"
        " the same WAN: **direct** (drbd-sim to drbd-sim over the WAN, DRBD's usual socket"
        " buffers: sndbuf-size/rcvbuf-size 0, autotuned by the kernel), **proxy, link bbr**"
        " (alice and bob, lz4, memlimit 64M, default `link-cc` bbr) and **proxy, link cubic**"
        " (`set link-cc NAME cubic`: a kernel without BBR). The hosts' default congestion control"
        " (`net.ipv4.tcp_congestion_control` in both namespaces) is CUBIC in the first table,"
        " BBR in the second; it is what the direct replication uses. The proxies' links persist"
        " from cell to cell of an RTT, as a proxy's links do; sims are fresh per cell.",
        "",
        f"**P8** = proxied goodput / (link ceiling × compression ratio). Link ceiling ="
        f" 100 Mbit/s × 1448/1500 = {ceil:.2f} MB/s of TCP goodput (what"
        " `python3 bench/wanem.py check` measures with iperf3); ratio = alice's raw / wire bytes"
        " of the cell. Direct goodput is shown with its fraction of the ceiling (no compression)."
        f" Medians of {runs} run(s), (min–max) of the runs; runs are interleaved (run 1 of every"
        " cell, then run 2) and the machine is shared with other work (2 cores), so compare a"
        " cell with its same-run baseline rather than absolute figures.",
        "",
    ]
    body += [*findings(cells, host_ccs, rtts, losses), ""]
    for host_cc in host_ccs:
        body += [f"Hosts' default **{host_cc.upper()}**:", "",
                 *goodput_table(cells, host_cc, rtts, losses), ""]
    # A partial run (--section) gets a plot of its own, beside the full grid's.
    slug = "".join(c if c.isalnum() else "-" for c in (getattr(args, "section", None) or ""))
    image = plot(cells, host_ccs, rtts, losses, Path(args.img_dir),
                 f"wan-p8-{slug}-goodput.png" if slug else "wan-p8-goodput.png")
    if image is not None:
        body += [f"![P8 goodput]({os.path.relpath(image, Path(args.out).parent)})", ""]
    body += [
        "**Do the socket buffers cover the bandwidth-delay product?** At the longest RTT, the"
        " sender's socket (the bulk link at alice, or DRBD's data socket) and the receiver's,"
        " sampled every second"
        " with `ss -tmi` during the window (medians of runs): cwnd and bytes in flight against"
        " the BDP (100 Mbit/s × RTT; the bottleneck queue holds one more BDP), the send buffer `tb` and"
        " the share of the sender's busy time ss counts as `sndbuf_limited` and"
        " `rwnd_limited`. The kernel here autotunes send buffers up to `tcp_wmem` max"
        f" {int(env['wmem'][2]) / MB:.1f} MB and receive buffers up to `tcp_rmem` max"
        f" {int(env['rmem'][2]) / MB:.1f} MB; the proxy sets neither unless `sndbuf-size` /"
        " `rcvbuf-size` are given.",
        "",
        *buffer_table(cells, host_ccs, rtts[-1:], losses),
        "",
        *_shorter(cells, rtts),
        "",
        f"Failed cells: {len(failed)}"
        + (": " + "; ".join(f"{r['host_cc']} {r['rtt']:g} ms {r['loss']:g} % {r['setup']}:"
                            f" {r['error'][:120]}" for r in failed) if failed else ""),
        "",
        f"- date: {env['started']}; took {env['seconds']} s",
        f"- command: `{env['command']}`",
        f"- nproc: {env['nproc']}; load average at start: {env['load']}; kernel {env['kernel']};"
        f" python {env['python']}",
    ]
    return "\n".join(body)


def sndbuf_report(results: list[dict], args: argparse.Namespace, env: dict[str, Any]) -> str:
    """The bbr link with an autotuned send buffer vs with sndbuf-size set."""
    cells = _cells(results)
    rows = ["| host cc | RTT | loss | setup | MB/s | **P8** | cwnd MB | in flight MB (max) |"
            " sndbuf MB | send-buffer-limited | receiver rcvbuf MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (host_cc, rtt, loss, setup), runs in sorted(cells.items()):
        snd = [r["snd"] for r in runs]

        def mb(key: str, snd: list[dict] = snd) -> str:
            return _fmt(_med([(s.get(key) or 0) / MB for s in snd]))

        lim = _med([s.get("sndbuf_limited") for s in snd])
        rows.append(f"| {host_cc} | {rtt:g} ms | {loss:g} % | {setup} |"
                    f" {_spread([r['goodput'] for r in runs])} | {_spread([_p8(r) for r in runs])} |"
                    f" {mb('cwnd_bytes')} | {mb('inflight_max')} | {mb('sndbuf_max')} |"
                    f" {'-' if lim is None else f'{lim * 100:.0f} %'} |"
                    f" {_fmt(_med([(r['rcv'].get('rcvbuf_max') or 0) / MB for r in runs]))} |")
    return "\n".join([
        "The same measurement as P8, on the proxies' bbr link only: its sockets with the"
        " kernel's autotuned send buffer (at most `tcp_wmem` max"
        f" {int(env['wmem'][2]) / MB:.1f} MB here) against `set sndbuf-size NAME {env.get('sndbuf')}`"
        " (SO_SNDBUF, which the kernel caps at `net.core.wmem_max` and then doubles, and which"
        " switches the send side's autotuning off).",
        "", *rows, "",
        f"- date: {env['started']}; took {env['seconds']} s; command: `{env['command']}`",
    ])
