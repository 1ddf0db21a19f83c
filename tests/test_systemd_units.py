"""The systemd units: what drbd-utils' ordering needs, systemd-analyze's verdict, and socket
activation run for real (systemd-socket-activate passes the socket as systemd would)."""

from __future__ import annotations

import configparser
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import drbdproxy
from drbdproxy.tap import DEFAULT_CONTROL
from helpers import BIN, tool

UNITS = Path(__file__).resolve().parent.parent / "etc" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    """A unit file's sections (each key of ours appears once), continuation lines joined."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text().replace("\\\n", " "))
    return parser


def test_the_service_answers_to_both_names_drbd_utils_orders_after():
    """drbd.service says After=drbdproxy.service and drbd@.service After=drbd-proxy.service:
    the unit is drbd-proxy.service with Alias=drbdproxy.service (and the host's drbd units, where
    installed, name one of the two)."""
    service = unit("drbd-proxy.service")
    assert service["Install"]["Alias"] == "drbdproxy.service"
    for path in Path("/lib/systemd/system").glob("drbd*.service"):
        after = " ".join(re.findall(r"^After=(.*)$", path.read_text(), flags=re.M)).split()
        proxy = [name for name in after if "proxy" in name]
        assert set(proxy) <= {"drbdproxy.service", "drbd-proxy.service"}, (path, proxy)


def test_the_service_survives_proxy_up_failures_and_logs_to_the_journal():
    """proxy-up runs after readiness and its failure (a bad resource, or none proxied: exit 1) is
    ignored ("-"); the daemon runs in the foreground, logging to stdout (the journal)."""
    service = unit("drbd-proxy.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStartPost"] == "-/usr/sbin/drbdadm proxy-up all"
    assert service["ExecStop"] == "-/usr/sbin/drbdadm proxy-down all"
    start = service["ExecStart"].split()
    assert start[:4] == ["/usr/sbin/drbd-proxy", "--nodaemon", "--pidfile=", "--logfile=-"]
    assert "--control" not in start  # so that a socket from drbd-proxy.socket is taken


def test_the_socket_unit_listens_where_the_daemon_and_drbd_proxy_ctl_look():
    """drbd-proxy.socket's path is the daemon's default control socket, mode 0600."""
    sock = unit("drbd-proxy.socket")["Socket"]
    assert f"unix:{sock['ListenStream']}:mode=600" == DEFAULT_CONTROL
    assert sock["SocketMode"] == "0600"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.skipif(not Path("/usr/sbin/drbdadm").exists(),
                    reason="drbd-utils is not installed (the units run /usr/sbin/drbdadm)")
def test_systemd_analyze_verify_is_clean(tmp_path):
    """systemd-analyze verify finds nothing to say about either unit, the launcher paths set as
    `make install` sets them."""
    for name in ("drbd-proxy.service", "drbd-proxy.socket"):
        text = (UNITS / name).read_text().replace("/usr/sbin/drbd-proxy", f"{BIN}/drbd-proxy")
        (tmp_path / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no",
                          str(tmp_path / "drbd-proxy.service"), str(tmp_path / "drbd-proxy.socket")],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"),
                    reason="systemd-socket-activate is not installed")
def test_socket_activation_starts_the_daemon_on_the_passed_socket(tmp_path):
    """As under drbd-proxy.socket: the first drbd-proxy-ctl connect starts the daemon, which takes
    the socket systemd passed (no --control) and answers on it."""
    path = tmp_path / "drbd-proxy-ctl.socket"
    activator = subprocess.Popen(
        ["systemd-socket-activate", "--fdname=drbd-proxy.socket", "-l", str(path),
         tool("drbd-proxy"), "--nodaemon", "--pidfile=", f"--logfile={tmp_path}/log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert activator.stderr is not None
        activator.stderr.readline()  # the event: "Listening on PATH as 3."
        # The socket exists before the daemon does: this first connect starts it, and its reply
        # is the event that the daemon runs.
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(60)
        probe.connect(str(path))
        probe.sendall(b"show version\n")
        reply = b""
        while b"drbdproxy" not in reply:
            chunk = probe.recv(4096)
            assert chunk, f"the daemon closed the first session: {reply!r}"
            reply += chunk
        probe.close()
        out = subprocess.run([tool("drbd-proxy-ctl"), "-s", str(path), "show", "version"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == f"drbdproxy {drbdproxy.__version__}\n", out.stderr
        assert "control socket systemd:domain=UNIX:index=0" in (tmp_path / "log").read_text()
    finally:
        activator.terminate()
        activator.wait(timeout=30)
