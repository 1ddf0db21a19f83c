"""A streaming link-frame decoder: bytes in (any chunking), frames or one error out.

Like a DRBD stream, a link stream cannot be re-synchronised (DATA payloads may contain anything,
magics included), so the decoder fails closed: after the first :class:`LinkError` it returns
nothing more, and the link must be dropped.

With link authentication (``HMAC_AUTH``, docs/link-protocol.md §8) the decoder passes through an
AUTHENTICATING phase between the handshake and ESTABLISHED, in which only AUTH (and REJECT or
ERROR) frames are accepted: no heartbeat and no stream frame gets through before the peer's proof.
A client decoder enters it after a WELCOME that agrees to ``HMAC_AUTH``. An end with a link
secret requires the feature, so its decoder is built with ``auth=True`` (the handshake machines'
``decoder()`` does that) and enters it after every HELLO (server) or WELCOME (client): a server
cannot tell from a HELLO whether its own end agrees. The decoder only checks the framing; the
handshake verifies the proofs, and fails the link when HELLO or WELCOME lack ``HMAC_AUTH``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from drbdproxy.link.frames import (
    AUTH_PROOF_SIZE,
    DATA_PREFIX,
    DATA_PREFIX_SIZE,
    FRAME_DECODERS,
    FRAME_HEADER_SIZE,
    HEADER,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_MESSAGE,
    MIN_FRAME_PAYLOAD_LIMIT,
    STREAM_FRAME_TYPES,
    Data,
    ErrorCode,
    ErrorFrame,
    Feature,
    Frame,
    FrameType,
    Side,
    Welcome,
    stream_id_side,
)


class Phase(Enum):
    HANDSHAKE = "handshake"  # only the handshake frames of the peer's side
    AUTHENTICATING = "authenticating"  # HMAC_AUTH: only the peer's AUTH (or REJECT/ERROR)
    ESTABLISHED = "established"  # heartbeats and streams
    CLOSED = "closed"  # after REJECT, GOAWAY or ERROR: the peer sends nothing more


_T = FrameType
_ESTABLISHED = frozenset({_T.PING, _T.PONG, _T.OPEN, _T.DATA, _T.CLOSE, _T.DISCARD, _T.GOAWAY,
                          _T.ERROR})
#: What a decoder on ``side`` accepts from the peer in each phase.
_ALLOWED: dict[tuple[Side, Phase], frozenset[int]] = {
    (Side.SERVER, Phase.HANDSHAKE): frozenset({_T.HELLO, _T.ERROR}),
    (Side.CLIENT, Phase.HANDSHAKE): frozenset({_T.WELCOME, _T.REJECT, _T.ERROR}),
    (Side.SERVER, Phase.AUTHENTICATING): frozenset({_T.AUTH, _T.ERROR}),
    (Side.CLIENT, Phase.AUTHENTICATING): frozenset({_T.AUTH, _T.REJECT, _T.ERROR}),
    (Side.SERVER, Phase.ESTABLISHED): _ESTABLISHED,
    (Side.CLIENT, Phase.ESTABLISHED): _ESTABLISHED,
    (Side.SERVER, Phase.CLOSED): frozenset(),
    (Side.CLIENT, Phase.CLOSED): frozenset(),
}
#: Phase changes caused by receiving a frame (the same feed may carry the frames that follow it).
#: HELLO and WELCOME lead to AUTHENTICATING instead when authentication is on (``_after``).
_NEXT_PHASE = {
    _T.HELLO: Phase.ESTABLISHED,
    _T.WELCOME: Phase.ESTABLISHED,
    _T.AUTH: Phase.ESTABLISHED,
    _T.REJECT: Phase.CLOSED,
    _T.GOAWAY: Phase.CLOSED,
    _T.ERROR: Phase.CLOSED,
}
_CODE_MESSAGE = (2, 2 + MAX_MESSAGE)
#: (min, max) payload length per type, checked on the header alone so nothing bad is buffered.
#: DATA's maximum is the decoder's own ``max_payload``.
_LENGTHS: dict[int, tuple[int, int]] = {
    _T.HELLO: (62 + 1 + 1, MAX_HANDSHAKE_PAYLOAD),  # fixed part, 1-byte name, codec count
    _T.WELCOME: (59, MAX_HANDSHAKE_PAYLOAD),
    _T.REJECT: _CODE_MESSAGE,
    _T.AUTH: (AUTH_PROOF_SIZE, AUTH_PROOF_SIZE),
    _T.GOAWAY: _CODE_MESSAGE,
    _T.ERROR: _CODE_MESSAGE,
    _T.PING: (16, 16),
    _T.PONG: (16, 16),
    _T.OPEN: (2, 2),
    _T.CLOSE: (1, 1 + MAX_MESSAGE),
    _T.DISCARD: (6, 6),
}


@dataclass(frozen=True, slots=True)
class LinkError:
    """The link stopped being valid at ``offset`` (bytes from its start); nothing follows."""

    code: ErrorCode
    message: str
    offset: int

    def frame(self) -> ErrorFrame:
        """The ERROR frame to send to the peer before dropping the link."""
        return ErrorFrame(self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message} (at link offset {self.offset})"


_PROTOCOL = ErrorCode.PROTOCOL_ERROR
_UNEXPECTED = ErrorCode.UNEXPECTED_FRAME
_STREAM = ErrorCode.STREAM_ERROR


class _Violation(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LinkDecoder:
    """Reassembles link frames for the end of a link given by ``side``, whatever the chunking.

    ``feed()`` returns the frames completed by the new bytes, in order. A header is checked as
    soon as its 12 bytes are in (magic, type, flags, phase, stream id, length bound), so a bad
    frame is refused before its payload is buffered: the decoder never holds more than one
    header plus ``max_payload`` bytes between feeds.

    ``auth``: this end requires link authentication (it has a link secret). The decoder then goes
    from the peer's HELLO (server) or WELCOME (client) to AUTHENTICATING instead of ESTABLISHED,
    whatever their feature bits say: a HELLO or WELCOME without ``HMAC_AUTH`` fails in the
    handshake, and nothing after it is taken for a stream frame meanwhile. A client decoder also
    goes there after a WELCOME that agrees to ``HMAC_AUTH``, ``auth`` or not. Otherwise AUTH is
    UNEXPECTED_FRAME, as before authentication existed.
    """

    def __init__(
        self, side: Side, max_payload: int = MAX_FRAME_PAYLOAD, *, auth: bool = False
    ) -> None:
        if max_payload < MIN_FRAME_PAYLOAD_LIMIT:
            raise ValueError(f"max_payload must be at least {MIN_FRAME_PAYLOAD_LIMIT}")
        self.side = Side(side)
        self.max_payload = max_payload
        self.auth = bool(auth)
        self.phase = Phase.HANDSHAKE
        self.failed: LinkError | None = None
        self._allowed = _ALLOWED[(self.side, self.phase)]
        self._peer_side = Side.SERVER if self.side is Side.CLIENT else Side.CLIENT
        self._last_peer_stream = 0  # highest stream id the peer has OPENed
        #: The start of an incomplete frame, as received (immutable bytes or views of them).
        self._parts: list[bytes | memoryview] = []
        self._held = 0
        #: Bytes the frame at the start of ``_parts`` needs before parsing can go on.
        self._need = FRAME_HEADER_SIZE
        self._consumed = 0  # link offset of the first byte held, for error reports

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return self._held

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | LinkError]:
        """The frames (then at most one LinkError) that ``data`` completes.

        Received bytes are never copied into a buffer of our own: frames are parsed straight
        out of ``data``, an incomplete tail is kept as a view of it, and the pieces of a frame
        that straddles reads are joined once, when it is complete. DATA payloads are read-only
        views of those immutable bytes: decompressing one copies nothing more.
        """
        if self.failed is not None:
            return []
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._held:
            self._parts.append(data)
            self._held += len(data)
            if self._held < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts, self._held = [], 0
        else:
            buf = data
        frames: list[Frame | LinkError] = []
        off, size = 0, len(buf)
        self._need = FRAME_HEADER_SIZE
        try:
            while size - off >= FRAME_HEADER_SIZE:
                ftype, stream, length = self._check_header(buf, off)
                end = off + FRAME_HEADER_SIZE + length
                if end > size:
                    self._need = end - off
                    break
                frame = self._decode(ftype, stream, buf, off + FRAME_HEADER_SIZE, end)
                frames.append(frame)
                off = end
                self._after(frame)
        except _Violation as v:
            self.failed = LinkError(v.code, v.message, self._consumed + off)
            frames.append(self.failed)
            return frames
        self._consumed += off
        if off < size:
            self._parts, self._held = [memoryview(buf)[off:] if off else buf], size - off
        return frames

    def _check_header(self, buf: bytes, off: int) -> tuple[FrameType, int, int]:
        magic, ftype, flags, stream, length = HEADER.unpack_from(buf, off)
        if magic != MAGIC:
            raise _Violation(_PROTOCOL, f"bad frame magic 0x{magic:04x}")
        if ftype not in self._allowed:
            raise self._refuse_type(ftype)
        ftype = FrameType(ftype)
        if flags:
            raise _Violation(_PROTOCOL, f"{ftype.name} with reserved flags 0x{flags:02x}")
        low, high = _LENGTHS.get(ftype, (DATA_PREFIX_SIZE + 1, self.max_payload))
        if length > self.max_payload:
            message = f"{ftype.name} of {length} bytes exceeds {self.max_payload}"
            raise _Violation(ErrorCode.FRAME_TOO_LARGE, message)
        if not low <= length <= high:
            message = f"{ftype.name} payload of {length} bytes, expected {low}..{high}"
            raise _Violation(_PROTOCOL, message)
        self._check_stream(ftype, stream)
        return ftype, stream, length

    def _refuse_type(self, ftype: int) -> _Violation:
        try:
            known = FrameType(ftype)
        except ValueError:
            return _Violation(ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type 0x{ftype:02x}")
        if known is FrameType.AUTH:
            message = (f"AUTH not allowed in phase {self.phase.value} (reserved for the"
                       " authenticating phase after an HMAC_AUTH handshake)")  # fmt: skip
            return _Violation(_UNEXPECTED, message)
        return _Violation(_UNEXPECTED, f"{known.name} not allowed in phase {self.phase.value}")

    def _check_stream(self, ftype: FrameType, stream: int) -> None:
        if ftype not in STREAM_FRAME_TYPES:
            if stream:
                raise _Violation(_STREAM, f"{ftype.name} on stream {stream}, expected 0")
            return
        if stream == 0:
            raise _Violation(_STREAM, f"{ftype.name} on stream 0")
        if stream_id_side(stream) is not self._peer_side:
            if ftype is FrameType.OPEN:
                raise _Violation(_STREAM, f"peer OPENed stream {stream} of our id space")
            return  # one of our ids: only the stream table knows whether we allocated it
        if ftype is FrameType.OPEN and stream <= self._last_peer_stream:
            last = self._last_peer_stream
            raise _Violation(_STREAM, f"OPEN of stream {stream} after {last}: ids only grow")
        if ftype is not FrameType.OPEN and stream > self._last_peer_stream:
            raise _Violation(_STREAM, f"{ftype.name} on stream {stream}, never opened")

    def _decode(self, ftype: FrameType, stream: int, buf: bytes, start: int, end: int) -> Frame:
        try:
            if ftype is FrameType.DATA:
                codec, raw_length, crc = DATA_PREFIX.unpack_from(buf, start)
                payload = memoryview(buf)[start + DATA_PREFIX_SIZE : end]  # no copy: buf is immutable
                return Data(stream, codec, raw_length, crc, payload)
            return FRAME_DECODERS[ftype](stream, bytes(buf[start:end]))
        except (ValueError, struct.error, IndexError) as e:
            raise _Violation(_PROTOCOL, f"malformed {ftype.name}: {e}") from None

    def _after(self, frame: Frame) -> None:
        """Phase changes and stream bookkeeping once a frame is accepted."""
        if frame.TYPE is FrameType.OPEN:
            self._last_peer_stream = frame.stream
            return
        phase = _NEXT_PHASE.get(frame.TYPE)
        if self.phase is Phase.HANDSHAKE and phase is Phase.ESTABLISHED:
            if self._authenticates(frame):  # HELLO or WELCOME: the AUTH frames come first
                phase = Phase.AUTHENTICATING
        if phase is not None:
            self.phase = phase
            self._allowed = _ALLOWED[(self.side, phase)]

    def _authenticates(self, frame: Frame) -> bool:
        """Whether the HELLO or WELCOME just accepted leads to the authenticating phase."""
        if self.auth:
            return True
        return isinstance(frame, Welcome) and bool(frame.features & Feature.HMAC_AUTH)
