"""``drbd-proxy-demo``: the embedded demo that ``make demo`` runs.

For now it replicates between two drbd-sim nodes directly over loopback (the proxy pair joins
them in the next step of the project), showing live progress and a verified summary.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, Sequence

from .drbd.payloads import WireProtocol
from .sim.config import SimConfig
from .units import format_size, parse_size


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _configs(size: int, protocol: WireProtocol) -> tuple[SimConfig, SimConfig]:
    a, b = ("127.0.0.1", _free_port()), ("127.0.0.1", _free_port())
    common: dict[str, Any] = dict(protocol=protocol, size=size, ping_timeout=5.0)
    return (
        SimConfig(role="primary", listen=a, peer=b, **common),
        SimConfig(role="secondary", listen=b, peer=a, **common),
    )


def _summary(reports: list[dict[str, Any]]) -> str:
    rows = [("", "primary (alice)", "secondary (bob)")]

    def row(label: str, fn: Any) -> None:
        rows.append((label, *(str(fn(r)) for r in reports)))

    row("verified", lambda r: r["verified"])
    row("bytes", lambda r: format_size(r["bytes"]))
    row("writes", lambda r: r["writes"])
    row("epochs", lambda r: r["epochs"])
    row("MB/s", lambda r: r["mb_per_s"])
    row("write latency p50/p99 ms", lambda r: f"{r['write_latency_ms']['p50']}/{r['write_latency_ms']['p99']}")
    row("ping RTT p50 ms", lambda r: r["ping_rtt_ms"]["p50"])
    row("error", lambda r: r["error"] or "-")
    widths = [max(len(cells[i]) for cells in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in rows)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="drbd-proxy-demo", description=__doc__)
    parser.add_argument("--size", default="256M", help="bytes the primary writes (default 256M)")
    parser.add_argument("--protocol", default="C", choices=("A", "B", "C"))
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.internet.task import LoopingCall

    from .sim.node import Node, stderr_log

    primary_cfg, secondary_cfg = _configs(parse_size(args.size), WireProtocol[args.protocol])
    nodes = [
        Node(primary_cfg, reactor, stderr_log("alice/primary")),
        Node(secondary_cfg, reactor, stderr_log("bob/secondary")),
    ]
    results: list[dict[str, Any]] = []

    def progress() -> None:
        written, verified = (n.stats.bytes for n in nodes)
        print(f"  written {format_size(written):>8}   verified on bob {format_size(verified):>8}",
              flush=True)

    ticker = LoopingCall(progress)

    def done(reports: list[dict[str, Any]]) -> None:
        results.extend(reports)
        if ticker.running:
            ticker.stop()
        reactor.stop()  # type: ignore[attr-defined]

    def start() -> None:
        print(f"drbd-proxy-demo: replicating {args.size} (protocol {args.protocol}) from alice to bob")
        d = gatherResults([nodes[1].run(), nodes[0].run()])
        d.addCallback(lambda reports: done([reports[1], reports[0]]))
        ticker.start(0.5, now=False)

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    print(_summary(results))
    ok = len(results) == 2 and all(r["verified"] for r in results)
    print("drbd-proxy-demo: end-to-end verification", "PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
