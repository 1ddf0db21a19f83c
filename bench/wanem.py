"""A WAN emulator on one machine: two network namespaces joined by a userspace delay line.

This kernel has no netem, so the WAN is a small forwarding process over two TUN devices:

    netns wanA: 10.77.0.1/24, TUN wan0 <-fd-> forwarder <-fd-> netns wanB: 10.77.0.2/24, TUN wan0

For each direction separately (a full-duplex link) the forwarder reads the packets the kernel of
one namespace routes into its TUN device, and for each IP packet:

1. drops it at random with probability ``loss`` (independent per packet and per direction);
2. drops it if the bottleneck queue is full: the bytes still waiting to be serialised at ``rate``
   (the backlog) plus this packet would exceed ``queue`` bytes (drop-tail, as a router does);
3. serialises it at ``rate`` (counting the IP packet plus ``overhead`` bytes: 0 by default, so the
   rate applies to IP packets like tbf's does), then holds it for the one-way delay ``rtt/2``
   (plus a uniform jitter in [-jitter, +jitter], clamped so that packets never overtake each
   other), and writes it into the other namespace's TUN device.

The queue is exact without a queue structure: a FIFO served at a constant rate holds
``(time the serialiser is free - now) x rate`` bytes. So each direction is one deque of
``(delivery time, packet)`` in delivery order; the loop sleeps in ``select`` (microsecond timeout)
until the next delivery or a readable TUN, reads what is readable in batches, and writes what is
due. One ``time.monotonic()`` per wake-up, a few float operations per packet.

Use (root):

    python3 bench/wanem.py check --rate 100mbit --rtt 100ms --loss 1%  # build, measure, remove
    python3 bench/wanem.py up --rate 100mbit --rtt 100ms --loss 0.1%    # build, leave running
    ip netns exec wanA ...; ip netns exec wanB ...     # your programs there, 10.77.0.1 / 10.77.0.2
    python3 bench/wanem.py set --loss 1%               # change the running link
    python3 bench/wanem.py status                      # its parameters and counters (JSON)
    python3 bench/wanem.py down                        # stop it, remove everything

From Python (benchmarks, tests)::

    from wanem import wan
    with wan(rate="100mbit", rtt="100ms", loss="1%") as w:
        subprocess.run([*w.exec_a, "ping", "-c", "3", w.b_ip])
        w.set(loss="0%"); print(w.stats())

Only the standard library is used, so the system ``python3`` runs it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import fcntl
import gc
import json
import math
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

A_IP, B_IP = "10.77.0.1", "10.77.0.2"
PREFIX = 24
DEV = "wan0"
DEFAULT_NS = ("wanA", "wanB")
STATE_DIR = Path("/run/wanem")

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
PR_SET_TIMERSLACK = 29
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; the socket module lacks it


# -- units ----------------------------------------------------------------------------------------
_RATE = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3,
         "mbps": 8e6, "gbps": 8e9}
_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_SIZE = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
         "mib": 1 << 20}


def _split(text: str | float, what: str) -> tuple[float, str]:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*([a-z%]*)\s*", str(text).lower())
    if not m:
        raise ValueError(f"bad {what}: {text!r}")
    return float(m.group(1)), m.group(2)


def parse_rate(text: str | float) -> float:
    """'100mbit' -> 1e8 bit/s (tc's units: mbit = 10^6 bit/s, mbps = 10^6 byte/s); 0 = unlimited."""
    v, unit = _split(text, "rate")
    if unit not in _RATE:
        raise ValueError(f"bad rate unit in {text!r} (use bit, kbit, mbit, gbit, or ...bps)")
    return v * _RATE[unit]


def parse_time(text: str | float) -> float:
    """'100ms' -> 0.1 s (a bare number is seconds)."""
    v, unit = _split(text, "time")
    if unit not in _TIME:
        raise ValueError(f"bad time unit in {text!r} (use s, ms, us)")
    return v * _TIME[unit]


def parse_loss(text: str | float) -> float:
    """'1%' -> 0.01; a bare number is a fraction (0.01). 100 % is a link that is down."""
    v, unit = _split(text, "loss")
    if unit not in ("", "%"):
        raise ValueError(f"bad loss {text!r}")
    p = v / 100 if unit == "%" else v
    if not 0 <= p <= 1:
        raise ValueError(f"loss {text!r} not in [0, 100%]")
    return p


def parse_size(text: str | float) -> int:
    """'256k' -> 262144 bytes (k/m = KiB/MiB, kb/mb = 10^3/10^6)."""
    v, unit = _split(text, "size")
    if unit not in _SIZE:
        raise ValueError(f"bad size unit in {text!r}")
    return int(v * _SIZE[unit])


@dataclass
class Params:
    """What the link does, per direction. ``queue`` 0 means: the default, one BDP (min 64 KiB)."""

    rate: float = 100e6  # bit/s of IP packets (+ overhead); 0 = no rate limit, no queue
    rtt: float = 0.1  # s; each direction delays rtt/2
    jitter: float = 0.0  # s; uniform in [-jitter, +jitter] per packet, never reordering
    loss: float = 0.0  # fraction, per packet and direction
    queue: int = 0  # bytes of the bottleneck queue (drop-tail)
    mtu: int = 1500
    overhead: int = 0  # bytes added to each packet for the serialisation time (e.g. 38 Ethernet)
    seed: int | None = None

    def queue_bytes(self) -> int:
        if self.queue:
            return self.queue
        return max(64 << 10, int(self.rate / 8 * max(self.rtt, 0.001)))

    @classmethod
    def build(cls, rate: str | float = "100mbit", rtt: str | float = "100ms",
              loss: str | float = 0, jitter: str | float = 0, queue: str | int = 0,
              mtu: int = 1500, overhead: int = 0, seed: int | None = None) -> Params:
        p = cls(rate=parse_rate(rate), rtt=parse_time(rtt), jitter=parse_time(jitter),
                loss=parse_loss(loss), queue=parse_size(queue), mtu=int(mtu),
                overhead=int(overhead), seed=seed)
        if not 68 <= p.mtu <= 65000:
            raise ValueError(f"mtu {p.mtu} not in [68, 65000]")
        return p

    def describe(self) -> str:
        rate = f"{self.rate / 1e6:g} Mbit/s" if self.rate else "unlimited"
        return (f"rate {rate}, rtt {self.rtt * 1e3:g} ms (+-{self.jitter * 1e3:g} ms jitter each"
                f" way), loss {self.loss * 100:g} % each way, queue {self.queue_bytes()} bytes,"
                f" mtu {self.mtu}")


# -- namespaces, TUN ------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
    elif _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in namespace ``name``: sockets and TUN devices opened here
    belong to it, and stay there after the thread returns to its own namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def open_tun(name: str) -> int:
    """A new TUN device (IP packets, no packet-info header) in the current namespace; its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _proc_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return None if rest[0] in ("Z", "X") else rest[19]


def _alive(pid: int | None, start: str | None) -> bool:
    return bool(pid) and _proc_start(pid) is not None and _proc_start(pid) == start


def _kill_ns_processes(ns: str, timeout: float = 5.0) -> None:
    """TERM, then KILL, whatever runs in namespace ``ns`` (programs a user started there)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = _ip("netns", "pids", ns, check=False)
        pids = [int(p) for p in out.stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _proc_start(p) is not None]
            time.sleep(0.05)
        if not pids:
            return


def _state_path(ns_a: str) -> Path:
    return STATE_DIR / f"{ns_a}.json"


def _state_alive(state: dict) -> bool:
    return (_alive(state.get("forwarder"), state.get("forwarder_start"))
            or _alive(state.get("owner"), state.get("owner_start")))


def sweep_stale(names: tuple[str, ...] = ()) -> list[str]:
    """Remove what crashed runs left: namespaces of state files whose processes are all gone, and
    ``names`` if they exist without any live emulator. Raises if ``names`` belong to a live one."""
    removed = []
    claimed: set[str] = set()
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        nss = [state.get("a", ""), state.get("b", "")]
        if _state_alive(state):
            claimed.update(nss)
            continue
        for ns in nss:
            if ns and netns_exists(ns):
                _kill_ns_processes(ns)
                _ip("netns", "del", ns, check=False)
                removed.append(ns)
        path.unlink(missing_ok=True)
    for ns in names:
        if ns in claimed:
            raise RuntimeError(f"namespace {ns} belongs to a running emulator"
                               f" (python3 bench/wanem.py down --ns-a ... to remove it)")
        if netns_exists(ns):
            _kill_ns_processes(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    return removed


# -- the forwarder --------------------------------------------------------------------------------
class _Line:
    """One direction: the serialiser's state, the delay line and the counters."""

    __slots__ = ("q", "busy", "last_due", "pkts_in", "bytes_in", "lost", "qdrops", "pkts_out",
                 "bytes_out", "late_sum", "late_max", "late_1ms", "backlog_max")

    def __init__(self) -> None:
        self.q: collections.deque = collections.deque()
        self.busy = 0.0  # monotonic time the serialiser finishes what it has
        self.last_due = 0.0
        self.reset()

    def reset(self) -> None:
        self.pkts_in = self.bytes_in = self.lost = self.qdrops = 0
        self.pkts_out = self.bytes_out = 0
        self.late_sum = self.late_max = 0.0  # delivery after the due time (loop latency)
        self.late_1ms = 0  # packets delivered more than 1 ms late
        self.backlog_max = 0.0

    def counters(self) -> dict:
        out = {k: getattr(self, k) for k in ("pkts_in", "bytes_in", "lost", "qdrops", "pkts_out",
                                             "bytes_out")}
        out["queued_now"] = len(self.q)
        out["late_mean_us"] = round(self.late_sum / self.pkts_out * 1e6, 1) if self.pkts_out else 0
        out["late_max_us"] = round(self.late_max * 1e6, 1)
        out["late_over_1ms"] = self.late_1ms
        out["backlog_max_bytes"] = int(self.backlog_max)
        return out


def forward(fd_a: int, fd_b: int, state_file: Path, owner: int | None) -> None:
    """The delay line between two TUN fds, until SIGTERM/SIGINT (or ``owner`` exits).

    Reads its parameters from ``state_file`` at start and on SIGHUP; on SIGUSR1 (and at exit)
    writes its counters to ``state_file`` + ``.stats``.
    """
    with contextlib.suppress(OSError):  # no 50 us timer slack on wake-ups (0 anyway under FIFO)
        _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    with contextlib.suppress(OSError):  # ahead of the iperf3/ping/daemons it carries
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    for fd in (fd_a, fd_b):
        os.set_blocking(fd, False)
    gc.disable()  # the loop makes no reference cycles; no collector pauses in the delay line
    gc.freeze()
    stats_file = Path(str(state_file) + ".stats")
    lines = {fd_a: _Line(), fd_b: _Line()}  # keyed by the fd the packets are read from
    peer = {fd_a: fd_b, fd_b: fd_a}
    cfg: dict = {}
    stop = threading.Event()
    started = time.monotonic()

    def load(*_: object) -> None:
        p = Params(**json.loads(state_file.read_text())["params"])
        rng = random.Random(p.seed)
        cfg.update(p=p, rng=rng.random, uniform=rng.uniform, bufsize=p.mtu + 64,
                   spb=8 / p.rate if p.rate else 0.0, bps=p.rate / 8, qlim=p.queue_bytes(),
                   delay=p.rtt / 2)

    def dump(*_: object) -> None:
        cpu = os.times()
        out = dict(params=asdict(cfg["p"]), uptime_s=round(time.monotonic() - started, 3),
                   cpu_s=round(cpu.user + cpu.system, 3),
                   a_to_b=lines[fd_a].counters(), b_to_a=lines[fd_b].counters())
        tmp = stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(stats_file)

    want_reset = []

    def reset(*_: object) -> None:  # done between two wake-ups, not in the middle of a batch
        want_reset.append(True)

    def terminate(*_: object) -> None:
        stop.set()

    load()
    signal.signal(signal.SIGHUP, load)
    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, reset)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)

    # A signal wakes the loop at once (its handler runs, then select sees the wake-up pipe).
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    read, write, monotonic, sel = os.read, os.write, time.monotonic, select.select
    fds = [fd_a, fd_b, wake_r]
    la, lb = lines[fd_a], lines[fd_b]
    next_owner_check = 0.0
    print("forwarding", flush=True)
    try:
        while not stop.is_set():
            if want_reset:
                want_reset.clear()
                la.reset()
                lb.reset()
            # Sleep until the earliest delivery (or a packet to read).
            due = None
            if la.q:
                due = la.q[0][0]
            if lb.q and (due is None or lb.q[0][0] < due):
                due = lb.q[0][0]
            now = monotonic()
            timeout = 1.0 if due is None else min(1.0, max(0.0, due - now))
            try:
                ready = sel(fds, (), (), timeout)[0]
            except InterruptedError:  # pragma: no cover - PEP 475 retries; a handler may set stop
                continue
            now = monotonic()
            for fd in ready:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        read(wake_r, 512)
                    continue
                line = lines[fd]
                p = cfg["p"]
                loss, rng, spb, bps, qlim = p.loss, cfg["rng"], cfg["spb"], cfg["bps"], cfg["qlim"]
                delay, jitter, over, bufsize = cfg["delay"], p.jitter, p.overhead, cfg["bufsize"]
                busy = line.busy if line.busy > now else now
                q = line.q
                n_in = b_in = lost = qdrops = 0
                for _ in range(256):
                    try:
                        pkt = read(fd, bufsize)
                    except BlockingIOError:
                        break
                    except OSError:  # the device went away (namespace deleted): stop
                        stop.set()
                        break
                    size = len(pkt)
                    n_in += 1
                    b_in += size
                    if loss and rng() < loss:
                        lost += 1
                        continue
                    if spb:
                        backlog = (busy - now) * bps
                        if backlog + size > qlim:
                            qdrops += 1
                            continue
                        if backlog > line.backlog_max:
                            line.backlog_max = backlog
                        busy += (size + over) * spb
                        t = busy + delay
                    else:
                        t = now + delay
                    if jitter:
                        t += cfg["uniform"](-jitter, jitter)
                        if t < now:
                            t = now
                        if t < line.last_due:
                            t = line.last_due  # no reordering
                        line.last_due = t
                    q.append((t, pkt))
                line.busy = busy
                line.pkts_in += n_in
                line.bytes_in += b_in
                line.lost += lost
                line.qdrops += qdrops
            for fd_in, line in ((fd_a, la), (fd_b, lb)):
                q = line.q
                if not q or q[0][0] > now:
                    continue
                out = peer[fd_in]
                n = b = 0
                late_sum, late_max = line.late_sum, line.late_max
                while q and q[0][0] <= now:
                    t, pkt = q.popleft()
                    late = now - t
                    late_sum += late
                    if late > late_max:
                        late_max = late
                    if late > 0.001:
                        line.late_1ms += 1
                    try:
                        write(out, pkt)
                    except OSError:  # e.g. ENOBUFS, or a packet the other kernel refuses: lost
                        continue
                    n += 1
                    b += len(pkt)
                line.late_sum, line.late_max = late_sum, late_max
                line.pkts_out += n
                line.bytes_out += b
            if owner is not None and now >= next_owner_check:
                next_owner_check = now + 0.5
                if os.getppid() != owner:
                    break
    finally:
        signal.set_wakeup_fd(-1)
    dump()


# -- the emulator: namespaces + forwarder ---------------------------------------------------------
@dataclass
class WanEm:
    """Two namespaces joined by the delay line. ``up()`` builds, ``down()`` removes everything."""

    params: Params = field(default_factory=Params)
    a: str = DEFAULT_NS[0]
    b: str = DEFAULT_NS[1]
    a_ip: str = A_IP
    b_ip: str = B_IP
    detach: bool = False  # the forwarder outlives this process (``wanem.py up``)
    cc: str | None = None  # TCP congestion control default in both namespaces (else the host's)
    proc: subprocess.Popen | None = None

    @property
    def exec_a(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.a)

    @property
    def exec_b(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.b)

    @property
    def state_file(self) -> Path:
        return _state_path(self.a)

    def up(self) -> WanEm:
        if os.geteuid() != 0:
            raise RuntimeError("the WAN emulator needs root (namespaces, TUN)")
        sweep_stale((self.a, self.b))
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        own = os.getpid()
        state = dict(a=self.a, b=self.b, a_ip=self.a_ip, b_ip=self.b_ip, params=asdict(self.params),
                     owner=None if self.detach else own,
                     owner_start=None if self.detach else _proc_start(own),
                     forwarder=None, forwarder_start=None)
        # Claim the names first (with this process as owner), so a crash leaves a sweepable trace.
        self._write_state(dict(state, owner=own, owner_start=_proc_start(own)))
        fds: list[int] = []
        try:
            for ns, ip in ((self.a, self.a_ip), (self.b, self.b_ip)):
                _ip("netns", "add", ns)
                with in_netns(ns):
                    fds.append(open_tun(DEV))
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", DEV, "addrgenmode", "none", check=False)  # no IPv6 LL
                _ip("-n", ns, "link", "set", DEV, "mtu", str(self.params.mtu))
                _ip("-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", DEV)
                _ip("-n", ns, "link", "set", DEV, "up")
                if self.cc:
                    set_cc(ns, self.cc)
            cmd = [sys.executable, str(Path(__file__).resolve()), "_forward",
                   "--fds", f"{fds[0]},{fds[1]}", "--state", str(self.state_file)]
            if not self.detach:
                cmd += ["--owner", str(own)]
            log_path = STATE_DIR / f"{self.a}.log"
            with open(log_path, "w") as log:
                self.proc = subprocess.Popen(cmd, pass_fds=fds, stdout=subprocess.PIPE,
                                             stderr=log, stdin=subprocess.DEVNULL,
                                             start_new_session=self.detach)
            assert self.proc.stdout is not None
            if self.proc.stdout.readline().strip() != b"forwarding":
                self.proc.wait(5)
                raise RuntimeError(f"the forwarder failed to start: {log_path.read_text()[-800:]}")
            self.proc.stdout.close()
            state.update(forwarder=self.proc.pid, forwarder_start=_proc_start(self.proc.pid))
            self._write_state(state)
        except BaseException:
            self.down()
            raise
        finally:
            for fd in fds:
                os.close(fd)  # the forwarder holds them now; the devices live as long as it does
        return self

    def _write_state(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def _state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def _signal(self, sig: int) -> None:
        state = self._state()
        if not _alive(state.get("forwarder"), state.get("forwarder_start")):
            raise RuntimeError("the forwarder is not running")
        os.kill(state["forwarder"], sig)

    def set(self, **changes: str | float | int | None) -> Params:
        """Change a running link (rate, rtt, jitter, loss, queue, mtu, overhead, seed)."""
        new = Params.build(**{**_as_text(self.params), **{k: v for k, v in changes.items()
                                                         if v is not None}})
        if new.mtu != self.params.mtu:
            for ns in (self.a, self.b):
                _ip("-n", ns, "link", "set", DEV, "mtu", str(new.mtu))
        state = self._state()
        state["params"] = asdict(new)
        self._write_state(state)
        self._signal(signal.SIGHUP)
        self.params = new
        time.sleep(0.02)  # the forwarder reloads at once (its signal handler)
        return new

    def reset_stats(self) -> None:
        """Zero the forwarder's counters."""
        self._signal(signal.SIGUSR2)
        time.sleep(0.02)

    def stats(self, timeout: float = 3.0) -> dict:
        """The forwarder's counters (per direction: packets in/out, lost, queue drops, lateness)."""
        stats_file = Path(str(self.state_file) + ".stats")
        with contextlib.suppress(FileNotFoundError):
            stats_file.unlink()
        self._signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return json.loads(stats_file.read_text())
            time.sleep(0.01)
        raise RuntimeError("the forwarder did not write its counters")

    def down(self) -> None:
        """Stop the forwarder, kill what still runs in the namespaces, remove them and the state."""
        state: dict = {}
        with contextlib.suppress(OSError, ValueError):
            state = self._state()
        pid, start = state.get("forwarder"), state.get("forwarder_start")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        elif _alive(pid, start):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        for ns in (self.a, self.b):
            if netns_exists(ns):
                _kill_ns_processes(ns)
                _ip("netns", "del", ns, check=False)
        for path in (self.state_file, Path(f"{self.state_file}.stats"),
                     STATE_DIR / f"{self.a}.log"):
            path.unlink(missing_ok=True)

    @classmethod
    def attach(cls, a: str = DEFAULT_NS[0]) -> WanEm:
        """The emulator ``wanem.py up`` left running with namespace ``a``."""
        try:
            state = json.loads(_state_path(a).read_text())
        except FileNotFoundError:
            raise RuntimeError(f"no emulator with namespace {a} is up") from None
        return cls(params=Params(**state["params"]), a=state["a"], b=state["b"],
                   a_ip=state["a_ip"], b_ip=state["b_ip"], detach=True)

    def __enter__(self) -> WanEm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _as_text(p: Params) -> dict:
    return dict(rate=p.rate, rtt=p.rtt, jitter=p.jitter, loss=p.loss, queue=p.queue, mtu=p.mtu,
                overhead=p.overhead, seed=p.seed)


@contextlib.contextmanager
def wan(rate: str | float = "100mbit", rtt: str | float = "100ms", loss: str | float = 0,
        jitter: str | float = 0, queue: str | int = 0, mtu: int = 1500, overhead: int = 0,
        seed: int | None = None, ns: tuple[str, str] = DEFAULT_NS,
        cc: str | None = None) -> Iterator[WanEm]:
    """The emulated WAN for the duration of the block; removed on exit, exception or Ctrl-C.
    ``cc``: the namespaces' default TCP congestion control (default: the host's)."""
    em = WanEm(Params.build(rate, rtt, loss, jitter, queue, mtu, overhead, seed), *ns, cc=cc)
    em.up()
    try:
        yield em
    finally:
        em.down()


def available() -> str | None:
    """None if the emulator can run here, else why not."""
    if os.geteuid() != 0:
        return "the WAN emulator needs root (network namespaces, TUN)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (CONFIG_TUN)"
    return None


# -- measuring it ---------------------------------------------------------------------------------
def _cc(ns: str) -> str:
    with in_netns(ns):
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def set_cc(ns: str, cc: str) -> None:
    """Make ``cc`` the default TCP congestion control of namespace ``ns``."""
    try:
        with in_netns(ns):
            Path("/proc/sys/net/ipv4/tcp_congestion_control").write_text(cc)
    except OSError as e:
        allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
        raise RuntimeError(
            f"cannot make {cc} the default in namespace {ns} ({e.strerror}): a namespace may"
            f" only choose from net.ipv4.tcp_allowed_congestion_control ({' '.join(allowed)});"
            f" allow it once with: sysctl -w net.ipv4.tcp_allowed_congestion_control="
            f"'{' '.join(dict.fromkeys([*allowed, cc]))}'") from None


def measure_rtt(w: WanEm, count: int = 50, interval: float = 0.02) -> dict:
    """``count`` pings A -> B -> A (56-byte payloads): ``rtt_ms`` is ping's own average (printed
    to the microsecond), ``rtt_median_ms`` the median of the replies (ping prints a reply's
    time to 1 ms above 100 ms, 0.1 ms above 10 ms)."""
    wait = max(1, math.ceil(2 * w.params.rtt + 2 * w.params.jitter + 1))
    out = subprocess.run([*w.exec_a, "ping", "-n", "-c", str(count), "-i", str(interval),
                          "-W", str(wait), w.b_ip], capture_output=True, text=True,
                         timeout=count * interval + 2 * wait + 10)
    times = [float(x) for x in re.findall(r"time=([0-9.]+) ms", out.stdout)]
    summary = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms", out.stdout)
    if not times or not summary:
        raise RuntimeError(f"no ping reply: {out.stdout[-300:]} {out.stderr[-300:]}")
    lo, avg, hi, mdev = (float(x) for x in summary.groups())
    return dict(rtt_ms=avg, rtt_median_ms=statistics.median(times), rtt_min_ms=lo, rtt_max_ms=hi,
                rtt_mdev_ms=mdev, rtt_samples=len(times))


def measure_rate(w: WanEm, seconds: float = 5, omit: float = 2, port: int = 5201) -> dict:
    """TCP goodput A -> B with iperf3 (server in A sending with -R, client in B receiving).

    ``rate_mbit`` is what the receiver got per second after the first ``omit`` seconds (slow
    start); ``rate_ip_mbit`` adds back the IP and TCP headers of full segments (MTU - 52 bytes of
    payload with TCP timestamps), which is what the bottleneck's rate applies to.
    """
    server = subprocess.Popen([*w.exec_a, "iperf3", "-s", "-1", "--forceflush", "-B", w.a_ip,
                               "-p", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        ready = threading.Event()

        def read_server() -> None:  # until "Server listening on ..."; then drain quietly
            for line in server.stdout:  # type: ignore[union-attr]
                if "listening" in line.lower():
                    ready.set()
            ready.set()

        threading.Thread(target=read_server, daemon=True).start()
        if not ready.wait(10) or server.poll() is not None:
            raise RuntimeError("the iperf3 server did not start")
        cmd = [*w.exec_b, "iperf3", "-c", w.a_ip, "-p", str(port), "-R", "-J",
               "-t", f"{seconds:g}", "-O", f"{omit:g}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + omit + 60)
        if out.returncode:
            raise RuntimeError(f"iperf3 rc {out.returncode}: {out.stdout[-400:]}"
                               f"{out.stderr[-200:]}")
        res = json.loads(out.stdout)
    finally:
        if server.poll() is None:
            server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(5)
    # The receiver's total after the omitted start (iperf3 3.12 sometimes stamps the first
    # interval after -O with twice its length, so the intervals are not summed here).
    recv = res["end"]["sum_received"]
    got = recv["bits_per_second"] / 1e6
    mss = w.params.mtu - 52
    return dict(rate_mbit=got, rate_ip_mbit=got * w.params.mtu / mss,
                cc=_cc(w.a), rate_seconds=recv["seconds"],
                retransmits=res["end"].get("sum_sent", {}).get("retransmits"))


def loss_tolerance(loss: float, n: int, z: float = 1.96) -> float:
    """Half-width of the z-interval of a loss fraction estimated from ``n`` independent probes
    (binomial: the standard error is sqrt(p (1 - p) / n))."""
    return z * math.sqrt(loss * (1 - loss) / n)


def probes_needed(loss: float, rel: float = 0.05, z: float = 1.96) -> int:
    """Probes for a loss estimate within ``rel`` of ``loss`` with confidence ``z`` (normal
    approximation of the binomial): n = z^2 (1 - p) / (p rel^2); 152,000 for 1 % at +-5 %."""
    return math.ceil(z * z * (1 - loss) / (loss * rel * rel)) if 0 < loss < 1 else 20_000


def measure_loss(w: WanEm, count: int, pps: float = 20_000, port: int = 9000) -> dict:
    """One-way loss from ``count`` numbered UDP datagrams, half A -> B and half B -> A at once,
    ``pps`` in total, 16-byte payloads (44-byte IP packets, far below any rate worth emulating,
    so the bottleneck queue never drops one). Each receiver marks the numbers it got; a datagram
    counts as lost if it has not arrived one one-way delay + jitter + 0.5 s after the last was
    sent. Nothing else decides: no tail guess, no duplicates counted twice."""
    per_dir = count // 2
    socks: dict[str, socket.socket] = {}
    for name, ns, ip in (("tx_a", w.a, w.a_ip), ("rx_a", w.a, w.a_ip),
                         ("tx_b", w.b, w.b_ip), ("rx_b", w.b, w.b_ip)):
        with in_netns(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if name.startswith("rx"):
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            s.bind((ip, port))
            s.setblocking(False)
        socks[name] = s
    try:
        socks["tx_a"].connect((w.b_ip, port))
        socks["tx_b"].connect((w.a_ip, port))
        seen = {"rx_b": bytearray(per_dir), "rx_a": bytearray(per_dir)}
        done = threading.Event()

        def receive() -> None:
            rx = [socks["rx_a"], socks["rx_b"]]
            marks = {socks["rx_a"].fileno(): seen["rx_a"], socks["rx_b"].fileno(): seen["rx_b"]}
            buf = bytearray(64)
            while not done.is_set():
                for s in select.select(rx, (), (), 0.05)[0]:
                    mark = marks[s.fileno()]
                    while True:
                        try:
                            n = s.recv_into(buf)
                        except BlockingIOError:
                            break
                        if n >= 4:
                            i = int.from_bytes(buf[:4], "big")
                            if i < per_dir:
                                mark[i] = 1

        rthread = threading.Thread(target=receive, daemon=True)
        rthread.start()
        tx_a, tx_b = socks["tx_a"].send, socks["tx_b"].send
        pad = bytes(12)
        t0 = time.monotonic()
        sent = 0
        while sent < per_dir:
            due = min(per_dir, int((time.monotonic() - t0) * pps / 2) + 1)
            for i in range(sent, due):
                payload = i.to_bytes(4, "big") + pad
                tx_a(payload)
                tx_b(payload)
            sent = due
            time.sleep(0.001)
        time.sleep(w.params.rtt / 2 + w.params.jitter + 0.5)
        done.set()
        rthread.join(5)
        got_ab, got_ba = sum(seen["rx_b"]), sum(seen["rx_a"])
    finally:
        for s in socks.values():
            s.close()
    sent_total = 2 * per_dir
    p = 1 - (got_ab + got_ba) / sent_total
    half = loss_tolerance(p, sent_total)
    return dict(loss_pct=p * 100, loss_ci95_pct=[max(0.0, p - half) * 100, (p + half) * 100],
                loss_lost=sent_total - got_ab - got_ba,
                loss_a_to_b_pct=(1 - got_ab / per_dir) * 100,
                loss_b_to_a_pct=(1 - got_ba / per_dir) * 100, loss_probes=sent_total,
                loss_seconds=round(time.monotonic() - t0, 2))


def check(params: Params, ns: tuple[str, str] = DEFAULT_NS, pings: int = 50,
          rate_seconds: float = 5, omit: float = 2, loss_probes: int | None = None,
          loss_pps: float | None = None, cc: str | None = None) -> dict:
    """Build the WAN; measure RTT (ping) and rate (iperf3 TCP) at 0 % loss, then switch the
    configured loss on and count it (numbered UDP both ways); remove everything again."""
    t0 = time.monotonic()
    n_loss = loss_probes or min(probes_needed(params.loss), 200_000)
    if not loss_pps:  # 20,000/s, or a quarter of the rate in 44-byte packets each way if less
        loss_pps = min(20_000.0, 2 * 0.25 * params.rate / (44 * 8)) if params.rate else 20_000.0
    res: dict = dict(rate_cfg_mbit=params.rate / 1e6, rtt_cfg_ms=params.rtt * 1e3,
                     loss_cfg_pct=params.loss * 100, jitter_cfg_ms=params.jitter * 1e3,
                     queue_bytes=params.queue_bytes(), mtu=params.mtu)
    with wan(params.rate, params.rtt, 0, params.jitter, params.queue, params.mtu,
             params.overhead, params.seed, ns, cc) as w:
        res.update(measure_rtt(w, pings))
        if params.rate:
            res.update(measure_rate(w, rate_seconds, omit))
        w.set(loss=params.loss)
        w.reset_stats()
        res.update(measure_loss(w, n_loss, loss_pps))
        st = w.stats()
        dirs = ("a_to_b", "b_to_a")
        seen = sum(st[d]["pkts_in"] for d in dirs)
        # The forwarder's own view of the loss phase: its random drops (what it did, vs what the
        # probes saw above) and its queue drops (must be 0: the probes are far below the rate).
        res["fwd_loss_pct"] = sum(st[d]["lost"] for d in dirs) / seen * 100 if seen else None
        res["fwd_lost"] = sum(st[d]["lost"] for d in dirs)
        res["fwd_qdrops"] = sum(st[d]["qdrops"] for d in dirs)
        res["fwd_late_mean_us"] = max(st[d]["late_mean_us"] for d in dirs)
        res["fwd_late_max_us"] = max(st[d]["late_max_us"] for d in dirs)
        res["fwd_cpu_s"] = st["cpu_s"]
    res["seconds"] = round(time.monotonic() - t0, 1)
    return {k: (round(v, 3) if isinstance(v, float) else
                [round(x, 4) for x in v] if isinstance(v, list) else v) for k, v in res.items()}


# -- command line ---------------------------------------------------------------------------------
def _link_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--rate", default=d("100mbit"),
                   help="e.g. 100mbit, 1gbit, 12mbps; 0 = unlimited")
    p.add_argument("--rtt", default=d("100ms"), help="round-trip delay; each way gets half")
    p.add_argument("--jitter", default=d("0ms"),
                   help="uniform +- per packet and way, no reordering")
    p.add_argument("--loss", default=d("0%"), help="random loss per packet and way, e.g. 1%%")
    p.add_argument("--queue", default=d("0"),
                   help="bottleneck queue in bytes (e.g. 256k); default one BDP, min 64 KiB")
    p.add_argument("--mtu", type=int, default=d(1500))
    p.add_argument("--overhead", type=int, default=d(0),
                   help="bytes per packet added for serialisation (38 = Ethernet framing)")
    p.add_argument("--seed", type=int, default=None, help="loss/jitter random seed")


def _ns_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ns-a", default=DEFAULT_NS[0])
    p.add_argument("--ns-b", default=DEFAULT_NS[1])
    p.add_argument("--cc", default=None,
                   help="default TCP congestion control in both namespaces (default: the host's)")


def _params(args: argparse.Namespace) -> Params:
    return Params.build(args.rate, args.rtt, args.loss, args.jitter, args.queue, args.mtu,
                        args.overhead, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="build, measure rtt/rate/loss, print one JSON line")
    _link_args(p_check)
    _ns_args(p_check)
    p_check.add_argument("--pings", type=int, default=50, help="pings for the RTT median")
    p_check.add_argument("--rate-seconds", type=float, default=5, help="iperf3 -t")
    p_check.add_argument("--omit", type=float, default=2, help="iperf3 -O (slow start)")
    p_check.add_argument("--loss-probes", type=int, default=None,
                         help="UDP datagrams for the loss count (default: enough for +-5%% of"
                              " the loss at 95%% confidence, at most 200000)")
    p_check.add_argument("--loss-pps", type=float, default=None,
                         help="probes per second, both ways together (default 20000, less if"
                              " that were over a quarter of the rate)")
    p_up = sub.add_parser("up", help="build the WAN and leave it running")
    _link_args(p_up)
    _ns_args(p_up)
    p_up.add_argument("--foreground", action="store_true", help="run until Ctrl-C, then remove")
    p_set = sub.add_parser("set", help="change a running WAN")
    _link_args(p_set, defaults=False)
    p_set.add_argument("--ns-a", default=DEFAULT_NS[0])
    p_status = sub.add_parser("status", help="parameters and counters of a running WAN")
    p_status.add_argument("--ns-a", default=DEFAULT_NS[0])
    p_down = sub.add_parser("down", help="stop and remove a WAN (and what runs inside it)")
    p_down.add_argument("--ns-a", default=DEFAULT_NS[0])
    p_fwd = sub.add_parser("_forward")  # internal: the forwarding process
    p_fwd.add_argument("--fds", required=True)
    p_fwd.add_argument("--state", required=True)
    p_fwd.add_argument("--owner", type=int, default=None)
    args = parser.parse_args(argv)

    if args.cmd == "_forward":
        fa, fb = (int(x) for x in args.fds.split(","))
        forward(fa, fb, Path(args.state), args.owner)
        return 0
    if available():
        print(f"wanem: {available()}", file=sys.stderr)
        return 2

    def terminate(signum: int, frame: object) -> None:  # unwind like Ctrl-C: try/finally cleans up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.cmd == "check":
            res = check(_params(args), (args.ns_a, args.ns_b), args.pings, args.rate_seconds,
                        args.omit, args.loss_probes, args.loss_pps, args.cc)
            print(json.dumps(res), flush=True)
        elif args.cmd == "up":
            em = WanEm(_params(args), args.ns_a, args.ns_b, detach=not args.foreground,
                       cc=args.cc)
            em.up()
            print(f"wanem up: {em.a} {em.a_ip}/{PREFIX} dev {DEV} <-> {em.b} {em.b_ip}/{PREFIX}"
                  f" dev {DEV}; {em.params.describe()}", flush=True)
            if args.foreground:
                try:
                    while em.proc is not None and em.proc.poll() is None:
                        time.sleep(0.5)
                finally:
                    em.down()
        elif args.cmd == "down":
            if not _state_path(args.ns_a).exists():
                print(f"wanem: no emulator with namespace {args.ns_a}; removing leftovers",
                      file=sys.stderr)
                sweep_stale()
                return 0
            WanEm.attach(args.ns_a).down()
        elif args.cmd == "set":
            em = WanEm.attach(args.ns_a)
            changes = {k: getattr(args, k) for k in ("rate", "rtt", "jitter", "loss", "queue",
                                                     "mtu", "overhead", "seed")}
            print(f"wanem: {em.set(**changes).describe()}")
        elif args.cmd == "status":
            em = WanEm.attach(args.ns_a)
            print(json.dumps(dict(a=em.a, b=em.b, a_ip=em.a_ip, b_ip=em.b_ip, **em.stats())))
    except KeyboardInterrupt:
        print("wanem: interrupted; namespaces and forwarder removed", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as e:
        print(f"wanem: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
