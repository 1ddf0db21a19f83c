"""The real daemon under twistd, configured the way drbdadm configures it, through drbd-proxy-ctl."""

from __future__ import annotations

import pytest

from daemon import Daemon, wait_until
from helpers import free_ports


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


def add_args(name: str, ports: list[int]) -> str:
    inside, peer_outside, outside, drbd = ports
    return (f"add connection {name} 127.0.0.1:{inside} 127.0.0.2:{peer_outside}"
            f" 127.0.0.1:{outside} 127.0.0.1:{drbd}")


def test_drbdadm_9_argv_configures_a_connection(daemon):
    """The exact argv drbdadm 9.22 passes (last command without -c) configures memlimit and plugins."""
    daemon.ctl("-c", add_args("r0-bob-alice", free_ports(4)), check=True)
    out = daemon.ctl("-c", "set memlimit r0-bob-alice 100M",
                     "-c", "set plugin r0-bob-alice 0 zlib level 6",
                     "-c", "set plugin r0-bob-alice 1 lz4 level 9",
                     "set plugin r0-bob-alice 2 END")
    assert out.returncode == 0, out.stderr
    settings = daemon.ctl("show", "proxy-settings", "r0-bob-alice", check=True).stdout
    assert settings.split() == ("proxy { memlimit 100M; plugin { zlib level 6; lz4 level 9; } }").split()
    rows = daemon.ctl("list", "connections", check=True).stdout.splitlines()
    assert rows[0].split("\t")[:2] == ["Name", "Status"]
    assert rows[1].split("\t")[:2] == ["r0-bob-alice", "Connecting"]


def test_bad_input_is_refused_and_changes_nothing(daemon):
    """Unknown plugin, bad size, bad address, unknown name: exit 1, a message, state unchanged."""
    daemon.ctl("-c", add_args("r0", free_ports(4)), check=True)
    daemon.ctl("-c", "set plugin r0 0 zstd level 4", check=True)
    before = daemon.ctl("show", "proxy-settings", "r0", check=True).stdout
    for command, needle in [
        ("set plugin r0 0 lz5", "lz5"),
        ("set memlimit r0 12Q", "12Q"),
        ("add connection r1 127.0.0.1:1 nowhere:2 127.0.0.1:3 127.0.0.1:4", "nowhere"),
        ("set memlimit nosuch 10M", "nosuch"),
        ("set memlimit r0 64T", "physical memory"),
        ("add connection r2 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4 --memlimit=64T",
         "physical memory"),
    ]:
        out = daemon.ctl("-c", command)
        assert out.returncode == 1 and needle in out.stderr, (command, out.stderr)
    assert daemon.ctl("show", "proxy-settings", "r0", check=True).stdout == before
    assert daemon.ctl("list", "connections", check=True).stdout.splitlines()[1].startswith("r0\tConnecting")


def test_a_port_in_use_is_a_clear_error(daemon):
    """A second connection on an inside address already in use fails and is not added."""
    ports = free_ports(4)
    daemon.ctl("-c", add_args("r0", ports), check=True)
    out = daemon.ctl("-c", add_args("r1", [ports[0], *free_ports(3)]))
    assert out.returncode == 1 and "cannot listen on 127.0.0.1" in out.stderr
    assert "r1" not in daemon.ctl("show", check=True).stdout


def test_del_connection_frees_its_ports(daemon):
    """del connection removes it and releases its addresses, so it can be added again."""
    ports = free_ports(4)
    daemon.ctl("-c", add_args("r0", ports), check=True)
    daemon.ctl("-c", "del connection r0", check=True)
    assert daemon.ctl("show", check=True).stdout == ""
    daemon.ctl("-c", add_args("r0", ports), check=True)


def test_statistics_and_version(daemon):
    """print statistics uses the stable dotted keys; show version names the product."""
    daemon.ctl("-c", add_args("r0", free_ports(4)), "-c", "set memlimit r0 32M", check=True)
    stats = dict(line.split(" ", 1) for line in daemon.ctl("print", "statistics", check=True).stdout.splitlines())
    assert stats["r0.state"] == "Connecting" and stats["r0.memlimit"] == str(32 << 20)
    assert daemon.ctl("show", "version", check=True).stdout.startswith("drbdproxy ")


def test_json_documents_for_scripts(daemon):
    """-j after a show, list or print command gives one JSON document; elsewhere it is refused."""
    import json

    daemon.ctl("-c", add_args("r0", free_ports(4)), "-c", "set memlimit r0 32M", check=True)
    [conn] = json.loads(daemon.ctl("list", "connections", "-j", check=True).stdout)["connections"]
    assert (conn["name"], conn["state"], conn["memlimit"]) == ("r0", "Connecting", 32 << 20)
    assert conn["codec"].startswith("lz4")  # the default, as nothing else was set
    assert conn["congestion_fill"] == int(32 * (1 << 20) * 0.9)  # nothing sent: ratio 1
    stats = json.loads(daemon.ctl("-c", "print statistics --json", check=True).stdout)["statistics"]
    assert stats["r0.memlimit"] == 32 << 20 and stats["r0.link_rtt_ms"] is None
    settings = json.loads(daemon.ctl("show", "proxy-settings", "r0", "-j", check=True).stdout)
    assert settings == {"name": "r0", "memlimit": 32 << 20, "options": {}, "plugins": []}
    assert json.loads(daemon.ctl("list", "subconnections", "-j", check=True).stdout) == {
        "subconnections": []}
    assert json.loads(daemon.ctl("print", "details", "-j", check=True).stdout) == {
        "subconnections": []}
    refused = daemon.ctl("-c", "set memlimit r0 64M -j")
    assert refused.returncode == 1 and "-j/--json is for the show, list and print" in refused.stderr


def test_shutdown_stops_the_daemon(daemon):
    """shutdown answers, then the daemon exits cleanly."""
    assert daemon.ctl("shutdown").returncode == 0
    assert daemon.proc.wait(timeout=30) == 0


def test_unreachable_daemon_is_exit_3(tmp_path):
    """With no daemon behind the socket, drbd-proxy-ctl exits 3 naming the socket."""
    import subprocess

    from helpers import tool

    out = subprocess.run([tool("drbd-proxy-ctl"), "-s", str(tmp_path / "none.ctl"), "show"],
                         capture_output=True, text=True)
    assert out.returncode == 3 and "none.ctl" in out.stderr


def test_set_loglevel_changes_what_the_daemon_logs(daemon):
    """set loglevel debug makes debug events appear in the log; set loglevel error hides info."""
    from helpers import free_ports

    daemon.ctl("-c", "set loglevel error", check=True)
    daemon.ctl("-c", add_args("quiet", free_ports(4)), check=True)
    daemon.ctl("-c", "set loglevel debug", check=True)
    daemon.ctl("-c", add_args("loud", free_ports(4)), check=True)
    # The log is read by another thread: wait for the later event, then nothing earlier is missing.
    wait_until(lambda: "connection loud added" in "".join(daemon.log), "the debug-level log line")
    assert "connection quiet added" not in "".join(daemon.log)
    assert daemon.ctl("-c", "set loglevel chatty").returncode == 1


def test_the_control_socket_is_private_or_for_one_group(tmp_path):
    """By default the unix control socket is 0600; with --control-group it is 0660, that group's."""
    import grp
    import stat

    private = Daemon(tmp_path, "private")
    try:
        assert stat.S_IMODE(private.socket.stat().st_mode) == 0o600
    finally:
        private.stop()
    group = grp.getgrnam("daemon")
    shared = Daemon(tmp_path, "shared", "--control-group", "daemon")
    try:
        st = shared.socket.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
    finally:
        shared.stop()
