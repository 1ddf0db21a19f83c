"""drbd.conf parsing (drbdproxy.config): each construct, each error, and agreement with drbdadm.

The agreement tests run the installed drbdadm (9.22, and drbdadm-84 through
DRBD_DRIVER_VERSION_OVERRIDE=8.4.11) in dry-run mode, ``drbdadm -d -c CONF proxy-up all`` with
``__DRBD_NODE__`` set, and compare what it prints *as drbdadm sends it*: one argv list per
drbd-proxy-ctl process (shlex-split, program name dropped) against
``ProxyConnectionConfig.ctl_invocations()``, and the commands in order against
``to_ctl_commands()``. No normalisation: option order, plugin order and drbdadm 9.22's missing
``-c`` before ``set plugin ... END`` must all match.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drbdproxy.config import ConfigError, ProxyConnectionConfig, load, loads

DRBDADM = shutil.which("drbdadm") or ("/usr/sbin/drbdadm" if os.path.exists("/usr/sbin/drbdadm")
                                      else None)
needs_drbdadm = pytest.mark.skipif(DRBDADM is None,
                                   reason="drbdadm (drbd-utils) is not installed: no reference")
ETC = Path(__file__).resolve().parent.parent / "etc"


def write(directory: Path, text: str, name: str = "drbd.conf") -> Path:
    """Write a dedented config (first line = line 1) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def connections(path: Path, node: str, drbd84: bool = False) -> list[ProxyConnectionConfig]:
    return load(path).proxy_connections(node, drbd84=drbd84)


# A DRBD 9 resource with two nodes, each its own proxy; {extra} goes at resource level.
V9 = """\
resource r0 {{
  device minor 0; disk /dev/sdb1; meta-disk internal;
  {extra}
  on alice {{ node-id 0; address 127.0.0.11:7789; }}
  on bob   {{ node-id 1; address 127.0.0.21:7789; }}
  connection {{
    host alice via proxy on alice {{ inside 127.0.0.12:7788; outside 192.168.23.1:7790; {alice} }}
    host bob   via proxy on bob   {{ inside 127.0.0.22:7788; outside 192.168.23.2:7790; }}
    net {{ protocol A; }}
  }}
}}
"""


def v9(extra: str = "", alice: str = "") -> str:
    return V9.format(extra=extra, alice=alice)


# --- the constructs ------------------------------------------------------------------------------


def test_84_form_addresses_name_and_reversed_options(tmp_path):
    """8.4 form: `on H { address; proxy on H { inside; outside; } }` gives drbdadm's name,
    the four addresses in `add connection` order, and resource options in reverse file order."""
    conf = write(tmp_path, """\
        resource r0 {
          protocol A;
          device minor 0; disk /dev/sdb1; meta-disk internal;
          proxy { compression on; memlimit 100M; }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """)
    [conn] = connections(conf, "alice", drbd84=True)
    assert conn.name == "r0-bob-alice"
    assert conn.listen_inside == ("127.0.0.12", 7788)
    assert conn.connect_peer_outside == ("192.168.23.2", 7790)
    assert conn.listen_outside == ("192.168.23.1", 7790)
    assert conn.connect_drbd == ("127.0.0.11", 7789)
    assert conn.memlimit == 100 << 20
    assert list(conn.options.items()) == [("memlimit", "100M"), ("compression", "on")]
    assert conn.to_ctl_commands() == [
        "add connection r0-bob-alice 127.0.0.12:7788 192.168.23.2:7790 192.168.23.1:7790 "
        "127.0.0.11:7789",
        "set memlimit r0-bob-alice 100M",
        "set compression r0-bob-alice on",
    ]
    [peer] = connections(conf, "bob", drbd84=True)
    assert peer.name == "r0-alice-bob" and peer.connect_drbd == ("127.0.0.21", 7789)


def test_9_form_plugins_and_the_missing_dash_c(tmp_path):
    """9 form: two plugin lines come out in drbdadm's order (reversed at a single level), end
    with `set plugin NAME n END`, and drbdadm 9.22 sends that last one without `-c`."""
    conf = write(tmp_path, v9("proxy { memlimit 128M; plugin { zstd level 4; lz4 level 9; } }"))
    [conn] = connections(conf, "alice")
    assert conn.plugins == ["lz4 level 9", "zstd level 4"]
    assert conn.set_commands() == [
        "set memlimit r0-bob-alice 128M",
        "set plugin r0-bob-alice 0 lz4 level 9",
        "set plugin r0-bob-alice 1 zstd level 4",
        "set plugin r0-bob-alice 2 END",
    ]
    assert conn.ctl_invocations()[1][-3:] == ["-c", "set plugin r0-bob-alice 1 zstd level 4",
                                              "set plugin r0-bob-alice 2 END"]


def test_84_dialect_keeps_dash_c_before_end(tmp_path):
    """drbdadm-84 sends `-c` before every command, `set plugin ... END` included."""
    conf = write(tmp_path, """\
        resource r0 {
          proxy { plugin { lz4 level 9; } }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """)
    [conn] = connections(conf, "alice", drbd84=True)
    assert conn.ctl_invocations()[1] == ["-c", "set plugin r0-bob-alice 0 lz4 level 9",
                                         "-c", "set plugin r0-bob-alice 1 END"]


def test_no_options_means_a_single_add(tmp_path):
    """Without options or plugins drbdadm starts only the `add connection` process."""
    [conn] = connections(write(tmp_path, v9()), "alice")
    assert conn.memlimit is None and conn.options == {} and conn.plugins == []
    assert conn.ctl_invocations() == [["-c", conn.add_command()]]


def test_inheritance_common_resource_proxy(tmp_path):
    """Options inherit common -> resource -> per-proxy, lower levels win, and inherited ones are
    put in front one by one (drbd-utils' expand_opts); plugin lines merge the same way."""
    conf = write(tmp_path, "common { proxy { memlimit 64M; read-loops 4; plugin { zlib level 1; } } }\n"
                 + v9("proxy { bwlimit 10M; compression 1; }",
                      "options { memlimit 1G; sndbuf-size 1M; plugin { zstd level 4; lz4 level 9; } }"))
    [alice] = connections(conf, "alice")
    assert alice.option_items == (("compression", "1"), ("bwlimit", "10M"), ("read-loops", "4"),
                                  ("memlimit", "1G"), ("sndbuf-size", "1M"))
    assert alice.memlimit == 1 << 30
    assert alice.plugins == ["zlib level 1", "zstd level 4", "lz4 level 9"]
    [bob] = connections(conf, "bob")  # bob's proxy has no options of its own
    assert bob.option_items == (("compression", "1"), ("bwlimit", "10M"), ("memlimit", "64M"),
                                ("read-loops", "4"))
    assert bob.plugins == ["zlib level 1"]


def test_84_resource_plugins_hide_common_ones(tmp_path):
    """drbdadm-84 takes the common plugin lines only for a resource that has none; drbdadm 9
    merges them line by line."""
    conf = write(tmp_path, """\
        common { proxy { plugin { aa 1; bb 2; } } }
        resource r0 {
          proxy { plugin { cc 3; } }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """)
    assert connections(conf, "alice", drbd84=True)[0].plugins == ["cc 3"]
    assert connections(conf, "alice")[0].plugins == ["cc 3", "aa 1", "bb 2"]


def test_connection_name_is_ignored_and_proxy_hosts_name_it(tmp_path):
    """drbdadm 9.22 ignores a connection's own name (deprecated) and names the proxy connection
    after the resource and the *proxy* hosts, several joined with '_'; a DRBD node that is not
    its own proxy gets nothing."""
    conf = write(tmp_path, """\
        resource r0 {
          on alice { node-id 0; }
          on bob   { node-id 1; }
          connection c1 {
            host alice address 127.0.0.11:7789 via proxy on pxa pxa2 { inside 127.0.0.12:7788; outside 192.168.23.1:7790; }
            host bob   address 127.0.0.21:7789 via proxy on pxb { inside 127.0.0.22:7788; outside 192.168.23.2:7790; }
          }
        }
        """)
    assert [c.name for c in connections(conf, "pxa2")] == ["r0-pxb-pxa_pxa2"]
    assert [c.name for c in connections(conf, "pxb")] == ["r0-pxa_pxa2-pxb"]
    assert connections(conf, "alice") == []
    assert load(conf).resource("r0").connections[0].name == "c1"


def test_host_names_match_like_drbd_utils(tmp_path):
    """DRBD 9 matches host names case-insensitively and short against fully qualified;
    drbdadm-84 compares them exactly."""
    conf = write(tmp_path, v9())
    assert [c.name for c in connections(conf, "ALICE.example.com")] == ["r0-bob-alice"]
    conf84 = write(tmp_path, """\
        resource r0 {
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """, "drbd84.conf")
    assert connections(conf84, "ALICE", drbd84=True) == []
    assert len(connections(conf84, "alice", drbd84=True)) == 1


def test_three_nodes_give_one_connection_per_peer_in_config_order(tmp_path):
    """Each connection section this node proxies is one proxy connection, in file order;
    the address of `host` falls back to the `on` section's."""
    conf = write(tmp_path, """\
        resource r0 {
          on alice { node-id 0; address 10.0.0.1:7789; }
          on bob   { node-id 1; address 10.0.0.2:7789; }
          on carol { node-id 2; address 10.0.0.3:7789; }
          connection { host alice via proxy on alice { inside 127.0.0.1:1; outside 10.1.0.1:1; }
                       host bob via proxy on bob { inside 127.0.0.2:1; outside 10.1.0.2:1; } }
          connection { host bob port 7790 via proxy on bob { inside 127.0.0.2:2; outside 10.1.0.2:2; }
                       host carol via proxy on carol { inside 127.0.0.3:2; outside 10.1.0.3:2; } }
          connection { host alice; host carol; }
        }
        """)
    bob = connections(conf, "bob")
    assert [c.name for c in bob] == ["r0-alice-bob", "r0-carol-bob"]
    assert bob[0].connect_drbd == ("10.0.0.2", 7789)
    assert bob[1].connect_drbd == ("10.0.0.2", 7790)


def test_ipv6_addresses(tmp_path):
    """`ipv6 [fd00::1]:7789` (and plain `[fd00::1]:7789`) parse; the proxy gets them bare, as
    drbdadm prints them."""
    conf = write(tmp_path, v9().replace("inside 127.0.0.12:7788", "inside ipv6 [::1]:7788")
                 .replace("outside 192.168.23.2:7790", "outside [fd00::2]:7790"))
    [conn] = connections(conf, "alice")
    assert conn.listen_inside == ("::1", 7788)
    assert conn.connect_peer_outside == ("fd00::2", 7790)
    assert "::1:7788 fd00::2:7790 " in conn.add_command()


def test_generic_sections_skip_and_comments(tmp_path):
    """global/disk/net/handlers/startup/volume/options sections, `skip` blocks, comments and
    quoted strings (with '#' and braces inside) are all read past without effect."""
    conf = write(tmp_path, """\
        # a real-world file
        global { usage-count no; }  # trailing comment
        skip { resource broken { this is { not parsed } } }
        common {
          handlers { split-brain "/usr/lib/drbd/notify-split-brain.sh root # {not a brace}"; }
          startup { wfc-timeout 10; become-primary-on both; }
          disk { on-io-error detach; c-max-rate 100M; }
          net { protocol A; on-congestion pull-ahead; congestion-fill 900M; }
          options { auto-promote yes; }
        }
        resource r0 {
          volume 0 { device minor 0; disk /dev/sdb1; meta-disk internal; disk { resync-rate 10M; } }
          skip old stuff { net { } }
          on alice { node-id 0; address 127.0.0.11:7789; volume 1 { device minor 1; } }
          on bob   { node-id 1; address 127.0.0.21:7789; }
          connection {
            host alice via proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; }
            host bob   via proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; }
            net { protocol A; } volume 0 { disk { c-plan-ahead 20; } }
          }
        }
        """)
    assert [c.name for c in connections(conf, "alice")] == ["r0-bob-alice"]


def test_quoted_names_and_escapes(tmp_path):
    """Quoted strings work as names and plugin words, unescaped as drbdadm does."""
    conf = write(tmp_path, v9('proxy { plugin { "zstd" level "4"; } }').replace(
        "resource r0", 'resource "r0"'))
    [conn] = connections(conf, "alice")
    assert conn.name == "r0-bob-alice" and conn.plugins == ["zstd level 4"]


def test_options_keep_their_text(tmp_path):
    """Option values stay as written ("10M" is sent as "10M"), memlimit is also given in bytes."""
    conf = write(tmp_path, v9("proxy { memlimit 512k; bwlimit 10M; ping-timeout 30; }"))
    [conn] = connections(conf, "alice")
    assert conn.options == {"ping-timeout": "30", "bwlimit": "10M", "memlimit": "512k"}
    assert conn.memlimit == 512 * 1024


def test_include_relative_glob_and_once_only(tmp_path):
    """`include` is relative to the including file, globs read in sorted order, a glob matching
    nothing is fine, and a file already read (cycles too) is not read again."""
    write(tmp_path, """\
        include "drbd.d/*.res";
        include "nothing/*.res";
        include "drbd.d/global_common.conf";
        """, "etc/drbd.conf")
    write(tmp_path, "common { proxy { memlimit 32M; } }\n", "etc/drbd.d/global_common.conf")
    write(tmp_path, v9().replace("r0", "r1") + 'include "../drbd.conf";\n', "etc/drbd.d/b.res")
    write(tmp_path, v9().replace("r0", "r0").replace("7789", "7799").replace("7790", "7791")
          .replace("7788", "7798"), "etc/drbd.d/a.res")
    config = load(tmp_path / "etc/drbd.conf")
    assert [r.name for r in config.resources] == ["r0", "r1"]
    assert [Path(f).name for f in config.files] == ["drbd.conf", "a.res", "b.res",
                                                    "global_common.conf"]
    # global_common.conf matches no "*.res" glob and is read by the plain include at the end
    assert [c.memlimit for c in config.proxy_connections("alice")] == [32 << 20, 32 << 20]


def test_template_file_replaces_common(tmp_path):
    """A resource's `template-file` (a file with one common section) is inherited instead of
    the common section."""
    write(tmp_path, "common { proxy { memlimit 16M; } }\n", "template.conf")
    conf = write(tmp_path, "common { proxy { memlimit 64M; read-loops 2; } }\n"
                 + v9('template-file "template.conf";'))
    [conn] = connections(conf, "alice")
    assert conn.option_items == (("memlimit", "16M"),)


def test_dedicated_proxy_node_serving_two_connections(tmp_path):
    """A proxy host serving two DRBD nodes gets both connections; drbdadm 9.22 names both
    alike (its naming uses proxy hosts), and so do we."""
    conf = write(tmp_path, """\
        resource res {
          on alpha { node-id 0; address 192.168.31.1:7800; }
          on bravo { node-id 1; address 192.168.31.2:7800; }
          on charlie { node-id 2; address 192.168.31.3:7800; }
          connection { host alpha; host bravo; }
          connection {
            host alpha via proxy on site1-pxy { inside 192.168.31.4:7800; outside 192.168.31.4:7801; }
            host charlie via proxy on charlie-pxy { inside 192.168.31.5:7800; outside 192.168.31.5:7801; }
          }
          connection {
            host bravo via proxy on site1-pxy { inside 192.168.31.4:7802; outside 192.168.31.4:7803; }
            host charlie via proxy on charlie-pxy { inside 192.168.31.5:7802; outside 192.168.31.5:7803; }
          }
        }
        """)
    conns = connections(conf, "site1-pxy")
    assert [c.name for c in conns] == ["res-charlie-pxy-site1-pxy"] * 2
    assert [c.connect_drbd for c in conns] == [("192.168.31.1", 7800), ("192.168.31.2", 7800)]


def test_stacked_side_is_not_brought_up_by_all(tmp_path):
    """A `stacked-on-top-of` side is only a peer for `proxy-up all` (drbdadm needs -S for it)."""
    conf = write(tmp_path, """\
        resource r0 {
          on alice { address 10.0.0.1:7789; }
          on bob   { address 10.0.0.2:7789; }
        }
        resource r0-U {
          stacked-on-top-of r0 { device minor 10; address 10.0.1.1:7790;
            proxy on alice bob { inside 127.0.0.1:7791; outside 192.168.1.1:7792; } }
          on carol { device minor 10; disk /dev/sdc1; meta-disk internal; address 127.0.0.2:7789;
            proxy on carol { inside 127.0.0.3:7791; outside 192.168.1.2:7792; } }
        }
        """)
    assert connections(conf, "alice") == []
    assert [c.name for c in connections(conf, "carol")] == ["r0-U-alice_bob-carol"]


def test_loads_parses_text(tmp_path):
    """`loads` parses a string, includes relative to the path it is given."""
    write(tmp_path, v9(), "r0.res")
    config = loads('include "*.res";', tmp_path / "drbd.conf")
    assert [r.name for r in config.resources] == ["r0"]


# --- errors --------------------------------------------------------------------------------------


def error_of(tmp_path: Path, text: str, node: str = "alice", drbd84: bool = False,
             name: str = "drbd.conf") -> str:
    """The ConfigError message for loading ``text`` and asking for ``node``'s connections."""
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load(path).proxy_connections(node, drbd84=drbd84)
    return str(info.value)


def test_missing_semicolon_names_file_line_and_context(tmp_path):
    """A missing ';' is reported as FILE:LINE: expected ';' after 'memlimit 128M', got '}'."""
    message = error_of(tmp_path, v9("proxy { memlimit 128M }"))
    assert message == f"{tmp_path}/drbd.conf:3: expected ';' after 'memlimit 128M', got '}}'"


def test_config_error_is_a_value_error_with_parts(tmp_path):
    """ConfigError is a ValueError and carries file and line apart."""
    path = write(tmp_path, "resource r0 {\n on alice { address 1.2.3.4; }\n}\n")
    with pytest.raises(ValueError) as info:
        load(path)
    assert isinstance(info.value, ConfigError)
    assert (info.value.file, info.value.line) == (str(path), 2)
    assert "expected ':' and a port after 'address 1.2.3.4', got ';'" in str(info.value)


@pytest.mark.parametrize("missing", ["inside", "outside"])
def test_missing_inside_or_outside(tmp_path, missing):
    """A proxy section without inside (or outside) names the keyword and the section's line."""
    text = v9().replace(f"{missing} 127.0.0.12:7788;" if missing == "inside"
                        else f"{missing} 192.168.23.1:7790;", "")
    assert error_of(tmp_path, text) == (
        f"{tmp_path}/drbd.conf:7: in section 'proxy on alice {{ ... }}': "
        f"'{missing}' keyword missing")


def test_unknown_host(tmp_path):
    """`host carol` without an `on carol` section is an error at the host statement's line."""
    message = error_of(tmp_path, v9().replace("host bob ", "host carol"))
    assert message.startswith(f"{tmp_path}/drbd.conf:8: in resource r0: 'host carol' names an "
                              "unknown host")


def test_mixing_proxy_and_plain_on_sections(tmp_path):
    """Some `on` sections with a proxy subsection and some without is refused."""
    message = error_of(tmp_path, """\
        resource r0 {
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; }
        }
        """, drbd84=True)
    assert message == (f"{tmp_path}/drbd.conf:1: in resource r0: Either all 'on' sections must "
                       "contain a proxy subsection, or none")


def test_mixing_proxy_and_plain_host_statements(tmp_path):
    """In a connection, one `host` via a proxy and one without is refused."""
    message = error_of(tmp_path, v9().replace(
        "host bob   via proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; }",
        "host bob;"))
    assert message.startswith(f"{tmp_path}/drbd.conf:6: in connection in resource r0: Either all "
                              "'host' statements must have a proxy subsection, or none")


def test_unknown_proxy_option(tmp_path):
    """A word that is no proxy option is named with the list of what is allowed."""
    message = error_of(tmp_path, v9("proxy { memlimt 128M; }"))
    assert message.startswith(f"{tmp_path}/drbd.conf:3: expected a proxy option (memlimit | ")
    assert message.endswith("after 'proxy {', got 'memlimt'")


@pytest.mark.parametrize("value", ["1T", "lots", "100MB"])
def test_bad_memlimit(tmp_path, value):
    """A memlimit that is not a size is refused at its line."""
    message = error_of(tmp_path, v9(f"proxy {{ memlimit {value}; }}"))
    assert message.startswith(f"{tmp_path}/drbd.conf:3: 'memlimit {value}': the value must be "
                              "a size like 128M")


def test_compression_on_off_or_number(tmp_path):
    """compression accepts on/off (8.4 wording) and numbers, nothing else."""
    for value in ("on", "off", "1", "9"):
        connections(write(tmp_path, v9(f"proxy {{ compression {value}; }}")), "alice")
    assert "'compression fast': the value must be a number, 'on' or 'off'" in error_of(
        tmp_path, v9("proxy { compression fast; }"))


@pytest.mark.parametrize("option, message", [
    ("sndbuf-size 16M", "'sndbuf-size 16M' is out of range: DRBD allows 0 to 10485760 bytes"),
    ("rcvbuf-size 10241k", "'rcvbuf-size 10241k' is out of range"),
    ("ping-timeout 0", "'ping-timeout 0' is out of range: DRBD allows 1 to 300 tenths"),
    ("read-loops many", "'read-loops many': the value must be a number"),
])
def test_values_held_to_drbd_limits(tmp_path, option, message):
    """Buffer sizes and ping-timeout are DRBD net options too: drbdadm's limits apply."""
    assert error_of(tmp_path, v9(f"proxy {{ {option}; }}")).startswith(
        f"{tmp_path}/drbd.conf:3: {message}")


def test_unclosed_resource(tmp_path):
    """End of file inside a resource says which brace is missing and where it was opened."""
    message = error_of(tmp_path, "resource r0 {\n  on alice { node-id 0; }\n")
    assert message == (f"{tmp_path}/drbd.conf:3: expected '}}' to close 'resource r0' (opened at "
                       "line 1), got end of file")


def test_unterminated_string(tmp_path):
    """A quoted string left open on its line is refused."""
    assert error_of(tmp_path, 'resource r0 {\n handlers { x "abc; }\n}\n').startswith(
        f"{tmp_path}/drbd.conf:2: a quoted string is not closed on its line")


def test_include_of_missing_plain_file(tmp_path):
    """A plain include (no wildcard) of a missing file is an error, as in drbdadm."""
    assert error_of(tmp_path, 'include "missing.res";\n').startswith(
        f"{tmp_path}/drbd.conf:1: cannot open include file 'missing.res'")


def test_error_in_included_file_names_that_file(tmp_path):
    """An error inside an included file reports the included file and its line."""
    write(tmp_path, "resource r0 {\n  proxy { memlimit 1M }\n}\n", "bad.res")
    assert error_of(tmp_path, 'include "*.res";\n').startswith(
        f"{tmp_path}/bad.res:2: expected ';' after 'memlimit 1M'")


def test_ambiguous_inheritance_drbd9(tmp_path):
    """An option set twice in one section with two values cannot be inherited (drbdadm 9);
    drbdadm-84 takes the first."""
    text = """\
        resource r0 {
          proxy { memlimit 1M; memlimit 2M; }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """
    assert "ambiguous inheritance for proxy option 'memlimit'" in error_of(tmp_path, text)
    assert connections(tmp_path / "drbd.conf", "alice", drbd84=True)[0].memlimit == 1 << 20


def test_proxy_section_inside_connection(tmp_path):
    """`proxy { }` inside a connection is refused with a hint where it belongs."""
    message = error_of(tmp_path, v9().replace("net { protocol A; }", "proxy { memlimit 1M; }"))
    assert message.startswith(f"{tmp_path}/drbd.conf:9: a 'proxy' section is not allowed in a "
                              "connection")


def test_two_paths_through_a_proxy(tmp_path):
    """drbdadm allows only one path in a proxied connection (when it brings it up)."""
    text = v9().replace("    host alice", "    path {\n    host alice").replace(
        "    net {", "    }\n    path { host alice address 1.1.1.1:1 via proxy on alice { inside 1.1.1.2:1; outside 1.1.1.3:1; }\n"
        "           host bob address 1.1.1.4:1 via proxy on bob { inside 1.1.1.5:1; outside 1.1.1.6:1; } }\n    net {")
    assert "a connection through a proxy may have only one path" in error_of(tmp_path, text)


def test_duplicate_resource_and_proxy_section(tmp_path):
    """A resource defined twice, or two proxy sections in one resource, are refused."""
    assert "resource 'r0' is defined twice (first at" in error_of(tmp_path, v9() + v9())
    assert "a second 'proxy' section in r0" in error_of(
        tmp_path, v9("proxy { memlimit 1M; } proxy { read-loops 1; }"))


def test_connection_sections_need_drbd9(tmp_path):
    """Asking for drbdadm-84 rules on a DRBD 9 `connection` config is refused."""
    assert "'connection' sections need DRBD 9" in error_of(tmp_path, v9(), drbd84=True)


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.12", "expected ':' and a port"),
    ("127.0.0.12:0", "expected a port number (1-65535)"),
    ("127.0.0.12:65536", "expected a port number (1-65535)"),
    ("ipv6 127.0.0.1:1", "expected '[' (IPv6 addresses go in brackets"),
    ("999.0.0.1:1", "expected an IPv4 address"),
    ("ipv6 [10.0.0.1]:1", "expected an IPv6 address"),
])
def test_bad_addresses(tmp_path, address, expected):
    """Malformed addresses and ports are refused with what was expected, at their line."""
    message = error_of(tmp_path, v9().replace("inside 127.0.0.12:7788", f"inside {address}"))
    assert message.startswith(f"{tmp_path}/drbd.conf:7: {expected}")


def test_bad_top_level_word(tmp_path):
    """An unknown word at the top level lists what may stand there."""
    assert error_of(tmp_path, "# typo ahead\nresorce r0 { }\n") == (
        f"{tmp_path}/drbd.conf:2: expected 'global', 'common', 'resource', 'skip' or 'include', "
        "got 'resorce'")


def test_host_sections_not_allowed_in_common(tmp_path):
    """`on` in the common section is refused, as drbdadm does."""
    assert "'on' is not allowed in the common section" in error_of(
        tmp_path, "common { on alice { } }\n")


def test_include_from_a_directory_with_glob_characters(tmp_path):
    """Glob characters in the including file's directory name are not a pattern."""
    write(tmp_path, v9(), "conf[1]/r0.res")
    config = load(write(tmp_path, 'include "*.res";\n', "conf[1]/drbd.conf"))
    assert [r.name for r in config.resources] == ["r0"]


_FRAGMENTS = st.sampled_from([
    "resource", "r0", "common", "global", "include", '"x*.res"', "on", "alice", "bob", "proxy",
    "inside", "outside", "options", "plugin", "memlimit", "128M", "connection", "host", "via",
    "address", "ipv6", "[fd00::1]", "10.0.0.1:7789", ":", "7789", "path", "skip", "{", "}", ";",
    "#", "\n", '"', "=", "lz4 level 9", "stacked-on-top-of", "floating", "template-file",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_FRAGMENTS, max_size=40))
def test_any_text_parses_or_raises_config_error(tmp_path, fragments):
    """Whatever the input, the parser returns a Config or raises ConfigError, never a crash."""
    try:
        loads(" ".join(fragments), tmp_path / "drbd.conf").proxy_connections("alice")
    except ConfigError:
        pass


_RICH = ("common { proxy { memlimit 64M; plugin { zlib level 1; } } }\n"
         + v9("proxy { bwlimit 10M; }", "options { memlimit 1G; plugin { lz4; } }")).split(" ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(_RICH) - 1), st.integers(0, len(_RICH) - 1), _FRAGMENTS)
def test_damaged_config_parses_or_raises_config_error(tmp_path, drop, at, extra):
    """A valid config with one piece dropped and another inserted never crashes the parser."""
    pieces = list(_RICH)
    del pieces[drop]
    pieces.insert(at, extra)
    try:
        loads(" ".join(pieces), tmp_path / "drbd.conf").proxy_connections("alice")
    except ConfigError:
        pass


# --- agreement with the real drbdadm -------------------------------------------------------------


def drbdadm_proxy_up(conf: Path, node: str, drbd84: bool = False) -> tuple[int, list[list[str]]]:
    """Run `drbdadm -d -c CONF proxy-up all` as ``node``; return its exit code and the argv of
    each drbd-proxy-ctl it would run (shell quoting undone, program name dropped)."""
    assert DRBDADM is not None
    env = {k: v for k, v in os.environ.items() if k != "DRBD_DRIVER_VERSION_OVERRIDE"}
    env["__DRBD_NODE__"] = node
    if drbd84:
        env["DRBD_DRIVER_VERSION_OVERRIDE"] = "8.4.11"
    result = subprocess.run([DRBDADM, "-d", "-c", str(conf), "proxy-up", "all"],
                            capture_output=True, text=True, env=env, timeout=60)
    calls = [shlex.split(line)[1:] for line in result.stdout.splitlines()
             if line.startswith("drbd-proxy-ctl ")]
    return result.returncode, calls


def assert_agrees(conf: Path, node: str, drbd84: bool = False) -> list[ProxyConnectionConfig]:
    """Our invocations and commands for ``node`` equal drbdadm's, exactly and in order."""
    rc, calls = drbdadm_proxy_up(conf, node, drbd84)
    assert rc < 10, f"drbdadm refused {conf} (rc {rc})"
    conns = load(conf).proxy_connections(node, drbd84=drbd84)
    assert [argv for c in conns for argv in c.ctl_invocations()] == calls
    sent = [arg for argv in calls for arg in argv if arg != "-c"]
    assert [cmd for c in conns for cmd in c.to_ctl_commands()] == sent
    return conns


@needs_drbdadm
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_84_form_compression_on(tmp_path, node):
    """8.4 form with `compression on` under drbdadm-84 (DRBD_DRIVER_VERSION_OVERRIDE=8.4.11)."""
    conf = write(tmp_path, """\
        resource r0 {
          protocol A;
          device minor 0; disk /dev/sdb1; meta-disk internal;
          proxy { compression on; memlimit 100M; }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """)
    assert len(assert_agrees(conf, node, drbd84=True)) == 1


@needs_drbdadm
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_9_form_two_plugins(tmp_path, node):
    """9 form with `plugin { zstd level 4; lz4 level 9; }`: order and the END quirk."""
    conf = write(tmp_path, v9("proxy { memlimit 128M; plugin { zstd level 4; lz4 level 9; } }"))
    assert len(assert_agrees(conf, node)) == 1


@needs_drbdadm
@pytest.mark.parametrize("drbd84", [False, True])
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_two_resources_all(tmp_path, node, drbd84):
    """Two resources (r1 written first) come out in file order, one pair of calls each."""
    conf = write(tmp_path, """\
        resource r1 {
          protocol A;
          proxy { memlimit 32M; plugin { lz4 level 1; } }
          on alice { address 127.0.0.11:7799; proxy on alice { inside 127.0.0.12:7798; outside 192.168.23.1:7791; } }
          on bob   { address 127.0.0.21:7799; proxy on bob   { inside 127.0.0.22:7798; outside 192.168.23.2:7791; } }
        }
        resource r0 {
          protocol A;
          proxy { memlimit 64M; read-loops 2; }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790; } }
          on bob   { address 127.0.0.21:7789; proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; } }
        }
        """)
    assert [c.resource for c in assert_agrees(conf, node, drbd84)] == ["r1", "r0"]


@needs_drbdadm
@pytest.mark.parametrize("drbd84", [False, True])
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_options_at_three_levels(tmp_path, node, drbd84):
    """Options and plugins at common, resource and per-proxy level (8.4 form, both drbdadms)."""
    conf = write(tmp_path, """\
        common { proxy { memlimit 64M; read-loops 4; plugin { zlib level 1; lz4 level 2; } } }
        resource r0 {
          protocol A;
          device minor 0; disk /dev/sdb1; meta-disk internal;
          proxy { bwlimit 10M; compression 1; plugin { lz4 level 9; zlib level 1; } }
          on alice { address 127.0.0.11:7789; proxy on alice { inside 127.0.0.12:7788; outside 192.168.23.1:7790;
                     options { memlimit 1G; sndbuf-size 1M; plugin { zlib level 1; zstd level 4; } } } }
          on bob   { address 127.0.0.21:7789; proxy on bob { inside 127.0.0.22:7788; outside 192.168.23.2:7790;
                     options { rcvbuf-size 2M; ping-timeout 30; } } }
        }
        """)
    assert len(assert_agrees(conf, node, drbd84)) == 1


@needs_drbdadm
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_9_form_three_levels(tmp_path, node):
    """9 form: common, resource and `via proxy on ... { options { } }` levels."""
    conf = write(tmp_path, "common { proxy { memlimit 64M; read-loops 4; plugin { zlib level 1; } } }\n"
                 + v9("proxy { bwlimit 10M; compression 1; plugin { lz4 level 9; } }",
                      "options { memlimit 1G; plugin { zstd level 4; lz4 level 9; } }"))
    assert len(assert_agrees(conf, node)) == 1


@needs_drbdadm
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_with_include(tmp_path, node):
    """The resource and the common section in two included files, relative paths and globs."""
    write(tmp_path, "common { proxy { memlimit 48M; plugin { lz4 level 3; } } }\n",
          "drbd.d/global_common.conf")
    write(tmp_path, v9("proxy { read-loops 3; }"), "drbd.d/r0.res")
    conf = write(tmp_path, 'include "drbd.d/global_common.conf";\ninclude "drbd.d/*.res";\n',
                 "drbd.conf")
    assert len(assert_agrees(conf, node)) == 1


@needs_drbdadm
@pytest.mark.parametrize("node", ["site1-pxy", "charlie-pxy", "alpha", "ALPHA"])
def test_agrees_dedicated_proxy_hosts(tmp_path, node):
    """Dedicated proxy hosts, a proxy serving two nodes, a connection without proxy, names."""
    conf = write(tmp_path, """\
        resource res {
          proxy { memlimit 16M; }
          on alpha { node-id 0; address 192.168.31.1:7800; }
          on bravo { node-id 1; address 192.168.31.2:7800; }
          on charlie { node-id 2; address 192.168.31.3:7800; }
          connection { host alpha; host bravo; }
          connection {
            host alpha via proxy on site1-pxy { inside 192.168.31.4:7800; outside 192.168.31.4:7801; }
            host charlie via proxy on charlie-pxy { inside 192.168.31.5:7800; outside 192.168.31.5:7801; }
          }
          connection named {
            host bravo via proxy on site1-pxy { inside 192.168.31.4:7802; outside 192.168.31.4:7803; }
            host charlie via proxy on Charlie-Pxy { inside 192.168.31.5:7802; outside 192.168.31.5:7803; }
          }
        }
        """)
    assert_agrees(conf, node)


@needs_drbdadm
def test_agrees_one_proxy_host_for_both_ends(tmp_path):
    """One proxy host named on both sides (a single-machine test set-up): drbdadm takes the
    first side as its own, one connection named r0-px-px."""
    conf = write(tmp_path, v9("proxy { memlimit 1M; }").replace("proxy on alice", "proxy on px")
                 .replace("proxy on bob", "proxy on px"))
    assert [c.name for c in assert_agrees(conf, "px")] == ["r0-px-px"]


@needs_drbdadm
@pytest.mark.parametrize("node", ["alice", "bob"])
def test_agrees_ipv6(tmp_path, node):
    """IPv6 addresses (drbd.conf's `ipv6 [addr]:port`) reach the proxy bare."""
    conf = write(tmp_path, v9().replace("inside 127.0.0.22:7788", "inside ipv6 [fd00::22]:7788")
                 .replace("outside 192.168.23.1:7790", "outside ipv6 [fd00::1]:7790"))
    assert len(assert_agrees(conf, node)) == 1


@needs_drbdadm
@pytest.mark.parametrize("text", [
    v9().replace("outside 192.168.23.1:7790;", ""),
    v9().replace("host bob ", "host carol"),
    v9().replace("host bob   via proxy on bob   { inside 127.0.0.22:7788; outside 192.168.23.2:7790; }",
                 "host bob;"),
    v9("proxy { memlimit 1T; }"),
    v9("proxy { sndbuf-size 16M; }"),
    v9("proxy { ping-timeout 301; }"),
    v9("proxy { memlimit 1M; memlimit 2M; }"),
    'include "missing.res";\n',
], ids=["no-outside", "unknown-host", "mixed-hosts", "bad-size", "big-sndbuf", "long-ping",
     "ambiguous", "missing-include"])
def test_refuses_what_drbdadm_refuses(tmp_path, text):
    """Configs drbdadm rejects (exit code 10) are rejected here too, with a ConfigError."""
    conf = write(tmp_path, text)
    rc, calls = drbdadm_proxy_up(conf, "alice")
    assert rc == 10 and calls == []
    with pytest.raises(ConfigError):
        load(conf).proxy_connections("alice")


_WORDS = st.sampled_from(["lz4 level 1", "lz4 level 9", "zstd level 4", "zlib level 6", "lzma"])
_SIZES = st.sampled_from(["1", "8", "100k", "64M", "1G"])
_OPTION = st.one_of(
    st.tuples(st.sampled_from(["memlimit", "read-loops", "compression", "bwlimit"]), _SIZES),
    # drbdadm holds these to DRBD's own limits: buffers up to 10M, ping-timeout 1..300 (0.1 s)
    st.tuples(st.sampled_from(["sndbuf-size", "rcvbuf-size"]), st.sampled_from(["0", "64k", "10M"])),
    st.tuples(st.just("ping-timeout"), st.sampled_from(["1", "30", "300"])),
)


def _level(draw_options, draw_plugins) -> str:
    """A proxy-options body: unique option names (duplicates are a drbdadm 9 error)."""
    seen: dict[str, str] = dict(draw_options)
    body = " ".join(f"{k} {v};" for k, v in seen.items())
    if draw_plugins:
        body += " plugin { " + " ".join(f"{p};" for p in dict.fromkeys(draw_plugins)) + " }"
    return body


@needs_drbdadm
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(levels=st.lists(st.tuples(st.lists(_OPTION, max_size=4), st.lists(_WORDS, max_size=3)),
                       min_size=3, max_size=3),
       drbd84=st.booleans())
def test_agrees_on_random_inheritance(tmp_path, levels, drbd84):
    """Random options and plugin lines at common, resource and per-proxy level: same result as
    drbdadm (9 and 84) on both nodes."""
    common, resource, proxy = (_level(*level) for level in levels)
    conf = write(tmp_path, f"""\
        common {{ proxy {{ {common} }} }}
        resource r0 {{
          proxy {{ {resource} }}
          on alice {{ address 127.0.0.11:7789; proxy on alice {{ inside 127.0.0.12:7788; outside 192.168.23.1:7790; options {{ {proxy} }} }} }}
          on bob   {{ address 127.0.0.21:7789; proxy on bob {{ inside 127.0.0.22:7788; outside 192.168.23.2:7790; }} }}
        }}
        """)
    for node in ("alice", "bob"):
        assert_agrees(conf, node, drbd84)


def _etc_configs() -> list[Path]:
    if not ETC.is_dir():
        return []
    return sorted(p for p in ETC.rglob("*") if p.is_file()
                  and (p.name.endswith(".conf") or p.name.endswith(".conf.example")))


def _proxy_hosts(path: Path) -> list[str]:
    """Every host named in a `proxy on` list of the file: the nodes worth asking about."""
    names: dict[str, None] = {}
    for res in load(path).resources:
        sections = [h.proxy for h in res.hosts]
        sections += [ref.proxy for conn in res.connections for p in conn.paths for ref in p.hosts]
        for section in sections:
            if section is not None:
                names.update(dict.fromkeys(section.on_hosts))
    return list(names)


@needs_drbdadm
@pytest.mark.parametrize("path", _etc_configs() or [None], ids=lambda p: p.name if p else "none")
def test_agrees_on_shipped_examples(path, tmp_path):
    """The example configs under etc/ (*.conf, *.conf.example) give what drbdadm gives, for
    every proxy host they name, with the drbdadm (9 or 84) that accepts them."""
    if path is None:
        pytest.skip("no etc/*.conf or etc/*.conf.example file to check yet")
    if not _proxy_hosts(path):
        pytest.skip(f"{path.name} has no proxy sections")
    # drbdadm wants a config file name it can read; copy to keep .example files as they are.
    conf = tmp_path / path.name
    conf.write_text(path.read_text())
    for dep in path.parent.iterdir():  # includes are relative: bring the neighbours along
        if dep.is_file() and dep != path:
            (tmp_path / dep.name).write_text(dep.read_text())
    checked = 0
    for drbd84 in (False, True):
        if drbdadm_proxy_up(conf, _proxy_hosts(path)[0], drbd84)[0] >= 10:
            continue  # this drbdadm refuses the file (8.4 form in 9, or 9 syntax in 84)
        for node in _proxy_hosts(path):
            assert_agrees(conf, node, drbd84)
        checked += 1
    assert checked, f"neither drbdadm 9 nor drbdadm-84 accepts {path}"
