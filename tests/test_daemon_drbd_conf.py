"""twistd drbd-proxy --drbd-conf: the same connections as drbdadm proxy-up all, or a clear error."""

from __future__ import annotations

import os
import subprocess

import pytest

from daemon import Daemon
from helpers import free_ports, have, tool

CONF = """
common {{ proxy {{ memlimit 64M; plugin {{ lz4; }} }} }}
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  proxy {{ plugin {{ zstd level 4; }} }}
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{0} via proxy on alice {{ inside 127.0.0.1:{1}; outside 127.0.0.1:{2}; }}
    host bob   address 127.0.0.1:{3} via proxy on bob   {{ inside 127.0.0.1:{4}; outside 127.0.0.1:{5}; }}
  }}
}}
"""


def write_conf(tmp_path) -> str:
    path = tmp_path / "drbd.conf"
    path.write_text(CONF.format(*free_ports(6)))
    return str(path)


@pytest.mark.skipif(not have("drbdadm"), reason="drbdadm (drbd-utils) is not installed")
def test_drbd_conf_at_start_equals_drbdadm_proxy_up(tmp_path):
    """A daemon started with --drbd-conf holds what drbdadm proxy-up puts into another one."""
    conf = write_conf(tmp_path)
    from_conf = Daemon(tmp_path, "fromconf", "--drbd-conf", conf, "--node", "alice")
    by_drbdadm = Daemon(tmp_path, "bydrbdadm")
    try:
        # Two daemons cannot listen on the same addresses: proxy-up the second after comparing
        # the first's settings, with the first one stopped.
        settings = from_conf.ctl("show", "proxy-settings", "r0-bob-alice", check=True).stdout
        listing = from_conf.ctl("show", check=True).stdout
        from_conf.stop()
        env = dict(os.environ, __DRBD_NODE__="alice", DRBD_PROXY_CTL_SOCKET=str(by_drbdadm.socket))
        up = subprocess.run(["drbdadm", "-p", tool("drbd-proxy-ctl"), "-c", conf, "proxy-up", "all"],
                            env=env, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        assert by_drbdadm.ctl("show", "proxy-settings", "r0-bob-alice", check=True).stdout == settings
        assert by_drbdadm.ctl("show", check=True).stdout == listing
        assert "plugin" in settings and "memlimit 64M" in settings
    finally:
        from_conf.stop()
        by_drbdadm.stop()


def test_a_syntax_error_is_one_line_with_file_and_line(tmp_path):
    """A broken drbd.conf stops start-up with exit 1 and a message naming file and line."""
    conf = tmp_path / "broken.conf"
    conf.write_text("resource r0 {\n  proxy { memlimit 128M }\n}\n")
    out = subprocess.run([tool("twistd"), "-n", "--pidfile=", "drbd-proxy", "--control",
                          f"unix:{tmp_path}/x.ctl", "--drbd-conf", str(conf), "--node", "alice"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "broken.conf:2:" in out.stdout + out.stderr
