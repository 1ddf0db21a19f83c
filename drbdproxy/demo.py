"""``drbd-proxy-demo``: the embedded demo that ``make demo`` runs (SPEC 3.6).

Everything on loopback: two proxy daemons (sites alice and bob) started by twistd with
``--drbd-conf etc/demo/drbd.conf``, and two drbd-sim nodes in this process at the DRBD addresses
that file gives. alice's DRBD writes disk-like data through the pair; the link from alice to bob
is capped (bwlimit), so alice's buffer visibly fills to memlimit and drains.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from drbdproxy.config import ProxyConnectionConfig, load
from drbdproxy.daemon import ProxyDaemon
from drbdproxy.drbd.payloads import WireProtocol
from drbdproxy.sim.config import SimConfig
from drbdproxy.units import format_size, parse_size

CONF_NAME = Path("etc") / "demo" / "drbd.conf"


def demo_conf() -> Path:
    """etc/demo/drbd.conf of the source tree (``make demo``), else the installed copy."""
    for candidate in (Path.cwd() / CONF_NAME, Path(sys.prefix) / "share" / "drbdproxy" / "demo" / "drbd.conf"):
        if candidate.exists():
            return candidate
    raise SystemExit(f"drbd-proxy-demo: cannot find {CONF_NAME}")


def _wait_linked(alice: ProxyDaemon, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while alice.stats().get("r0-bob-alice.state") not in ("ProxyConnected", "Connected"):
        if time.monotonic() > deadline:
            raise RuntimeError("the proxies did not link up")
        time.sleep(0.05)


def _replicate(a: ProxyConnectionConfig, b: ProxyConnectionConfig, size: int,
               protocol: WireProtocol, alice: ProxyDaemon, bob: ProxyDaemon) -> list[dict[str, Any]]:
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.internet.task import LoopingCall

    from drbdproxy.sim.node import Node

    # Each DRBD listens on its own address and connects to its proxy's inside address.
    common: dict[str, Any] = dict(protocol=protocol, size=size, ping_timeout=10.0)
    primary = Node(SimConfig(role="primary", listen=a.connect_drbd, peer=a.listen_inside,
                             **common), reactor, lambda message: None)
    secondary = Node(SimConfig(role="secondary", listen=b.connect_drbd, peer=b.listen_inside,
                               **common), reactor, lambda message: None)
    results: list[dict[str, Any]] = []
    started = time.monotonic()

    def progress() -> None:
        s = alice.stats()
        raw = int(s.get("r0-bob-alice.data.to_peer.bytes", 0))
        packed = int(s.get("r0-bob-alice.data.to_peer.wire_bytes", 0))
        ratio = f"{raw / packed:4.2f}" if packed else "   -"
        # What really crossed the link is what bob received.
        wire = int(bob.stats().get("r0-alice-bob.data.from_peer.wire_bytes", 0))
        print(f"  {time.monotonic() - started:5.1f}s  written {format_size(primary.stats.bytes):>7}"
              f"  buffered at alice {format_size(int(s.get('r0-bob-alice.buffered', 0))):>7}"
              f"  sent over the link {format_size(wire):>7} (lz4 {ratio}:1)"
              f"  verified at bob {format_size(secondary.stats.bytes):>7}", flush=True)

    ticker = LoopingCall(progress)

    def done(reports: list[dict[str, Any]]) -> None:
        results.extend([reports[1], reports[0]])
        if ticker.running:
            ticker.stop()
        reactor.stop()

    def start() -> None:
        gatherResults([secondary.run(), primary.run()]).addCallback(done)
        ticker.start(0.5, now=False)

    reactor.callWhenRunning(start)
    reactor.run()
    progress()
    return results


def _summary(reports: list[dict[str, Any]], stats: dict[str, str]) -> str:
    raw = int(stats.get("r0-bob-alice.data.to_peer.bytes", 0))
    wire = int(stats.get("r0-bob-alice.data.to_peer.wire_bytes", 0))
    p, s = reports
    rows = [
        ("primary (alice) wrote", format_size(p["bytes"]), f"{p['mb_per_s']} MB/s"),
        ("secondary (bob) verified", format_size(s["bytes"]), f"{s['mb_per_s']} MB/s"),
        ("link cap (bwlimit)", format_size(int(stats.get("r0-bob-alice.bwlimit", 0))) + "/s", ""),
        ("sent over the link", format_size(wire), f"lz4 {raw / wire:.2f}:1" if wire else ""),
        ("alice buffer peak", format_size(int(stats.get("r0-bob-alice.buffered_peak", 0))),
         f"memlimit {format_size(int(stats.get('r0-bob-alice.memlimit', 0)))}"),
        ("write latency p50/p99", f"{p['write_latency_ms']['p50']}/{p['write_latency_ms']['p99']} ms",
         "(epoch acked)"),
        ("DRBD ping RTT p50/max", f"{p['ping_rtt_ms']['p50']}/{p['ping_rtt_ms']['max']} ms", ""),
        ("errors", p["error"] or "-", s["error"] or "-"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {a.ljust(width)}  {b:>12}  {c}" for a, b, c in rows)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="drbd-proxy-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="256M", help="bytes alice's DRBD writes (default 256M)")
    parser.add_argument("--protocol", default="A", choices=("A", "B", "C"))
    parser.add_argument("--conf", default=None, help="the demo's drbd.conf (default etc/demo/drbd.conf)")
    parser.add_argument("--memlimit", default=None, help="override alice's memlimit")
    parser.add_argument("--bwlimit", default=None, help="override the link cap, bytes/s")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    conf_path = Path(args.conf) if args.conf else demo_conf()
    conf = load(conf_path)
    (a,) = conf.proxy_connections("alice")
    (b,) = conf.proxy_connections("bob")
    with tempfile.TemporaryDirectory(prefix="drbd-proxy-demo-") as tmp:
        sites = [ProxyDaemon(Path(tmp), site, "--drbd-conf", str(conf_path), "--node", site)
                 for site in ("alice", "bob")]
        try:
            for site in sites:
                site.wait_ready()
            alice, bob = sites
            for option in ("memlimit", "bwlimit"):
                if getattr(args, option):
                    alice.ctl("-c", f"set {option} {a.name} {getattr(args, option)}", check=True)
            _wait_linked(alice)
            s = alice.stats()
            print(f"drbd-proxy-demo: alice's DRBD writes {args.size} of disk-like data (protocol"
                  f" {args.protocol}) through proxy alice -> proxy bob ({conf_path}); link capped at"
                  f" {format_size(int(s.get(a.name + '.bwlimit', 0)))}/s, alice's memlimit"
                  f" {format_size(int(s[a.name + '.memlimit']))}", flush=True)
            reports = _replicate(a, b, size, WireProtocol[args.protocol], alice, bob)
            stats = alice.stats()
        finally:
            for site in sites:
                site.stop()
    print(_summary(reports, stats))
    ok = len(reports) == 2 and all(r["verified"] for r in reports)
    print("drbd-proxy-demo: end-to-end verification", "PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
