"""Link frames: the 12-byte header, every frame type as a frozen dataclass, and their encodings.

Each frame class validates itself on construction (so a decoded frame is always well formed, and
an encoder can never emit a malformed one) and has ``encode() -> bytes`` and
``from_payload(stream, payload)``. ``docs/link-protocol.md`` is the normative description; the
field layouts here must match it byte for byte.
"""

from __future__ import annotations

import struct
from crc32c import crc32c as _crc32c
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, Self, TypeVar

MAGIC = 0x4450  # "DP"
FRAME_HEADER_SIZE = 12
frame_header_size = FRAME_HEADER_SIZE  # the name the integration brief uses

PROTOCOL_VERSION = 1
#: (min, max) protocol versions this implementation speaks.
SUPPORTED_VERSIONS = (1, 1)

#: Largest raw (uncompressed) chunk one DATA frame may carry: bounds every decompression.
def data_checksum(raw: bytes | bytearray | memoryview) -> int:
    """The CRC-32C (Castagnoli) of a DATA frame's raw bytes.

    DRBD's own favourite integrity algorithm, and hardware-accelerated (SSE 4.2): about 25 GB/s
    here against zlib CRC-32's 4 GB/s, so checking every relayed byte costs next to nothing.
    """
    return _crc32c(raw)


MAX_DATA_CHUNK = 1 << 20
#: codec u8 | raw_length u32 | crc32c u32, before the (compressed) DATA payload.
DATA_PREFIX_SIZE = 9
#: Default largest frame payload a decoder accepts: a raw MAX_DATA_CHUNK plus its prefix, with room.
MAX_FRAME_PAYLOAD = MAX_DATA_CHUNK + 64
#: A peer may advertise a smaller limit, but never below this (handshake and control frames fit).
MIN_FRAME_PAYLOAD_LIMIT = 4096
#: HELLO and WELCOME arrive before the peer is known: keep what it can make us buffer small.
MAX_HANDSHAKE_PAYLOAD = 4096
#: UTF-8 bytes of a human-readable message in REJECT, CLOSE, GOAWAY, ERROR (encoders truncate).
MAX_MESSAGE = 1024
MAX_NAME = 255
SESSION_SIZE = 16
NONCE_SIZE = 32
#: An AUTH frame's payload: one HMAC-SHA256 proof (docs/link-protocol.md §8).
AUTH_PROOF_SIZE = 32
MAX_STREAM_ID = 0xFFFFFFFF
#: The one codec id the link itself knows: raw bytes, always supported, never advertised. The
#: other ids are opaque here; ``drbdproxy.codecs.CodecId`` assigns them.
CODEC_RAW = 0

HEADER = struct.Struct(">HBBII")
_DATA_HEADER = struct.Struct(">HBBIIBII")  # frame header + DATA prefix, packed in one call
DATA_PREFIX = struct.Struct(">BII")
_HELLO_FIXED = struct.Struct(">HHBII16s32sB")  # ... up to and including name_length
_WELCOME_FIXED = struct.Struct(">HII16s32sB")  # ... up to and including codec_count
_CODE = struct.Struct(">H")
_PING = struct.Struct(">QQ")
_OPEN = struct.Struct(">BB")
_DISCARD = struct.Struct(">BIB")


class FrameType(IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    REJECT = 0x03
    AUTH = 0x04  # HMAC challenge-response proof; only when HMAC_AUTH was agreed (§8)
    PING = 0x10
    PONG = 0x11
    OPEN = 0x20
    DATA = 0x21
    CLOSE = 0x22
    DISCARD = 0x23  # on the meta link: a stream of the other link is closed (§5.5)
    GOAWAY = 0x30
    ERROR = 0x31


#: Frames that belong to a stream (non-zero stream id); all others carry stream id 0.
STREAM_FRAME_TYPES = frozenset({FrameType.OPEN, FrameType.DATA, FrameType.CLOSE})


class LinkRole(IntEnum):
    META = 1  # handshake, heartbeats, DRBD meta-socket streams
    BULK = 2  # DRBD data-socket streams (and streams of unknown kind)


class Side(IntEnum):
    CLIENT = 1  # dialled the link; allocates odd stream ids
    SERVER = 2  # accepted the link; allocates even stream ids


class StreamKind(IntEnum):
    UNKNOWN = 0
    DATA = 1
    META = 2


class Feature(IntFlag):
    HMAC_AUTH = 1 << 0  # HMAC-SHA256 challenge-response via AUTH frames (shared link secret)


#: Feature bits this implementation can actually honour; a server only ever agrees to these.
#: HMAC_AUTH is offered and agreed exactly when the end has a link secret (see handshake.py).
IMPLEMENTED_FEATURES = int(Feature.HMAC_AUTH)


class RejectReason(IntEnum):
    UNKNOWN_CONNECTION = 1
    VERSION_MISMATCH = 2
    DUPLICATE_META = 3
    NO_SUCH_SESSION = 4
    BUSY = 5
    AUTH_REQUIRED = 6  # the server has a link secret; the HELLO did not offer HMAC_AUTH
    AUTH_FAILED = 7  # the client's AUTH proof is wrong (another secret, a replay, a reflection)


class CloseReason(IntEnum):
    EOF = 0  # DRBD closed its socket
    CONNECT_FAILED = 1  # the far proxy could not connect to its DRBD
    RESET = 2  # a socket error on the DRBD socket
    ABORTED = 3  # the proxy gave up on the stream (delivery timeout, connection removed)
    REFUSED = 4  # the receiver of OPEN will not take the stream (too many streams or connects)


class GoAwayReason(IntEnum):
    SHUTDOWN = 1
    CONNECTION_REMOVED = 2
    RESTART = 3
    STREAM_IDS_EXHAUSTED = 4


class ErrorCode(IntEnum):
    PROTOCOL_ERROR = 1  # bad magic, non-zero flags, malformed payload
    FRAME_TOO_LARGE = 2
    UNKNOWN_FRAME_TYPE = 3
    UNEXPECTED_FRAME = 4  # a known frame not allowed in the current phase
    STREAM_ERROR = 5  # a stream id that breaks the allocation rules
    DATA_CORRUPT = 6  # decompression failed, or raw length / crc32 mismatch
    HANDSHAKE_FAILED = 7  # a WELCOME that does not answer our HELLO
    TIMEOUT = 8  # nothing received within ping-timeout
    INTERNAL_ERROR = 9
    AUTH_FAILED = 10  # the server's AUTH proof is wrong (sent by the client; §8)


class LinkProtocolError(Exception):
    """The peer broke the link protocol (or reported that we did, ``from_peer``): drop the link."""

    def __init__(self, code: int, message: str, *, from_peer: bool = False) -> None:
        super().__init__(message)
        self.code = _known(ErrorCode, code, 0xFFFF)
        self.message = message
        self.from_peer = from_peer

    def frame(self) -> ErrorFrame:
        """The ERROR frame to send before dropping the link (pointless when ``from_peer``)."""
        return ErrorFrame(self.code, self.message)

    def __str__(self) -> str:
        who = "peer reported" if self.from_peer else "link protocol error"
        return f"{who} {_name(self.code)}: {self.message}"


E = TypeVar("E", bound=IntEnum)


def _known(enum: type[E], value: int, limit: int) -> E | int:
    """An enum member for a known code; unknown codes in range stay plain ints (forward compat)."""
    try:
        return enum(value)
    except ValueError:
        if not 0 <= value <= limit:
            raise ValueError(f"{enum.__name__} code {value} out of range") from None
        return value


def _name(code: int) -> str:
    return code.name if isinstance(code, IntEnum) else str(code)


def _set(obj: object, attr: str, value: object) -> None:
    object.__setattr__(obj, attr, value)  # normalising a field of a frozen dataclass


def _check_uint(what: str, value: int, limit: int, low: int = 0) -> None:
    if not low <= value <= limit:
        raise ValueError(f"{what} {value} outside {low}..{limit}")


def _check_codecs(codecs: tuple[int, ...]) -> None:
    if len(set(codecs)) != len(codecs):
        raise ValueError(f"duplicate codec ids in {codecs}")
    for c in codecs:
        _check_uint("codec id", c, 0xFF)


def _message_bytes(message: str) -> bytes:
    """UTF-8, cut to MAX_MESSAGE bytes on a character boundary (messages are diagnostics)."""
    raw = message.encode("utf-8")
    if len(raw) > MAX_MESSAGE:
        raw = raw[:MAX_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    return raw


def _message_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def encode_header(ftype: int, stream: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, ftype, 0, stream, length)


def encode_data_header(
    stream: int, codec: int, raw_length: int, crc32c: int, payload_length: int
) -> bytes:
    """Frame header plus DATA prefix (21 bytes) for a payload the caller sends separately.

    The hot path: ``transport.writeSequence([encode_data_header(...), payload])`` never copies the
    payload. The caller guarantees the arguments satisfy :class:`Data`'s rules.
    """
    length = DATA_PREFIX_SIZE + payload_length
    return _DATA_HEADER.pack(MAGIC, FrameType.DATA, 0, stream, length, codec, raw_length, crc32c)


class _Frame:
    """Shared encode() for frames that build their payload in ``_payload()``."""

    __slots__ = ()
    TYPE: ClassVar[FrameType]

    def _payload(self) -> bytes:
        raise NotImplementedError

    def _stream_id(self) -> int:
        return 0

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Self:
        """Decode the payload; raises ValueError (or struct.error) when it is malformed."""
        raise NotImplementedError

    def encode(self) -> bytes:
        payload = self._payload()
        return encode_header(self.TYPE, self._stream_id(), len(payload)) + payload


class _LinkFrame(_Frame):
    """A frame about the link itself: always stream id 0."""

    __slots__ = ()

    @property
    def stream(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class Hello(_LinkFrame):
    """Client -> server, first frame of every link."""

    version_min: int
    version_max: int
    role: LinkRole
    name: str
    session: bytes
    codecs: tuple[int, ...]
    nonce: bytes
    features: int = 0
    max_payload: int = MAX_FRAME_PAYLOAD
    extensions: bytes = b""  # ignored by version 1; room for later versions' fields

    TYPE: ClassVar[FrameType] = FrameType.HELLO

    def __post_init__(self) -> None:
        _check_uint("version_min", self.version_min, 0xFFFF, 1)
        _check_uint("version_max", self.version_max, 0xFFFF, self.version_min)
        _set(self, "role", LinkRole(self.role))
        name_len = len(self.name.encode("utf-8"))
        _check_uint("connection name length", name_len, MAX_NAME, 1)
        _check_size("session", self.session, SESSION_SIZE)
        _check_size("nonce", self.nonce, NONCE_SIZE)
        _set(self, "codecs", tuple(int(c) for c in self.codecs))
        _check_codecs(self.codecs)
        _check_uint("features", self.features, 0xFFFFFFFF)
        _check_uint("max_payload", self.max_payload, 0xFFFFFFFF, MIN_FRAME_PAYLOAD_LIMIT)
        size = _HELLO_FIXED.size + name_len + 1 + len(self.codecs) + len(self.extensions)
        _check_uint("HELLO payload size", size, MAX_HANDSHAKE_PAYLOAD)

    def _payload(self) -> bytes:
        name = self.name.encode("utf-8")
        fixed = _HELLO_FIXED.pack(
            self.version_min, self.version_max, self.role, self.features, self.max_payload,
            self.session, self.nonce, len(name),
        )  # fmt: skip
        codecs = bytes((len(self.codecs), *self.codecs))
        return b"".join((fixed, name, codecs, self.extensions))

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Hello:
        fixed = _HELLO_FIXED.unpack_from(payload)
        vmin, vmax, role, features, max_payload, session, nonce, name_len = fixed
        pos = _HELLO_FIXED.size
        name = _take(payload, pos, name_len, "HELLO name")
        pos += name_len
        (count,) = _take(payload, pos, 1, "HELLO codec count")
        codecs = _take(payload, pos + 1, count, "HELLO codecs")
        rest = payload[pos + 1 + count :]
        return cls(vmin, vmax, role, name.decode("utf-8"), session, tuple(codecs), nonce, features,
                   max_payload, rest)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Welcome(_LinkFrame):
    """Server -> client: the link is accepted, in ``version``."""

    version: int
    session: bytes
    codecs: tuple[int, ...]
    nonce: bytes
    features: int = 0
    max_payload: int = MAX_FRAME_PAYLOAD
    extensions: bytes = b""

    TYPE: ClassVar[FrameType] = FrameType.WELCOME

    def __post_init__(self) -> None:
        _check_uint("version", self.version, 0xFFFF, 1)
        _check_size("session", self.session, SESSION_SIZE)
        _check_size("nonce", self.nonce, NONCE_SIZE)
        _set(self, "codecs", tuple(int(c) for c in self.codecs))
        _check_codecs(self.codecs)
        _check_uint("features", self.features, 0xFFFFFFFF)
        _check_uint("max_payload", self.max_payload, 0xFFFFFFFF, MIN_FRAME_PAYLOAD_LIMIT)
        size = _WELCOME_FIXED.size + len(self.codecs) + len(self.extensions)
        _check_uint("WELCOME payload size", size, MAX_HANDSHAKE_PAYLOAD)

    def _payload(self) -> bytes:
        fixed = _WELCOME_FIXED.pack(self.version, self.features, self.max_payload, self.session,
                                    self.nonce, len(self.codecs))  # fmt: skip
        return fixed + bytes(self.codecs) + self.extensions

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Welcome:
        version, features, max_payload, session, nonce, count = _WELCOME_FIXED.unpack_from(payload)
        codecs = _take(payload, _WELCOME_FIXED.size, count, "WELCOME codecs")
        rest = payload[_WELCOME_FIXED.size + count :]
        return cls(version, session, tuple(codecs), nonce, features, max_payload, rest)


def _check_size(what: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def _take(payload: bytes, pos: int, n: int, what: str) -> bytes:
    chunk = payload[pos : pos + n]
    if len(chunk) != n:
        raise ValueError(f"{what} truncated")
    return chunk


@dataclass(frozen=True, slots=True)
class _CodeMessage(_LinkFrame):
    """Link-level frame carrying ``code u16`` and a UTF-8 message (REJECT, GOAWAY, ERROR)."""

    code: int
    message: str = ""

    CODES: ClassVar[type[IntEnum]]

    def __post_init__(self) -> None:
        _set(self, "code", _known(self.CODES, self.code, 0xFFFF))

    def _payload(self) -> bytes:
        return _CODE.pack(self.code) + _message_bytes(self.message)

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Self:
        (code,) = _CODE.unpack_from(payload)
        return cls(code, _message_text(payload[_CODE.size :]))


@dataclass(frozen=True, slots=True)
class Reject(_CodeMessage):
    """Server -> client instead of WELCOME; the server then closes the link."""

    TYPE: ClassVar[FrameType] = FrameType.REJECT
    CODES: ClassVar[type[IntEnum]] = RejectReason

    @property
    def reason(self) -> RejectReason | int:
        return self.code


@dataclass(frozen=True, slots=True)
class GoAway(_CodeMessage):
    """Orderly shutdown: the sender's last frame on this link."""

    TYPE: ClassVar[FrameType] = FrameType.GOAWAY
    CODES: ClassVar[type[IntEnum]] = GoAwayReason


@dataclass(frozen=True, slots=True)
class ErrorFrame(_CodeMessage):
    """The sender saw a protocol violation and is about to drop the link."""

    TYPE: ClassVar[FrameType] = FrameType.ERROR
    CODES: ClassVar[type[IntEnum]] = ErrorCode


@dataclass(frozen=True, slots=True)
class Auth(_LinkFrame):
    """Client -> server, then server -> client: proof of the shared link secret (§8).

    The payload is exactly the 32-byte HMAC-SHA256 ``proof``; there is no key id (to rotate a
    secret, a verifier may try each secret it accepts, see ``drbdproxy.link.auth``).
    """

    proof: bytes

    TYPE: ClassVar[FrameType] = FrameType.AUTH

    def __post_init__(self) -> None:
        _check_size("AUTH proof", self.proof, AUTH_PROOF_SIZE)

    def _payload(self) -> bytes:
        return self.proof

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Auth:
        return cls(payload)


@dataclass(frozen=True, slots=True)
class _Heartbeat(_LinkFrame):
    """PING and PONG: ``token u64 | sent_ns u64``."""

    token: int
    sent_ns: int  # the PING sender's monotonic clock; only that sender interprets it

    def __post_init__(self) -> None:
        _check_uint("token", self.token, (1 << 64) - 1)
        _check_uint("sent_ns", self.sent_ns, (1 << 64) - 1)

    def _payload(self) -> bytes:
        return _PING.pack(self.token, self.sent_ns)

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Self:
        return cls(*_PING.unpack(payload))


@dataclass(frozen=True, slots=True)
class Ping(_Heartbeat):
    """Heartbeat; the receiver answers at once with :meth:`pong` on the same link."""

    TYPE: ClassVar[FrameType] = FrameType.PING

    def pong(self) -> Pong:
        return Pong(self.token, self.sent_ns)


@dataclass(frozen=True, slots=True)
class Pong(_Heartbeat):
    """Echo of a PING: RTT = now - sent_ns at the PING's sender."""

    TYPE: ClassVar[FrameType] = FrameType.PONG


@dataclass(frozen=True, slots=True)
class Open(_Frame):
    """A DRBD socket was accepted by the sender (``origin``); the receiver connects to its DRBD."""

    stream: int
    kind: StreamKind
    origin: Side

    TYPE: ClassVar[FrameType] = FrameType.OPEN

    def __post_init__(self) -> None:
        _check_uint("stream id", self.stream, MAX_STREAM_ID, 1)
        _set(self, "kind", StreamKind(self.kind))
        _set(self, "origin", Side(self.origin))
        if stream_id_side(self.stream) is not self.origin:
            owner = self.origin.name.lower()
            raise ValueError(f"stream id {self.stream} was not allocated by the {owner}")

    def _payload(self) -> bytes:
        return _OPEN.pack(self.kind, self.origin)

    def _stream_id(self) -> int:
        return self.stream

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Open:
        return cls(stream, *_OPEN.unpack(payload))


@dataclass(frozen=True, slots=True)
class Data:
    """Stream bytes: ``payload`` is ``raw_length`` raw bytes compressed with ``codec``.

    ``crc32c`` (CRC-32C, :func:`data_checksum`) covers the raw bytes, so the receiver checks
    decompression end to end.
    """

    stream: int
    codec: int
    raw_length: int
    crc32c: int
    #: A decoder hands out a read-only view of the bytes it received (no copy).
    payload: bytes | memoryview

    TYPE: ClassVar[FrameType] = FrameType.DATA

    def __post_init__(self) -> None:
        _check_uint("stream id", self.stream, MAX_STREAM_ID, 1)
        _check_uint("codec id", self.codec, 0xFF)
        _check_uint("raw_length", self.raw_length, MAX_DATA_CHUNK, 1)
        _check_uint("crc32c", self.crc32c, 0xFFFFFFFF)
        if not self.payload:
            raise ValueError("empty DATA payload")
        size, claimed = len(self.payload), self.raw_length
        if self.codec == CODEC_RAW and size != claimed:
            raise ValueError(f"raw DATA of {size} bytes claims raw_length {claimed}")
        if size > claimed:  # a sender sends raw whenever compressing does not shrink a chunk
            raise ValueError(f"compressed DATA of {size} bytes for raw_length {claimed}")

    @classmethod
    def uncompressed(cls, stream: int, raw: bytes) -> Data:
        """A CODEC_RAW frame for ``raw`` (1 to MAX_DATA_CHUNK bytes)."""
        return cls(stream, CODEC_RAW, len(raw), data_checksum(raw), raw)

    def header(self) -> bytes:
        """Frame header and DATA prefix; send ``payload`` after it without concatenating."""
        size = len(self.payload)
        return encode_data_header(self.stream, self.codec, self.raw_length, self.crc32c, size)

    def encode(self) -> bytes:
        return self.header() + self.payload

    def verify(self, raw: bytes | memoryview) -> None:
        """Raise DATA_CORRUPT unless ``raw`` (the decompressed payload) matches length and CRC-32C."""
        if len(raw) != self.raw_length or data_checksum(raw) != self.crc32c:
            raise LinkProtocolError(
                ErrorCode.DATA_CORRUPT,
                f"stream {self.stream}: raw length or CRC-32C wrong after codec {self.codec}",
            )


@dataclass(frozen=True, slots=True)
class Close(_Frame):
    """The sender's DRBD socket for ``stream`` is gone: discard what you hold for it, close yours."""

    stream: int
    reason: int = CloseReason.EOF
    message: str = ""

    TYPE: ClassVar[FrameType] = FrameType.CLOSE

    def __post_init__(self) -> None:
        _check_uint("stream id", self.stream, MAX_STREAM_ID, 1)
        _set(self, "reason", _known(CloseReason, self.reason, 0xFF))

    def _payload(self) -> bytes:
        return bytes((self.reason,)) + _message_bytes(self.message)

    def _stream_id(self) -> int:
        return self.stream

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Close:
        return cls(stream, payload[0], _message_text(payload[1:]))


@dataclass(frozen=True, slots=True)
class Discard(_LinkFrame):
    """On the meta link: the sender's DRBD socket for stream ``target`` of its ``role`` link
    is gone. The receiver discards what it holds for that stream and closes its DRBD socket now,
    even while it is not reading that link (its DRBD socket for the stream may be what stalls it).
    """

    role: LinkRole
    target: int
    reason: int = CloseReason.EOF

    TYPE: ClassVar[FrameType] = FrameType.DISCARD

    def __post_init__(self) -> None:
        _set(self, "role", LinkRole(self.role))
        _check_uint("stream id", self.target, MAX_STREAM_ID, 1)
        _set(self, "reason", _known(CloseReason, self.reason, 0xFF))

    def _payload(self) -> bytes:
        return _DISCARD.pack(self.role, self.target, self.reason)

    @classmethod
    def from_payload(cls, stream: int, payload: bytes) -> Discard:
        return cls(*_DISCARD.unpack(payload))


Frame = (Hello | Welcome | Reject | Auth | Ping | Pong | Open | Data | Close | Discard | GoAway
         | ErrorFrame)

#: Decoders of every non-DATA frame type (DATA has its own copy-avoiding path in the parser).
FRAME_DECODERS: dict[FrameType, Callable[[int, bytes], Frame]] = {
    FrameType.HELLO: Hello.from_payload,
    FrameType.WELCOME: Welcome.from_payload,
    FrameType.REJECT: Reject.from_payload,
    FrameType.AUTH: Auth.from_payload,
    FrameType.PING: Ping.from_payload,
    FrameType.PONG: Pong.from_payload,
    FrameType.OPEN: Open.from_payload,
    FrameType.CLOSE: Close.from_payload,
    FrameType.DISCARD: Discard.from_payload,
    FrameType.GOAWAY: GoAway.from_payload,
    FrameType.ERROR: ErrorFrame.from_payload,
}


def stream_id_side(stream_id: int) -> Side:
    """Which side allocated ``stream_id``: odd ids are the link client's, even ids the server's."""
    return Side.CLIENT if stream_id & 1 else Side.SERVER


class StreamIdsExhausted(Exception):
    """This side used up its stream ids on this link: GOAWAY(STREAM_IDS_EXHAUSTED) and reconnect."""


class StreamIdAllocator:
    """Hands out this side's stream ids in increasing order; ids are never reused on a link."""

    __slots__ = ("_next",)

    def __init__(self, side: Side) -> None:
        self._next = 1 if side is Side.CLIENT else 2

    def allocate(self) -> int:
        if self._next > MAX_STREAM_ID:
            raise StreamIdsExhausted("no stream ids left on this link")
        sid = self._next
        self._next += 2
        return sid

    @property
    def last(self) -> int:
        """The highest id allocated so far (0 when none): ids at or below it are known."""
        return max(self._next - 2, 0)
