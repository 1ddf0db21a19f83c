"""A drbd-proxy daemon as a child process: what the demo, the tests and the benchmarks start.

``twistd -n drbd-proxy`` with its control socket ``NAME.ctl`` in a work directory; its log is
kept in memory and copied to ``NAME.log`` there. It is ready once it logs ``drbd-proxy ready``
(the event scripts wait for), and stopped with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

#: Where the console scripts of this installation are (twistd, drbd-proxy-ctl).
BIN = Path(sys.executable).parent
READY = "drbd-proxy ready"


class DaemonFailed(RuntimeError):
    """The daemon exited, or did not get ready in time; the message ends with its last output."""


class ProxyDaemon:
    """One ``twistd -n drbd-proxy`` process in ``workdir``; ``args`` go to the plugin, ``prefix``
    before twistd (``ip netns exec NS``, say)."""

    def __init__(self, workdir: Path, name: str = "proxy", *args: str,
                 prefix: Sequence[str] = (), bindir: Path = BIN) -> None:
        self.name = name
        self.socket = workdir / f"{name}.ctl"
        self.logfile = workdir / f"{name}.log"
        self.bindir = bindir
        #: Every line the daemon wrote so far.
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [*prefix, str(bindir / "twistd"), "-n", "--pidfile=", "--logfile=-", "drbd-proxy",
             "--control", f"unix:{self.socket}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, cwd=workdir,
            # Its own process group: a Ctrl-C meant for the caller is not the daemon's, and
            # the benchmarks count a relay's CPU by process group.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.logfile, "a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                if READY in line:
                    self._ready.set()
        self._ready.set()  # it exited: whoever waits learns so at once

    def wait_ready(self, timeout: float = 60) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            tail = "".join(self.lines[-20:]).strip()
            raise DaemonFailed(f"drbd-proxy {self.name} did not start: {tail}")

    def ctl(self, *args: str, check: bool = False,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``drbd-proxy-ctl -s SOCKET ARGS``; with ``check``, a non-zero exit raises."""
        out = subprocess.run([str(self.bindir / "drbd-proxy-ctl"), "-s", str(self.socket), *args],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise DaemonFailed(f"drbd-proxy-ctl {args} failed: {out.stderr.strip()}")
        return out

    def stats(self) -> dict[str, str]:
        """``print statistics`` as a dict of counter name to value."""
        out = self.ctl("-c", "print statistics", check=True).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def stop(self, grace: float = 30) -> int:
        """SIGTERM (the daemon says GOAWAY and closes within ping-timeout), SIGKILL after
        ``grace`` seconds; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        status = self.proc.wait()
        self._reader.join(timeout=5)
        return status
