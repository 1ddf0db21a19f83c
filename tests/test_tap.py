"""twistd drbd-proxy's options: defaults, cross-checks and safe endpoints."""

import pytest
from twisted.python import usage

from drbdproxy.tap import DEFAULT_CONTROL, Options, loopback_by_default


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
])
def test_unusable_files_are_one_line_startup_errors(argv, needle):
    """A file the daemon cannot use stops it with exit status 1 and one line naming it."""
    with pytest.raises(SystemExit, match=needle) as info:
        parse(*argv)
    assert "\n" not in str(info.value.code)
