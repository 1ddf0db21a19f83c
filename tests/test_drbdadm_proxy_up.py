"""drbd-utils' own drbdadm drives the daemon through drbd-proxy-ctl, unchanged."""

from __future__ import annotations

import os
import subprocess

import pytest

from daemon import Daemon
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
