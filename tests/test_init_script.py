"""etc/init.d/drbdproxy really starts, reports and stops the daemon (with drbdadm proxy-up/down)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, free_ports, have, tool

SCRIPT = Path(__file__).resolve().parent.parent / "etc" / "init.d" / "drbdproxy"
pytestmark = pytest.mark.skipif(not have("drbdadm"), reason="drbdadm (drbd-utils) is not installed")

CONF = """
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  proxy {{ memlimit 64M; }}
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{0} via proxy on alice {{ inside 127.0.0.1:{1}; outside 127.0.0.1:{2}; }}
    host bob   address 127.0.0.1:{3} via proxy on bob   {{ inside 127.0.0.1:{4}; outside 127.0.0.1:{5}; }}
  }}
}}
"""


def exited(pid: int) -> bool:
    """The process is gone, or a zombie that its (reparented) parent has yet to reap."""
    try:
        return "Z" in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except FileNotFoundError:
        return True


@pytest.fixture
def init(tmp_path, request):
    conf = tmp_path / "drbd.conf"
    conf.write_text(CONF.format(*free_ports(6)))
    node = getattr(request, "param", "alice")
    env = dict(os.environ, SBINDIR=str(BIN), RUNDIR=str(tmp_path / "run"),
               LOGFILE=str(tmp_path / "drbd-proxy.log"), __DRBD_NODE__=node,
               DRBDADM=f"drbdadm -p {tool('drbd-proxy-ctl')} -c {conf}")

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(SCRIPT), action], env=env, capture_output=True,
                              text=True, timeout=60)

    yield run
    run("stop")


def test_start_status_stop(init, tmp_path):
    """start runs the daemon and proxy-up all; status lists the connection; stop ends both."""
    assert init("status").returncode == 3
    started = init("start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((tmp_path / "run" / "drbd-proxy.pid").read_text())
    status = init("status")
    assert status.returncode == 0 and "\nr0-bob-alice\tConnecting\t" in status.stdout
    again = init("start")
    assert again.returncode == 0 and "already running" in again.stdout
    stopped = init("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert exited(pid)
    assert init("status").returncode == 3


def test_restart_gives_a_fresh_daemon(init, tmp_path):
    """restart stops the running daemon and starts a new one with the connections configured."""
    assert init("start").returncode == 0
    first = (tmp_path / "run" / "drbd-proxy.pid").read_text()
    restarted = init("restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert (tmp_path / "run" / "drbd-proxy.pid").read_text() != first
    assert "r0-bob-alice" in init("status").stdout


@pytest.mark.parametrize("init", ["carol"], indirect=True)
def test_a_failed_proxy_up_leaves_the_daemon_running(init, tmp_path):
    """On a host drbd.conf has no proxied resource for, drbdadm proxy-up all exits 1: start says
    so and succeeds, and the daemon stays up for what drbdadm adds later."""
    started = init("start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "drbdadm proxy-up all failed for some resources" in started.stderr
    status = init("status")
    assert status.returncode == 0 and "running" in status.stdout
    assert init("stop").returncode == 0


def test_a_start_up_error_is_one_line(init, tmp_path):
    """A daemon that cannot start (its control path is a directory) fails start with the
    daemon's one-line reason on stderr, and leaves no pid file."""
    (tmp_path / "run" / "drbd-proxy-ctl.socket").mkdir(parents=True)
    started = init("start")
    assert started.returncode == 1
    [line] = started.stderr.splitlines()
    assert line.startswith("drbd-proxy: control socket ") and line.endswith("is not a socket")
    assert not (tmp_path / "run" / "drbd-proxy.pid").exists()
