"""Running the real daemon (`twistd -n drbd-proxy`) in tests, and talking to it with drbd-proxy-ctl."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from helpers import tool


class Daemon:
    """A twistd drbd-proxy process with a control socket in a temporary directory."""

    def __init__(self, workdir: Path, name: str = "proxy", *extra: str) -> None:
        self.socket = workdir / f"{name}.ctl"
        self.log: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [tool("twistd"), "-n", "--pidfile=", "--logfile=-", "drbd-proxy",
             "--control", f"unix:{self.socket}", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
        )
        threading.Thread(target=self._read, daemon=True).start()
        # The event: twistd logs that the control factory is listening (or the process died).
        if not self._ready.wait(60) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"drbd-proxy did not start: {''.join(self.log)}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            if "ControlFactory starting on" in line:
                self._ready.set()
        self._ready.set()

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([tool("drbd-proxy-ctl"), "-s", str(self.socket), *args],
                             capture_output=True, text=True, timeout=30)
        if check and out.returncode != 0:
            raise AssertionError(f"drbd-proxy-ctl {args} failed: {out.stderr}")
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)
