#!/usr/bin/env python3
"""P9: goodput of each compression choice against link rate, and whether ``auto`` keeps up.

For every link rate (default 10 Mbit/s, 100 Mbit/s and 1 Gbit/s, each a tbf-shaped veth between
two network namespaces this script creates, and unlimited loopback with alice on 127.0.0.1 and
bob on 127.0.0.2, no namespaces), every workload (``disk``: drbd-sim's generated disk-like data;
``corpus``: a tar of system files built at run time, see ``build_corpus``) and every compression
choice (``none``, ``lz4``, ``zstd level 1``, ``zstd level 3``, ``zstd level 9`` and ``auto``, set
with ``set plugin NAME 0 LINE`` on both proxies), a proxy pair (alice sends, bob receives; fresh
daemons and, for a shaped rate, fresh namespaces per run) carries drbd-sim's writes (protocol A,
64 KiB, as fast as the primary can). Goodput is the secondary's verified bytes per second over
``--window`` s after ``--warmup`` s, from its ``--progress`` lines; the compression ratio over the
same window is alice's raw / wire byte counters, and the codec she is on is read every second
from ``print statistics`` (``NAME.codec``), so ``auto``'s choice is shown beside its goodput.

Runs are interleaved round-robin (run 1 of every cell, then run 2, ...; within a run the choices
of one rate and workload follow each other, starting one choice later each run), so drift of
this noisy machine spreads over all cells; cells show medians. The target: ``auto`` >= 0.95 x the
best fixed choice, in every column.

Usage (root for the shaped rates; without root or tc only loopback runs, saying why):

    .venv/bin/python bench/adaptive.py [--runs 3] [--warmup 5] [--window 12]
        [--rates 10mbit,100mbit,1gbit,loopback] [--workloads disk,corpus]
        [--choices none,lz4,zstd-1,zstd-3,zstd-9,auto] [--json FILE] [--out docs/benchmarks.md]
    .venv/bin/python bench/adaptive.py --from-json FILE [--out ...]   # render again, no runs

It writes the ``adaptive`` section of ``--out`` and its plot into ``img/`` beside it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from helpers import free_ports  # noqa: E402
from netns import A_IP, B_IP, Wan, wan_available  # noqa: E402
from results import pyplot, save_figure, write_section  # noqa: E402
from wan import Sampler, TimedSim, close_wan, wait_linked  # noqa: E402
from wanem import parse_rate  # noqa: E402
import wansites as ws  # noqa: E402

from drbdproxy.codecs import codec_for, encode_chunk, parse_plugin  # noqa: E402
from drbdproxy.daemon import DaemonFailed, ProxyDaemon  # noqa: E402
from drbdproxy.relay.streams import CHUNK_LIMIT  # noqa: E402
from drbdproxy.sim.workload import CORPUS_MAX, Corpus, CorpusError, Workload  # noqa: E402

SECTION, TITLE = "adaptive", "P9: compression choices against link rate (auto vs fixed)"
#: Choice name -> the plugin line ``set plugin NAME 0`` gets.
CHOICES = {"none": "none", "lz4": "lz4", "zstd-1": "zstd level 1", "zstd-3": "zstd level 3",
           "zstd-9": "zstd level 9", "auto": "auto"}
RATES = ("10mbit", "100mbit", "1gbit", "loopback")
WORKLOADS = ("disk", "corpus")
TARGET = 0.95
#: Where the corpus comes from, in this order, each given an equal share of what is left of
#: the 64 MiB (a short source leaves more for the next): config text, Python sources and
#: bytecode, man pages (gzipped, so hardly compressible), executables.
CORPUS_SOURCES = ("/etc", "/usr/lib/python3*", "/usr/share/man", "/usr/bin")
#: Ports inside a site's namespace (DRBD, inside, outside), and the sims' settings.
NS_PORTS = (7700, 7701, 7702)
BLOCK = 64 << 10
SIM_COMMON = ["--protocol", "A", "--block-size", "64k", "--ping-timeout", "30",
              "--connect-timeout", "60", "--progress", "0.5"]


def rate_label(rate: str) -> str:
    """'10mbit' -> '10 Mbit/s'; 'loopback' stays."""
    if rate == "loopback":
        return rate
    bits = parse_rate(rate)
    return f"{bits / 1e9:g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:g} Mbit/s"


def ceiling(rate: str) -> float | None:
    """The shaped link's TCP goodput in MB/s (1448 of 1500 bytes a packet); None: loopback."""
    return None if rate == "loopback" else parse_rate(rate) / 8 * 1448 / 1500 / 1e6


def tbf_burst(rate: str) -> str:
    """tbf's bucket: a millisecond of the rate, at least 32kbit (a smaller one holds 1 Gbit/s
    to about 800 Mbit/s on this machine; 1 ms lets it reach about 950)."""
    return f"{max(32, round(parse_rate(rate) / 1e6))}kbit"


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP as KeyboardInterrupt, so every cleanup runs; inside
    ``critical()`` (between starting a process or namespace and registering its cleanup) one is
    held until the section ends. Signal handlers run in the main thread, whoever received it."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self._depth:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending:
                self._pending = False
                raise KeyboardInterrupt


INTERRUPTS = Interrupts()


# -- the corpus ------------------------------------------------------------------------------------
def build_corpus(path: Path, size: int = CORPUS_MAX,
                 sources: tuple[str, ...] = CORPUS_SOURCES) -> list[dict[str, Any]]:
    """Write up to ``size`` bytes of tar streams of ``sources`` (glob patterns) to ``path``, each
    source's files in name order, cut at an equal share of what is left; what went in."""
    parts: list[dict[str, Any]] = []
    groups = [sorted(glob.glob(pattern)) for pattern in sources]
    with open(path, "wb") as out:
        for i, (pattern, dirs) in enumerate(zip(sources, groups)):
            share = (size - out.tell()) // (len(groups) - i)
            got = 0
            if dirs:
                tar = subprocess.Popen(
                    ["tar", "cf", "-", "--sort=name", "-C", "/", *(d.lstrip("/") for d in dirs)],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert tar.stdout is not None
                try:
                    while got < share and (data := tar.stdout.read(min(1 << 20, share - got))):
                        out.write(data)
                        got += len(data)
                finally:
                    tar.kill()
                    tar.wait()
            parts.append(dict(source=pattern, dirs=dirs, bytes=got))
    return parts


def codec_reference(workload: Workload, choices: list[str], mib: int = 16) -> dict[str, dict]:
    """Each fixed codec on the workload's first ``mib`` MiB of blocks as drbd-sim writes them,
    in chunks of CHUNK_LIMIT (the most the proxy compresses at once: a chunk is what one read
    of DRBD's socket got, up to that), one thread: ratio and compress MB/s."""
    if not [c for c in choices if c not in ("none", "auto")]:
        return {}
    data = b"".join(workload.block(i, 0, BLOCK) for i in range(mib * (1 << 20) // BLOCK))
    blocks = [data[i : i + CHUNK_LIMIT] for i in range(0, len(data), CHUNK_LIMIT)]
    raw = len(data)
    out = {}
    for choice in choices:
        if choice in ("none", "auto"):  # nothing to measure, or nothing fixed to measure
            continue
        codec = codec_for([parse_plugin(CHOICES[choice].split())])
        t0 = time.perf_counter()
        wire = sum(len(encode_chunk(codec, block)[1]) for block in blocks)
        out[choice] = dict(ratio=raw / wire, mb_per_s=raw / (time.perf_counter() - t0) / 1e6)
    return out


# -- one run ---------------------------------------------------------------------------------------
def conn_name(site: str) -> str:
    return "r0-bob-alice" if site == "alice" else "r0-alice-bob"


def start_site(stack: contextlib.ExitStack, workdir: Path, site: str, prefix: tuple[str, ...],
               inside: str, peer_outside: str, outside: str, drbd: str, line: str,
               memlimit: str | None) -> ws.Ctl:
    """A fresh daemon for ``site`` with one connection using plugin ``line``; its control
    session."""
    with INTERRUPTS.critical():
        daemon = ProxyDaemon(workdir, site, prefix=prefix)
        stack.callback(daemon.stop, 10)
    daemon.wait_ready()
    name = conn_name(site)
    args = ["-c", f"add connection {name} {inside} {peer_outside} {outside} {drbd}",
            "-c", f"set plugin {name} 0 {line}"]
    if memlimit:
        args += ["-c", f"set memlimit {name} {memlimit}"]
    daemon.ctl(*args, check=True)
    ctl = ws.Ctl(daemon.socket)
    stack.callback(ctl.close)
    return ctl


@dataclass
class Pair:
    """A linked proxy pair: alice's control session, and where each site's drbd-sim runs."""

    alice: ws.Ctl
    #: --listen/--peer of the primary (at alice) and of the secondary (at bob).
    primary_args: list[str]
    secondary_args: list[str]
    #: What runs a command at alice's and at bob's site (``ip netns exec NS``, or nothing).
    alice_prefix: tuple[str, ...]
    bob_prefix: tuple[str, ...]


@contextlib.contextmanager
def sites(rate: str, workdir: Path, line: str, memlimit: str | None) -> Iterator[Pair]:
    """Fresh daemons alice and bob linked over ``rate`` (fresh namespaces for a shaped one);
    everything is stopped and removed on the way out."""
    with contextlib.ExitStack() as stack:
        if rate == "loopback":
            a_drbd, a_in, a_out = free_ports(3, "127.0.0.1")
            b_drbd, b_in, b_out = free_ports(3, "127.0.0.2")
            a_ip, b_ip, a_loc, b_loc = "127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"
            a_pre: tuple[str, ...] = ()
            b_pre: tuple[str, ...] = ()
        else:
            with INTERRUPTS.critical():
                wan = Wan(rate=rate, latency="100ms", burst=tbf_burst(rate))
                stack.callback(close_wan, wan)
            (a_drbd, a_in, a_out), (b_drbd, b_in, b_out) = NS_PORTS, NS_PORTS
            a_ip, b_ip, a_loc, b_loc = A_IP, B_IP, "127.0.0.1", "127.0.0.1"
            a_pre, b_pre = wan.exec_a, wan.exec_b
        actl = start_site(stack, workdir, "alice", a_pre, f"{a_loc}:{a_in}", f"{b_ip}:{b_out}",
                          f"{a_ip}:{a_out}", f"{a_loc}:{a_drbd}", line, memlimit)
        bctl = start_site(stack, workdir, "bob", b_pre, f"{b_loc}:{b_in}", f"{a_ip}:{a_out}",
                          f"{b_ip}:{b_out}", f"{b_loc}:{b_drbd}", line, memlimit)
        wait_linked([(actl, "alice"), (bctl, "bob")], 1)
        yield Pair(actl, ["--listen", f"{a_loc}:{a_drbd}", "--peer", f"{a_loc}:{a_in}"],
                   ["--listen", f"{b_loc}:{b_drbd}", "--peer", f"{b_loc}:{b_in}"], a_pre, b_pre)


def short_codec(text: str | None) -> str:
    """``print statistics``' codec as the table shows it: 'auto:zstd-level-3' -> 'zstd-3'."""
    if not text:
        return "?"
    text = text.split(":", 1)[-1]
    return (text.replace("-level-", "-").replace("lz4-acceleration-1", "lz4")
            .replace("lz4-acceleration-", "lz4-acc"))


def measure(rate: str, workload: str, choice: str, corpus: Path | None, workdir: Path,
            args: argparse.Namespace) -> dict[str, Any]:
    """One run of one cell: goodput over the window, the ratio, and alice's codec meanwhile."""
    name = conn_name("alice")
    load = ["--workload", workload] + (["--corpus", str(corpus)] if corpus else [])
    with sites(rate, workdir, CHOICES[choice], args.memlimit) as pair, \
            contextlib.ExitStack() as stack:
        actl = pair.alice
        with INTERRUPTS.critical():
            secondary = TimedSim(["--role", "secondary", *pair.secondary_args, *SIM_COMMON,
                                  *load], pair.bob_prefix)
            stack.callback(secondary.kill)
        with INTERRUPTS.critical():
            primary = TimedSim(["--role", "primary", *pair.primary_args, *SIM_COMMON, *load,
                                "--duration", f"{args.warmup + args.window + 60:g}"],
                               pair.alice_prefix)
            stack.callback(primary.kill)
        secondary.wait_for_line("connected:", timeout=60)
        start = time.monotonic()
        time.sleep(args.warmup)
        before = actl.stats()
        codecs = Sampler(1.0, lambda: actl.stats().get(f"{name}.codec"))
        stack.callback(codecs.stop)
        time.sleep(max(0.0, start + args.warmup + args.window - time.monotonic()))
        after = actl.stats()
        seen = [short_codec(c) for _, c in codecs.stop()]
        for sim in (primary, secondary):
            if sim.proc.poll() is not None:
                raise RuntimeError(f"drbd-sim {sim.args[1]} ended early:"
                                   f" {''.join(sim.stderr)[-400:]}")
        goodput = ws.window_rate(ws.progress(secondary), start, args.warmup)

    def delta(key: str) -> int:
        return int(after.get(f"{name}.{key}", 0)) - int(before.get(f"{name}.{key}", 0))

    raw, wire = delta("data.to_peer.bytes"), delta("data.to_peer.wire_bytes")
    return dict(goodput=goodput, ratio=raw / wire if wire else None,
                codec=short_codec(after.get(f"{name}.codec")),
                codecs=dict(collections.Counter(seen)))


def check_choices(choices: list[str], workdir: Path) -> list[str]:
    """Every choice's plugin line as one daemon takes it: the errors (``auto`` before it
    exists, say), so a run does not find out cell by cell."""
    errors = []
    with INTERRUPTS.critical():
        daemon = ProxyDaemon(workdir, "probe")
    try:
        daemon.wait_ready()
        a, b, c, d = free_ports(4)
        daemon.ctl("-c", f"add connection probe 127.0.0.1:{a} 127.0.0.1:{b} 127.0.0.1:{c}"
                         f" 127.0.0.1:{d}", check=True)
        for choice in choices:
            out = daemon.ctl("-c", f"set plugin probe 0 {CHOICES[choice]}")
            if out.returncode:
                errors.append(f"{choice} (`set plugin NAME 0 {CHOICES[choice]}`):"
                              f" {out.stderr.strip() or out.stdout.strip()}")
    finally:
        daemon.stop(10)
    return errors


# -- the report ------------------------------------------------------------------------------------
def goodputs(results: list[dict], workload: str, choice: str, rate: str) -> list[float]:
    return [r["goodput"] for r in results if "goodput" in r and
            (r["workload"], r["choice"], r["rate"]) == (workload, choice, rate)]


def verdicts(results: list[dict], workload: str, rates: list[str], choices: list[str]
             ) -> dict[str, dict[str, Any]]:
    """Per rate: the best fixed choice and its median, auto's median, their ratio and whether
    it meets the target (None when auto or every fixed choice is missing)."""
    out: dict[str, dict[str, Any]] = {}
    for rate in rates:
        fixed = {c: statistics.median(v) for c in choices if c != "auto"
                 if (v := goodputs(results, workload, c, rate))}
        autos = goodputs(results, workload, "auto", rate)
        best = max(fixed, key=lambda c: fixed[c]) if fixed else None
        v: dict[str, Any] = dict(best=best, best_mb_s=fixed.get(best) if best else None,
                                 auto_mb_s=statistics.median(autos) if autos else None,
                                 ratio=None, holds=None)
        if best and autos and fixed[best] > 0:
            v["ratio"] = v["auto_mb_s"] / fixed[best]
            v["holds"] = v["ratio"] >= TARGET
        out[rate] = v
    return out


def _codec_note(runs: list[dict]) -> str:
    """Which codec auto was on at the end of its runs: 'zstd-3', or 'zstd-3 ×2, lz4 ×1'."""
    ends = collections.Counter(r["codec"] for r in runs if "goodput" in r)
    if len(ends) == 1:
        return next(iter(ends))
    return ", ".join(f"{c} ×{n}" for c, n in ends.most_common())


def workload_table(results: list[dict], workload: str, rates: list[str], choices: list[str],
                   lines: dict[str, str] | None = None) -> list[str]:
    """Rows = choices, columns = rates: median goodput (auto: with the codec it ended on),
    then best fixed, auto / best fixed and the target's verdict per column."""
    def runs_of(choice: str, rate: str) -> list[dict]:
        return [r for r in results
                if (r["workload"], r["choice"], r["rate"]) == (workload, choice, rate)]

    head = ["choice", *(rate_label(r) + (f" (link {c:.2f} MB/s)" if (c := ceiling(r)) else "")
                        for r in rates)]
    plugin = {**CHOICES, **(lines or {})}
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for choice in choices:
        cells = []
        for rate in rates:
            runs = runs_of(choice, rate)
            got = [r["goodput"] for r in runs if "goodput" in r]
            if not got:
                cells.append("failed" if runs else "—")
                continue
            cell = f"{statistics.median(got):.2f}"
            if len(got) < len(runs):
                cell += f" ({len(got)}/{len(runs)} runs)"
            if choice == "auto":
                cell += f" ({_codec_note(runs)})"
            cells.append(cell)
        out.append(f"| `{plugin[choice]}` | " + " | ".join(cells) + " |")
    v = verdicts(results, workload, rates, choices)
    out.append("| best fixed | " + " | ".join(
        f"{v[r]['best']} {v[r]['best_mb_s']:.2f}" if v[r]["best"] else "—" for r in rates) + " |")
    out.append("| **auto / best fixed** | " + " | ".join(
        f"**{v[r]['ratio']:.2f}**" if v[r]["ratio"] is not None else "—" for r in rates) + " |")
    out.append(f"| auto ≥ {TARGET} × best | " + " | ".join(
        "—" if v[r]["holds"] is None else ("holds" if v[r]["holds"] else "**MISSES**")
        for r in rates) + " |")
    return out


def ratio_table(results: list[dict], workload: str, rates: list[str], choices: list[str]
                ) -> list[str]:
    """Alice's raw / wire bytes over the window, median per cell."""
    lines = ["| ratio (alice raw / wire) | " + " | ".join(map(rate_label, rates)) + " |",
             "|---" * (len(rates) + 1) + "|"]
    for choice in choices:
        cells = []
        for rate in rates:
            got = [r["ratio"] for r in results if r.get("ratio") and
                   (r["workload"], r["choice"], r["rate"]) == (workload, choice, rate)]
            cells.append(f"{statistics.median(got):.2f}" if got else "—")
        lines.append(f"| {choice} | " + " | ".join(cells) + " |")
    return lines


def plot(results: list[dict], env: dict, img_dir: Path) -> Path | None:
    """Grouped bars, a column of panels per workload: per link rate a bar per choice. Top:
    median goodput (min–max), log scale so 10 Mbit/s and loopback fit one axis; bottom: each
    median over the best fixed choice's in that column, with the target's line."""
    plt = pyplot()
    if plt is None or not any("goodput" in r for r in results):
        return None
    rates, workloads, choices = env["rates"], env["workloads"], env["choices"]
    fig, axes = plt.subplots(2, len(workloads), figsize=(6.5 * len(workloads), 8.2),
                             squeeze=False, gridspec_kw=dict(height_ratios=(3, 2)))
    width = 0.8 / len(choices)
    for col, workload in enumerate(workloads):
        top, bottom = axes[0][col], axes[1][col]
        best = {rate: v["best_mb_s"] for rate, v in verdicts(results, workload, rates,
                                                             choices).items()}
        for k, choice in enumerate(choices):
            bars = []  # (x, median, low, high, rate)
            for x, rate in enumerate(rates):
                if got := goodputs(results, workload, choice, rate):
                    m = statistics.median(got)
                    bars.append((x - 0.4 + width * (k + 0.5), m, m - min(got), max(got) - m, rate))
            if not bars:
                continue
            style = dict(label=choice, color="black" if choice == "auto" else f"C{k}",
                         alpha=1.0 if choice == "auto" else 0.85)
            xs, ys, lo, hi, at = zip(*bars)
            top.bar(xs, ys, width, yerr=[lo, hi], capsize=2, **style)
            rel = [(x, y / best[r]) for x, y, r in zip(xs, ys, at) if best[r]]
            if rel:
                bottom.bar([x for x, _ in rel], [y for _, y in rel], width, **style)
            if choice == "auto":  # the codec auto ended on, above its bar
                for x, y, h, rate in zip(xs, ys, hi, at):
                    runs = [r for r in results if (r["workload"], r["choice"], r["rate"])
                            == (workload, choice, rate)]
                    top.annotate(_codec_note(runs), (x, y + h), xytext=(0, 3),
                                 textcoords="offset points", ha="center", va="bottom",
                                 fontsize=7, rotation=90)
        for x, rate in enumerate(rates):
            if c := ceiling(rate):
                top.hlines(c, x - 0.45, x + 0.45, colors="gray", linestyles=":", linewidth=1)
        for ax in (top, bottom):
            ax.set_xticks(range(len(rates)), [rate_label(r) for r in rates])
            ax.grid(axis="y", alpha=0.3, which="both")
        top.set_yscale("log")
        top.set_ylim(0.5, top.get_ylim()[1] * 2.5)  # room for auto's codec above its bar
        top.set_ylabel("goodput MB/s (median, min–max; log)")
        top.set_title(f"{workload} workload")
        bottom.axhline(TARGET, color="red", linestyle="--", linewidth=1)
        bottom.set_ylim(0, 1.15)
        bottom.set_ylabel("median / best fixed choice's")
    axes[0][0].legend(fontsize=8, title="choice (dotted: link's TCP ceiling)",
                      title_fontsize=8, loc="upper left")
    axes[1][0].annotate(f"target for auto: {TARGET}", (0, TARGET), xytext=(2, 2),
                        xycoords=("axes fraction", "data"), textcoords="offset points",
                        fontsize=7, color="red")
    fig.suptitle("Goodput per compression choice and link rate")
    return save_figure(fig, img_dir, "adaptive-goodput.png")


def _corpus_text(env: dict) -> str:
    parts = env.get("corpus_parts", [])
    if len(parts) == 1 and not parts[0]["dirs"]:  # --corpus FILE
        made = f"the first {parts[0]['bytes'] / 2**20:.1f} MiB of `{parts[0]['source']}`"
    else:
        made = ("a 64 MiB file built at run time from tar streams of "
                + ", ".join(f"`{p['source']}` ({p['bytes'] / 2**20:.1f} MiB)" for p in parts)
                + " (each source's files in name order, cut at an equal share of what is left "
                "of the 64 MiB; man pages are gzipped, so that part hardly compresses)")
    crc = f", crc32 {env['corpus_crc32']}" if env.get("corpus_crc32") else ""
    return ("`corpus` is drbd-sim's corpus workload (`--corpus FILE`: 64 KiB slices at "
            f"scattered offsets of the file) on {made}{crc}")


WORKLOAD_TEXT = {
    "disk": lambda env: "`disk` is drbd-sim's generated disk-like data (about 2:1 with lz4)",
    "corpus": _corpus_text,
}


def report(results: list[dict], env: dict, out: Path, image: Path | None) -> str:
    """The markdown section's body."""
    rates, workloads, choices = env["rates"], env["workloads"], env["choices"]
    links = []
    if shaped := [rate_label(r) for r in rates if r != "loopback"]:
        links.append(", ".join(shaped) + " (each a veth between two network namespaces made for "
                     "the run, shaped with tbf on both ends: burst 1 ms of the rate, at least "
                     "32kbit; queue latency 100 ms; no added delay)")
    if "loopback" in rates:
        links.append("unlimited loopback (no namespaces; alice on 127.0.0.1, bob on 127.0.0.2)")
    body = [
        "Goodput of a proxy pair (alice sends, bob receives) for each compression choice, set "
        "with `set plugin NAME 0 LINE` on both daemons, against link rate: "
        + " and ".join(links) + ". The load is drbd-sim, protocol A, 64 KiB writes as fast as "
        "the primary can; "
        f"goodput = the secondary's verified bytes per second over a {env['window']:g} s window "
        f"after {env['warmup']:g} s of warm-up (its `--progress 0.5` lines), the same for every "
        "choice; fresh daemons (and namespaces) per run; memlimit "
        f"{env['memlimit'] or 'the default (16M)'}. {env['runs']} run(s) per cell, interleaved "
        "round-robin; cells are medians in MB/s (10⁶ bytes). A column's heading gives the "
        "link's TCP ceiling (rate × 1448/1500) in MB/s. For `auto`, the codec alice was on at "
        "the end of the window (`print statistics`, `NAME.codec`) is shown beside its goodput.",
        "",
        "Workloads: " + "; ".join(WORKLOAD_TEXT[w](env) for w in workloads) + ".",
        "",
    ]
    if env.get("skipped"):
        body += [f"Not measured: {env['skipped']}", ""]
    fixed = [c for c in choices if c not in ("none", "auto")]
    if env.get("reference") and fixed:
        ref = env["reference"]
        body += ["Each fixed codec alone on the first 16 MiB of each workload, in "
                 f"{CHUNK_LIMIT >> 10} KiB chunks (the most the proxy compresses at once), one "
                 "thread in this process (indicative: one pass):", "",
                 "| codec | " + " | ".join(f"{w} ratio | {w} MB/s" for w in workloads) + " |",
                 "|---" * (1 + 2 * len(workloads)) + "|"]
        for c in fixed:
            body.append(f"| {c} | " + " | ".join(
                f"{ref[w][c]['ratio']:.2f} | {ref[w][c]['mb_per_s']:.0f}"
                if c in ref.get(w, {}) else "— | —" for w in workloads) + " |")
        body.append("")
    statements = []
    for workload in workloads:
        body += [f"**{workload}**, goodput MB/s:", "",
                 *workload_table(results, workload, rates, choices, env.get("lines")), "",
                 *ratio_table(results, workload, rates, choices), ""]
        if "auto" in choices:
            v = verdicts(results, workload, rates, choices)
            held = [r for r in rates if v[r]["holds"]]
            missed = [r for r in rates if v[r]["holds"] is False]
            unknown = [r for r in rates if v[r]["holds"] is None]
            statements.append(
                f"- {workload}: auto ≥ {TARGET} × the best fixed choice holds at "
                + (", ".join(f"{rate_label(r)} ({v[r]['ratio']:.2f} of {v[r]['best']})"
                             for r in held) or "no rate")
                + ("; **misses** at " + ", ".join(
                    f"{rate_label(r)} ({v[r]['ratio']:.2f} of {v[r]['best']})" for r in missed)
                   if missed else "")
                + ("; not measured at " + ", ".join(map(rate_label, unknown)) if unknown else "")
                + ".")
    if statements:
        holds = [v["holds"] for w in workloads
                 for v in verdicts(results, w, rates, choices).values()]
        verdict = ("**does not hold**" if False in holds else "**holds**" if all(holds)
                   else "not judged: a column has no auto or no fixed result")
        body += [f"Target auto ≥ {TARGET} × best fixed in every column: {verdict}.", "",
                 *statements, ""]
    else:
        body += ["`auto` was not measured in this run (`--choices` without it), so the target "
                 "is not judged.", ""]
    failures = [f"- {r['rate']} {r['workload']} {r['choice']} run {r['run']}: {r['error']}"
                for r in results if "error" in r]
    body += ["Failed runs: " + ("none" if not failures else ""), *failures, ""]
    if image is not None:
        body += [f"![goodput per choice and link rate]({os.path.relpath(image, out.parent)})", ""]
    body += [
        f"- date: {env['started']}; {env.get('seconds', '?')} s in all",
        f"- command: `{env['command']}`",
        f"- nproc: {env['nproc']}; load average at start: {env['load']}",
        f"- kernel: {env['kernel']}; python: {env['python']}; {env['versions']}",
        f"- TCP congestion control: {env['cc']}; tcp_wmem {env['wmem']}; tcp_rmem {env['rmem']}",
        f"- tree: {env['tree']}",
    ]
    return "\n".join(body)


def environment(args: argparse.Namespace, started: str, load: str) -> dict[str, Any]:
    import lz4
    import twisted
    import zstandard

    def sysctl(name: str) -> str:
        with contextlib.suppress(OSError):
            return " ".join(Path(f"/proc/sys/net/ipv4/{name}").read_text().split())
        return "?"

    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=HERE.parent)
    return dict(started=started, load=load, command=" ".join([".venv/bin/python", *sys.argv]),
                nproc=os.cpu_count(), kernel=platform.release(),
                python=platform.python_version(),
                versions=f"twisted {twisted.__version__}, lz4 {lz4.__version__}, "
                         f"zstandard {zstandard.__version__}",
                cc=sysctl("tcp_congestion_control"), wmem=sysctl("tcp_wmem"),
                rmem=sysctl("tcp_rmem"), tree=git.stdout.strip() or "unknown",
                warmup=args.warmup, window=args.window, runs=args.runs, memlimit=args.memlimit)


def publish(results: list[dict], env: dict, args: argparse.Namespace) -> str:
    out = Path(args.out)
    img_dir = Path(args.img_dir) if args.img_dir else out.parent / "img"
    body = report(results, env, out, plot(results, env, img_dir))
    write_section(out, SECTION, TITLE, body)
    return body


# -- main ------------------------------------------------------------------------------------------
def _list(text: str, known: tuple[str, ...] | None, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if known is not None and x not in known]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(bad) or 'none given'}; choose from {', '.join(known or ())}")
    return items


def _rates(text: str) -> list[str]:
    items = _list(text, None, "rates")
    for rate in items:
        if rate != "loopback":
            try:
                parse_rate(rate)
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"{e} (or loopback)") from None
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--warmup", type=float, default=5, help="s before the window (default 5)")
    parser.add_argument("--window", type=float, default=12,
                        help="s of goodput measured (default 12)")
    parser.add_argument("--rates", type=_rates, default=list(RATES),
                        help="tbf rates (10mbit, 1gbit, ...) and/or loopback, comma-separated"
                             f" (default {','.join(RATES)})")
    parser.add_argument("--workloads", type=lambda t: _list(t, WORKLOADS, "workloads"),
                        default=list(WORKLOADS), help=f"default {','.join(WORKLOADS)}")
    parser.add_argument("--choices", type=lambda t: _list(t, tuple(CHOICES), "choices"),
                        default=list(CHOICES), help=f"default {','.join(CHOICES)}")
    parser.add_argument("--auto-line", default=None, metavar="LINE",
                        help="the plugin line of the auto choice (default 'auto'), e.g."
                             " 'auto max-level 9'")
    parser.add_argument("--memlimit", default=None, help="per proxy (default: the daemon's)")
    parser.add_argument("--corpus", default=None, metavar="FILE",
                        help="use FILE as the corpus instead of building one")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--img-dir", default=None, help="default: img/ beside --out")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--from-json", default=None,
                        help="no measurement: write the section from a --json file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs")
    args = parser.parse_args()
    if args.auto_line:
        CHOICES["auto"] = args.auto_line
    given: Corpus | None = None
    if args.corpus and "corpus" in args.workloads and not args.from_json:
        try:
            given = Corpus.load(args.corpus)
        except CorpusError as e:
            parser.error(str(e))
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(publish(saved["results"], saved["env"], args))
        return 0

    INTERRUPTS.install()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    env = environment(args, started, load)
    rates = list(args.rates)
    shaped = [r for r in rates if r != "loopback"]
    if shaped and wan_available():
        env["skipped"] = f"{', '.join(map(rate_label, shaped))}: {wan_available()}."
        print(f"skipped {', '.join(shaped)}: {wan_available()}", flush=True)
        rates = [r for r in rates if r == "loopback"]
    if not rates:
        print("nothing to run")
        return 0
    env.update(rates=rates, workloads=args.workloads, choices=args.choices,
               lines={c: CHOICES[c] for c in args.choices})
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="drbdproxy-adaptive-"))
    results: list[dict] = []
    failed = True
    try:
        errors = check_choices(args.choices, tmp)
        if errors:
            failed = False  # nothing was measured: no logs worth keeping
            print("not every choice is accepted by this drbd-proxy:\n  " + "\n  ".join(errors)
                  + "\nleave it out with --choices", file=sys.stderr)
            return 1
        corpus: Path | None = None
        loaded: Corpus | None = None
        if "corpus" in args.workloads:
            if given is not None:
                corpus, loaded = Path(given.path).resolve(), given
                env["corpus_parts"] = [dict(source=str(corpus), dirs=[], bytes=len(given.data))]
            else:
                corpus = tmp / "corpus.tar"
                env["corpus_parts"] = build_corpus(corpus)
                loaded = Corpus.load(corpus)
            env["corpus_crc32"] = f"{loaded.fingerprint:08x}"
            print(f"corpus {corpus}: {len(loaded.data) >> 20} MiB, crc32"
                  f" {loaded.fingerprint:08x}", flush=True)
        env["reference"] = {
            w: codec_reference(Workload.create(w, corpus=loaded if w == "corpus" else None),
                               args.choices) for w in args.workloads}
        for w, ref in env["reference"].items():
            if ref:
                print(f"codecs on {w}: " + ", ".join(
                    f"{c} {x['ratio']:.2f}x {x['mb_per_s']:.0f} MB/s" for c, x in ref.items()),
                    flush=True)
        n = 0
        for run in range(1, args.runs + 1):
            k = (run - 1) % len(args.choices)
            order = args.choices[k:] + args.choices[:k]  # a different choice goes first each run
            for rate in rates:
                for workload in args.workloads:
                    for choice in order:
                        n += 1
                        workdir = tmp / f"{n}"
                        workdir.mkdir()
                        cell = dict(run=run, rate=rate, workload=workload, choice=choice)
                        try:
                            cell.update(measure(rate, workload, choice, corpus, workdir, args))
                        except (RuntimeError, AssertionError, DaemonFailed, OSError, KeyError,
                                subprocess.SubprocessError) as e:
                            cell["error"] = (str(e).strip().splitlines() or [repr(e)])[-1][:300]
                        results.append(cell)
                        print(f"run {run} {rate:>8} {workload:6} {choice:6} " + (
                            f"{cell['goodput']:8.2f} MB/s ratio {cell['ratio'] or 0:.2f}"
                            f" codec {cell['codec']}" if "goodput" in cell
                            else f"FAILED: {cell['error']}"), flush=True)
            if args.json:  # what is done so far, should a later run fail
                Path(args.json).write_text(json.dumps(dict(results=results, env=env), indent=1))
        failed = any("error" in r for r in results)
    except KeyboardInterrupt:
        failed = False  # the logs of a run cut short explain nothing
        print(f"interrupted: every process and namespace of this run was removed; nothing"
              f" written{'' if not args.json else f' but {args.json}'}", file=sys.stderr)
        return 130
    finally:
        if failed or args.keep_logs:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    env["seconds"] = round(time.monotonic() - t0)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, env=env), indent=1))
    print(publish(results, env, args))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
