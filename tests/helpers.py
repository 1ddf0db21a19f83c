"""Test helpers: loopback ports, drbd-sim subprocesses, waiting on events (never on sleeps)."""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from twisted.logger import LogLevel, formatEvent, globalLogPublisher

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script installed beside this Python (the project's .venv/bin)."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{name} is not installed in {BIN}: run `make test`")
    return str(path)


#: Where free_ports looks: below Linux's ephemeral range (32768-60999), so that no outgoing
#: connect, of a sim or a proxy, can be given one of these ports before its listener binds it.
_PORT_RANGE = (20000, 32767)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that were free on ``host`` a moment ago, in ascending order."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket(family)
            try:
                s.bind((host, random.randint(*_PORT_RANGE)))
            except OSError:  # taken: try another
                s.close()
                continue
            socks.append(s)
        return sorted(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def have(program: str) -> bool:
    return shutil.which(program) is not None


class SimProcess:
    """A drbd-sim subprocess whose stderr lines can be awaited and whose report can be read."""

    def __init__(self, args: list[str], prefix: tuple[str, ...] = ()) -> None:
        self.args = args
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [*prefix, tool("drbd-sim"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = 60) -> str:
        """Block until a stderr line contains ``needle`` (the event), failing if the process ends."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(
                    f"drbd-sim exited before printing {needle!r}: {''.join(self.stderr)}"
                )
            if needle in line:
                return line

    def report(self, timeout: float = 120) -> tuple[int, dict[str, Any]]:
        """Wait for the process to end; its exit status and JSON report."""
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)  # a hung run fails instead of hanging
        timer.start()
        try:
            out = self.proc.stdout.read()
            self.proc.wait()
        finally:
            timer.cancel()
        self._reader.join(timeout=10)
        try:
            return self.proc.returncode, json.loads(out)
        except json.JSONDecodeError:
            raise AssertionError(
                f"no JSON report (rc {self.proc.returncode}): {out!r} {''.join(self.stderr)}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def sim_pair_args(
    primary_port: int, secondary_port: int, *extra: str, host: str = "127.0.0.1"
) -> tuple[list[str], list[str]]:
    """Arguments for a primary and a secondary replicating directly to each other."""
    p = f"{host}:{primary_port}"
    s = f"{host}:{secondary_port}"
    common = ["--connect-timeout", "60", "--ping-timeout", "5", *extra]
    return (
        ["--role", "primary", "--listen", p, "--peer", s, *common],
        ["--role", "secondary", "--listen", s, "--peer", p, *common],
    )


def env_without_proxy_socket() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DRBD_PROXY_CTL_SOCKET", None)
    return env


def tcp_sockets_of(pid: int) -> list[tuple[int, int, str]]:
    """The IPv4 TCP sockets process ``pid`` holds: (local port, remote port, state in hex,
    e.g. ``01`` established, ``02`` SYN sent), from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                found.append((local, remote, fields[3]))
    return found


class Logged:
    """drbdproxy's log events at ``minimum`` or louder while a test runs; with ``clock`` set,
    each event records that clock's time as ``clock``."""

    def __init__(self, minimum: LogLevel = LogLevel.warn) -> None:
        self.minimum = minimum
        self.events: list[dict[str, Any]] = []
        #: Each event as text, as it came.
        self.texts: list[str] = []
        self.clock: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("drbdproxy") \
                and event.get("log_level", LogLevel.debug) >= self.minimum:
            if self.clock is not None:
                event = dict(event, clock=self.clock.seconds())
            self.events.append(event)
            self.texts.append(formatEvent(event))

    def lines(self, containing: str = "") -> list[str]:
        return [text for text in map(formatEvent, self.events) if containing in text]


@contextmanager
def logged(minimum: LogLevel = LogLevel.warn) -> Iterator[Logged]:
    """Collect drbdproxy's events at ``minimum`` or louder, with the daemon's level at info."""
    from drbdproxy.admin import logs

    before = logs.level()
    logs.set_level("info")
    observer = Logged(minimum)
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)
        logs.set_level(before)


def _disk_trial() -> dict[str, Any]:
    from drbdproxy.codecs.adaptive import Measured

    mb = 1e6
    return {
        "none": Measured(0.0, 1.0),
        "lz4": Measured(1 / (700 * mb), 1.9),
        "zstd-1": Measured(1 / (300 * mb), 2.2),
        "zstd-3": Measured(1 / (180 * mb), 2.3),
        "zstd-6": Measured(1 / (90 * mb), 2.4),
        "zstd-9": Measured(1 / (60 * mb), 2.5),
    }


#: What a trial of plugin auto finds on disk-like data (CPU seconds per byte and ratio per
#: candidate), roughly as on this machine's class of CPU.
DISK_TRIAL = _disk_trial()
