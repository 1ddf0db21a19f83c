"""`make install` into a staging root (DESTDIR), moved to its final place as a package would be:
the launchers, the venv, the units, the init script and the docs work from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import drbdproxy
from helpers import have

REPO = Path(__file__).resolve().parent.parent
VERSION = f"drbdproxy {drbdproxy.__version__}\n"


pytestmark = pytest.mark.skipif(not have("make"), reason="make is not installed")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The installed tree: built by `make install DESTDIR=stage` for final paths under ``root``,
    then moved there (nothing under ``root`` existed while it was built)."""
    base = tmp_path_factory.mktemp("install")
    stage, root = base / "stage", base / "root"
    paths = {"PREFIX": "/opt/drbdproxy", "SBINDIR": "/usr/sbin",
             "UNITDIR": "/usr/lib/systemd/system", "INITDIR": "/etc/init.d",
             "DEFAULTDIR": "/etc/default", "DOCDIR": "/usr/share/doc/drbdproxy"}
    out = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={stage}",
                          f"PYTHON={sys.executable}",
                          *(f"{key}={root}{value}" for key, value in paths.items())],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not root.exists()
    shutil.move(str(stage / str(root).lstrip("/")), str(root))
    return root


def test_the_launchers_print_the_version(root):
    """The installed /usr/sbin/drbd-proxy-ctl and /usr/sbin/drbd-proxy print drbdproxy's version."""
    for name in ("drbd-proxy-ctl", "drbd-proxy"):
        out = subprocess.run([str(root / "usr/sbin" / name), "--version"],
                             capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout, out.stderr) == (0, VERSION, "")


def test_nothing_names_the_staging_directory(root):
    """Scripts, pyvenv.cfg and bytecode name the final paths only (the venv was relocated)."""
    stage = str(root.parent / "stage").encode()
    found = [str(path) for path in (root / "opt/drbdproxy").rglob("*")
             if path.is_file() and not path.is_symlink() and stage in path.read_bytes()]
    assert found == []
    assert (root / "opt/drbdproxy/bin/twistd").read_text().startswith(
        f"#!{root}/opt/drbdproxy/bin/python")


def test_the_installed_daemon_starts_answers_and_stops(root, tmp_path):
    """The installed launcher daemonizes once it listens, answers drbd-proxy-ctl, and is gone
    within a bound after `drbd-proxy-ctl shutdown`."""
    sbin = root / "usr/sbin"
    sock, pidfile = tmp_path / "ctl.socket", tmp_path / "drbd-proxy.pid"
    started = subprocess.run([str(sbin / "drbd-proxy"), f"--pidfile={pidfile}",
                              f"--logfile={tmp_path}/drbd-proxy.log", "--control", f"unix:{sock}"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    try:
        ctl = subprocess.run([str(sbin / "drbd-proxy-ctl"), "-s", str(sock), "show", "version"],
                             capture_output=True, text=True, timeout=30)
        assert ctl.stdout == VERSION, ctl.stderr
        shutdown = subprocess.run([str(sbin / "drbd-proxy-ctl"), "-s", str(sock), "shutdown"],
                                  capture_output=True, text=True, timeout=30)
        assert shutdown.returncode == 0, shutdown.stderr
        # The event: the daemon's pidfd becomes readable when it exits (it is not our child).
        pidfd = os.pidfd_open(pid)
        try:
            import select

            assert select.select([pidfd], [], [], 30)[0], "the daemon still runs 30 s after shutdown"
        finally:
            os.close(pidfd)
    except BaseException:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        raise
    assert not sock.exists()


def test_units_init_script_and_docs_are_in_place(root):
    """The units (and drbdproxy.service, the name drbd.service orders after) point at the
    installed launcher and docs; the init script and /etc/default file are installed."""
    units = root / "usr/lib/systemd/system"
    service = (units / "drbd-proxy.service").read_text()
    assert f"ExecStart={root}/usr/sbin/drbd-proxy --nodaemon" in service
    assert "ExecStartPost=-/usr/sbin/drbdadm proxy-up all" in service
    documentation = service.split("Documentation=file://", 1)[1].split()[0]
    assert Path(documentation) == root / "usr/share/doc/drbdproxy/README.md"
    assert Path(documentation).is_file()
    assert os.readlink(units / "drbdproxy.service") == "drbd-proxy.service"
    assert (units / "drbd-proxy.socket").is_file()
    assert os.access(root / "etc/init.d/drbdproxy", os.X_OK)
    assert f"SBINDIR=${{SBINDIR:-{root}/usr/sbin}}" in (root / "etc/init.d/drbdproxy").read_text()
    assert (root / "etc/default/drbdproxy").is_file()
    docs = root / "usr/share/doc/drbdproxy"
    assert {"README.md", "security.md", "control-protocol.md"} <= {p.name for p in docs.iterdir()}
    assert (docs / "examples/drbd.conf.example").is_file()


@pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.skipif(not Path("/usr/sbin/drbdadm").exists(),
                    reason="drbd-utils is not installed (the units run /usr/sbin/drbdadm)")
def test_the_installed_units_verify_clean(root):
    """systemd-analyze verify says nothing about the units as installed."""
    units = root / "usr/lib/systemd/system"
    out = subprocess.run(["systemd-analyze", "verify", "--man=no",
                          str(units / "drbd-proxy.service"), str(units / "drbd-proxy.socket")],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
