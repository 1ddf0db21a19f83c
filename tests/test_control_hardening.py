"""The real daemon against strangers: a full session table, and what it warns the operator of.

A stranger is anyone who can reach a port. The control protocol has no authentication, so the
daemon limits what sessions can hold and says at start-up what it leaves open.
"""

from __future__ import annotations

import os
import socket

from daemon import Daemon, wait_until
from helpers import free_ports
from drbdproxy.control.protocol import MAX_SESSIONS
from test_daemon_drbd_conf import write_conf


def take_session(path) -> socket.socket:
    """A control session the daemon has accepted and counted (it answered a command on it)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(path))
    s.sendall(b"show version\n")
    reply = b""
    while not reply.endswith(b"%ok\n"):
        chunk = s.recv(4096)
        assert chunk, f"session closed early: {reply!r}"
        reply += chunk
    return s


def test_with_every_session_taken_ctl_prints_the_daemons_refusal(tmp_path):
    """With all 64 sessions open, drbd-proxy-ctl says what the daemon said, "too many control
    sessions", and exits 1 (not "lost the connection", not exit 3); a freed slot works again."""
    daemon = Daemon(tmp_path)
    held = []
    try:
        held = [take_session(daemon.socket) for _ in range(MAX_SESSIONS)]
        for _ in range(10):  # whether ctl writes before or after the daemon closes, same answer
            out = daemon.ctl("show")
            assert (out.returncode, out.stdout, out.stderr) == (
                1, "", "drbd-proxy-ctl: too many control sessions\n")
        wait_until(lambda: "refusing a session, 64 already open" in "".join(daemon.log),
                   "the refusal in the daemon's log")
        held.pop().close()
        wait_until(lambda: daemon.ctl("show").returncode == 0, "the freed slot to be usable")
    finally:
        for s in held:
            s.close()
        daemon.stop()


def warnings(daemon: Daemon) -> list[str]:
    return [line for line in daemon.log if "#warn]" in line]


def test_a_tcp_control_endpoint_and_an_unauthenticated_connection_are_warned_of(tmp_path):
    """Started with a TCP control endpoint and a --drbd-conf connection without --link-secret or
    TLS, the daemon logs exactly one WARN line for each, before it is ready, saying what to do."""
    [port] = free_ports(1)
    conf = write_conf(tmp_path)
    daemon = Daemon(tmp_path, "exposed", "--control", f"tcp:{port}", "--drbd-conf", conf, "--node", "alice")
    try:
        logged = warnings(daemon)
        [control] = [line for line in logged if "control endpoint" in line]
        assert f"control endpoint tcp:{port}:interface=127.0.0.1 is not a unix socket" in control
        assert "any local user or process can reconfigure or shut down this proxy" in control
        assert "bind the control socket to a unix path" in control
        [connection] = [line for line in logged if "connection r0-bob-alice:" in line]
        assert "not authenticated" in connection and "--link-secret" in connection and "--tls" in connection
        assert len(logged) == 2
        # ... and the control endpoint works, on TCP.
        assert daemon.ctl("-s", f"tcp:127.0.0.1:{port}", "show", check=True).stdout.startswith("r0-bob-alice")
    finally:
        daemon.stop()


def test_a_unix_control_socket_and_a_link_secret_warn_of_nothing(tmp_path):
    """The recommended set-up (unix control socket, --link-secret) logs no WARN line at start."""
    secret = tmp_path / "link.secret"
    secret.write_bytes(os.urandom(32).hex().encode() + b"\n")
    secret.chmod(0o600)
    conf = write_conf(tmp_path)
    daemon = Daemon(tmp_path, "private", "--drbd-conf", conf, "--node", "alice", "--link-secret", str(secret))
    try:
        assert "r0-bob-alice" in daemon.ctl("show", check=True).stdout
        assert warnings(daemon) == []
    finally:
        daemon.stop()
