"""`drbdadm adjust` converges the daemon to an edited drbd.conf; a second adjust changes nothing.

No DRBD kernel module runs here, so drbdadm gets tests/fake_drbdsetup.py with ``-s``: it reports the
resource as the kernel would if it were up exactly as configured. adjust then finds no kernel-side
difference and compares only the proxy side: it runs ``drbd-proxy-ctl -c "show proxy-settings
NAME"``, parses the reply with its drbd.conf lexer, and on a difference sends ``set plugin NAME I
...`` (one process per change), ``set plugin NAME I end``, or ``del connection`` + ``add
connection`` + ``set ...`` (memlimit change, or a plugin that moved position).

drbd-proxy-ctl is wrapped (``-p``) by a script that logs every argv it is given and then execs the
real tool, so a test can prove exactly which proxy commands an adjust ran.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import Daemon
from helpers import free_ports, have, tool

pytestmark = pytest.mark.skipif(not have("drbdadm"), reason="drbdadm (drbd-utils) is not installed")

FAKE_DRBDSETUP = Path(__file__).with_name("fake_drbdsetup.py")
EXEC_FAILED = "<exec failed>"  # what the drbd-proxy-ctl wrapper logs when the real tool is missing

# drbd.conf for this host (alice) and its peer (bob); {proxy} is the resource-level proxy section.
V9_CONF = """
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  {proxy}
  on alice {{ node-id 0; }}
  on bob   {{ node-id 1; }}
  connection {{
    host alice address 127.0.0.1:{a_drbd} via proxy on alice {{ inside 127.0.0.1:{a_in}; outside 127.0.0.1:{a_out}; }}
    host bob   address 127.0.0.1:{b_drbd} via proxy on bob   {{ inside 127.0.0.1:{b_in}; outside 127.0.0.1:{b_out}; }}
    net {{ protocol A; }}
  }}
}}
"""

# What DRBD 9's `drbdsetup show r0` prints on alice once `drbdadm up r0` ran with V9_CONF: DRBD
# talks to its local proxy's inside address (the path's _remote_host).
V9_SHOW = """\
resource "r0" {{
    _this_host {{
        node-id\t\t\t0;
        volume 0 {{
            device\t\t\tminor 0;
            disk\t\t\t"/dev/sdb1";
            meta-disk\t\t\tinternal;
        }}
    }}
    connection {{
        _peer_node_id 1;
        path {{
            _this_host ipv4 127.0.0.1:{a_drbd};
            _remote_host ipv4 127.0.0.1:{a_in};
        }}
        net {{
            protocol\t\tA;
            _name\t\t\t"bob";
        }}
    }}
}}
"""

V84_CONF = """
resource r8 {{
  protocol A;
  device minor 0; disk /dev/sdb1; meta-disk internal;
  {proxy}
  on alice {{ address 127.0.0.1:{a_drbd}; proxy on alice {{ inside 127.0.0.1:{a_in}; outside 127.0.0.1:{a_out}; }} }}
  on bob   {{ address 127.0.0.1:{b_drbd}; proxy on bob   {{ inside 127.0.0.1:{b_in}; outside 127.0.0.1:{b_out}; }} }}
}}
"""

# The same for drbdsetup-84 (`drbdsetup-84 show r8` after `drbdadm up r8` with V84_CONF).
V84_SHOW = """\
resource r8 {{
    options {{
    }}
    net {{
        protocol\t\tA;
    }}
    _remote_host {{
        address\t\t\tipv4 127.0.0.1:{a_in};
    }}
    _this_host {{
        address\t\t\tipv4 127.0.0.1:{a_drbd};
        volume 0 {{
            device\t\t\tminor 0;
            disk\t\t\t"/dev/sdb1";
            meta-disk\t\t\tinternal;
            disk {{
            }}
        }}
    }}
}}
"""

# stderr lines of a successful drbdadm run here: v9 complains about modinfo (no kernel module) on
# every call, and __DRBD_NODE__ makes it say whom it pretends to be.
NOISE = ("modinfo", "__DRBD_NODE__", "PRETENDING")


def proxy_section(memlimit: str, plugins: list[str] | None = None, extra: str = "") -> str:
    """A resource-level ``proxy { ... }`` section; ``plugins`` in config order."""
    plugin = "" if plugins is None else " plugin { " + "".join(f"{p}; " for p in plugins) + "}"
    return f"proxy {{ memlimit {memlimit};{extra}{plugin} }}"


class Site:
    """drbdadm on host alice, driving one daemon through a logging drbd-proxy-ctl wrapper.

    ``write(proxy)`` (re)writes drbd.conf with that proxy section; the stand-in drbdsetup reports
    the resource's kernel side, which never changes here.
    """

    def __init__(self, tmp_path: Path, daemon: Daemon, v84: bool) -> None:
        self.daemon = daemon
        self.v84 = v84
        self.res = "r8" if v84 else "r0"
        self.conn_name = f"{self.res}-bob-alice"
        self.ports = dict(zip(("a_drbd", "a_in", "a_out", "b_drbd", "b_in", "b_out"),
                              free_ports(6)))
        self.conf = tmp_path / "drbd.conf"
        self.kernel = tmp_path / "drbdsetup-show.txt"
        self.kernel.write_text((V84_SHOW if v84 else V9_SHOW).format(**self.ports))
        self.setup_log = tmp_path / "drbdsetup.log"
        self.ctl_log = tmp_path / "drbd-proxy-ctl.log"
        self.ctl = tmp_path / "drbd-proxy-ctl"
        real = tool("drbd-proxy-ctl")
        self.ctl.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            f"log = open({str(self.ctl_log)!r}, 'a')\n"
            "log.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            "log.flush()\n"
            "try:\n"
            f"    os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
            "except OSError as e:\n"
            f"    log.write(json.dumps([{EXEC_FAILED!r}, str(e)]) + '\\n')\n"
            "    sys.exit(127)\n"
        )
        self.ctl.chmod(0o755)

    def write(self, proxy: str) -> None:
        self.conf.write_text((V84_CONF if self.v84 else V9_CONF).format(proxy=proxy, **self.ports))

    def drbdadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, __DRBD_NODE__="alice",
                   DRBD_PROXY_CTL_SOCKET=str(self.daemon.socket),
                   DRBDSETUP_STANDIN_SHOW=str(self.kernel),
                   DRBDSETUP_STANDIN_LOG=str(self.setup_log))
        # drbdadm 9 reads FAKE_DRBDSETUP_SHOW itself (drbd-utils' test hook) instead of running -s.
        env.pop("FAKE_DRBDSETUP_SHOW", None)
        env.pop("DRBD_DRIVER_VERSION_OVERRIDE", None)
        if self.v84:
            env["DRBD_DRIVER_VERSION_OVERRIDE"] = "8.4.11"
        return subprocess.run(
            ["drbdadm", "-p", str(self.ctl), "-s", str(FAKE_DRBDSETUP), "-c", str(self.conf),
             *args],
            capture_output=True, text=True, env=env, timeout=120,
        )

    def run(self, *args: str) -> list[str]:
        """Run drbdadm; the proxy commands it ran (each ``-c`` argument or bare trailing one)."""
        for log in (self.ctl_log, self.setup_log):
            log.unlink(missing_ok=True)
        out = self.drbdadm(*args)
        errors = [line for line in out.stderr.splitlines()
                  if line.strip() and not any(n in line for n in NOISE)]
        # Not only the exit status: drbdadm 9 reports a `show proxy-settings` parse error on
        # stderr and still exits 0.
        assert out.returncode == 0 and not errors, (
            f"drbdadm {args}: rc {out.returncode}\n{out.stderr}")
        logged = self.logged(self.ctl_log)
        # drbdadm hides the stderr of `show proxy-settings`; a concurrent reinstall of the
        # package (make test) can remove the console script for a moment.
        assert not [argv for argv in logged if argv[:1] == [EXEC_FAILED]], (
            f"the real drbd-proxy-ctl could not be executed: {logged}")
        return [arg for argv in logged for arg in argv if arg != "-c"]

    def adjust(self) -> list[str]:
        commands = self.run("adjust", self.res)
        # The stand-in's kernel view matched: drbdadm asked drbdsetup nothing but `show RES`.
        assert self.logged(self.setup_log) == [["show", self.res]]
        return commands

    @staticmethod
    def logged(path: Path) -> list[list[str]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def settings(self) -> tuple[str, list[str]]:
        """The daemon's memlimit and plugin lines, from `show proxy-settings` (any layout)."""
        text = self.daemon.ctl("show", "proxy-settings", self.conn_name, check=True).stdout
        tokens = text.replace("{", " { ").replace("}", " } ").replace(";", " ; ").split()
        memlimit, depth = "", 0
        plugins: list[str] = []
        statement: list[str] = []
        for token in tokens:
            if token == "{":
                depth, statement = depth + 1, []
            elif token == "}":
                depth, statement = depth - 1, []
            elif token == ";":
                if depth == 1 and statement[:1] == ["memlimit"]:
                    memlimit = statement[1]
                elif depth == 2:  # inside plugin { }
                    plugins.append(" ".join(statement))
                statement = []
            else:
                statement.append(token)
        return memlimit, plugins

    def planned_plugins(self) -> list[str]:
        """The plugin list drbdadm itself sends for the current drbd.conf (`proxy-up` dry run)."""
        out = self.drbdadm("-d", "proxy-up", self.res)
        assert out.returncode == 0, out.stderr
        prefix = f"set plugin {self.conn_name} "
        plugins: dict[int, str] = {}
        for line in out.stdout.splitlines():
            for arg in shlex.split(line):
                if arg.startswith(prefix):
                    index, _, words = arg[len(prefix):].partition(" ")
                    if words.upper() != "END":
                        plugins[int(index)] = words
        return [plugins[i] for i in sorted(plugins)]

    def assert_converged(self) -> None:
        """A further adjust only asks the proxy for its settings: nothing left to change."""
        assert self.adjust() == [f"show proxy-settings {self.conn_name}"]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


MODES = [pytest.param(False, id="drbd9"), pytest.param(True, id="drbd84")]


@pytest.mark.parametrize("v84", MODES)
def test_adjust_of_an_unchanged_config_only_queries_the_proxy(daemon, tmp_path, v84):
    """Right after proxy-up, adjust finds nothing to do on either side.

    The kernel side: the stand-in drbdsetup's `show` matches drbd.conf, so drbdadm runs no other
    drbdsetup command. The proxy side: drbdadm parses the daemon's `show proxy-settings` reply
    (memlimit, plugins in the order drbdadm itself sent them) as equal to drbd.conf.
    """
    site = Site(tmp_path, daemon, v84)
    site.write(proxy_section("128M", ["zstd level 4", "lz4 level 9"]))
    site.run("proxy-up", site.res)
    site.assert_converged()
    assert site.settings() == ("128M", site.planned_plugins())


@pytest.mark.parametrize("v84", MODES)
@pytest.mark.parametrize("before, after", [("128M", "256M"), ("256M", "64M")], ids=["up", "down"])
def test_adjust_applies_a_memlimit_change(daemon, tmp_path, v84, before, after):
    """Raising or lowering memlimit in drbd.conf: adjust re-creates the connection with the new
    memlimit (drbdadm's way, as the memory belongs to the connection), keeps the plugins, and a
    second adjust sends nothing but the settings query.
    """
    site = Site(tmp_path, daemon, v84)
    site.write(proxy_section(before, ["zstd level 4", "lz4 level 9"]))
    site.run("proxy-up", site.res)
    plugins = site.planned_plugins()
    assert site.settings() == (before, plugins)

    site.write(proxy_section(after, ["zstd level 4", "lz4 level 9"]))
    commands = site.adjust()
    assert f"del connection {site.conn_name}" in commands
    assert any(c.startswith(f"add connection {site.conn_name} ") for c in commands)
    assert site.settings() == (after, plugins)
    site.assert_converged()


# Each step edits the plugin block (config order); drbdadm compares position by position in the
# order it sends plugins (the reverse of the config). "in place" steps are fixed with `set plugin`
# alone; a plugin that changes position makes drbdadm re-create the whole connection.
PLUGIN_EDITS = [
    # lz4 9 -> lz4 3 at position 0, zstd 4 replaced by zlib 6 at position 1
    ("replace", ["zlib level 6", "lz4 level 3"], True),
    ("add", ["zstd level 1", "zlib level 6", "lz4 level 3"], True),  # appended at position 2
    ("remove", ["lz4 level 3"], True),  # `set plugin NAME 1 end`
    ("move", ["lz4 level 3", "zlib level 6"], False),  # lz4 from position 0 to 1: del/add
    ("remove all", [], True),  # `set plugin NAME 0 end`
    ("add to none", ["lz4 level 1"], True),
]


@pytest.mark.parametrize("v84", MODES)
def test_adjust_applies_plugin_list_edits(daemon, tmp_path, v84):
    """Each edit of the plugin list (a plugin replaced, re-levelled, added, removed, moved, all
    removed) converges: the daemon's plugin list equals the list drbdadm sends for the new config,
    memlimit is kept, in-place edits do not re-create the connection, and a second adjust sends
    nothing but the settings query.
    """
    site = Site(tmp_path, daemon, v84)
    site.write(proxy_section("128M", ["zstd level 4", "lz4 level 9"]))
    site.run("proxy-up", site.res)
    for step, plugins, in_place in PLUGIN_EDITS:
        site.write(proxy_section("128M", plugins))
        commands = site.adjust()
        assert commands[0] == f"show proxy-settings {site.conn_name}", step
        assert len(commands) > 1, f"{step}: adjust saw no difference"
        recreated = f"del connection {site.conn_name}" in commands
        assert recreated != in_place, f"{step}: {commands}"
        assert site.settings() == ("128M", site.planned_plugins()), step
        site.assert_converged()


@pytest.mark.parametrize("v84, compression", [
    pytest.param(False, "1", id="drbd9-compression-1"),
    pytest.param(True, "on", id="drbd84-compression-on"),
])
def test_adjust_keeps_compression_set_by_the_compression_option(daemon, tmp_path, v84, compression):
    """A config with `compression` and no plugin block: adjust of the unchanged config changes
    nothing, and the daemon still has the compression proxy-up gave it.
    """
    site = Site(tmp_path, daemon, v84)
    site.write(proxy_section("100M", extra=f" compression {compression};"))
    site.run("proxy-up", site.res)
    before = daemon.ctl("show", "proxy-settings", site.conn_name, check=True).stdout
    assert site.adjust() == [f"show proxy-settings {site.conn_name}"]
    assert daemon.ctl("show", "proxy-settings", site.conn_name, check=True).stdout == before
    stats = daemon.ctl("print", "statistics", check=True).stdout
    codec = "lz4" if compression == "on" else "zstd"
    assert f"{site.conn_name}.codec {codec}" in stats, stats


@pytest.mark.parametrize("v84", MODES)
def test_plugin_auto_is_set_up_and_adjusted_by_drbdadm(daemon, tmp_path, v84):
    """`plugin { auto; }` in drbd.conf: proxy-up gives the connection plugin auto (starting on
    zstd level 3), adjust finds nothing to change, and an edit to `auto max-level 6` is applied in place
    by `set plugin` and then converges."""
    site = Site(tmp_path, daemon, v84)
    site.write(proxy_section("64M", ["auto"]))
    site.run("proxy-up", site.res)
    site.assert_converged()
    assert site.settings() == ("64M", ["auto"])
    stats = daemon.ctl("print", "statistics", check=True).stdout
    assert f"{site.conn_name}.codec auto:zstd-3" in stats, stats
    site.write(proxy_section("64M", ["auto max-level 6"]))
    commands = site.adjust()
    assert f"set plugin {site.conn_name} 0 auto max-level 6" in commands, commands
    assert f"del connection {site.conn_name}" not in commands
    assert site.settings() == ("64M", ["auto max-level 6"])
    site.assert_converged()
