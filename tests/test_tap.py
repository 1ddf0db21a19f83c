"""twistd drbd-proxy's options: defaults, cross-checks and safe endpoints; what it warns of at start."""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage

from drbdproxy import tap
from drbdproxy.control.protocol import ControlFactory
from drbdproxy.tap import DEFAULT_CONTROL, Options, loopback_by_default
from helpers import free_ports


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults():
    """By default: the unix control socket of SPEC 3.2, no manhole, no metrics, meta-first on."""
    o = parse()
    assert o["control"] == DEFAULT_CONTROL == "unix:/run/drbd-proxy/drbd-proxy-ctl.socket:mode=600"
    assert o["manhole"] is None and o["metrics"] is None and not o["meta-on-bulk"]


def test_a_tcp_control_endpoint_binds_loopback_unless_told_otherwise():
    """`--control tcp:7000` listens on 127.0.0.1 only; an explicit interface is kept."""
    assert parse("--control", "tcp:7000")["control"] == "tcp:7000:interface=127.0.0.1"
    assert loopback_by_default("tcp:7000:interface=10.0.0.1") == "tcp:7000:interface=10.0.0.1"
    assert loopback_by_default("unix:/run/x.sock") == "unix:/run/x.sock:mode=600"
    assert loopback_by_default("unix:/run/x.sock:mode=660") == "unix:/run/x.sock:mode=660"


@pytest.mark.parametrize("argv, needle", [
    (["--manhole", "tcp:6022"], "--manhole-keys"),
    (["--node", "alice"], "--drbd-conf"),
    (["--tls-cert", "a.pem"], "--tls-key"),
])
def test_bad_combinations_are_usage_errors(argv, needle):
    """Options that need each other are refused with a message naming the missing one."""
    with pytest.raises(usage.UsageError, match=needle):
        parse(*argv)


@pytest.mark.parametrize("argv, needle", [
    (["--drbd-conf", "/nonexistent/drbd.conf"], "drbd-proxy: --drbd-conf: .*drbd.conf"),
    (["--link-secret", "/nonexistent/secret"], "drbd-proxy: --link-secret"),
    (["--tls-cert", "/x.pem", "--tls-key", "/x.key", "--tls-ca", "/ca.pem"], "drbd-proxy: cannot read"),
    (["--link-allow", "10.0.0.0/8,not-a-network"], "drbd-proxy: --link-allow: .*not-a-network"),
])
def test_unusable_files_are_one_line_startup_errors(argv, needle):
    """A file the daemon cannot use stops it with exit status 1 and one line naming it."""
    with pytest.raises(SystemExit, match=needle) as info:
        parse(*argv)
    assert "\n" not in str(info.value.code)


def test_link_allow_takes_comma_separated_networks():
    """--link-allow parses into networks (a bare address is a /32), handed to every connection."""
    import ipaddress

    o = parse("--link-allow", "10.0.0.0/8, 192.0.2.7")
    assert o["link-networks"] == (ipaddress.ip_network("10.0.0.0/8"),
                                  ipaddress.ip_network("192.0.2.7/32"))
    assert parse()["link-networks"] == ()


# --- what makeService builds, and what it warns of at start ------------------------------------

CONF = """
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{0} via proxy on alice {{ inside 127.0.0.1:{1}; outside 127.0.0.1:{2}; }}
    host bob   address 127.0.0.1:{3} via proxy on bob   {{ inside 127.0.0.1:{4}; outside 127.0.0.1:{5}; }}
  }}
}}
"""


def build(monkeypatch, *argv: str):
    """makeService on a memory reactor (nothing listens), the process's gc and malloc untouched."""
    monkeypatch.setattr(tap, "tune_gc", lambda reactor: None)
    monkeypatch.setattr(tap, "tune_malloc", lambda: None)
    return tap.makeService(parse(*argv), reactor=MemoryReactorClock())


def add_drbd_conf_connections(top) -> None:
    """What the daemon does first as it starts: add --drbd-conf's connections (memory reactor)."""
    [service] = [s for s in top if isinstance(s, tap._DrbdConfConnections)]
    service.privilegedStartService()


def warnings_at_start(monkeypatch, *argv: str) -> list[str]:
    """The WARN lines logged while the daemon is built, adds its --drbd-conf connections and
    gives its start-up warnings (those two services are started alone: nothing else listens)."""
    with capturedLogs() as events:
        top = build(monkeypatch, *argv)
        add_drbd_conf_connections(top)
        [service] = [s for s in top if isinstance(s, tap._StartupWarnings)]
        service.startService()
    return [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]


def test_control_sessions_idle_out_after_30_seconds(tmp_path, monkeypatch):
    """The daemon's ControlFactory takes the 30 s default idle timeout (and 64 sessions)."""
    top = build(monkeypatch, "--control", f"unix:{tmp_path}/c.sock")
    [factory] = [s.factory for s in top if isinstance(getattr(s, "factory", None), ControlFactory)]
    assert (factory.idle_timeout, factory.max_sessions) == (30.0, 64)


def test_a_unix_control_socket_and_no_connections_warn_of_nothing(tmp_path, monkeypatch):
    """The default set-up exposes nothing unauthenticated: no WARN line at start."""
    assert warnings_at_start(monkeypatch, "--control", f"unix:{tmp_path}/c.sock") == []


@pytest.mark.parametrize("endpoint, who", [
    ("tcp:7000", "any local user or process"),
    ("tcp:7000:interface=0.0.0.0", "anyone who can reach it"),
])
def test_a_tcp_control_endpoint_is_warned_of(monkeypatch, endpoint, who):
    """A TCP control endpoint gets one WARN line: who can control the proxy, and to use a unix path."""
    [line] = warnings_at_start(monkeypatch, "--control", endpoint)
    assert line.startswith(f"control endpoint {loopback_by_default(endpoint)} is not a unix socket")
    assert f"{who} can reconfigure or shut down this proxy" in line
    assert "bind the control socket to a unix path" in line


def drbd_conf(tmp_path) -> str:
    path = tmp_path / "drbd.conf"
    path.write_text(CONF.format(*free_ports(6)))
    return str(path)


def parse_conf_ports(tmp_path) -> list[str]:
    """The six ports drbd_conf wrote, in CONF's order."""
    import re

    return re.findall(r"127\.0\.0\.1:(\d+)", (tmp_path / "drbd.conf").read_text())


def test_an_unauthenticated_drbd_conf_connection_is_warned_of_once(tmp_path, monkeypatch):
    """A --drbd-conf connection without --link-secret or TLS gets exactly one WARN line, naming
    it and the options that fix it (the registry's, as it adds the connection)."""
    [line] = warnings_at_start(monkeypatch, "--control", f"unix:{tmp_path}/c.sock",
                               "--drbd-conf", drbd_conf(tmp_path), "--node", "alice")
    assert line.startswith("connection r0-bob-alice: ") and "not authenticated" in line
    assert "--link-secret" in line and "--tls" in line


def test_a_link_secret_silences_the_connection_warning(tmp_path, monkeypatch):
    """With --link-secret every link is authenticated: no WARN line for the connection."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(16).hex().encode() + b"\n")
    secret.chmod(0o600)
    assert warnings_at_start(monkeypatch, "--control", f"unix:{tmp_path}/c.sock",
                             "--drbd-conf", drbd_conf(tmp_path), "--node", "alice",
                             "--link-secret", str(secret)) == []


def test_make_service_only_wires(monkeypatch):
    """makeService builds the service tree and touches nothing of the process: the heap and
    garbage-collector settings are applied when the daemon starts."""
    calls = []
    monkeypatch.setattr(tap, "tune_gc", lambda reactor: calls.append("gc"))
    monkeypatch.setattr(tap, "tune_malloc", lambda: calls.append("malloc"))
    top = tap.makeService(parse(), reactor=MemoryReactorClock())
    assert calls == []
    [tuning] = [s for s in top if isinstance(s, tap._ProcessTuning)]
    tuning.startService()
    assert calls == ["malloc", "gc"]


def test_make_service_binds_nothing_and_privileged_start_binds_every_endpoint(tmp_path, monkeypatch):
    """makeService listens nowhere, dials nowhere, schedules and starts nothing, and creates no
    socket directory (even with --drbd-conf connections); privilegedStartService binds the control
    socket, the metrics port and the manhole port (before twistd sheds root)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from twisted.conch.ssh.keys import Key

    keys = tmp_path / "keys" / "authorized_keys"
    keys.parent.mkdir(mode=0o700)
    keys.write_bytes(Key(Ed25519PrivateKey.generate()).public().toString("openssh") + b"\n")
    keys.chmod(0o600)
    reactor = MemoryReactorClock()
    monkeypatch.setattr(tap, "tune_gc", lambda reactor: None)
    monkeypatch.setattr(tap, "tune_malloc", lambda: None)
    control = tmp_path / "run" / "c.sock"
    top = tap.makeService(parse("--control", f"unix:{control}", "--metrics", "tcp:9942",
                                "--manhole", "tcp:6022", "--manhole-keys", str(keys),
                                "--drbd-conf", drbd_conf(tmp_path), "--node", "alice"),
                          reactor=reactor)
    assert (reactor.tcpServers, reactor.unixServers) == ([], [])
    assert (reactor.tcpClients, reactor.getDelayedCalls()) == ([], [])
    assert not top.running and not any(service.running for service in top)
    assert not control.parent.exists()
    top.privilegedStartService()
    assert [s[0] for s in reactor.unixServers] == [str(control)]
    outside = int(parse_conf_ports(tmp_path)[2])
    assert sorted(s[0] for s in reactor.tcpServers) == sorted([6022, 9942, outside])
    assert control.parent.is_dir()
    [registry] = [s for s in top if isinstance(s, tap.ConnectionRegistry)]
    registry.connection("r0-bob-alice").unbind()


def test_version_prints_drbdproxy_version(capsys):
    """`twistd drbd-proxy --version` prints drbdproxy's version (not Twisted's) and exits 0."""
    import drbdproxy

    with pytest.raises(SystemExit) as info:
        parse("--version")
    assert info.value.code == 0
    assert capsys.readouterr().out == f"drbdproxy {drbdproxy.__version__}\n"


@pytest.mark.parametrize("endpoint", ["foo:bar", "tcp:notaport", "tcp:7000:colour=blue"])
def test_a_bad_control_endpoint_is_one_line_at_option_time(endpoint):
    """An endpoint string the reactor cannot parse stops start-up with one line naming it."""
    with pytest.raises(SystemExit, match="drbd-proxy: bad control endpoint") as info:
        parse("--control", endpoint)
    assert "\n" not in str(info.value.code)


def test_a_systemd_control_endpoint_without_a_passed_socket_is_refused(monkeypatch):
    """`--control systemd:...` outside socket activation says systemd passed no socket."""
    monkeypatch.setattr(tap, "systemd_passed_sockets", lambda: False)
    monkeypatch.setattr("drbdproxy.startup.systemd_passed_sockets", lambda: False)
    with pytest.raises(SystemExit, match="systemd passed no socket"):
        parse("--control", "systemd:domain=UNIX:index=0")


def test_the_socket_systemd_passes_is_the_default_control(monkeypatch):
    """Started by drbd-proxy.socket (a socket passed), the daemon takes that socket by default;
    without one, the unix socket of SPEC 3.2."""
    monkeypatch.setattr(tap, "systemd_passed_sockets", lambda: True)
    monkeypatch.setattr(tap, "check_endpoint", lambda what, description: description)
    assert parse()["control"] == "systemd:domain=UNIX:index=0"
    monkeypatch.setattr(tap, "systemd_passed_sockets", lambda: False)
    assert parse()["control"] == DEFAULT_CONTROL


def test_a_node_missing_from_drbd_conf_names_the_hosts_it_has(tmp_path):
    """--node that is no host of the file stops start-up with one line listing the file's hosts,
    as drbdadm says "Misspelled name" for a host name missing from drbd.conf."""
    conf = drbd_conf(tmp_path)
    with pytest.raises(SystemExit) as info:
        parse("--drbd-conf", conf, "--node", "carol")
    message = str(info.value.code)
    assert message == (f"drbd-proxy: --drbd-conf: no host 'carol' in {conf} (its hosts: alice, bob);"
                       " misspelled --node or host name?")
    assert parse("--drbd-conf", conf, "--node", "ALICE.example.com")["node"] == "ALICE.example.com"


def test_twistd_finds_the_plugin_by_its_name():
    """twistd discovers `drbd-proxy` through Twisted's plugin system, and the plugin names the
    module that builds the service (imported only when it is used)."""
    import twisted.plugins
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, twisted.plugins)}
    assert makers["drbd-proxy"].module == "drbdproxy.tap"
    assert makers["drbd-proxy"].options is tap.Options


def test_the_manhole_sees_the_snapshots_the_control_protocol_renders(tmp_path, monkeypatch):
    """The manhole's ``status()`` gives the typed snapshots that `print statistics` and /metrics
    render, one per connection."""
    top = build(monkeypatch, "--control", f"unix:{tmp_path}/c.sock",
                "--drbd-conf", drbd_conf(tmp_path), "--node", "alice")
    add_drbd_conf_connections(top)
    [registry] = [s for s in top if isinstance(s, tap.ConnectionRegistry)]
    namespace = tap._manhole_namespace(registry, None)
    [status] = namespace["status"]()
    assert status.name == "r0-bob-alice" and status.state == "Connecting"
    statistics = dict(line.split(" ", 1) for line in registry.statistics())
    assert statistics["r0-bob-alice.memlimit"] == str(status.memlimit)
    registry.connection("r0-bob-alice").unbind()
