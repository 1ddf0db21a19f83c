#!/usr/bin/env python3
"""P7: 64 DRBD connections on one proxy pair -- aggregate goodput vs one connection, idle memory.

One pair of daemons on loopback, alice (primary side) and bob, with ``--conns`` (64) connections,
compression off (drbd-sim's random workload is incompressible), default memlimit. Connection i
has its own six ports (alice inside and outside, bob inside and outside, the primary's and the
secondary's DRBD port), all below the kernel's ephemeral range so that no outgoing socket of
another connection can take a DRBD port while its sim is not listening.

1. **Idle memory.** alice's and bob's VmRSS (/proc/PID/status) with the daemons up and no
   connection, with connection 0 linked, and with all of them linked (every one ProxyConnected on
   both sides, RSS settled); per connection = (RSS all - RSS none) / conns, and the marginal
   (RSS all - RSS one) / (conns - 1). alice's open file descriptors (/proc/PID/fd) likewise
   (expected: two link sockets and two listeners per connection).
2. **Aggregate goodput** with k concurrent replications for each k of ``--ks`` (1, 8, 64) on the
   same daemons: connections 0..k-1 are run by one drbd-sim secondary process (at bob) and one
   primary process (at alice), a --listen/--peer pair per connection, protocol A, 64 KiB writes
   of random data, no size limit. Establishing k connections through the proxies takes a while
   and each writes as soon as it is connected, so nothing is timed from
   process start: both daemons' ``print statistics`` are polled every 0.25 s until every one of
   the k connections has delivered ``--ramp`` bytes to bob since the sims were started, then,
   after ``--settle`` seconds and once alice's buffers are 90 % full or stopped growing (so that
   she is not also reading ahead into them: the sustained rate), the bytes of every connection
   are counted over a fixed ``--window`` (the same for every k). Goodput = bob's ``data.from_peer.bytes`` delta (what
   crossed the pair and was handed on towards the secondary) / window; alice's
   ``data.to_peer.bytes`` delta (what she read from the primaries, so it includes her buffers
   filling) and both daemons' CPU use (/proc/PID/stat) over the window are reported beside it.
   If a sim process ends because one of its connections failed before it carried data (two
   nodes establishing their sockets through the proxies can lose that race), both sims are
   started again, at most MAX_RESTARTS times per k.
   Then the checks: no sim ended before the end of the window; with the primaries frozen
   (SIGSTOP) alice's buffers drain and bob receives, on every live DRBD data stream, exactly the
   bytes alice read from it (``list subconnections``), while every secondary, which verifies
   each block as it arrives, is still running. The sims are then killed, and both daemons must
   show every connection ProxyConnected again (no DRBD sockets) with no link reconnect.
   P7 = median aggregate(64) / median aggregate(1), target >= 0.8. For the largest k the fairness
   is shown: the slowest and the fastest connection's rate in the window.
3. The same with iperf3 as the load (``--loads``, default both): connection i gets a one-off
   iperf3 server on bob's DRBD address (``iperf3 -s -1``) and a client connecting to alice's
   inside address. Its streams (control and data) do not begin with DRBD's initial packets, so
   the pair relays them as opaque streams, through the same pipeline (same links, buffers,
   memlimit, compression off); the counters are the ``opaque`` ones. drbd-sim is DRBD's
   protocol in Python; iperf3 (C, 128 KiB writes, a process pair per connection) costs little
   per byte. The run's checks are the same: with the clients frozen,
   bob received on every opaque stream exactly what alice read from it, every server is still
   running; after the kill, every iperf3 server must have reported data (``-i 1 --forceflush``),
   and the daemons must be idle (ProxyConnected, no stream, no link reconnect) with bob's
   ``opaque.from_peer.bytes`` equal to alice's ``opaque.to_peer.bytes`` per connection. The
   clients run with ``-t 3600`` and are killed like the sims (no exit status to check). The
   load processes' CPU over the window is reported beside the daemons'.
4. The sweep is repeated ``--runs`` times, interleaved (run 1: sim k = 1, 8, 64, iperf3 k = 1,
   8, 64; run 2: ...); P7 is given per load.

Every process is stopped in a ``finally``, also on Ctrl-C or SIGTERM. The section "scale" of
``--out`` is replaced; the plot goes to ``--img-dir``/scale-goodput.png.

    .venv/bin/python bench/scale.py [--runs 3] [--out docs/benchmarks.md] [--img-dir docs/img]
                                    [--conns 64] [--ks 1,8,64] [--window 5] [--sim-nice 0]
                                    [--loads sim,iperf3]

On a small machine the 2 x k sims compete with the daemons for the cores: the "MB per alice CPU
s" column separates the proxy's own cost per byte from the share of the CPU it gets.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
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
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results import cpu_seconds as process_cpu  # noqa: E402
from results import (  # noqa: E402
    listening_ports, proc_stat, pyplot, save_figure, tcp_sockets, write_section,
)
from throughput import BIN, IP, Processes, tail  # noqa: E402
from wan import Control, conn_name, med_range, rss_bytes, stop_daemon  # noqa: E402 (adds tests/)

from daemon import Daemon, wait_until  # noqa: E402 (tests/, on the path since wan)

KiB, MiB = 1 << 10, 1 << 20
POLL = 0.25  # seconds between statistics polls while waiting for the sims
TARGET = 0.8  # P7, SPEC section 5
MAX_RESTARTS = 8  # sims started again per k and run, see wait_writing
IPERF3 = shutil.which("iperf3") or "/usr/bin/iperf3"
#: --loads: name -> (label in the report, the proxy's counter kind for its streams)
LOADS = {"sim": ("drbd-sim", "data"), "iperf3": ("iperf3", "opaque")}
LOG_TROUBLE = re.compile(r"Traceback|Unhandled|\bCRITICAL\b|\berror\b|-> Connecting", re.I)


@dataclass
class Ports:
    """Connection i's ports: alice's inside/outside, bob's inside/outside, the sims' DRBD."""
    a_in: int
    a_out: int
    b_in: int
    b_out: int
    a_drbd: int
    b_drbd: int


@dataclass
class Idle:
    """RSS (bytes) and fd counts with no connection, one and all connections linked."""
    rss: dict[str, list[int]] = field(default_factory=dict)  # site -> [none, one, all]
    fds: dict[str, list[int]] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)  # site -> RSS after the last run


@dataclass
class Measure:
    """One load, k and run: the window's aggregate and per-connection rates (MB/s), or an error."""
    load: str  # a key of LOADS
    k: int
    run: int
    ok: bool = False
    error: str = ""
    agg: float = 0.0  # bob's from_peer delta / window
    agg_alice: float = 0.0  # alice's to_peer delta / window
    per_conn: list[float] = field(default_factory=list)
    ramp_s: float = 0.0  # sims started -> every connection writing
    restarts: int = 0  # sims started again (a connection lost the socket race before writing)
    handshake_retries: int = 0  # "connecting again" lines of the sims
    cpu: dict[str, float] = field(default_factory=dict)  # daemon -> cores used in the window
    load_cpu: float = 0.0  # the load processes' cores used in the window, summed
    seen: list[float] = field(default_factory=list)  # iperf3: MB each server reported received
    buffered: int = 0  # alice's buffers, summed, at the end of the window
    steady_s: float = 0.0  # waited after settle for alice's buffers to fill (wait_steady)
    notes: list[str] = field(default_factory=list)


# -- ports, processes, daemons --------------------------------------------------------------------
def free_low_ports(n: int, start: int = 20000) -> list[int]:
    """n loopback ports from ``start`` up that were free a moment ago, below the ephemeral range
    (a port in that range may be taken by any outgoing connect while a sim is not listening)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    socks: list[socket.socket] = []
    try:
        for port in range(start, low):
            s = socket.socket()
            try:
                s.bind((IP, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [x.getsockname()[1] for x in socks]
        raise RuntimeError(f"fewer than {n} free ports between {start} and {low}")
    finally:
        for s in socks:
            s.close()


def allocate(conns: int) -> list[Ports]:
    flat = free_low_ports(6 * conns)
    return [Ports(*flat[6 * i:6 * i + 6]) for i in range(conns)]


def add_commands(site: str, i: int, p: Ports) -> list[str]:
    """``add connection`` (inside, peer's outside, own outside, DRBD) and compression off."""
    if site == "alice":
        addrs = (p.a_in, p.b_out, p.a_out, p.a_drbd)
    else:
        addrs = (p.b_in, p.a_out, p.b_out, p.b_drbd)
    name = conn_name(i, site)
    return [f"add connection {name} " + " ".join(f"{IP}:{a}" for a in addrs),
            f"set compression {name} off"]


def states(ctl: Control) -> dict[str, str]:
    """Connection name -> state, from ``list connections -j``."""
    return {c["name"]: c["state"] for line in ctl.command("list connections -j")
            for c in json.loads(line)["connections"]}


def all_in(ctls: dict[str, Control], conns: range, state: str) -> bool:
    for site, ctl in ctls.items():
        st = states(ctl)
        if any(st.get(conn_name(i, site)) != state for i in conns):
            return False
    return True


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_rss(pids: list[int], timeout: float = 8.0, span: int = 8,
                slack: int = 64 * KiB) -> list[int]:
    """Each process's VmRSS once it stops changing: the median of its last ``span`` reads,
    0.25 s apart, when those are within ``slack`` for every process (or after ``timeout``)."""
    reads: list[list[int]] = [[] for _ in pids]
    deadline = time.monotonic() + timeout
    while True:
        for pid, r in zip(pids, reads):
            r.append(rss_bytes(pid))
        last = [r[-span:] for r in reads]
        if (all(len(x) == span and max(x) - min(x) <= slack for x in last)
                or time.monotonic() > deadline):
            return [int(statistics.median(x)) for x in last]
        time.sleep(0.25)


def snapshot(daemons: dict[str, Daemon], idle: Idle, slot: int) -> None:
    """Both daemons' settled RSS and fd count into ``slot`` (0: none, 1: one, 2: all)."""
    rss = settled_rss([d.proc.pid for d in daemons.values()])
    for (site, d), value in zip(daemons.items(), rss):
        idle.rss.setdefault(site, [0, 0, 0])[slot] = value
        idle.fds.setdefault(site, [0, 0, 0])[slot] = fd_count(d.proc.pid)


def save_log(d: Daemon, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.write_text("".join(d.log))


def set_up(stack: contextlib.ExitStack, workdir: Path, ports: list[Ports]
           ) -> tuple[dict[str, Daemon], dict[str, Control], Idle]:
    """Both daemons, idle memory with 0, 1 and all connections, every connection linked."""
    daemons, ctls = {}, {}
    for site in ("alice", "bob"):
        d = Daemon(workdir, site)
        stack.callback(save_log, d, workdir / f"{site}.log")  # runs after stop_daemon
        stack.callback(stop_daemon, d)
        daemons[site] = d
        ctls[site] = Control(d.socket)
        stack.callback(ctls[site].close)
    idle = Idle()
    snapshot(daemons, idle, 0)
    for slot, conns in ((1, range(0, 1)), (2, range(1, len(ports)))):
        for site, ctl in ctls.items():
            for i in conns:
                for command in add_commands(site, i, ports[i]):
                    ctl.command(command)
        wait_until(lambda: all_in(ctls, range(conns.stop), "ProxyConnected"),
                   f"{conns.stop} connection(s) to link up", timeout=120)
        snapshot(daemons, idle, slot)
    return daemons, ctls, idle


# -- one measurement ------------------------------------------------------------------------------
Sim = tuple[str, subprocess.Popen]  # a load process's name (its logs: NAME.out, NAME.err) and process
#: The connections a pair of load processes carries -> [receiver (at bob), sender (at alice)]:
#: one drbd-sim secondary and primary for all k connections, or per connection an iperf3
#: server and client.
Pairs = dict[tuple[int, ...], list[Sim]]


def start_pairs(procs: Processes, ports: list[Ports], conns: list[int], tag: str, nice: int
                ) -> Pairs:
    """One drbd-sim secondary (at bob) for all of ``conns``, started first, then one primary (at
    alice): a process runs a connection per --listen/--peer pair, so the load's cost grows with
    the bytes it moves, not with k (128 processes of their own on two cores would mostly
    measure themselves)."""
    sim = str(BIN / "drbd-sim")
    prefix = ["nice", "-n", str(nice)] if nice else []
    common = ["--protocol", "A", "--block-size", "64k", "--ping-timeout", "30",
              "--connect-timeout", "120"]
    pair: list[Sim] = []
    for role in ("secondary", "primary"):
        extra = ["--workload", "random", "--duration", "3600"] if role == "primary" else []
        addresses = []
        for i in conns:
            p = ports[i]
            drbd, inside = (p.a_drbd, p.a_in) if role == "primary" else (p.b_drbd, p.b_in)
            addresses += ["--listen", f"{IP}:{drbd}", "--peer", f"{IP}:{inside}"]
        name = f"{tag}-{role}"
        pair.append((name, procs.start(name, [*prefix, sim, "--role", role, *addresses,
                                              *common, *extra])))
    return {tuple(conns): pair}


def listening(ports: set[int]) -> set[int]:
    """Which of ``ports`` have a listening IPv4 TCP socket."""
    return ports & listening_ports()


def start_iperf(procs: Processes, ports: list[Ports], conns: list[int], tag: str) -> Pairs:
    """[iperf3 server on bob's DRBD address, client to alice's inside address] per connection:
    every server is listening before the first client starts. Servers are one-off (``-1``) and
    report every second, flushed (the only record of what they received once killed); clients
    send 128 KiB writes (the default) for an hour, and are killed."""
    pairs: Pairs = {(i,): [] for i in conns}
    for i in conns:
        name = f"{tag}-server{i}"
        pairs[(i,)].append((name, procs.start(name, [
            IPERF3, "-s", "-1", "-B", IP, "-p", str(ports[i].b_drbd), "-i", "1", "--forceflush"])))
    want = {ports[i].b_drbd for i in conns}
    deadline = time.monotonic() + 20
    while listening(want) != want:
        if error := dead(procs, flat(pairs)):
            raise RuntimeError(error)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(want - listening(want))} iperf3 server(s) not listening")
        time.sleep(0.05)
    for i in conns:
        name = f"{tag}-client{i}"
        pairs[(i,)].append((name, procs.start(name, [
            IPERF3, "-c", IP, "-p", str(ports[i].a_in), "-t", "3600", "-i", "0"])))
    return pairs


def flat(pairs: Pairs) -> list[Sim]:
    return [s for pair in pairs.values() for s in pair]


def counters(ctls: dict[str, Control], k: int, kind: str = "data"
             ) -> dict[str, tuple[float, list[int]]]:
    """Per site: (time of the poll, bytes per connection 0..k-1): alice's KIND.to_peer, bob's
    KIND.from_peer."""
    out = {}
    for site, key in (("bob", "from_peer"), ("alice", "to_peer")):
        before = time.monotonic()
        st = ctls[site].stats()
        t = (before + time.monotonic()) / 2
        out[site] = (t, [int(st.get(f"{conn_name(i, site)}.{kind}.{key}.bytes", 0))
                         for i in range(k)])
    return out


def failed_connections(procs: Processes, sims: list[Sim]) -> list[int]:
    """Which of its connections (0-based, in --listen order) a sim that ended reports failed
    first, from its JSON report ("connection J: ..."); [] if it does not say."""
    out = []
    for name, p in sims:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            error = json.loads((procs.logdir / f"{name}.out").read_text())["error"]
            if p.poll() is not None and (match := re.match(r"connection (\d+): ", error)):
                out.append(int(match.group(1)))
    return out


def dead(procs: Processes, sims: list[Sim]) -> str:
    """Why load processes ended before they were killed, or ""."""
    gone = [(name, p) for name, p in sims if p.poll() is not None]
    if not gone:
        return ""
    name, first = gone[0]
    why = tail(procs.logdir / f"{name}.err", 2) or tail(procs.logdir / f"{name}.out", 2)
    return f"{len(gone)} process(es) ended early, e.g. {name} exit {first.returncode}: " + why


def kill_all(procs: Processes, sims: list[Sim], timeout: float = 10.0) -> None:
    """SIGKILL every load process's group at once (they have nothing to clean up, and a SIGTERM
    makes each sim log and stop gracefully, which takes long with 128 on two cores)."""
    for _, p in sims:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for _, p in sims:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.01, deadline - time.monotonic()))
        if p in procs.live:
            procs.live.remove(p)


def poll_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    """Like ``wait_until``, polling every POLL seconds: each poll costs the daemons a
    ``print statistics`` over every connection."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL)


def measure(procs: Processes, ctls: dict[str, Control], pids: dict[str, int], ports: list[Ports],
            load: str, k: int, run: int, args: argparse.Namespace) -> Measure:
    """Start k sim pairs or iperf3 pairs, count the window, check and stop them, check the
    daemons are idle."""
    m = Measure(load, k, run)
    kind = LOADS[load][1]
    tag = f"run{run}-{load}-k{k}"
    pairs: Pairs = {}
    retired: list[Sim] = []
    try:
        base = counters(ctls, k, kind)["bob"][1]
        t0 = time.monotonic()
        if load == "sim":
            pairs = start_pairs(procs, ports, list(range(k)), tag, args.sim_nice)
        else:
            pairs = start_iperf(procs, ports, list(range(k)), tag)
        wait_writing(m, procs, ctls, ports, pairs, retired, base, args, tag)
        m.ramp_s = time.monotonic() - t0
        time.sleep(args.settle)
        wait_steady(m, ctls, args.memlimit)
        count_window(m, ctls, pids, args.window, [p for _, p in flat(pairs)])
        if error := dead(procs, flat(pairs)):
            raise RuntimeError(error)
        m.ok = True
        freeze_and_drain(procs, ctls, pairs, kind, 1 if load == "sim" else 2, k,
                         [ports[i] for i in range(k)])
    except (RuntimeError, AssertionError, OSError) as e:
        m.ok, m.error = False, str(e)
    finally:
        if load == "sim":
            m.handshake_retries = sim_log(procs, flat(pairs) + retired)[0]  # before the kill:
            m.notes += sim_log(procs, flat(pairs))[1]  # the sims log a lost connection when stopped
        # Senders first: a frozen sender's socket may still hold bytes alice reads after the
        # drain check; the receivers keep reading until bob has delivered them (killing both at
        # once would drop those frames at bob, whose DRBD socket is gone, uncounted).
        kill_all(procs, [pair[-1] for pair in pairs.values()])
    try:
        drained(ctls, len(ports), kind, totals=load == "iperf3")
    except (RuntimeError, AssertionError, OSError) as e:
        m.ok, m.error = False, (m.error + "; " if m.error else "") + str(e)
    finally:
        kill_all(procs, flat(pairs))
    try:
        if load == "iperf3" and pairs:
            m.seen = [iperf_received(procs.logdir / f"{pair[0][0]}.out") / 1e6
                      for pair in pairs.values()]
            if m.ok and (silent := [i for (i,), mb in zip(pairs, m.seen) if mb <= 0]):
                raise RuntimeError(f"{len(silent)} iperf3 server(s) reported no data received, "
                                   f"e.g. connection {silent[0]}")
    except (RuntimeError, AssertionError, OSError) as e:
        m.ok, m.error = False, (m.error + "; " if m.error else "") + str(e)
    return m


IPERF_INTERVAL = re.compile(r"^\[\s*\d+\]\s+[\d.]+-\s*[\d.]+\s+sec\s+([\d.]+) ([KMGT]?)Bytes")


def iperf_received(out: Path) -> float:
    """Bytes an iperf3 server reported received, summed over its 1 s interval lines (rounded
    to 3 digits each; the last, unfinished second is not reported when it is killed)."""
    scale = {"": 1, "K": KiB, "M": MiB, "G": 1 << 30, "T": 1 << 40}
    total = 0.0
    with contextlib.suppress(OSError):
        for line in out.read_text(errors="replace").splitlines():
            if match := IPERF_INTERVAL.match(line):
                total += float(match.group(1)) * scale[match.group(2)]
    return total


def wait_writing(m: Measure, procs: Processes, ctls: dict[str, Control], ports: list[Ports],
                 pairs: Pairs, retired: list[Sim], base: list[int],
                 args: argparse.Namespace, tag: str) -> None:
    """Until every connection has delivered ``ramp`` bytes to bob since ``base``. A sim pair
    that ends before its connection carried data (a lost race while the two sims establish
    their sockets through the proxies) is started again, at most MAX_RESTARTS times per k; an
    iperf3 that ends is an error."""
    ramp = args.ramp
    kind = LOADS[m.load][1]

    def writing() -> bool:
        now = counters(ctls, m.k, kind)["bob"][1]
        for conns, pair in list(pairs.items()):
            if not (why := dead(procs, pair)):
                continue
            failed = [conns[j] for j in failed_connections(procs, pair)] or list(conns)
            if (m.load != "sim" or all(now[i] - base[i] >= ramp for i in failed)
                    or m.restarts >= MAX_RESTARTS):
                raise RuntimeError(why)
            m.restarts += 1
            m.notes.append(f"run {m.run} k={m.k}: sims started again (connection {failed[0]}"
                           f" carried nothing yet): {why}")
            kill_all(procs, pair)
            retired.extend(pair)
            del pairs[conns]
            pairs.update(start_pairs(procs, ports, list(conns), f"{tag}-again{m.restarts}",
                                     args.sim_nice))
        return all(b - a >= ramp for a, b in zip(base, now))

    poll_until(writing, f"all {m.k} connections to carry data", timeout=180)


def buffered(ctl: Control, k: int) -> int:
    st = ctl.stats()
    return sum(int(st.get(f"{conn_name(i, 'alice')}.buffered", 0)) for i in range(k))


def wait_steady(m: Measure, ctls: dict[str, Control], memlimit: int, timeout: float = 30) -> None:
    """Until alice's buffers (summed over the k connections) are 90 % full or have stopped
    growing (by less than 1 % of k memlimits in 2 s), so that the window sees the sustained rate
    and not alice also reading ahead into her buffers; at most ``timeout`` seconds."""
    start = time.monotonic()
    full = m.k * memlimit
    history: list[int] = []
    while time.monotonic() - start < timeout:
        history.append(buffered(ctls["alice"], m.k))
        if history[-1] >= 0.9 * full:
            break
        if len(history) > 8 and history[-1] - history[-9] < 0.01 * full:
            break
        time.sleep(POLL)
    m.steady_s = time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    return process_cpu(proc_stat(pid))


def load_cpu_seconds(loads: list[subprocess.Popen]) -> float:
    total = 0.0
    for p in loads:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(p.pid)
    return total


def count_window(m: Measure, ctls: dict[str, Control], pids: dict[str, int],
                 seconds: float, loads: list[subprocess.Popen]) -> None:
    """Per-connection and aggregate rates over ``seconds``: bob's received, alice's read; and
    each daemon's CPU use (in cores) over the same time, and the load processes' together."""
    kind = LOADS[m.load][1]
    cpu0 = {site: (time.monotonic(), cpu_seconds(pid)) for site, pid in pids.items()}
    load0 = (time.monotonic(), load_cpu_seconds(loads))
    start = counters(ctls, m.k, kind)
    time.sleep(seconds)
    end = counters(ctls, m.k, kind)
    for site, pid in pids.items():
        t0, c0 = cpu0[site]
        m.cpu[site] = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    m.load_cpu = (load_cpu_seconds(loads) - load0[1]) / (time.monotonic() - load0[0])
    m.buffered = buffered(ctls["alice"], m.k)
    (tb0, b0), (tb1, b1) = start["bob"], end["bob"]
    (ta0, a0), (ta1, a1) = start["alice"], end["alice"]
    m.per_conn = [(y - x) / (tb1 - tb0) / 1e6 for x, y in zip(b0, b1)]
    m.agg = sum(m.per_conn)
    m.agg_alice = (sum(a1) - sum(a0)) / (ta1 - ta0) / 1e6


def queued_into_alice(ports: list[Ports]) -> int:
    """Bytes the senders' sockets still hold on the way into alice: unsent in a sender's
    socket, or received but not yet read by alice."""
    alice_in = {p.a_in for p in ports}
    inside = alice_in | {p.a_drbd for p in ports}
    queued = 0
    for sock in tcp_sockets():
        if sock.listening:
            continue
        # A sender dialled alice's inside port (or alice dialled the sender's DRBD port): the
        # dialling side's send queue and the listening side's receive queue carry data in.
        if sock.remote_port in inside:
            queued += sock.tx_queue if sock.remote_port in alice_in else sock.rx_queue
        elif sock.local_port in inside:
            queued += sock.rx_queue if sock.local_port in alice_in else sock.tx_queue
    return queued


def freeze_and_drain(procs: Processes, ctls: dict[str, Control], pairs: Pairs, kind: str,
                     per_conn: int, k: int, ports: list[Ports]) -> None:
    """SIGSTOP the senders (primaries, iperf3 clients; their sockets stay open), wait until
    their sockets hold nothing more for alice, alice's buffers are empty and bob has received,
    on every live stream of ``kind``, every
    byte alice read from it; there must be ``per_conn`` such streams per connection, and then
    every receiver must still be running: a secondary verified all of it. (Killing the
    primaries instead would close their meta sockets first; the secondaries would drop the
    connection and bob what was still in flight.)"""
    for (_, sender) in (pair[1] for pair in pairs.values()):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sender.pid, signal.SIGSTOP)

    def empty() -> bool:
        # A frozen sender's socket may still hold bytes (alice paused reading at memlimit):
        # they must be through too, or alice reads them after this check.
        if queued_into_alice(ports):
            return False
        a = ctls["alice"].stats()
        return (all(a.get(f"{conn_name(i, 'alice')}.buffered") == "0" for i in range(k))
                and not stream_mismatches(ctls, kind))

    try:
        poll_until(empty, "alice's buffers to drain to bob", timeout=30)
    except RuntimeError:
        bad = stream_mismatches(ctls, kind)
        raise RuntimeError(f"bob did not get what alice read on {len(bad)} stream(s): "
                           + "; ".join(bad[:3])) from None
    if len(streams := live_streams(ctls["alice"], kind)) != per_conn * k:
        raise RuntimeError(f"{len(streams)} live {kind} streams at alice, not {per_conn} each "
                           f"of {k}")
    if error := dead(procs, [pair[0] for pair in pairs.values()]):
        raise RuntimeError(error)


def live_streams(ctl: Control, kind: str | None = None
                 ) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(connection rN, kind, stream id) -> (to-peer, from-peer) bytes of every live stream of
    ``kind`` (or all), from ``list subconnections -j``; a stream has the same id at both daemons."""
    out = {}
    for line in ctl.command("list subconnections -j"):
        for sub in json.loads(line)["subconnections"]:
            conn = sub["connection"].split("-", 1)[0]
            if kind is None or sub["socket"] == kind:
                out[(conn, sub["socket"], str(sub["stream"]))] = (sub["bytes"]["to_peer"],
                                                                 sub["bytes"]["from_peer"])
    return out


def stream_mismatches(ctls: dict[str, Control], kind: str) -> list[str]:
    """Live streams whose bytes alice read (to-peer) bob has not (yet) all received."""
    a, b = live_streams(ctls["alice"], kind), live_streams(ctls["bob"], kind)
    return [f"{conn} {name} stream {sid}: alice read {sent}, bob got "
            f"{b.get((conn, name, sid), (0, 0))[1]}"
            for (conn, name, sid), (sent, _) in sorted(a.items())
            if b.get((conn, name, sid), (0, -1))[1] != sent]


def sim_log(procs: Processes, sims: list[Sim]) -> tuple[int, list[str]]:
    """From the sims' stderr: how often one restarted establishing its connection (the normal
    way two DRBD nodes sort out their sockets, frequent while the other is still starting),
    and every error line."""
    retries, errors = 0, []
    for name, _ in sims:
        with contextlib.suppress(OSError):
            for line in (procs.logdir / f"{name}.err").read_text(errors="replace").splitlines():
                retries += "connecting again" in line
                if "error:" in line:
                    errors.append(f"{name}: {line.strip()}")
    return retries, errors


def drained(ctls: dict[str, Control], conns: int, kind: str, totals: bool) -> None:
    """Every connection back to ProxyConnected with no live stream and alice's buffer empty;
    with ``totals``, per connection, bob's ``KIND.from_peer.bytes`` equal to alice's
    ``KIND.to_peer.bytes`` (over closed streams too: not for the sims, whose handshake races
    close sockets with a few bytes alice read but never relayed); no link reconnected."""
    def unequal() -> list[str]:
        a, b = ctls["alice"].stats(), ctls["bob"].stats()
        out = []
        for i in range(conns):
            sent = a.get(f"{conn_name(i, 'alice')}.{kind}.to_peer.bytes", "0")
            got = b.get(f"{conn_name(i, 'bob')}.{kind}.from_peer.bytes", "0")
            if sent != got:
                out.append(f"r{i}: alice sent {sent} {kind} bytes, bob got {got}")
        return out

    def idle() -> bool:
        if not all_in(ctls, range(conns), "ProxyConnected"):
            return False
        if any(live_streams(ctl) for ctl in ctls.values()):
            return False
        a = ctls["alice"].stats()
        return (all(a.get(f"{conn_name(i, 'alice')}.buffered") == "0" for i in range(conns))
                and not (totals and unequal()))

    try:
        poll_until(idle, "the daemons to show ProxyConnected", timeout=30)
    except RuntimeError:
        st = {site: states(ctl) for site, ctl in ctls.items()}
        busy = [f"r{i} {st['alice'].get(conn_name(i, 'alice'))}/{st['bob'].get(conn_name(i, 'bob'))}"
                for i in range(conns) if (st["alice"].get(conn_name(i, "alice")),
                                          st["bob"].get(conn_name(i, "bob")))
                != ("ProxyConnected", "ProxyConnected")]
        live = {site: len(live_streams(ctl)) for site, ctl in ctls.items()}
        raise RuntimeError(f"not idle after 30 s: {', '.join(busy[:5])}; live streams {live}; "
                           + ("; ".join(unequal()[:3] if totals else []) or "buffers not empty")
                           ) from None
    reconnects = {site: sum(int(v) for key, v in ctl.stats().items() if key.endswith(".reconnects"))
                  for site, ctl in ctls.items()}
    if any(reconnects.values()):
        raise RuntimeError(f"links reconnected: {reconnects}")


# -- report ---------------------------------------------------------------------------------------
def log_trouble(daemons: dict[str, Daemon]) -> dict[str, list[str]]:
    return {site: [line.rstrip() for line in d.log if LOG_TROUBLE.search(line)]
            for site, d in daemons.items()}


def plot(by_load: dict[str, dict[int, list[float]]], img_dir: Path) -> Path | None:
    """Aggregate goodput against k, one series per load (median, min-max), each with its dashed
    0.8 x k=1 line."""
    if not any(v for by_k in by_load.values() for v in by_k.values()):
        return None
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    all_ks: set[int] = set()
    for (load, by_k), color in zip(by_load.items(), ("tab:blue", "tab:orange", "tab:green")):
        ks = [k for k, v in by_k.items() if v]
        if not ks:
            continue
        all_ks |= set(ks)
        label = LOADS[load][0]
        med = [statistics.median(by_k[k]) for k in ks]
        low = [m - min(by_k[k]) for m, k in zip(med, ks)]
        high = [max(by_k[k]) - m for m, k in zip(med, ks)]
        ax.errorbar(ks, med, yerr=[low, high], fmt="o-", capsize=4, color=color,
                    label=f"{label} load: aggregate goodput (median, min–max)")
        if by_k.get(1):
            ax.axhline(TARGET * statistics.median(by_k[1]), color=color, ls="--", lw=1.2,
                       label=f"{label}: target {TARGET} × one connection")
        for k, m in zip(ks, med):
            ax.annotate(f"{m:.0f}", (k, m), ha="left", va="bottom", fontsize=8, color=color,
                        xytext=(6, 4), textcoords="offset points")
    ks = sorted(all_ks)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # room for the labels above the top points
    ax.set_xlabel("concurrent replications (connections of one proxy pair)")
    ax.set_ylabel("MB/s")
    ax.set_title("P7: aggregate goodput through one proxy pair on loopback, 2 cores")
    ax.legend(fontsize=7.5, loc="lower left")
    ax.grid(alpha=0.3)
    return save_figure(fig, img_dir, "scale-goodput.png")


def facts(started: str, load: str) -> list[str]:
    import twisted
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=HERE.parent)
    iperf = subprocess.run([IPERF3, "--version"], capture_output=True, text=True
                           ) if os.access(IPERF3, os.X_OK) else None
    return [
        f"date: {started}",
        f"command: `{shlex.join(sys.orig_argv)}`",
        f"nproc: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}); "
        f"load average at start: {load}",
        f"kernel: {platform.release()}; python: {platform.python_version()}; "
        f"twisted {twisted.__version__}"
        + (f"; {iperf.stdout.splitlines()[0]}" if iperf and iperf.stdout else ""),
        f"tree: {git.stdout.strip() or 'unknown'}",
    ]


def goodput_table(args: argparse.Namespace, load: str, results: list[Measure]) -> list[str]:
    """One row per k for one load; the sim-only columns (handshake retries, pairs started
    again) only for drbd-sim, the iperf3 servers' own count only for iperf3."""
    sim = load == "sim"
    ok = [m for m in results if m.ok and m.load == load]
    head = ["k", "verified runs", "aggregate MB/s median", "min–max",
            "per connection MB/s (aggregate / k)", "slowest–fastest connection MB/s (medians)",
            "alice read MB/s", "alice buffered at the end MiB", "alice / bob CPU, cores",
            f"{LOADS[load][0]} processes CPU, cores", "MB per alice CPU s", "ramp / steady s"]
    head += (["sim handshake retries", "sims started again"] if sim
             else ["iperf3 server reported received (whole test), MB per connection (median)"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in args.ks:
        ms = [m for m in ok if m.k == k]
        of_k = [m for m in results if m.k == k and m.load == load]
        med, rng = med_range([m.agg for m in ms])
        per = med_range([m.agg / k for m in ms], "{:.2f}")[0]
        slow = med_range([min(m.per_conn) for m in ms], "{:.2f}")[0]
        fast = med_range([max(m.per_conn) for m in ms], "{:.2f}")[0]
        alice = med_range([m.agg_alice for m in ms])[0]
        ramp = med_range([m.ramp_s for m in ms])[0] + " / " + med_range([m.steady_s for m in ms])[0]
        cpu = " / ".join(med_range([m.cpu[site] for m in ms], "{:.2f}")[0] for site in ("alice", "bob"))
        load_cpu = med_range([m.load_cpu for m in ms], "{:.2f}")[0]
        buf = med_range([m.buffered / MiB for m in ms], "{:.0f}")[0]
        per_cpu = med_range([m.agg / m.cpu["alice"] for m in ms if m.cpu.get("alice")], "{:.0f}")[0]
        cells = [str(k), f"{len(ms)}/{len(of_k)}", med, rng, per, f"{slow}–{fast}", alice, buf, cpu,
                 load_cpu, per_cpu, ramp]
        if sim:
            cells += [med_range([m.handshake_retries for m in of_k], "{:.0f}")[0],
                      str(sum(m.restarts for m in of_k))]
        else:
            cells += [med_range([statistics.median(m.seen) for m in ms if m.seen], "{:.0f}")[0]]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def p7_row(args: argparse.Namespace, load: str, results: list[Measure]) -> str:
    ok = [m for m in results if m.ok and m.load == load]
    kmax, label = max(args.ks), LOADS[load][0]
    one = [m.agg for m in ok if m.k == 1]
    top = [m.agg for m in ok if m.k == kmax]
    if not one or not top:
        return (f"| P7, {label} load | aggregate goodput, {kmax} / 1 | — | ≥ {TARGET} | "
                "no verified runs |")
    p7 = statistics.median(top) / statistics.median(one)
    per_run = [a.agg / b.agg for a in ok for b in ok if a.k == kmax and b.k == 1
               and a.run == b.run]
    spread = f" (per run {min(per_run):.2f}–{max(per_run):.2f})" if per_run else ""
    return (f"| P7, {label} load | aggregate goodput, {kmax} connections / 1 connection "
            f"(medians) | {p7:.2f}{spread} | ≥ {TARGET} | "
            f"{'meets target' if p7 >= TARGET else 'MISSES target'} |")


def fairness(args: argparse.Namespace, load: str, results: list[Measure]) -> str:
    kmax = max(args.ks)
    fair = [m for m in results if m.ok and m.load == load and m.k == kmax]
    if not fair:
        return ""
    return (f"Fairness at k = {kmax}, {LOADS[load][0]} load (per run, slowest / fastest "
            "connection in the window, MB/s): "
            + "; ".join(f"run {m.run}: {min(m.per_conn):.2f} / {max(m.per_conn):.2f}"
                        for m in fair) + ".")


def report(args: argparse.Namespace, idle: Idle, results: list[Measure],
           trouble: dict[str, list[str]], image: Path | None, fact_lines: list[str]) -> str:
    conns = args.conns
    verdict = ["| # | measure | value | target | result |", "|---|---|---|---|---|"]
    verdict += [p7_row(args, load, results) for load in args.loads]
    if args.skipped:
        verdict.append(f"| P7, iperf3 load | — | — | ≥ {TARGET} | not measured: {args.skipped} |")
    mem = ["| daemon | RSS idle, no connection MiB | one linked MiB | "
           f"{conns} linked MiB | KiB per connection (all − none) / {conns} | "
           f"marginal KiB (all − one) / {conns - 1} | fds none / one / {conns} |",
           "|---|---|---|---|---|---|---|"]
    for site in ("alice", "bob"):
        r0, r1, rn = idle.rss[site]
        f0, f1, fn = idle.fds[site]
        mem.append(f"| {site} | {r0 / MiB:.1f} | {r1 / MiB:.1f} | {rn / MiB:.1f} | "
                   f"{(rn - r0) / conns / KiB:.0f} | {(rn - r1) / (conns - 1) / KiB:.0f} | "
                   f"{f0} / {f1} / {fn} ({(fn - f0) / conns:.1f} per connection) |")
    failures = [f"- {LOADS[m.load][0]} run {m.run} k={m.k}: {m.error}"
                for m in results if not m.ok]
    notes = list(dict.fromkeys(n for m in results for n in m.notes))
    trouble_lines = [f"- {site}: {len(lines)} line(s)" + (f", e.g. `{lines[0][-160:]}`" if lines else "")
                     for site, lines in trouble.items()]
    pic = [f"![aggregate goodput vs connections, per load]"
           f"({os.path.relpath(image, args.out.parent)})", ""] if image else []
    tables: list[str] = []
    for load in args.loads:
        label = LOADS[load][0]
        tables += [f"**{label} load** (counters: `{LOADS[load][1]}`):", "",
                   *goodput_table(args, load, results), ""]
        if line := fairness(args, load, results):
            tables += [line, ""]
    ks = ", ".join(map(str, args.ks))
    body = [
        f"One proxy pair (alice, bob) on loopback with {conns} connections, compression off, "
        f"default memlimit; k of them carry a replication each, k = {ks}, under two loads: "
        "**drbd-sim** (one secondary process at bob and one primary process at alice running "
        "all k connections, a `--listen`/`--peer` pair each, protocol A, 64 KiB writes of "
        "random data, no size limit) and **iperf3** (a one-off `iperf3 -s -1` "
        "on bob's DRBD address and a client `iperf3 -c` to alice's inside address per "
        "connection, 128 KiB writes, the default). Why both: drbd-sim speaks DRBD's protocol "
        "and verifies every block, in Python, so it shares the machine's 2 cores with the "
        "proxies at a cost per byte near theirs (see the load's CPU column); iperf3 is C. "
        "iperf3's control and data streams do not "
        "begin with DRBD's initial packets, so the pair relays them as opaque streams through "
        "the same pipeline (compression off, same buffers and memlimit, same two links), with "
        "a load whose cost per byte does not grow with k."
        + (f" **iperf3 load not measured: {args.skipped}.**" if args.skipped else ""),
        "",
        f"{args.runs} run(s), each a sweep over k per load on the same daemons, interleaved "
        "(run 1: drbd-sim k = " + ks + ", iperf3 k = " + ks + "; run 2: ...). Nothing is timed "
        f"from process start: once every one of the k connections has delivered "
        f"{args.ramp // MiB} MiB to bob, {args.settle:g} s later, and once alice's buffers (at "
        f"most k × the default memlimit of {args.memlimit / MiB:g} MiB) are 90 % full or "
        "stopped growing (at most 30 s), the bytes bob receives from the link per connection "
        "(`data.from_peer.bytes` for drbd-sim, `opaque.from_peer.bytes` for iperf3) are counted "
        f"over a {args.window:g} s window, the same for every k and load. alice read = her "
        "`to_peer.bytes` of the same kind over the window (what the senders wrote: more than bob "
        "got while her buffers are still filling; their sum at the end of the window is shown); "
        "CPU = user + system time over the window (/proc/PID/stat), in cores, of each daemon "
        "and of the load's processes together; MB per alice CPU s = aggregate / alice's CPU, "
        "the proxy's own cost per byte, which the load's share of the two cores does not "
        "change. A run counts as verified if no load process ended before the end of the "
        "window, and then, with the senders frozen (SIGSTOP: primaries, iperf3 clients), "
        "alice's buffers drained, bob received on every stream of the load (one DRBD data "
        "stream, or iperf3's control and data streams, per connection) exactly the bytes alice "
        "read from it, and every receiver was still running (a secondary checks each block as "
        "it arrives; every iperf3 server must have reported data received in its 1 s interval "
        "lines); once the senders are killed (the receivers keep reading what a frozen "
        "sender's socket still held, and are killed after this check) every connection must "
        "be back to ProxyConnected on "
        "both daemons with no live stream and no link reconnect, and for iperf3 bob's "
        "`opaque.from_peer.bytes` equal to alice's `opaque.to_peer.bytes` per connection (the "
        "sims' handshake races close sockets whose few bytes alice read but never relayed). (The iperf3 clients run with `-t 3600` and are "
        "killed like the sims, so their exit status is not checked.) Ramp = load started to "
        "all connections carrying data; steady = the wait for alice's buffers after that; "
        "handshake retries = the sims' `connecting again` lines (median per run), the normal "
        "way two DRBD nodes sort out their sockets, frequent while the other one is still "
        "starting; a sim pair that ends before its connection carried data is started again "
        f"(at most {MAX_RESTARTS} per k and run). MB = 10⁶ bytes, MiB = 2²⁰, KiB = 2¹⁰.",
        "",
        *tables, *verdict, "", *pic,
        f"Idle memory: VmRSS once it settled, daemons up with no connection, then with connection 0 "
        f"linked, then with all {conns} linked (ProxyConnected on both sides, no DRBD sockets); fds "
        "= entries of /proc/PID/fd (expected 4 per connection: 2 link sockets, 2 listeners).", "",
        *mem, "",
        "RSS after the last run, every buffer drained: " + ", ".join(
            f"{site} {rss / MiB:.0f} MiB" for site, rss in idle.after.items())
        + " (freed buffer memory is not necessarily returned to the system).", "",
        "Failed runs: " + ("none" if not failures else ""), *failures, "",
        "Load errors and restarts: " + ("none" if not notes else ""),
        *(f"- {n[:300]}" for n in notes[:8]),
        *([f"- (+{len(notes) - 8} more)"] if len(notes) > 8 else []), "",
        "Proxy log lines mentioning errors, tracebacks or link drops:", *trouble_lines, "",
        *(f"- {f}" for f in fact_lines),
    ]
    return "\n".join(body)


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="sweeps over k (default 3)")
    parser.add_argument("--conns", type=int, default=64, help="connections set up (default 64)")
    parser.add_argument("--ks", default="1,8,64", help="concurrent replications per sweep")
    parser.add_argument("--loads", default="sim,iperf3",
                        help="load generators, comma-separated: sim (drbd-sim pairs), iperf3 "
                             "(default both, interleaved)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds counted per k")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between all writing and the window")
    parser.add_argument("--ramp", type=int, default=MiB,
                        help="bytes each connection must deliver before it counts as writing")
    parser.add_argument("--sim-nice", type=int, default=0,
                        help="run the sims under nice -n N (default 0: same priority as the proxies)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    parser.add_argument("--img-dir", type=Path, default=HERE.parent / "docs" / "img")
    parser.add_argument("--keep-logs", action="store_true", help="keep the load's log directory")
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    if max(args.ks) > args.conns or args.conns < 2:
        parser.error("--conns must be at least 2 and at least the largest k")
    args.loads = list(dict.fromkeys(x.strip() for x in args.loads.split(",") if x.strip()))
    if not args.loads or set(args.loads) - set(LOADS):
        parser.error(f"--loads: choose from {', '.join(LOADS)}")
    args.skipped = ""
    if "iperf3" in args.loads and not os.access(IPERF3, os.X_OK):
        args.skipped = f"iperf3 not installed ({IPERF3} missing)"
        print(f"note: {args.skipped}; the iperf3 load is skipped", flush=True)
        args.loads.remove("iperf3")
        if not args.loads:
            parser.error(args.skipped)

    def terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C, so everything is cleaned up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t_begin = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="drbdproxy-scale-"))
    procs = Processes(workdir)
    results: list[Measure] = []
    with contextlib.ExitStack() as stack:
        ports = allocate(args.conns)
        daemons, ctls, idle = set_up(stack, workdir, ports)
        stack.callback(lambda: kill_all(procs, [("", p) for p in list(procs.live)]))  # first
        pids = {site: d.proc.pid for site, d in daemons.items()}
        args.memlimit = int(ctls["alice"].stats()[f"{conn_name(0, 'alice')}.memlimit"])
        a0, _, an = idle.rss["alice"]
        print(f"idle: alice {a0 / MiB:.1f} -> {an / MiB:.1f} MiB with {args.conns} connections, "
              f"{(an - a0) / args.conns / KiB:.0f} KiB each; fds {idle.fds['alice']} "
              f"({time.monotonic() - t_begin:.0f} s)", flush=True)
        for run in range(1, args.runs + 1):
            for load_name in args.loads:
                for k in args.ks:
                    m = measure(procs, ctls, pids, ports, load_name, k, run, args)
                    results.append(m)
                    status = (f"{m.agg:8.1f} MB/s (alice read {m.agg_alice:.1f}), per connection "
                              f"{min(m.per_conn):.2f}–{max(m.per_conn):.2f}, ramp {m.ramp_s:.1f} s, "
                              f"CPU alice {m.cpu['alice']:.2f} bob {m.cpu['bob']:.2f} "
                              f"load {m.load_cpu:.2f}"
                              if m.per_conn else "")
                    status += "" if m.ok else f" FAILED: {m.error}"
                    print(f"run {run}/{args.runs} {LOADS[load_name][0]:8} k={k:3} {status} "
                          f"({time.monotonic() - t_begin:.0f} s)", flush=True)
        trouble = log_trouble(daemons)
        idle.after = {site: rss_bytes(pid) for site, pid in pids.items()}
    print(f"total {time.monotonic() - t_begin:.0f} s", flush=True)
    image = plot({load_name: {k: [m.agg for m in results
                                  if m.ok and m.k == k and m.load == load_name] for k in args.ks}
                  for load_name in args.loads}, args.img_dir)
    body = report(args, idle, results, trouble, image, facts(started, load))
    write_section(args.out, "scale", "P7: 64 connections on one proxy pair", body)
    print(body)
    failed = any(not m.ok for m in results)
    if failed or args.keep_logs:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process of this run was stopped", file=sys.stderr)
        sys.exit(130)
