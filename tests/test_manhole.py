"""The SSH manhole: start-up checks and key auth in-process, real logins with OpenSSH's client."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

import drbdproxy
from drbdproxy.admin.manhole import (
    HOST_KEY_NAME,
    ManholeError,
    manhole_service,
    session_namespace,
    show,
)
from helpers import free_ports, have

SERVER = """\
import sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from drbdproxy.admin.manhole import manhole_service

class Counter:
    def __init__(self):
        self.value = 0

    def bump(self):
        self.value += 1
        return self.value

counter = Counter()
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
service = manhole_service(sys.argv[1], sys.argv[2], lambda: {"counter": counter}, reactor=reactor)
service.startService()
counter.value = 41  # set after the service was built: sessions must see the live object
print("READY", flush=True)
reactor.run()
"""

_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|.)")


class Pair:
    """An ed25519 key pair on disk: the private key (mode 0600) and its public key line."""

    def __init__(self, directory: Path, name: str) -> None:
        private = Ed25519PrivateKey.generate()
        self.private_path = directory / name
        fd = os.open(self.private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
        self.key = keys.Key(private)
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH)
        self.public_line = public + b" " + name.encode()


def authorized(directory: Path, *pairs: Pair) -> str:
    path = directory / "authorized_keys"
    path.write_bytes(b"# manhole users\n" + b"".join(p.public_line + b"\n" for p in pairs))
    return str(path)


def service(keys_file: str, endpoint: str = "tcp:6022:interface=127.0.0.1",
            **kwargs: Any) -> Any:
    return manhole_service(endpoint, keys_file, dict, reactor=MemoryReactor(), **kwargs)


def login(svc: Any, pair: Pair, username: bytes = b"admin") -> Any:
    """Authenticate through the service's portal as sshd would, with a signature by ``pair``."""
    sig_data = b"session id and userauth request"
    creds = SSHPrivateKey(username, b"ssh-ed25519", pair.key.public().blob(), sig_data,
                          pair.key.sign(sig_data))
    results: list[Any] = []
    svc.factory.portal.login(creds, None, IConchUser).addBoth(results.append)
    assert results, "the portal answered asynchronously"
    return results[0]


# -- start-up checks -----------------------------------------------------------------------------
def test_missing_keys_file_is_a_clear_error(tmp_path: Path) -> None:
    """A keys file that does not exist stops start-up with a ManholeError naming it."""
    missing = tmp_path / "nope"
    with pytest.raises(ManholeError, match=f"cannot read manhole keys file {missing}"):
        service(str(missing))


def test_keys_file_without_keys_is_a_clear_error(tmp_path: Path) -> None:
    """A keys file with only comments and garbage holds no key: a ManholeError (a ValueError)."""
    path = tmp_path / "authorized_keys"
    path.write_text("# nobody yet\n\nnot-a-key at all\n")
    with capturedLogs(), pytest.raises(ValueError, match="holds no public key"):
        service(str(path))


def test_keys_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    """As sshd's StrictModes, a keys file that others may write (and add keys to) is refused."""
    keys_file = authorized(tmp_path, Pair(tmp_path, "id"))
    os.chmod(keys_file, 0o666)
    with pytest.raises(ManholeError, match="writable by others"):
        service(keys_file)


def test_bad_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    """An endpoint string that does not parse is refused before anything is read or written."""
    keys_file = authorized(tmp_path, Pair(tmp_path, "id"))
    with pytest.raises(ManholeError, match="bad manhole endpoint"):
        service(keys_file, endpoint="tcp:notaport")
    assert not (tmp_path / HOST_KEY_NAME).exists()


def test_bare_port_listens_on_loopback(tmp_path: Path) -> None:
    """A bare port number means that port on 127.0.0.1, never every interface."""
    reactor = MemoryReactor()
    svc = manhole_service("6022", authorized(tmp_path, Pair(tmp_path, "id")), dict,
                          reactor=reactor)
    with capturedLogs() as events:
        svc.startService()
    port, factory, _backlog, interface = reactor.tcpServers[0]
    assert (port, interface, factory) == (6022, "127.0.0.1", svc.factory)
    assert any(e.get("endpoint") == "tcp:6022:interface=127.0.0.1" for e in events)


def test_host_key_is_private_and_kept(tmp_path: Path) -> None:
    """The host key is made once, next to the keys file, mode 0600, and reused on the next start."""
    keys_file = authorized(tmp_path, Pair(tmp_path, "id"))
    first = service(keys_file).factory.privateKeys[b"ssh-ed25519"]
    host_key = tmp_path / HOST_KEY_NAME
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600
    second = service(keys_file).factory.privateKeys[b"ssh-ed25519"]
    assert first.fingerprint() == second.fingerprint()


def test_host_key_dir_is_created_private(tmp_path: Path) -> None:
    """A given host key directory is used (and created, mode 0700) instead of the keys file's."""
    keys_file = authorized(tmp_path, Pair(tmp_path, "id"))
    directory = tmp_path / "state" / "manhole"
    service(keys_file, host_key_dir=str(directory))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / HOST_KEY_NAME).exists() and not (tmp_path / HOST_KEY_NAME).exists()


def test_host_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    """Like sshd, the manhole refuses a host key that group or others may read."""
    keys_file = authorized(tmp_path, Pair(tmp_path, "id"))
    service(keys_file)
    (tmp_path / HOST_KEY_NAME).chmod(0o644)
    with pytest.raises(ManholeError, match="chmod 600"):
        service(keys_file)


# -- authentication and namespace, in-process ------------------------------------------------------
def test_authorized_key_logs_in_and_other_key_is_refused(tmp_path: Path) -> None:
    """A signature by a listed key yields an avatar; an unlisted key is refused and logged."""
    good, bad = Pair(tmp_path, "good"), Pair(tmp_path, "bad")
    svc = service(authorized(tmp_path, good))
    with capturedLogs() as events:
        interface, avatar, _logout = login(svc, good)
        refused = login(svc, bad, username=b"mallory")
    assert interface is IConchUser and avatar is not None
    assert isinstance(refused, Failure) and refused.check(UnauthorizedLogin)
    warnings = [e for e in events if e.get("user") == "mallory"]
    assert warnings and warnings[0]["fingerprint"] == bad.key.fingerprint(
        keys.FingerprintFormats.SHA256_BASE64)


def test_each_session_gets_a_fresh_namespace_with_show() -> None:
    """namespace() is called per session, so a session sees the objects of its own moment."""
    calls: list[int] = []

    def namespace() -> dict[str, Any]:
        calls.append(1)
        return {"registry": len(calls)}

    assert session_namespace(namespace)["registry"] == 1
    second = session_namespace(namespace)
    assert second["registry"] == 2 and second["show"] is show


def test_show_prints_public_attributes() -> None:
    """show(obj) prints public data attributes as name = repr, then methods; private ones never."""

    class Thing:
        def __init__(self) -> None:
            self.used = 4096
            self.name = "r0"
            self._secret = "hidden"

        def totals(self) -> dict[str, int]:
            return {}

        @property
        def broken(self) -> int:
            raise RuntimeError("torn down")

    out = io.StringIO()
    show(Thing(), file=out)
    assert out.getvalue().splitlines() == [
        "broken = <RuntimeError: torn down>",
        "name = 'r0'",
        "used = 4096",
        "methods: totals",
    ]


# -- real logins with OpenSSH's client, against the service in a subprocess ------------------------
needs_ssh = pytest.mark.skipif(
    not have("ssh"), reason="the OpenSSH client is not installed (apt package openssh-client)")


@pytest.fixture(scope="module")
def manhole(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A manhole service with a live ``counter`` running in its own reactor, in a subprocess."""
    tmp = tmp_path_factory.mktemp("manhole")
    good, bad = Pair(tmp, "good"), Pair(tmp, "bad")
    script = tmp / "server.py"
    script.write_text(SERVER)
    port = free_ports(1)[0]
    env = dict(os.environ)
    # The drbdproxy this test imported (the work tree, or the installed package).
    source = str(Path(drbdproxy.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    log = tmp / "server.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), f"tcp:{port}:interface=127.0.0.1",
             authorized(tmp, good)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        timer = threading.Timer(60, proc.kill)  # a hung start fails instead of hanging
        timer.start()
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        timer.cancel()
        assert ready == "READY\n", f"manhole server did not start: {log.read_text()}"
        yield {"port": port, "good": good, "bad": bad, "log": log}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def ssh(manhole: dict[str, Any], pair: Pair, script: str) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's client with ``script`` on stdin (no pty), using only ``pair``'s key."""
    return subprocess.run(
        ["ssh", "-T", "-F", "/dev/null", "-p", str(manhole["port"]), "-i", str(pair.private_path),
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30", "manhole@127.0.0.1"],
        input=script, capture_output=True, text=True, timeout=60)


def output_lines(stdout: str) -> list[str]:
    """The terminal output as plain lines: escape sequences removed."""
    return [_ESCAPE.sub("", line).strip() for line in stdout.splitlines()]


@needs_ssh
def test_ssh_login_evaluates_against_live_objects(manhole: dict[str, Any]) -> None:
    """With the right key, expressions run in the daemon and see (and change) its live counter."""
    first = ssh(manhole, manhole["good"], "counter.bump()\n")
    assert first.returncode == 0, first.stderr + manhole["log"].read_text()
    assert "42" in output_lines(first.stdout)
    second = ssh(manhole, manhole["good"], "counter.bump()\nshow(counter)\n")
    assert second.returncode == 0, second.stderr
    lines = output_lines(second.stdout)
    assert "43" in lines and "value = 43" in lines


@needs_ssh
def test_ssh_wrong_key_is_refused(manhole: dict[str, Any]) -> None:
    """A key that is not in the keys file gets no session: OpenSSH reports publickey denied."""
    result = ssh(manhole, manhole["bad"], "counter.bump()\n")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert "manhole login as manhole refused" in manhole["log"].read_text()
