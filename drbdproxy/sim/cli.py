"""``drbd-sim``: the command line of the userspace DRBD peer."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any, Callable, NoReturn, Sequence

from drbdproxy.runtime.collector import tune_gc
from drbdproxy.drbd.payloads import WireProtocol
from drbdproxy.runtime.malloc import tune_malloc
from drbdproxy.units import parse_address, parse_rate, parse_size
from drbdproxy.sim.config import SimConfig
from drbdproxy.sim.workload import (
    CORPUS_MAX, CORPUS_MIN, MAX_BLOCK, STAMP, WORKLOADS, Corpus, CorpusError,
)

DESCRIPTION = """\
A userspace DRBD peer speaking the DRBD 8.4 dialect (protocol 86-101, h100 headers).
Like DRBD, a node listens on its own address and connects to its peer, opening a data and a
meta socket. The primary streams P_DATA in epochs closed by P_BARRIER; the secondary checks
every block's content and order and acknowledges per protocol A, B or C. Both ping each other
on the meta socket. At the end it prints a JSON report; the exit status is 0 only if the run
was verified, 1 if it failed, 2 for a usage error. Several --listen/--peer pairs run as many
connections in one process (a load of many that costs little more than one); the first of them
to fail stops the rest.

Block content is deterministic, so the secondary regenerates and checks it byte for byte: a
generated workload (disk, random, zeros), or with --workload corpus slices of a file of real
data given to both nodes with --corpus FILE (e.g. a tar of system files). The secondary learns
the workload from the first block and checks that its --corpus is the primary's file.
"""

EPILOG = """\
example (two nodes on loopback, directly):
  drbd-sim --role secondary --listen 127.0.0.1:7790 --peer 127.0.0.1:7789 &
  drbd-sim --role primary   --listen 127.0.0.1:7789 --peer 127.0.0.1:7790 --size 64M

the same with real data (both nodes read the same file):
  tar cf - /usr/share/man /etc 2>/dev/null | head -c 64M > corpus.tar
  drbd-sim --role secondary --listen 127.0.0.1:7790 --peer 127.0.0.1:7789 --corpus corpus.tar &
  drbd-sim --role primary   --listen 127.0.0.1:7789 --peer 127.0.0.1:7790 --size 64M \
           --workload corpus --corpus corpus.tar

SIGUSR1 tells a primary to stop writing: it ends as at --size or --duration, cleanly once
everything it wrote is acknowledged, with its report.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as the rest of drbdproxy's tools do.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _arg(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A drbdproxy.units parser for argparse, which shows only an ArgumentTypeError's message."""
    def argument(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return argument


_size, _address = _arg(parse_size), _arg(parse_address)


def _positive(kind: type) -> Any:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="drbd-sim",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--role", required=True, choices=("primary", "secondary"),
      help="primary writes and verifies acks; secondary receives, verifies and acks")
    a("--listen", required=True, type=_address, metavar="IP:PORT", action="append",
      help="this node's DRBD address: where it listens (and the source IP of its connects);"
           " given N times with --peer N times, one process runs N connections, the i-th"
           " --listen with the i-th --peer")
    a("--peer", required=True, type=_address, metavar="IP:PORT", action="append",
      help="where it connects: the local proxy's inside address, or the other node directly")
    a("--protocol", default="C", choices=("A", "B", "C"),
      help="DRBD replication protocol: A async, B receive ack, C write ack (default C)")
    a("--workload", default="disk", choices=WORKLOADS,
      help="primary's block content: disk (filesystem-like, about 2:1 lz4 compressible),"
           " random (incompressible), zeros, or corpus (slices of --corpus FILE)"
           " (default disk); the secondary detects it")
    a("--corpus", default=None, metavar="FILE",
      help=f"the corpus workload's data: the first {CORPUS_MAX >> 20} MiB of FILE (at least"
           f" {CORPUS_MIN >> 20} MiB). Both nodes need the same file: the primary writes from"
           " it, the secondary checks against it and says so if its file differs")
    a("--seed", type=int, default=1,
      help="seed of a generated workload (default 1; corpus stamps its file's crc32 instead)")
    a("--size", type=_size, default=None, metavar="BYTES",
      help="bytes the primary writes, k/M/G suffixes (default 64M, or unlimited with --duration)")
    a("--duration", type=_positive(float), default=None, metavar="S",
      help="the primary stops writing after S seconds (whichever of --size/--duration comes first)")
    a("--block-size", type=_size, default=64 << 10, metavar="BYTES",
      help=f"bytes per write, a multiple of 512 from 512 to {MAX_BLOCK >> 10}k (default 64k)")
    a("--epoch", type=_positive(int), default=2048, metavar="WRITES",
      help="writes per epoch before a P_BARRIER (DRBD's max-epoch-size, default 2048)")
    a("--rate", type=_arg(parse_rate), default=None, metavar="BYTES/S",
      help="cap the primary's write rate, k/M/G suffixes, optional /s (default: as fast as it can)")
    a("--iodepth", type=int, default=0, metavar="N",
      help="protocols B/C: at most N writes waiting for their ack (default 0: no limit)")
    a("--ping-int", type=_positive(float), default=1.0, metavar="S",
      help="seconds between P_PINGs on the meta socket (default 1; DRBD's is 10)")
    a("--ping-timeout", type=_positive(float), default=0.5, metavar="S",
      help="seconds a P_PING_ACK may take before the connection is dropped (default 0.5)")
    a("--connect-int", type=_positive(float), default=0.5, metavar="S",
      help="seconds between connection attempts, randomised like DRBD's (default 0.5)")
    a("--connect-timeout", type=_positive(float), default=60.0, metavar="S",
      help="give up if not connected within S seconds (default 60)")
    a("--device-size", type=_size, default=1 << 30, metavar="BYTES",
      help="size of the simulated device; writes wrap around at its end (default 1G)")
    a("--progress", type=_positive(float), default=None, metavar="S",
      help="log bytes written/verified to stderr every S seconds")
    a("--report", default="-", metavar="FILE|-",
      help="where to write the JSON report (default -: standard output)")
    return p


def configs_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser
                      ) -> list[SimConfig]:
    """One SimConfig per connection (per --listen/--peer pair), the other settings shared."""
    if len(args.listen) != len(args.peer):
        parser.error(f"{len(args.listen)} --listen but {len(args.peer)} --peer: give them in pairs")
    if len(set(args.listen)) != len(args.listen):
        parser.error("every --listen address must differ")
    bs = args.block_size
    if bs % 512 or not max(512, STAMP.size) <= bs <= MAX_BLOCK:
        parser.error(f"--block-size {bs} must be a multiple of 512 from 512 to {MAX_BLOCK}")
    if args.device_size < 2 * bs:
        parser.error("--device-size must hold at least two blocks")
    if any(listen == peer for listen, peer in zip(args.listen, args.peer)):
        parser.error("--listen and --peer must differ")
    size = args.size if args.size is not None else (None if args.duration else 64 << 20)
    corpus = None
    if args.corpus is not None:
        try:
            corpus = Corpus.load(args.corpus)
        except CorpusError as e:
            parser.error(f"--corpus: {e}")
    elif args.workload == "corpus":
        parser.error("--workload corpus needs --corpus FILE")
    return [SimConfig(
        role=args.role,
        listen=listen,
        peer=peer,
        protocol=WireProtocol[args.protocol],
        workload=args.workload,
        seed=args.seed,
        corpus=corpus,
        size=size,
        duration=args.duration,
        block_size=bs,
        epoch=args.epoch,
        rate=args.rate,
        iodepth=max(0, args.iodepth),
        ping_int=args.ping_int,
        ping_timeout=args.ping_timeout,
        connect_int=args.connect_int,
        connect_timeout=args.connect_timeout,
        device_size=args.device_size,
        progress=args.progress or 0.0,
    ) for listen, peer in zip(args.listen, args.peer)]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    configs = configs_from_args(args, parser)
    tune_malloc()

    from twisted.internet import reactor
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from drbdproxy.sim.node import Node, stderr_log

    tune_gc(reactor)
    # Only Twisted's own warnings and unhandled errors: the sim's events are its stderr lines.
    errors = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([errors], redirectStandardIO=False)

    result: dict[str, Any] = {}

    def start() -> None:
        # One connection logs as drbd-sim[ROLE]; several as drbd-sim[ROLE#I], I from 0.
        names = [args.role] if len(configs) == 1 else [
            f"{args.role}#{i}" for i in range(len(configs))]
        nodes = [Node(c, reactor, stderr_log(name)) for c, name in zip(configs, names)]
        try:
            runs = [node.run() for node in nodes]
        except Exception as e:  # a port in use, an address we cannot bind
            print(f"drbd-sim: error: {e}", file=sys.stderr)
            result["_startup_error"] = True
            reactor.stop()
            return
        reports: list[dict[str, Any] | None] = [None] * len(nodes)
        failed: list[int] = []

        def ended(report: dict[str, Any], i: int) -> None:
            reports[i] = report
            if not report["verified"] and not failed:  # the run has failed: end it
                failed.append(i)
                for j, other in enumerate(nodes):
                    if reports[j] is None:
                        other.fail(f"stopped: connection {i} failed")  # re-enters ended()
            if all(r is not None for r in reports) and not result:
                result.update(combined_report([r for r in reports if r is not None],
                                              failed[0] if failed else None))
                reactor.stop()

        def crashed(failure: Any) -> None:  # a bug: say so and end, rather than hang
            print(f"drbd-sim: error: {failure.getTraceback()}", file=sys.stderr)
            if not result:
                result["_startup_error"] = True
                reactor.stop()

        for i, d in enumerate(runs):
            d.addCallback(ended, i).addErrback(crashed)

        def stop_nodes() -> None:
            for node in nodes:
                node.stopWriting()

        def stop_writing(signum: int, frame: Any) -> None:
            # A signal handler may run between any two bytecodes: act from the reactor.
            reactor.callFromThread(stop_nodes)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, stop_writing)

    reactor.callWhenRunning(start)
    reactor.run()
    if not result or result.get("_startup_error"):
        sys.exit(1)
    text = json.dumps(result, indent=2)
    if args.report == "-":
        print(text, flush=True)
    else:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    sys.exit(0 if result["verified"] else 1)


def combined_report(reports: list[dict[str, Any]], failed: int | None) -> dict[str, Any]:
    """One connection's report as it is; several as their list with the totals that matter, and
    the error of the connection that failed first (``failed``), which stopped the others."""
    if len(reports) == 1:
        return reports[0]
    return {
        "role": reports[0]["role"],
        "verified": all(r["verified"] for r in reports),
        "error": None if failed is None else f"connection {failed}: {reports[failed]['error']}",
        "bytes": sum(r["bytes"] for r in reports),
        "writes": sum(r["writes"] for r in reports),
        "connections": reports,
    }


if __name__ == "__main__":
    main()
