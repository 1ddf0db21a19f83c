"""Two proxy sites and drbd-sim nodes over the WAN emulator (bench/wanem.py), for P8 and friends.

alice runs in the emulator's namespace A (10.77.0.1), bob in B (10.77.0.2). Connection ``i`` of
a site uses ports base + 10 i (+0 DRBD, +1 inside, +2 outside). A direct replication (no proxy)
uses DIRECT_PORT on both namespaces' own addresses. Kernel TCP state of the sockets (window,
buffers, congestion control) comes from ``ss -tmi`` inside a namespace.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from daemon import Daemon  # noqa: E402
from wan import Control, Sampler, TimedSim, stop_daemon  # noqa: E402
from wanem import WanEm  # noqa: E402

PORT_BASE = 7800
DIRECT_PORT = 7990
#: Sims over a long, lossy WAN: a lost packet costs a retransmission timeout, more than DRBD's
#: default ping-timeout of 0.5 s; a benchmark of throughput must not end in a disconnect.
SIM_COMMON = ["--connect-timeout", "60", "--ping-timeout", "30", "--protocol", "A",
              "--workload", "disk"]


class Ctl(Control):
    """A control session that reconnects when the daemon has closed an idle one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        super().__init__(path)

    def stats(self) -> dict[str, str]:
        try:
            return super().stats()
        except (OSError, RuntimeError):
            self.close()
            super().__init__(self._path)
            return super().stats()


def conn_name(i: int, site: str) -> str:
    return f"r{i}-bob-alice" if site == "alice" else f"r{i}-alice-bob"


def ports(i: int) -> tuple[int, int, int]:
    base = PORT_BASE + 10 * i
    return base, base + 1, base + 2  # DRBD, inside, outside


def start_site(stack: contextlib.ExitStack, w: WanEm, workdir: Path, site: str,
               conns: list[dict[str, str]], tag: str = "") -> tuple[Daemon, Ctl]:
    """A daemon of ``site`` with one connection per entry of ``conns`` (each: extra ``set``
    options, e.g. {"link-cc": "cubic", "memlimit": "64M"}); compression on (lz4)."""
    own, peer, prefix = ((w.a_ip, w.b_ip, w.exec_a) if site == "alice"
                         else (w.b_ip, w.a_ip, w.exec_b))
    d = Daemon(workdir, f"{site}{tag}", prefix=prefix)
    stack.callback(stop_daemon, d)
    args = []
    for i, options in enumerate(conns):
        drbd, inside, outside = ports(i)
        name = conn_name(i, site)
        args += ["-c", f"add connection {name} 127.0.0.1:{inside} {peer}:{outside}"
                       f" {own}:{outside} 127.0.0.1:{drbd}", "-c", f"set compression {name} on"]
        for key, value in options.items():
            args += ["-c", f"set {key} {name} {value}"]
    d.ctl(*args, check=True)
    ctl = Ctl(d.socket)
    stack.callback(ctl.close)
    return d, ctl


def sims(stack: contextlib.ExitStack, w: WanEm, conn: int | None, extra: list[str],
         primary_extra: list[str] = ()) -> tuple[TimedSim, TimedSim]:
    """A secondary in B and a primary in A: through connection ``conn`` of the proxies, or
    directly over the WAN (``conn`` None, DRBD's own sockets with autotuned buffers)."""
    if conn is None:
        a = ["--listen", f"{w.a_ip}:{DIRECT_PORT}", "--peer", f"{w.b_ip}:{DIRECT_PORT}"]
        b = ["--listen", f"{w.b_ip}:{DIRECT_PORT}", "--peer", f"{w.a_ip}:{DIRECT_PORT}"]
    else:
        drbd, inside, _ = ports(conn)
        a = b = ["--listen", f"127.0.0.1:{drbd}", "--peer", f"127.0.0.1:{inside}"]
    secondary = TimedSim(["--role", "secondary", *SIM_COMMON, *b, *extra], w.exec_b)
    stack.callback(secondary.kill)
    primary = TimedSim(["--role", "primary", *SIM_COMMON, *a, *extra, *primary_extra], w.exec_a)
    stack.callback(primary.kill)
    return primary, secondary


def progress(sim: TimedSim) -> list[tuple[float, int]]:
    """(arrival time, bytes) of the sim's ``--progress`` lines so far."""
    out = []
    for t, line in list(sim.stamped):
        m = re.search(r"progress: (\d+) bytes", line)
        if m:
            out.append((t, int(m.group(1))))
    return out


def window_rate(points: list[tuple[float, int]], start: float, warmup: float) -> float:
    """MB/s between the first sample ``warmup`` s after ``start`` and the last sample."""
    after = [(t, b) for t, b in points if t >= start + warmup]
    if len(after) < 2 or after[-1][0] <= after[0][0]:
        raise RuntimeError(f"too few progress samples after the warm-up ({len(after)})")
    (t0, b0), (t1, b1) = after[0], after[-1]
    return (b1 - b0) / (t1 - t0) / 1e6


# -- kernel TCP state ------------------------------------------------------------------------------
_SS_NUM = re.compile(r"\b(cwnd|mss|unacked|retrans|bytes_acked|notsent|rcv_space|rcv_ssthresh"
                     r"|snd_wnd|bytes_received):(\d+)(?:/(\d+))?")


def ss_sockets(ns: str, peer_port: int | None = None, local_port: int | None = None
               ) -> list[dict[str, Any]]:
    """Established TCP sockets of namespace ``ns`` with ss's -m -i figures (sndbuf ``tb``,
    rcvbuf ``rb``, queued ``w``, cwnd, rtt, congestion control), optionally by port."""
    filt = []
    if peer_port is not None:
        filt.append(f"dport = :{peer_port}")
    if local_port is not None:
        filt.append(f"sport = :{local_port}")
    cmd = ["ip", "netns", "exec", ns, "ss", "-tmiHn", "state", "established"]
    if filt:
        cmd.append(" or ".join(filt) if len(filt) > 1 else filt[0])
    return parse_ss(subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout)


def parse_ss(out: str) -> list[dict[str, Any]]:
    """``ss -tmiHn state established`` output: one dict per socket."""
    socks: list[dict[str, Any]] = []
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):  # the address line starts a socket
            fields = line.split()
            socks.append(dict(local=fields[2], peer=fields[3]) if len(fields) >= 4 else {})
            continue
        if not socks:
            continue
        s = socks[-1]
        m = re.search(r"skmem:\(([^)]*)\)", line)
        if m:
            for item in m.group(1).split(","):
                k = re.match(r"([a-z]+)(\d+)", item)
                if k:
                    s[k.group(1)] = int(k.group(2))
        for k, v, _ in _SS_NUM.findall(line):
            s[k] = int(v)
        for k, v in re.findall(r"\b(busy|rwnd_limited|sndbuf_limited):(\d+)ms", line):
            s[f"{k}_ms"] = int(v)
        m = re.search(r"\brtt:([0-9.]+)/", line)
        if m:
            s["rtt_ms"] = float(m.group(1))
        m = re.search(r"(\w+)\s+wscale:", line)
        if m:
            s["cc"] = m.group(1)
    return socks


class SocketWatch:
    """Samples, every second, the busiest socket (most bytes acked, or ``busiest``) matching a
    filter in a namespace; ``summary()`` gives the medians/maxima the report shows."""

    def __init__(self, ns: str, busiest: str = "bytes_acked", **filt: int) -> None:
        def probe() -> dict[str, Any] | None:
            socks = ss_sockets(ns, **filt)
            return max(socks, key=lambda s: s.get(busiest, 0)) if socks else None

        self._sampler = Sampler(1.0, probe)

    def summary(self) -> dict[str, Any]:
        return summarize([v for _, v in self._sampler.stop() if v])


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and maxima of a socket's ss samples; the limited shares over the samples' span."""
    if not samples:
        return {}

    def med(key: str) -> float | None:
        vals = [s[key] for s in samples if key in s]
        return statistics.median(vals) if vals else None

    def top(key: str) -> int | None:
        vals = [s[key] for s in samples if key in s]
        return max(vals) if vals else None

    def limited(key: str) -> float | None:
        """Share of the window's busy time the sender was limited by ``key`` (ss counts
        from the socket's start: the difference between the first and last sample)."""
        have = [s for s in samples if "busy_ms" in s]  # ss omits a limit that is still 0
        if len(have) < 2 or have[-1]["busy_ms"] <= have[0]["busy_ms"]:
            return None
        return ((have[-1].get(f"{key}_ms", 0) - have[0].get(f"{key}_ms", 0))
                / (have[-1]["busy_ms"] - have[0]["busy_ms"]))

    inflight = [s["unacked"] * s["mss"] for s in samples if "unacked" in s and "mss" in s]
    cwnd = [s["cwnd"] * s["mss"] for s in samples if "cwnd" in s and "mss" in s]
    return dict(cc=samples[-1].get("cc"), samples=len(samples), rtt_ms=med("rtt_ms"),
                cwnd_bytes=statistics.median(cwnd) if cwnd else None,
                inflight_max=max(inflight) if inflight else None,
                inflight_med=statistics.median(inflight) if inflight else None,
                sndbuf_max=top("tb"), queued_max=top("w"), notsent_max=top("notsent"),
                rcvbuf_max=top("rb"), retrans=top("retrans"),
                sndbuf_limited=limited("sndbuf_limited"),
                rwnd_limited=limited("rwnd_limited"))


def wait_drained(ns: str, peer_port: int, timeout: float) -> bool:
    """Wait until no socket to ``peer_port`` in ``ns`` has unacknowledged bytes (a previous
    cell's leftovers must not share the link with the next), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not s.get("unacked") and not s.get("notsent")
               for s in ss_sockets(ns, peer_port=peer_port, local_port=peer_port)):
            return True
        time.sleep(0.5)
    return False
