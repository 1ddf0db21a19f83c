"""Shared-secret link authentication (feature ``HMAC_AUTH``, ``docs/link-protocol.md`` §8).

Sans-IO helpers for :mod:`drbdproxy.link.handshake`: the exact HMAC-SHA256 proof each end sends in
its AUTH frame, and :func:`load_secret` for ``--link-secret FILE``.

A proof is ``HMAC-SHA256(secret, input)`` where ``input`` (:func:`proof_input`, 139 bytes) is::

    label          24  b"drbdproxy-link-v1 client" or b"drbdproxy-link-v1 server" (the prover)
    client nonce   32  from HELLO
    server nonce   32  from WELCOME
    session        16  from HELLO (echoed in WELCOME)
    role           u8  from HELLO (1 control, 2 bulk)
    version        u16 the agreed version, from WELCOME
    transcript     32  SHA-256(HELLO frame || WELCOME frame), headers included, as sent

The two fresh nonces make every proof unique to its link (no replay), the label makes a client's
proof useless as a server's and the other way round (no reflection), and the transcript hash binds
everything else both ends agreed on (features, codecs, limits, the name), so nobody in between can
change those without the proofs failing.

There is no key id: rotating the secret needs no wire change, because a verifier may simply try
each secret it accepts (``hmac.compare_digest`` per candidate) and prove with the one that matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

from drbdproxy.link.frames import AUTH_PROOF_SIZE, Hello, Side, Welcome

LABEL_SIZE = 24
LABELS = {
    Side.CLIENT: b"drbdproxy-link-v1 client",
    Side.SERVER: b"drbdproxy-link-v1 server",
}
assert all(len(label) == LABEL_SIZE for label in LABELS.values())
#: Bytes of the HMAC input: label, two nonces, session, role, version, transcript hash.
PROOF_INPUT_SIZE = LABEL_SIZE + 32 + 32 + 16 + 1 + 2 + 32
#: Fewest bytes :func:`load_secret` accepts: anyone who records one AUTH exchange can test guesses
#: offline, so a short secret (a word, a PIN) is no protection.
MIN_SECRET_SIZE = 16


def check_secret(secret: bytes | bytearray | None) -> bytes | None:
    """``secret`` as immutable bytes (None stays None); an empty or non-bytes secret is refused."""
    if secret is None:
        return None
    if not isinstance(secret, (bytes, bytearray)):
        raise ValueError("the link secret must be bytes")
    if not secret:
        raise ValueError("the link secret is empty")
    return bytes(secret)


def transcript_hash(hello: Hello, welcome: Welcome) -> bytes:
    """SHA-256 of the HELLO and WELCOME frames exactly as they crossed the link.

    Decoded HELLO and WELCOME frames re-encode to the very bytes that were received (every field,
    extensions included, is kept verbatim), so both ends compute the same value.
    """
    return hashlib.sha256(hello.encode() + welcome.encode()).digest()


def proof_input(prover: Side, hello: Hello, welcome: Welcome) -> bytes:
    """The exact message ``prover`` (the end sending the AUTH frame) authenticates."""
    return b"".join((
        LABELS[Side(prover)],
        hello.nonce,
        welcome.nonce,
        hello.session,
        bytes((hello.role,)),
        welcome.version.to_bytes(2, "big"),
        transcript_hash(hello, welcome),
    ))  # fmt: skip


def make_proof(secret: bytes, prover: Side, hello: Hello, welcome: Welcome) -> bytes:
    """The 32-byte AUTH payload ``prover`` sends on the link that HELLO and WELCOME set up."""
    proof = hmac.new(secret, proof_input(prover, hello, welcome), hashlib.sha256).digest()
    assert len(proof) == AUTH_PROOF_SIZE
    return proof


def verify_proof(secret: bytes, prover: Side, hello: Hello, welcome: Welcome, proof: bytes) -> bool:
    """Whether ``proof`` is the one ``prover`` must send (constant-time comparison)."""
    return hmac.compare_digest(make_proof(secret, prover, hello, welcome), proof)


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """The link secret in the file ``path`` (``--link-secret FILE``).

    The secret is the file's bytes, less one trailing line ending (``\\n`` or ``\\r\\n``), so
    ``echo`` or an editor may write it. Like an ssh private key, the file must be a regular file
    that neither group nor others may access (``chmod 600``).

    The secret must be at least :data:`MIN_SECRET_SIZE` bytes long (``head -c 32 /dev/urandom |
    base64`` writes 44).

    :raises ValueError: with a one-line message for the user: the file cannot be read, is not a
        regular file, is accessible by group or others, or holds an empty or too short secret.
    """
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"link secret file {path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise ValueError(f"link secret file {path} is accessible by group or others "
                                 f"(mode {mode:04o}): chmod 600 it")  # fmt: skip
            secret = f.read()
    except OSError as e:
        raise ValueError(f"cannot read link secret file {path}: {e.strerror or e}") from None
    if secret.endswith(b"\n"):
        secret = secret[:-2] if secret.endswith(b"\r\n") else secret[:-1]
    if not secret:
        raise ValueError(f"link secret file {path} holds an empty secret")
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"link secret file {path} holds a secret of {len(secret)} bytes, fewer than"
                         f" {MIN_SECRET_SIZE}: write a random one, e.g. head -c 32 /dev/urandom | base64")
    return secret
