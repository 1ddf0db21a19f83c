"""The versioned link handshake as pure state machines: frames in, bytes and outcomes out.

The client sends HELLO as the first frame of every link and nothing more until the server's answer:
WELCOME (accepted) or REJECT (refused; the server closes). With a link secret (``secret=``, the
``HMAC_AUTH`` feature, docs/link-protocol.md §8) an AUTH exchange follows the WELCOME: the client
proves the secret first, then the server, and only then is the link accepted on either end.

No sockets here. The calling convention, the same with and without a secret:

- Decode the link with ``handshake.decoder()``: a :class:`~drbdproxy.link.parser.LinkDecoder` for
  this end whose phases and frame limit match the handshake (a server with a secret needs one that
  expects AUTH after the HELLO).
- Client: write ``client.hello()`` once the connection is up. Pass every frame the decoder returns
  to ``outcome = client.receive(frame)`` until the outcome is final:

  - :class:`Pending`: write ``outcome.send`` (the client's AUTH), then wait for more frames;
  - :class:`Rejected`: the server refused the link and closes it;
  - :class:`Accepted`: the link is up; the frames after this one (even from the same feed) are
    the established link's.

- Server: pass every frame the decoder returns to ``reply, outcome = server.receive(frame)``
  until the outcome is final, and always write ``reply`` (WELCOME, REJECT or the server's AUTH;
  never empty). :class:`Pending` means "wait for the client's AUTH" (its ``send`` is always empty
  on the server: the reply travels in the tuple); :class:`Rejected` means close after writing the
  reply; :class:`Accepted` means the link is up.
- Either end: a :class:`LinkProtocolError` from ``receive()`` means drop the link, after writing
  ``error.frame().encode()`` unless ``error.from_peer``.

In a Twisted protocol, for each frame while the link is not yet accepted (keep the handshake
timeout running until Accepted: it now covers the AUTH exchange too)::

    if isinstance(handshake, ClientHandshake):
        outcome = handshake.receive(frame)
        reply = outcome.send if isinstance(outcome, Pending) else b""
    else:
        reply, outcome = handshake.receive(frame)
    if reply:
        transport.write(reply)
    if isinstance(outcome, Pending):
        return  # authenticating: wait for the peer's AUTH
    # Rejected: close; Accepted: the link is up, later frames are the link's

Without a secret on either end nothing changes on the wire: ``receive()`` never returns
:class:`Pending`, and HELLO and WELCOME carry the same bytes as before authentication existed.
A client with a secret requires ``HMAC_AUTH`` (it fails closed, HANDSHAKE_FAILED, against a server
that does not agree to it); a server with a secret refuses a HELLO without it (REJECT
AUTH_REQUIRED), and only asks its lookup once the client's proof is verified, so an
unauthenticated peer learns nothing about the configured connections.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from drbdproxy.link.auth import check_secret, make_proof, verify_proof
from drbdproxy.link.frames import (
    DATA_PREFIX_SIZE,
    IMPLEMENTED_FEATURES,
    MAX_DATA_CHUNK,
    MAX_FRAME_PAYLOAD,
    NONCE_SIZE,
    SESSION_SIZE,
    SUPPORTED_VERSIONS,
    CODEC_RAW,
    Auth,
    ErrorCode,
    ErrorFrame,
    Feature,
    Frame,
    Hello,
    LinkProtocolError,
    LinkRole,
    Reject,
    RejectReason,
    Side,
    Welcome,
)
from drbdproxy.link.parser import LinkDecoder

#: ``lookup(name, role, session)``: None to accept the link, or why it is refused. For a meta
#: link ``session`` is new (refuse DUPLICATE_META if the connection already has a live one);
#: for a bulk link it must name the live meta link's session (else NO_SUCH_SESSION). With a
#: link secret the server asks only after the client has proved the secret.
Lookup = Callable[[str, LinkRole, bytes], "RejectReason | None"]

_HMAC_AUTH = int(Feature.HMAC_AUTH)


def new_session() -> bytes:
    """A fresh random session id for a meta link."""
    return secrets.token_bytes(SESSION_SIZE)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def negotiate_version(local: tuple[int, int], peer: tuple[int, int]) -> int | None:
    """The highest version in both inclusive ranges, or None when they are disjoint."""
    best = min(local[1], peer[1])
    return best if best >= max(local[0], peer[0]) else None


@dataclass(frozen=True, slots=True)
class Accepted:
    """The link is up. Identical fields on both ends, except which nonce is whose."""

    version: int
    role: LinkRole
    name: str
    session: bytes
    peer_codecs: frozenset[int]  # codec ids the peer can decompress (always includes CODEC_RAW)
    peer_max_payload: int  # never send the peer a frame payload larger than this
    features: int  # agreed feature bits
    local_nonce: bytes
    peer_nonce: bytes

    @property
    def authenticated(self) -> bool:
        """Whether both ends proved the link secret (``HMAC_AUTH`` was agreed and completed)."""
        return bool(self.features & _HMAC_AUTH)

    @property
    def max_data_chunk(self) -> int:
        """Largest raw chunk per DATA frame that always fits the peer's frame limit (sent raw)."""
        return min(MAX_DATA_CHUNK, self.peer_max_payload - DATA_PREFIX_SIZE)


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused the link; it closes it after sending the REJECT."""

    reason: RejectReason | int
    message: str


@dataclass(frozen=True, slots=True)
class Pending:
    """The handshake goes on (link authentication): wait for the peer's next frame.

    ``send``: bytes this end must write now. On the client, its AUTH; on the server always empty,
    because ``ServerHandshake.receive`` returns its reply in the tuple.
    """

    send: bytes = b""


#: A final outcome; ``receive()`` returns one of these or :class:`Pending`.
Outcome = Accepted | Rejected


def _unexpected(message: str) -> LinkProtocolError:
    return LinkProtocolError(ErrorCode.UNEXPECTED_FRAME, message)


def _failed(message: str) -> LinkProtocolError:
    return LinkProtocolError(ErrorCode.HANDSHAKE_FAILED, message)


def _codec_set(codecs: Iterable[int]) -> frozenset[int]:
    return frozenset(int(c) for c in codecs) | {CODEC_RAW}


def _check_versions(versions: tuple[int, int]) -> tuple[int, int]:
    low, high = versions
    if not 1 <= low <= high <= 0xFFFF:
        raise ValueError(f"bad version range {versions}")
    return low, high


class ClientHandshake:
    """The dialling end: ``hello()`` once, then ``receive()`` the server's frames until the outcome
    is final (see the module docstring). ``secret``: the link secret; with one, the client offers
    and requires ``HMAC_AUTH``."""

    def __init__(
        self,
        name: str,
        role: LinkRole,
        session: bytes,
        codecs: Iterable[int],
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
        *,
        max_payload: int = MAX_FRAME_PAYLOAD,
        features: int = 0,
        nonce: bytes | None = None,
        secret: bytes | None = None,
    ) -> None:
        low, high = _check_versions(versions)
        self._secret = check_secret(secret)
        if self._secret is not None:
            features |= _HMAC_AUTH
        # Building the frame now validates every argument before anything is sent.
        self._hello = Hello(low, high, role, name, session, tuple(codecs), nonce or new_nonce(),
                            features, max_payload)  # fmt: skip
        self._sent = False
        self._welcome: Welcome | None = None  # once WELCOME agreed HMAC_AUTH
        self._pending: Accepted | None = None  # the outcome once the server's proof checks out
        self.outcome: Outcome | None = None

    @property
    def hello_frame(self) -> Hello:
        """The HELLO this client sends (its session, nonce, versions, codecs)."""
        return self._hello

    @property
    def authenticates(self) -> bool:
        """Whether this end has a link secret (and so requires ``HMAC_AUTH``)."""
        return self._secret is not None

    def decoder(self) -> LinkDecoder:
        """The decoder for this link's received bytes, matching this handshake."""
        return LinkDecoder(Side.CLIENT, self._hello.max_payload, auth=self.authenticates)

    def hello(self) -> bytes:
        """The HELLO frame: the first bytes the client writes on the link."""
        if self._sent:
            raise RuntimeError("HELLO already sent")
        self._sent = True
        return self._hello.encode()

    def receive(self, frame: Frame) -> Pending | Outcome:
        """Handle a server frame: Pending (write its ``send``), Accepted, Rejected, or raise
        LinkProtocolError."""
        if not self._sent or self.outcome is not None:
            raise _unexpected(f"{frame.TYPE.name} outside the handshake")
        if isinstance(frame, ErrorFrame):
            raise LinkProtocolError(frame.code, frame.message, from_peer=True)
        if isinstance(frame, Reject):
            self.outcome = Rejected(frame.reason, frame.message)
            return self.outcome
        if self._pending is None:
            if not isinstance(frame, Welcome):
                raise _unexpected(f"expected WELCOME or REJECT, got {frame.TYPE.name}")
            return self._welcomed(frame)
        if not isinstance(frame, Auth):
            raise _unexpected(f"expected AUTH or REJECT, got {frame.TYPE.name}")
        assert self._secret is not None and self._welcome is not None
        if not verify_proof(self._secret, Side.SERVER, self._hello, self._welcome, frame.proof):
            raise LinkProtocolError(
                ErrorCode.AUTH_FAILED,
                "the server's AUTH proof is wrong: it does not know our link secret",
            )
        self.outcome = self._pending
        return self.outcome

    def _welcomed(self, welcome: Welcome) -> Pending | Accepted:
        accepted = self._accept(welcome)
        if not accepted.authenticated:
            if self._secret is not None:  # fail closed: never run a link the secret does not guard
                raise _failed("a link secret is configured here but the server did not agree to"
                              " HMAC_AUTH (has it no --link-secret?): refusing the unauthenticated"
                              " link")  # fmt: skip
            self.outcome = accepted
            return accepted
        if self._secret is None:
            raise _failed("the server requires HMAC_AUTH but no link secret is configured here")
        self._welcome, self._pending = welcome, accepted
        proof = make_proof(self._secret, Side.CLIENT, self._hello, welcome)
        return Pending(Auth(proof).encode())

    def _accept(self, welcome: Welcome) -> Accepted:
        hello = self._hello
        offered = f"{hello.version_min}..{hello.version_max}"
        if not hello.version_min <= welcome.version <= hello.version_max:
            raise _failed(f"server chose version {welcome.version}, we offered {offered}")
        if welcome.session != hello.session:
            raise _failed("WELCOME names another session")
        if welcome.features & ~hello.features:
            raise _failed(f"server agreed to features 0x{welcome.features:x} we did not offer")
        return Accepted(
            version=welcome.version,
            role=hello.role,
            name=hello.name,
            session=hello.session,
            peer_codecs=_codec_set(welcome.codecs),
            peer_max_payload=welcome.max_payload,
            features=welcome.features,
            local_nonce=hello.nonce,
            peer_nonce=welcome.nonce,
        )


class ServerHandshake:
    """The accepting end: ``receive()`` the client's frames, write each reply, act on the outcome
    (see the module docstring). ``secret``: the link secret; with one, the server requires
    ``HMAC_AUTH``, without one it never agrees to it."""

    def __init__(
        self,
        lookup: Lookup,
        codecs: Iterable[int],
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
        *,
        max_payload: int = MAX_FRAME_PAYLOAD,
        features: int = 0,
        nonce: bytes | None = None,
        secret: bytes | None = None,
    ) -> None:
        self._lookup = lookup
        self._codecs = tuple(codecs)
        self._versions = _check_versions(versions)
        self._max_payload = max_payload
        self._secret = check_secret(secret)
        features &= IMPLEMENTED_FEATURES  # never agree to what we cannot do
        if self._secret is None:
            self._features = features & ~_HMAC_AUTH  # no secret: nothing to prove
        else:
            self._features = features | _HMAC_AUTH
        self._nonce = nonce or new_nonce()
        # A throw-away WELCOME validates codecs, nonce and limits before any client shows up.
        Welcome(self._versions[0], bytes(SESSION_SIZE), self._codecs, self._nonce, 0, max_payload)
        self._hello: Hello | None = None  # once a HELLO was answered with an HMAC_AUTH WELCOME
        self._welcome: Welcome | None = None
        self.outcome: Outcome | None = None

    @property
    def authenticates(self) -> bool:
        """Whether this end has a link secret (and so requires ``HMAC_AUTH``)."""
        return self._secret is not None

    def decoder(self) -> LinkDecoder:
        """The decoder for this link's received bytes, matching this handshake."""
        return LinkDecoder(Side.SERVER, self._max_payload, auth=self.authenticates)

    def receive(self, frame: Frame) -> tuple[bytes, Pending | Outcome]:
        """Answer the client: (WELCOME bytes, Accepted or Pending), (REJECT bytes, Rejected), or
        after its AUTH (our AUTH bytes, Accepted); raise LinkProtocolError on anything else."""
        if self.outcome is not None:
            raise _unexpected(f"{frame.TYPE.name} outside the handshake")
        if isinstance(frame, ErrorFrame):
            raise LinkProtocolError(frame.code, frame.message, from_peer=True)
        reply: Welcome | Reject | Auth
        if self._welcome is None:
            if not isinstance(frame, Hello):
                raise _unexpected(f"expected HELLO, got {frame.TYPE.name}")
            reply, outcome = self._answer(frame)
        else:
            if not isinstance(frame, Auth):
                raise _unexpected(f"expected AUTH, got {frame.TYPE.name}")
            reply, outcome = self._authenticate(frame)
        if not isinstance(outcome, Pending):
            self.outcome = outcome
        return reply.encode(), outcome

    def _answer(self, hello: Hello) -> tuple[Welcome | Reject, Pending | Outcome]:
        # Versions first: a HELLO from an incompatible version is not worth a lookup.
        version = negotiate_version(self._versions, (hello.version_min, hello.version_max))
        if version is None:
            low, high = self._versions
            theirs = f"{hello.version_min}..{hello.version_max}"
            message = f"version mismatch: client speaks {theirs}, server {low}..{high}"
            return self._reject(RejectReason.VERSION_MISMATCH, message)
        features = hello.features & self._features
        welcome = Welcome(version, hello.session, self._codecs, self._nonce, features,
                          self._max_payload)  # fmt: skip
        if self._secret is None:
            refused = self._refused(hello)
            return refused or (welcome, self._accepted(hello, welcome))
        if not features & _HMAC_AUTH:
            message = ("authentication required: this proxy has a link secret; configure the same"
                       " --link-secret on both proxies")  # fmt: skip
            return self._reject(RejectReason.AUTH_REQUIRED, message)
        # The lookup waits for the client's proof: nothing is decided for an unknown peer.
        self._hello, self._welcome = hello, welcome
        return welcome, Pending()

    def _authenticate(self, auth: Auth) -> tuple[Auth | Reject, Outcome]:
        hello, welcome = self._hello, self._welcome
        assert self._secret is not None and hello is not None and welcome is not None
        if not verify_proof(self._secret, Side.CLIENT, hello, welcome, auth.proof):
            message = "authentication failed: wrong AUTH proof (is the link secret the same?)"
            return self._reject(RejectReason.AUTH_FAILED, message)
        refused = self._refused(hello)
        if refused is not None:
            return refused
        proof = make_proof(self._secret, Side.SERVER, hello, welcome)
        return Auth(proof), self._accepted(hello, welcome)

    def _refused(self, hello: Hello) -> tuple[Reject, Rejected] | None:
        """The lookup's REJECT, or None when it accepts the link."""
        reason = self._lookup(hello.name, hello.role, hello.session)
        if reason is None:
            return None
        reason = RejectReason(reason)
        what = reason.name.lower().replace("_", " ")
        link = f"{hello.role.name.lower()} link for {hello.name!r}"
        return self._reject(reason, f"{what}: {link}")

    def _accepted(self, hello: Hello, welcome: Welcome) -> Accepted:
        return Accepted(
            version=welcome.version,
            role=hello.role,
            name=hello.name,
            session=hello.session,
            peer_codecs=_codec_set(hello.codecs),
            peer_max_payload=hello.max_payload,
            features=welcome.features,
            local_nonce=self._nonce,
            peer_nonce=hello.nonce,
        )

    @staticmethod
    def _reject(reason: RejectReason, message: str) -> tuple[Reject, Rejected]:
        return Reject(reason, message), Rejected(reason, message)
