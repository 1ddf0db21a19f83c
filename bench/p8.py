"""P8: goodput through the proxy pair over a long, lossy WAN vs DRBD connected directly.

The WAN is bench/wanem.py at 100 Mbit/s for every RTT x loss cell (default {1, 50, 150} ms x
{0, 0.1, 1} %). Each cell is measured with the namespaces' default TCP congestion control forced
to CUBIC (what most DRBD hosts run) and to BBR, in three setups, one after the other on the same
WAN:

- **direct**: drbd-sim primary (namespace A) to secondary (B) over the WAN, no proxy, with
  DRBD's usual socket buffers (sndbuf-size/rcvbuf-size 0: the kernel autotunes them);
- **proxy, link-cc bbr**: through alice (A) and bob (B), lz4, the link's default congestion
  control;
- **proxy, link-cc cubic**: the same with ``set link-cc NAME cubic``, i.e. a kernel without BBR.

drbd-sim writes disk-like data under protocol A with no size limit; goodput is the secondary's
verified bytes per second over ``--window`` s after ``--warmup`` s (from its ``--progress``
lines), so a collapsed link costs no more time than a full one. **P8** = proxied goodput /
(link ceiling x compression ratio), the ratio being alice's raw / wire counters of the cell and
the ceiling the link's TCP goodput (100 Mbit/s x 1448/1500 = 12.07 MB/s). The sender's link
socket (the proxies' bulk link, or DRBD's data socket) is sampled every second with ``ss -tmi``:
cwnd, bytes in flight, its send buffer (``tb``) and how much of the time the send buffer or the
receiver's window limited it; the receiver's buffer (``rb``) likewise.

Usage (root): .venv/bin/python bench/p8.py [--runs 3] [--rtts 1,50,150] [--losses 0,0.1,1]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import wansites as ws  # noqa: E402
from wan import wait_linked  # noqa: E402
from p8report import report, sndbuf_report  # noqa: E402
from results import write_section  # noqa: E402
from wanem import available, wan  # noqa: E402

NS = ("p8A", "p8B")
HOST_CCS = ("cubic", "bbr")
SETUPS = {"direct": None, "proxy, link-cc bbr": 0, "proxy, link-cc cubic": 1}
TITLE = "P8: goodput over a long, lossy WAN (wanem)"
SNDBUF_SETUP = "sndbuf-size"
ALLOWED = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


def ceiling(rate_bit: float, mtu: int = 1500) -> float:
    """The link's TCP goodput in MB/s: MTU - 52 bytes of payload (IP, TCP with timestamps)."""
    return rate_bit / 8 * (mtu - 52) / mtu / 1e6


def measure(w, conn: int | None, actl: ws.Ctl | None, warmup: float, window: float) -> dict:
    """One setup on the running WAN: goodput over the window, the compression ratio, and the
    kernel's view of the sending and receiving sockets."""
    name = ws.conn_name(conn, "alice") if conn is not None else ""
    port = ws.DIRECT_PORT if conn is None else ws.ports(conn)[2]
    before = actl.stats() if actl is not None else {}
    with contextlib.ExitStack() as stack:
        primary, secondary = ws.sims(stack, w, conn, ["--duration", f"{warmup + window + 60:g}",
                                                      "--progress", "0.5"])
        secondary.wait_for_line("connected:", timeout=60)
        start = time.monotonic()
        sender = ws.SocketWatch(w.a, peer_port=port, local_port=port)
        receiver = ws.SocketWatch(w.b, busiest="bytes_received", peer_port=port, local_port=port)
        time.sleep(warmup + window)  # the measurement runs for this long; progress lines count
        goodput = ws.window_rate(ws.progress(secondary), start, warmup)
        for sim in (primary, secondary):
            if sim.proc.poll() is not None:
                raise RuntimeError(f"drbd-sim ended early: {''.join(sim.stderr)[-400:]}")
        after = actl.stats() if actl is not None else {}
        snd, rcv = sender.summary(), receiver.summary()
    res = dict(goodput=goodput, snd=snd, rcv=rcv)
    if actl is not None:
        def delta(key: str) -> int:  # a counter appears with the connection's first data
            return int(after.get(f"{name}.{key}", 0)) - int(before.get(f"{name}.{key}", 0))

        raw, wire = delta("data.to_peer.bytes"), delta("data.to_peer.wire_bytes")
        res.update(ratio=raw / wire if wire else None, link_cc=after.get(f"{name}.link_cc"))
    # What the last setup left in flight must not share the link with the next one.
    res["drained"] = ws.wait_drained(w.a, port, timeout=15)
    return res


def one_wan(host_cc: str, rtt: float, losses: list[float], workdir: Path, warmup: float,
            window: float, run: int, sndbuf: str | None = None) -> list[dict]:
    """Every loss x setup of one host default and RTT, on one WAN with one proxy pair whose
    links persist from cell to cell, as a proxy's do."""
    out = []
    with wan("100mbit", f"{rtt:g}ms", 0, ns=NS, cc=host_cc) as w, contextlib.ExitStack() as stack:
        conns = [{"memlimit": "64M"}, {"memlimit": "64M", "link-cc": "cubic"}]
        setups = dict(SETUPS)
        if sndbuf:  # the bbr link again, its send buffer set rather than autotuned
            conns.append({"memlimit": "64M", "sndbuf-size": sndbuf})
            setups = {"proxy, link-cc bbr": 0, f"proxy, link-cc bbr, {SNDBUF_SETUP} {sndbuf}": 2}
        _, actl = ws.start_site(stack, w, workdir, "alice", conns)
        _, bctl = ws.start_site(stack, w, workdir, "bob", conns)
        wait_linked([(actl, "alice"), (bctl, "bob")], len(conns))
        for loss in losses:
            w.set(loss=f"{loss:g}%")
            for setup, conn in setups.items():
                try:
                    r = measure(w, conn, actl if conn is not None else None, warmup, window)
                except (RuntimeError, AssertionError, KeyError, OSError) as e:
                    print(f"  {host_cc} {rtt:g} ms {loss:g} % {setup}: FAILED {e}", flush=True)
                    r = dict(error=str(e))
                r.update(run=run, host_cc=host_cc, rtt=rtt, loss=loss, setup=setup,
                         ceiling=ceiling(w.params.rate, w.params.mtu))
                out.append(r)
                if "goodput" in r:
                    p8 = (f", P8 {r['goodput'] / (r['ceiling'] * r['ratio']):.2f}"
                          if r.get("ratio") else "")
                    snd = r["snd"]
                    print(f"  run {run} host {host_cc} {rtt:g} ms {loss:g} % {setup}:"
                          f" {r['goodput']:.2f} MB/s{p8}; sender {snd.get('cc')} cwnd"
                          f" {(snd.get('cwnd_bytes') or 0) / 1e6:.2f} MB, sndbuf"
                          f" {(snd.get('sndbuf_max') or 0) / 1e6:.2f} MB", flush=True)
    return out


def publish(results: list[dict], args: argparse.Namespace, env: dict) -> None:
    if any(SNDBUF_SETUP in r["setup"] for r in results):
        body = sndbuf_report(results, args, env)
        write_section(Path(args.out), "p8-sndbuf", "P8 aside: the link's send buffer at 150 ms",
                      body)
    else:
        body = report(results, args, env)
        section = args.section or "p8"
        title = args.title or (TITLE if section == "p8" else f"{TITLE}: {section}")
        write_section(Path(args.out), section, title, body)
    print(body)


@contextlib.contextmanager
def cubic_allowed():
    """A namespace may make only an allowed algorithm its default: allow cubic for the run and
    put the host's list back afterwards."""
    old = ALLOWED.read_text().split()
    if "cubic" not in old:
        print(f"net.ipv4.tcp_allowed_congestion_control: {' '.join(old)} + cubic for this run",
              flush=True)
        ALLOWED.write_text(" ".join([*old, "cubic"]))
    try:
        yield
    finally:
        if "cubic" not in old:
            ALLOWED.write_text(" ".join(old))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rtts", default="1,50,150", help="ms, comma-separated")
    parser.add_argument("--losses", default="0,0.1,1", help="%%, comma-separated")
    parser.add_argument("--host-ccs", default=",".join(HOST_CCS))
    parser.add_argument("--warmup", type=float, default=3, help="s before the window")
    parser.add_argument("--window", type=float, default=8, help="s of goodput measured")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    parser.add_argument("--img-dir", default=str(HERE.parent / "docs" / "img"))
    parser.add_argument("--sndbuf", default=None,
                        help="instead of the P8 setups: the bbr link with an autotuned send"
                             " buffer vs with sndbuf-size SIZE (section p8-sndbuf)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--section", default=None,
                        help="the section of --out to write (default p8), e.g. for a partial run")
    parser.add_argument("--title", default=None, help="the section's heading")
    parser.add_argument("--from-json", default=None,
                        help="no measurement: write the section from a --json file")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        publish(saved["results"], args, saved["env"])
        return 0
    if available():
        print(f"skipped: {available()}")
        return 0
    rtts = [float(x) for x in args.rtts.split(",")]
    losses = [float(x) for x in args.losses.split(",")]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: list[dict] = []
    t0 = time.monotonic()
    with cubic_allowed(), tempfile.TemporaryDirectory() as tmp:
        for run in range(1, args.runs + 1):  # runs outermost: drift spreads over every cell
            for host_cc in args.host_ccs.split(","):
                for rtt in rtts:
                    results += one_wan(host_cc, rtt, losses, Path(tmp), args.warmup,
                                       args.window, run, args.sndbuf)
            if args.json:  # what is done so far, should a later run fail
                Path(args.json).write_text(json.dumps(dict(results=results), indent=1))
    env = dict(started=started, load=load, seconds=round(time.monotonic() - t0),
               command=" ".join([".venv/bin/python", *sys.argv]), nproc=os.cpu_count(),
               kernel=platform.release(), python=platform.python_version(),
               wmem=Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split(),
               rmem=Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split(), sndbuf=args.sndbuf)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, env=env), indent=1))
    publish(results, args, env)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
