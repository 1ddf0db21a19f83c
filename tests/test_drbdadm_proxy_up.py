"""drbd-utils' own drbdadm drives the daemon through drbd-proxy-ctl, unchanged."""

from __future__ import annotations

import os
import subprocess

import pytest

from daemon import Daemon, wait_until
from helpers import free_ports, have, tool

pytestmark = pytest.mark.skipif(not have("drbdadm"), reason="drbdadm (drbd-utils) is not installed")

V9_CONF = """
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  proxy {{ memlimit 128M; plugin {{ zstd level 4; lz4 level 9; }} }}
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{a_drbd} via proxy on alice {{ inside 127.0.0.1:{a_in}; outside 127.0.0.1:{a_out}; }}
    host bob   address 127.0.0.1:{b_drbd} via proxy on bob   {{ inside 127.0.0.1:{b_in}; outside 127.0.0.1:{b_out}; }}
    net {{ protocol A; }}
  }}
}}
"""

V84_CONF = """
resource r8 {{
  protocol A;
  device minor 0; disk /dev/sdb1; meta-disk internal;
  proxy {{ compression on; memlimit 100M; }}
  on alice {{ address 127.0.0.1:{a_drbd}; proxy on alice {{ inside 127.0.0.1:{a_in}; outside 127.0.0.1:{a_out}; }} }}
  on bob   {{ address 127.0.0.1:{b_drbd}; proxy on bob   {{ inside 127.0.0.1:{b_in}; outside 127.0.0.1:{b_out}; }} }}
}}
"""


def write_conf(tmp_path, template: str) -> str:
    ports = dict(zip(("a_drbd", "a_in", "a_out", "b_drbd", "b_in", "b_out"), free_ports(6)))
    path = tmp_path / "drbd.conf"
    path.write_text(template.format(**ports))
    return str(path)


def drbdadm(daemon: Daemon, conf: str, *args: str, node: str = "alice", v84: bool = False):
    env = dict(os.environ, __DRBD_NODE__=node, DRBD_PROXY_CTL_SOCKET=str(daemon.socket))
    if v84:
        env["DRBD_DRIVER_VERSION_OVERRIDE"] = "8.4.11"
    return subprocess.run(["drbdadm", "-p", tool("drbd-proxy-ctl"), "-c", conf, *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


def test_drbdadm_9_proxy_up_and_down(daemon, tmp_path):
    """drbdadm 9 proxy-up adds the connection with memlimit and both plugins; proxy-down removes it.

    drbdadm sends the plugin list in reverse config order; the daemon keeps what it was sent.
    """
    conf = write_conf(tmp_path, V9_CONF)
    up = drbdadm(daemon, conf, "proxy-up", "r0")
    assert up.returncode == 0, up.stderr
    settings = daemon.ctl("show", "proxy-settings", "r0-bob-alice", check=True).stdout
    assert settings.split() == "proxy { memlimit 128M; plugin { lz4 level 9; zstd level 4; } }".split()
    down = drbdadm(daemon, conf, "proxy-down", "r0")
    assert down.returncode == 0, down.stderr
    assert daemon.ctl("show", check=True).stdout == ""


def test_drbdadm_84_proxy_up_with_compression_on(daemon, tmp_path):
    """drbdadm in 8.4 mode: `compression on` and memlimit reach the daemon (compression on = lz4).

    compression is an option, not a plugin: proxy-settings shows no plugin block for it, as
    drbdadm adjust expects, while the codec in use is lz4.
    """
    conf = write_conf(tmp_path, V84_CONF)
    up = drbdadm(daemon, conf, "proxy-up", "r8", v84=True)
    assert up.returncode == 0, up.stderr
    settings = daemon.ctl("show", "proxy-settings", "r8-bob-alice", check=True).stdout
    assert settings.split() == "proxy { memlimit 100M; } ".split()
    assert "r8-bob-alice.codec lz4" in daemon.ctl("print", "statistics", check=True).stdout


def test_drbdadm_sees_a_refusal_as_failure(daemon, tmp_path):
    """proxy-up of a connection that already exists fails in drbdadm with our exit status 1."""
    conf = write_conf(tmp_path, V9_CONF)
    assert drbdadm(daemon, conf, "proxy-up", "r0").returncode == 0
    again = drbdadm(daemon, conf, "proxy-up", "r0")
    assert again.returncode != 0 and "already exists" in again.stderr


TWO_RESOURCES = """
common {{ proxy {{ memlimit 32M; }} }}
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  proxy {{ plugin {{ zstd level 3; }} }}
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{0} via proxy on alice {{ inside 127.0.0.1:{1}; outside 127.0.0.1:{2}; }}
    host bob   address 127.0.0.1:{3} via proxy on bob   {{ inside 127.0.0.1:{4}; outside 127.0.0.1:{5}; }}
  }}
}}
resource r1 {{
  device minor 1; disk /dev/sdc1; meta-disk internal;
  proxy {{ memlimit 48M; plugin {{ lz4; }} }}
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{6} via proxy on alice {{ inside 127.0.0.1:{7}; outside 127.0.0.1:{8}; }}
    host bob   address 127.0.0.1:{9} via proxy on bob   {{ inside 127.0.0.1:{10}; outside 127.0.0.1:{11}; }}
  }}
}}
"""


def test_proxy_up_all_with_several_resources(daemon, tmp_path):
    """proxy-up all adds one connection per resource with its own memlimit and plugins."""
    path = tmp_path / "drbd.conf"
    path.write_text(TWO_RESOURCES.format(*free_ports(12)))
    up = drbdadm(daemon, str(path), "proxy-up", "all")
    assert up.returncode == 0, up.stderr
    assert daemon.ctl("show", "proxy-settings", "r0-bob-alice", check=True).stdout.split() == \
        "proxy { memlimit 32M; plugin { zstd level 3; } }".split()
    assert daemon.ctl("show", "proxy-settings", "r1-bob-alice", check=True).stdout.split() == \
        "proxy { memlimit 48M; plugin { lz4; } }".split()
    assert drbdadm(daemon, str(path), "proxy-down", "all").returncode == 0
    assert daemon.ctl("show", check=True).stdout == ""


def test_two_sites_configured_by_drbdadm_replicate_with_zstd(tmp_path, sims):
    """alice and bob, each set up by drbdadm proxy-up from one drbd.conf, carry a verified
    replication with the zstd plugin."""
    ports = dict(zip(("a_drbd", "a_in", "a_out", "b_drbd", "b_in", "b_out"), free_ports(6)))
    conf = tmp_path / "drbd.conf"
    conf.write_text(V9_CONF.replace("plugin {{ zstd level 4; lz4 level 9; }}",
                                    "plugin {{ zstd level 4; }}").format(**ports))
    alice, bob = Daemon(tmp_path, "alice"), Daemon(tmp_path, "bob")
    try:
        for site, node in ((alice, "alice"), (bob, "bob")):
            up = drbdadm(site, str(conf), "proxy-up", "r0", node=node)
            assert up.returncode == 0, up.stderr
        for site in (alice, bob):
            wait_until(lambda s=site: "ProxyConnected" in s.ctl("list", "connections").stdout,
                       "the proxies to link")
        common = ["--ping-timeout", "10", "--size", "48M"]
        secondary = sims("--role", "secondary", "--listen", f"127.0.0.1:{ports['b_drbd']}",
                         "--peer", f"127.0.0.1:{ports['b_in']}", *common)
        primary = sims("--role", "primary", "--listen", f"127.0.0.1:{ports['a_drbd']}",
                       "--peer", f"127.0.0.1:{ports['a_in']}", *common)
        (prc, p), (src, s) = primary.report(), secondary.report()
        assert (prc, src) == (0, 0), (p["error"], s["error"])
        stats = alice.ctl("print", "statistics", check=True).stdout
        assert "r0-bob-alice.codec zstd-level-4" in stats
    finally:
        alice.stop()
        bob.stop()
