"""The real daemon's start-up errors: one line on stderr and exit status 1, in the foreground and
daemonized (through the drbd-proxy launcher), for every endpoint and for --node; --version."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

import drbdproxy
from daemon import Daemon
from helpers import free_ports, tool

VERSION = f"drbdproxy {drbdproxy.__version__}\n"


def start(*argv: str, program: str = "drbd-proxy", cwd: Path | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(program), *argv], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exit status 1 and said why in exactly one line on stderr."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    [line] = out.stderr.splitlines()
    return line


@pytest.fixture
def taken_port():
    """A loopback port something else listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", free_ports(1)[0]))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


@pytest.mark.parametrize("foreground", [["-n", "--pidfile=", "--logfile=-"], []],
                         ids=["foreground", "daemonized"])
def test_a_metrics_port_in_use_is_one_line(tmp_path, taken_port, foreground):
    """A port in use stops the daemon with one whole line naming it, also when daemonized, and
    no daemon, pid file or control socket stays behind."""
    pidfile = tmp_path / "d.pid"
    argv = foreground or [f"--pidfile={pidfile}", f"--logfile={tmp_path}/d.log"]
    out = start(*argv, "--control", f"unix:{tmp_path}/c.sock",
                "--metrics", f"tcp:{taken_port}:interface=127.0.0.1")
    assert one_line(out) == (f"drbd-proxy: cannot listen for metrics on"
                             f" tcp:{taken_port}:interface=127.0.0.1: address already in use")
    assert not pidfile.exists()
    if not foreground:
        assert "start-up failed: cannot listen for metrics" in (tmp_path / "d.log").read_text()


def test_plain_twistd_in_the_foreground_is_one_line_too(tmp_path, taken_port):
    """`twistd -n drbd-proxy` with its control port in use: one line on stderr, exit 1."""
    out = start("-n", "--pidfile=", "--logfile=-", "drbd-proxy",
                "--control", f"tcp:{taken_port}", program="twistd")
    assert one_line(out) == (f"drbd-proxy: cannot listen for control on"
                             f" tcp:{taken_port}:interface=127.0.0.1: address already in use")


def test_a_control_socket_in_use_is_one_line_and_the_running_daemon_is_untouched(tmp_path):
    """A second daemon on the first one's control socket stops with one line; the first goes on."""
    first = Daemon(tmp_path, "first")
    try:
        out = start("-n", "--pidfile=", "--logfile=-", "--control", f"unix:{first.socket}")
        assert one_line(out) == (f"drbd-proxy: control socket {first.socket} is in use: a"
                                 f" drbd-proxy is running (drbd-proxy-ctl -s {first.socket}"
                                 " show version)")
        assert first.ctl("show", "version", check=True).stdout == VERSION
    finally:
        first.stop()


def test_a_stale_control_socket_does_not_block_a_restart(tmp_path):
    """The socket file of a killed daemon is cleared: the next daemon starts on that path."""
    first = Daemon(tmp_path, "proxy")
    first.proc.kill()
    first.proc.wait(timeout=30)
    assert first.socket.exists()
    second = Daemon(tmp_path, "proxy")
    try:
        assert second.ctl("show", "version", check=True).stdout == VERSION
    finally:
        second.stop()


@pytest.mark.parametrize("endpoint", ["tcp:notaport", "carrier-pigeon:7000"])
def test_a_bad_endpoint_string_is_one_line(tmp_path, endpoint):
    """An endpoint string that does not parse stops start-up with one line, before any fork."""
    out = start("--pidfile", f"{tmp_path}/d.pid", "--logfile", f"{tmp_path}/d.log",
                "--control", endpoint)
    assert one_line(out).startswith(f"drbd-proxy: bad control endpoint '{endpoint}")


def test_a_node_not_in_drbd_conf_names_the_hosts(tmp_path):
    """--node that drbd.conf does not know: one line with the hosts the file has, exit 1."""
    conf = tmp_path / "drbd.conf"
    conf.write_text("resource r0 { on alice { node-id 0; } on bob { node-id 1; } }\n")
    out = start("-n", "--pidfile=", "--control", f"unix:{tmp_path}/c.sock",
                "--drbd-conf", str(conf), "--node", "carol")
    assert one_line(out) == (f"drbd-proxy: --drbd-conf: no host 'carol' in {conf} (its hosts:"
                             " alice, bob); misspelled --node or host name?")


@pytest.mark.parametrize("argv", [["drbd-proxy", "--version"], ["twistd", "drbd-proxy", "--version"],
                                  ["drbd-proxy-ctl", "--version"]])
def test_version(argv):
    """The launcher, `twistd drbd-proxy` and drbd-proxy-ctl print drbdproxy's version, exit 0."""
    out = start(*argv[1:], program=argv[0])
    assert (out.returncode, out.stdout, out.stderr) == (0, VERSION, "")


def test_the_launcher_runs_the_daemon_in_the_foreground(tmp_path):
    """`drbd-proxy -n` is `twistd -n drbd-proxy`: it answers drbd-proxy-ctl and stops on SIGTERM."""
    sock = tmp_path / "c.sock"
    proc = subprocess.Popen([tool("drbd-proxy"), "-n", "--pidfile=", "--logfile=-",
                             "--control", f"unix:{sock}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the event: the daemon says it is ready
            if "drbd-proxy ready" in line:
                break
        out = subprocess.run([tool("drbd-proxy-ctl"), "-s", str(sock), "show", "version"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == VERSION
    finally:
        proc.terminate()
        # twistd ends by the signal it stopped for, as systemd expects of a clean SIGTERM stop.
        assert proc.wait(timeout=30) == -signal.SIGTERM
    assert not sock.exists()


def test_a_drbd_conf_connection_on_a_port_in_use_is_one_line(tmp_path, taken_port):
    """A --drbd-conf connection whose outside port is taken stops start-up with one line naming
    the connection and the port, also when daemonized."""
    ports = free_ports(4)
    conf = tmp_path / "drbd.conf"
    conf.write_text(f"""
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{ports[0]} via proxy on alice {{ inside 127.0.0.1:{ports[1]}; outside 127.0.0.1:{taken_port}; }}
    host bob   address 127.0.0.1:{ports[2]} via proxy on bob   {{ inside 127.0.0.1:{ports[3]}; outside 127.0.0.1:{ports[3] + 1}; }}
  }}
}}
""")
    out = start(f"--pidfile={tmp_path}/d.pid", f"--logfile={tmp_path}/d.log",
                "--control", f"unix:{tmp_path}/c.sock", "--drbd-conf", str(conf), "--node", "alice")
    line = one_line(out)
    assert line.startswith("drbd-proxy: --drbd-conf: r0-bob-alice: add connection r0-bob-alice ")
    assert f"127.0.0.1:{taken_port}" in line and "in use" in line
