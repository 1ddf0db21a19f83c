"""--link-secret: proxies that share the secret link up; a proxy without it never gets to send."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from daemon import Daemon, ProxyPair, wait_until
from helpers import tool
from drbdproxy.link import (
    Hello,
    LinkDecoder,
    LinkRole,
    Reject,
    RejectReason,
    Side,
    new_nonce,
    new_session,
)


def secret_file(tmp_path, name: str, value: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(value + b"\n")
    os.chmod(path, 0o600)
    return str(path)


def test_proxies_sharing_a_secret_replicate(tmp_path, sims):
    """Both daemons with the same secret: links come up, DRBD replicates, verified."""
    secret = secret_file(tmp_path, "secret", os.urandom(32).hex().encode())
    pair = ProxyPair(tmp_path, "set compression {name} on", alice_args=("--link-secret", secret),
                     bob_args=("--link-secret", secret))
    try:
        pair.wait_linked()
        p, s = pair.replicate(sims, "--size", "16M")
    finally:
        pair.stop()


@pytest.mark.parametrize("bob_secret", [b"another good secret", None])
def test_a_peer_without_the_secret_never_links(tmp_path, bob_secret):
    """A wrong secret, or none, on either side: the link fails with the reason logged."""
    good = secret_file(tmp_path, "good", b"the right secret")
    bob_args = ("--link-secret", secret_file(tmp_path, "bad", bob_secret)) if bob_secret else ()
    pair = ProxyPair(tmp_path, alice_args=("--link-secret", good), bob_args=bob_args)
    try:
        logs = lambda: "".join(pair.alice.log) + "".join(pair.bob.log)  # noqa: E731
        wait_until(lambda: "failed before its handshake completed" in logs()
                   or "refused a link" in logs(), "a refused link, with its reason")
        assert pair.state(pair.alice) == pair.state(pair.bob) == "Connecting"
    finally:
        pair.stop()


def test_an_unauthenticated_hello_gets_auth_required(tmp_path):
    """A client that does not offer authentication is rejected before any lookup."""
    secret = secret_file(tmp_path, "secret", b"s3cret of 16+ bytes")
    pair = ProxyPair(tmp_path, alice_args=("--link-secret", secret), bob_args=("--link-secret", secret))
    try:
        port = pair.bob_out if pair.alice_out < pair.bob_out else pair.alice_out
        hello = Hello(1, 1, LinkRole.META, "r0-x-y", new_session(), (0,), new_nonce())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(hello.encode())
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        frames = LinkDecoder(Side.CLIENT).feed(reply)
        assert isinstance(frames[0], Reject) and frames[0].reason == RejectReason.AUTH_REQUIRED
    finally:
        pair.stop()


def test_a_secret_file_readable_by_others_is_refused(tmp_path):
    """Like ssh with its keys, the daemon refuses a secret others can read: exit 1 and why."""
    import subprocess

    from helpers import tool

    path = tmp_path / "loose"
    path.write_bytes(b"secret\n")
    os.chmod(path, 0o644)
    out = subprocess.run([tool("twistd"), "-n", "--pidfile=", "drbd-proxy", "--control",
                          f"unix:{tmp_path}/x.ctl", "--link-secret", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--link-secret" in out.stdout + out.stderr


def test_a_secret_shorter_than_16_bytes_is_refused_at_start(tmp_path):
    """A 15-byte secret stops the daemon before it listens: exit 1 and one line saying why and
    how to make a good one, no traceback."""
    short = secret_file(tmp_path, "short", b"x" * 15)
    out = subprocess.run([tool("twistd"), "-n", "--pidfile=", "drbd-proxy", "--control",
                          f"unix:{tmp_path}/x.ctl", "--link-secret", short],
                         capture_output=True, text=True, timeout=60)
    said = (out.stdout + out.stderr).strip()
    assert out.returncode == 1
    assert said.splitlines() == [f"drbd-proxy: --link-secret: link secret file {short} holds a secret of"
                                 " 15 bytes, fewer than 16: write a random one, e.g. head -c 32"
                                 " /dev/urandom | base64"]
    assert not (tmp_path / "x.ctl").exists()


def test_a_secret_of_16_bytes_is_accepted(tmp_path):
    """Exactly 16 bytes (plus the newline echo writes) is long enough: the daemon starts."""
    daemon = Daemon(tmp_path, "sixteen", "--link-secret", secret_file(tmp_path, "ok", b"y" * 16))
    try:
        assert daemon.ctl("show", "version", check=True).stdout.startswith("drbdproxy ")
    finally:
        daemon.stop()
