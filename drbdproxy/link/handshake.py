"""The versioned link handshake as pure state machines: frames in, bytes and outcomes out.

The client sends HELLO as the first frame of every link and nothing more until the server's answer:
WELCOME (accepted) or REJECT (refused; the server closes). No sockets here: the caller feeds the
first frame its :class:`~drbdproxy.link.parser.LinkDecoder` returns to ``receive()``, writes the
bytes the machine returns, and on :class:`LinkProtocolError` sends ``error.frame()`` and drops the
link.

Extension point for authentication: HELLO and WELCOME already carry a 32-byte nonce each, and the
``Feature.HMAC_AUTH`` bit and the AUTH frame type are reserved. Version 1 never agrees to the
feature (a server masks the offered features with ``IMPLEMENTED_FEATURES``), so auth can be added
later as an AUTH exchange between WELCOME and the first stream frame without changing these frames.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .frames import (
    DATA_PREFIX_SIZE,
    IMPLEMENTED_FEATURES,
    MAX_DATA_CHUNK,
    MAX_FRAME_PAYLOAD,
    NONCE_SIZE,
    SESSION_SIZE,
    SUPPORTED_VERSIONS,
    CODEC_RAW,
    ErrorCode,
    ErrorFrame,
    Frame,
    Hello,
    LinkProtocolError,
    LinkRole,
    Reject,
    RejectReason,
    Welcome,
)

#: ``lookup(name, role, session)``: None to accept the link, or why it is refused. For a control
#: link ``session`` is new (refuse DUPLICATE_CONTROL if the connection already has a live one);
#: for a bulk link it must name the live control link's session (else NO_SUCH_SESSION).
Lookup = Callable[[str, LinkRole, bytes], "RejectReason | None"]


def new_session() -> bytes:
    """A fresh random session id for a control link."""
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
    def max_data_chunk(self) -> int:
        """Largest raw chunk per DATA frame that always fits the peer's frame limit (sent raw)."""
        return min(MAX_DATA_CHUNK, self.peer_max_payload - DATA_PREFIX_SIZE)


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused the link; it closes it after sending the REJECT."""

    reason: RejectReason | int
    message: str


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
    """The dialling end: ``hello()`` once, then ``receive()`` the server's first frame."""

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
    ) -> None:
        low, high = _check_versions(versions)
        # Building the frame now validates every argument before anything is sent.
        self._hello = Hello(low, high, role, name, session, tuple(codecs), nonce or new_nonce(),
                            features, max_payload)  # fmt: skip
        self._sent = False
        self.outcome: Outcome | None = None

    @property
    def hello_frame(self) -> Hello:
        """The HELLO this client sends (its session, nonce, versions, codecs)."""
        return self._hello

    def hello(self) -> bytes:
        """The HELLO frame: the first bytes the client writes on the link."""
        if self._sent:
            raise RuntimeError("HELLO already sent")
        self._sent = True
        return self._hello.encode()

    def receive(self, frame: Frame) -> Outcome:
        """Handle the server's answer: Accepted, Rejected, or LinkProtocolError."""
        if not self._sent or self.outcome is not None:
            raise _unexpected(f"{frame.TYPE.name} outside the handshake")
        if isinstance(frame, Welcome):
            self.outcome = self._accept(frame)
        elif isinstance(frame, Reject):
            self.outcome = Rejected(frame.reason, frame.message)
        elif isinstance(frame, ErrorFrame):
            raise LinkProtocolError(frame.code, frame.message, from_peer=True)
        else:
            raise _unexpected(f"expected WELCOME or REJECT, got {frame.TYPE.name}")
        return self.outcome

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
    """The accepting end: ``receive()`` the client's HELLO, write the reply, act on the outcome."""

    def __init__(
        self,
        lookup: Lookup,
        codecs: Iterable[int],
        versions: tuple[int, int] = SUPPORTED_VERSIONS,
        *,
        max_payload: int = MAX_FRAME_PAYLOAD,
        features: int = 0,
        nonce: bytes | None = None,
    ) -> None:
        self._lookup = lookup
        self._codecs = tuple(codecs)
        self._versions = _check_versions(versions)
        self._max_payload = max_payload
        self._features = features & IMPLEMENTED_FEATURES  # never agree to what we cannot do
        self._nonce = nonce or new_nonce()
        # A throw-away WELCOME validates codecs, nonce and limits before any client shows up.
        Welcome(self._versions[0], bytes(SESSION_SIZE), self._codecs, self._nonce, 0, max_payload)
        self.outcome: Outcome | None = None

    def receive(self, frame: Frame) -> tuple[bytes, Outcome]:
        """Answer the HELLO: (WELCOME bytes, Accepted) or (REJECT bytes, Rejected)."""
        if self.outcome is not None:
            raise _unexpected(f"{frame.TYPE.name} outside the handshake")
        if isinstance(frame, ErrorFrame):
            raise LinkProtocolError(frame.code, frame.message, from_peer=True)
        if not isinstance(frame, Hello):
            raise _unexpected(f"expected HELLO, got {frame.TYPE.name}")
        reply, self.outcome = self._answer(frame)
        return reply.encode(), self.outcome

    def _answer(self, hello: Hello) -> tuple[Welcome | Reject, Outcome]:
        # Versions first: a HELLO from an incompatible version is not worth a lookup.
        version = negotiate_version(self._versions, (hello.version_min, hello.version_max))
        if version is None:
            low, high = self._versions
            theirs = f"{hello.version_min}..{hello.version_max}"
            message = f"version mismatch: client speaks {theirs}, server {low}..{high}"
            return self._reject(RejectReason.VERSION_MISMATCH, message)
        reason = self._lookup(hello.name, hello.role, hello.session)
        if reason is not None:
            reason = RejectReason(reason)
            what = reason.name.lower().replace("_", " ")
            link = f"{hello.role.name.lower()} link for {hello.name!r}"
            return self._reject(reason, f"{what}: {link}")
        features = hello.features & self._features
        welcome = Welcome(version, hello.session, self._codecs, self._nonce, features,
                          self._max_payload)  # fmt: skip
        accepted = Accepted(
            version=version,
            role=hello.role,
            name=hello.name,
            session=hello.session,
            peer_codecs=_codec_set(hello.codecs),
            peer_max_payload=hello.max_payload,
            features=features,
            local_nonce=self._nonce,
            peer_nonce=hello.nonce,
        )
        return welcome, accepted

    @staticmethod
    def _reject(reason: RejectReason, message: str) -> tuple[Reject, Rejected]:
        return Reject(reason, message), Rejected(reason, message)
