"""The daemon's start-up in-process: endpoints bound at start with one-line failures, stale
control sockets, systemd readiness, and how the drbd-proxy launcher splits its arguments."""

from __future__ import annotations

import socket
import sys

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from drbdproxy import launcher, startup


class RefusingReactor(MemoryReactorClock):
    """A reactor whose ports are all taken."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


@pytest.fixture(autouse=True)
def excepthook(monkeypatch):
    """A failure installs its one-line excepthook: keep the test process's own."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)


def test_a_port_in_use_is_one_line_naming_the_endpoint():
    """Binding a taken port raises StartupFailed whose text is one line: what, where and why."""
    listening = startup.Listening("metrics", "tcp:9942:interface=127.0.0.1", Factory(),
                                  RefusingReactor())
    with pytest.raises(startup.StartupFailed) as info:
        listening.privilegedStartService()
    assert str(info.value) == ("drbd-proxy: cannot listen for metrics on"
                               " tcp:9942:interface=127.0.0.1: address already in use")
    assert listening.port is None


def test_a_failure_prints_one_line_on_the_real_stderr(capfd):
    """Uncaught, a start-up failure prints its one line to the process's stderr, no traceback."""
    with pytest.raises(startup.StartupFailed) as info:
        startup.fail(Logger(), "cannot listen for control on tcp:1: address already in use")
    sys.excepthook(type(info.value), info.value, info.tb)
    assert capfd.readouterr().err == (
        "drbd-proxy: cannot listen for control on tcp:1: address already in use\n")


def test_listening_binds_once_and_stops():
    """privilegedStartService binds, startService does not bind again, stopService unbinds."""
    reactor = MemoryReactorClock()
    listening = startup.Listening("control", "tcp:7000:interface=127.0.0.1", Factory(), reactor)
    listening.privilegedStartService()
    listening.startService()
    assert [port for port, *_ in reactor.tcpServers] == [7000]
    listening.stopService()
    assert listening.port is None


def test_a_stale_control_socket_is_removed(tmp_path):
    """A socket file nothing accepts on (its daemon was killed) is removed before binding."""
    path = tmp_path / "c.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()
    startup.clear_stale_socket(str(path), Logger())
    assert not path.exists()


def test_a_live_control_socket_is_not_stolen(tmp_path):
    """A socket another daemon accepts on stops start-up with one line saying it is in use."""
    path = tmp_path / "c.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(startup.StartupFailed, match=f"control socket {path} is in use"):
            startup.clear_stale_socket(str(path), Logger())
        assert path.exists()
    finally:
        live.close()


def test_a_control_path_that_is_no_socket_is_refused(tmp_path):
    """A regular file at the control socket's path is left alone and named in the error."""
    path = tmp_path / "c.sock"
    path.write_text("precious")
    with pytest.raises(startup.StartupFailed, match="exists and is not a socket"):
        startup.clear_stale_socket(str(path), Logger())
    assert path.read_text() == "precious"


def test_ready_is_told_to_systemd(tmp_path):
    """With NOTIFY_SOCKET set (a Type=notify unit), readiness is the datagram READY=1."""
    path = tmp_path / "notify"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(path))
    try:
        startup.notify_ready({"NOTIFY_SOCKET": str(path)})
        assert systemd.recv(64) == b"READY=1"
    finally:
        systemd.close()
    startup.notify_ready({})  # not under systemd: nothing to do


def test_socket_activation_is_what_twisted_systemd_endpoint_inherited(monkeypatch):
    """Sockets count as passed by systemd when Twisted's systemd endpoint holds them (it reads
    LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES once, as it is imported)."""
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([3], ("ctl",)))
    assert startup.systemd_passed_sockets()
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([], ()))
    assert not startup.systemd_passed_sockets()


def test_the_launcher_splits_twistd_options_from_the_daemons():
    """`drbd-proxy -n --pidfile= --logfile - --control X ...`: twistd gets its own options (with
    their values), the plugin the rest, in order."""
    twistd, plugin = launcher.split_argv(
        ["-n", "--pidfile=", "--control", "unix:/run/x", "--logfile", "-", "-c", "tcp:1",
         "--drbd-conf", "/etc/drbd.conf", "--umask=022", "--node", "alice", "--help"])
    assert twistd == ["-n", "--pidfile=", "--logfile", "-", "--umask=022"]
    assert plugin == ["--control", "unix:/run/x", "-c", "tcp:1", "--drbd-conf", "/etc/drbd.conf",
                      "--node", "alice", "--help"]


def test_the_launcher_passes_a_failure_whole_to_the_waiting_parent(tmp_path):
    """The daemonized child's status message is the whole line (twistd cuts at 100 bytes), sent
    once its pid file is gone (the parent exits as soon as it reads it)."""
    pidfile = tmp_path / "d.pid"
    pidfile.write_text("4242")
    runner = launcher._Runner({"pidfile": str(pidfile)})
    message = "cannot listen for metrics on " + "tcp:9942:interface=" + "x" * 200
    status = runner._formatChildException(startup.StartupFailed(message))
    assert status == b"1 drbd-proxy: " + message.encode()
    assert not pidfile.exists()  # gone before the parent hears of the failure


def test_the_launcher_log_file_keeps_a_bounded_number_of_old_files(tmp_path):
    """A --logfile rotates at LOG_ROTATE_BYTES and keeps at most LOG_KEEP old files."""
    log = launcher._Logger.__new__(launcher._Logger)
    log._syslog, log._nodaemon, log._logfilename = False, False, str(tmp_path / "d.log")
    observer = log._getLogObserver()
    log_file = observer._outFile  # textFileLogObserver's FileLogObserver
    assert (log_file.rotateLength, log_file.maxRotatedFiles) == (launcher.LOG_ROTATE_BYTES,
                                                                 launcher.LOG_KEEP)
    log_file.close()
