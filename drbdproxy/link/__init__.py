"""The proxy-to-proxy link protocol, sans-IO: frames, a streaming decoder, the handshake.

Nothing in this package knows about sockets, Twisted or DRBD semantics. ``docs/link-protocol.md``
is the specification; this package implements it.
"""

from drbdproxy.link.auth import load_secret
from drbdproxy.link.frames import (
    AUTH_PROOF_SIZE,
    CODEC_RAW,
    DATA_PREFIX_SIZE,
    FRAME_HEADER_SIZE,
    MAGIC,
    MAX_DATA_CHUNK,
    MAX_FRAME_PAYLOAD,
    MAX_STREAM_ID,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Auth,
    Close,
    CloseReason,
    Data,
    Discard,
    ErrorCode,
    ErrorFrame,
    Feature,
    Frame,
    FrameType,
    GoAway,
    GoAwayReason,
    Hello,
    LinkProtocolError,
    LinkRole,
    Open,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Side,
    StreamIdAllocator,
    StreamIdsExhausted,
    StreamKind,
    Welcome,
    data_checksum,
    encode_data_header,
    frame_header_size,
    stream_id_side,
)
from drbdproxy.link.handshake import (
    Accepted,
    ClientHandshake,
    Lookup,
    Outcome,
    Pending,
    Rejected,
    ServerHandshake,
    negotiate_version,
    new_nonce,
    new_session,
)
from drbdproxy.link.parser import LinkDecoder, LinkError, Phase

__all__ = [
    "AUTH_PROOF_SIZE", "Auth", "Pending", "load_secret",
    "CODEC_RAW", "DATA_PREFIX_SIZE", "FRAME_HEADER_SIZE", "MAGIC", "MAX_DATA_CHUNK", "MAX_FRAME_PAYLOAD",
    "MAX_STREAM_ID", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "Accepted", "ClientHandshake",
    "Close", "CloseReason", "Data", "Discard", "ErrorCode", "ErrorFrame", "Feature", "Frame",
    "FrameType", "GoAway", "GoAwayReason", "Hello", "LinkDecoder", "LinkError",
    "LinkProtocolError", "LinkRole", "Lookup", "Open", "Outcome", "Phase", "Ping", "Pong",
    "Reject", "RejectReason", "Rejected", "ServerHandshake", "Side", "StreamIdAllocator",
    "StreamIdsExhausted", "StreamKind", "Welcome", "data_checksum", "encode_data_header", "frame_header_size",
    "negotiate_version", "new_nonce", "new_session", "stream_id_side",
]  # fmt: skip
