"""Link frames and the streaming LinkDecoder: round trips, chunking independence, failing closed."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drbdproxy.link import (
    CODEC_RAW,
    DATA_PREFIX_SIZE,
    FRAME_HEADER_SIZE,
    MAGIC,
    MAX_FRAME_PAYLOAD,
    Close,
    CloseReason,
    Discard,
    Data,
    ErrorCode,
    ErrorFrame,
    FrameType,
    GoAway,
    GoAwayReason,
    Hello,
    LinkDecoder,
    LinkError,
    LinkProtocolError,
    LinkRole,
    Open,
    Phase,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Side,
    StreamIdAllocator,
    StreamIdsExhausted,
    StreamKind,
    Welcome,
    encode_data_header,
    frame_header_size,
)
from drbdproxy.link.frames import data_checksum, MAX_MESSAGE, MAX_STREAM_ID

# Codec ids are opaque to the link (drbdproxy.codecs assigns them); these are two of them.
LZ4, ZSTD = 1, 3
SESSION = bytes(range(16))
NONCE = bytes(range(32, 64))
HELLO = Hello(1, 1, LinkRole.META, "r0-bob-alice", SESSION, (LZ4, ZSTD), NONCE)
WELCOME = Welcome(1, SESSION, (LZ4,), NONCE)


def header(ftype: int, stream: int = 0, length: int = 0, flags: int = 0, magic: int = MAGIC) -> bytes:
    """A raw frame header, free to break every rule."""
    return struct.pack(">HBBII", magic, ftype, flags, stream, length)


def established(side: Side, opened: tuple[int, ...] = ()) -> LinkDecoder:
    """A decoder for ``side`` past the handshake, with the peer's streams ``opened`` OPENed."""
    decoder = LinkDecoder(side)
    peer = Side.CLIENT if side is Side.SERVER else Side.SERVER
    first = HELLO if side is Side.SERVER else WELCOME
    frames = [first] + [Open(sid, StreamKind.DATA, peer) for sid in opened]
    assert decoder.feed(b"".join(f.encode() for f in frames)) == frames
    assert decoder.phase is Phase.ESTABLISHED
    return decoder


def errors(events: list) -> list[LinkError]:
    return [e for e in events if isinstance(e, LinkError)]


# --- round trips ------------------------------------------------------------------------------

ROUND_TRIPS = [
    (Side.SERVER, (), HELLO),
    (Side.SERVER, (), Hello(1, 7, LinkRole.BULK, "ré-ü", SESSION, (), NONCE, 0xFFFFFFFF, 4096, b"ext")),
    (Side.CLIENT, (), WELCOME),
    (Side.CLIENT, (), Welcome(3, SESSION, (), NONCE, 1, 8192, b"future")),
    (Side.CLIENT, (), Reject(RejectReason.BUSY, "too many links")),
    (Side.CLIENT, (), Reject(999, "a reason from a newer peer")),
    (Side.SERVER, (), ErrorFrame(ErrorCode.PROTOCOL_ERROR, "bad magic")),
    (Side.SERVER, (), Ping(2**64 - 1, 123456789)),
    (Side.CLIENT, (), Pong(7, 0)),
    (Side.SERVER, (), Open(1, StreamKind.META, Side.CLIENT)),
    (Side.CLIENT, (), Open(2, StreamKind.UNKNOWN, Side.SERVER)),
    (Side.SERVER, (1,), Data.uncompressed(1, b"\x83\x74\x02\x67" * 100)),
    (Side.CLIENT, (2,), Data(2, LZ4, 4096, 0xDEADBEEF, b"compressed")),
    (Side.SERVER, (), Data.uncompressed(MAX_STREAM_ID - 1, b"x")),  # one of our own (even) ids
    (Side.SERVER, (1,), Close(1)),
    (Side.CLIENT, (2,), Close(2, CloseReason.CONNECT_FAILED, "connection refused")),
    (Side.SERVER, (), Discard(LinkRole.BULK, 7, CloseReason.EOF)),
    (Side.SERVER, (), GoAway(GoAwayReason.SHUTDOWN, "daemon stopping")),
]


@pytest.mark.parametrize("side,opened,frame", ROUND_TRIPS, ids=[f"{f.TYPE.name}-{i}" for i, (_, _, f) in enumerate(ROUND_TRIPS)])
def test_round_trip_every_frame_type(side, opened, frame):
    """Every frame type encodes to bytes that decode to an equal frame, which re-encodes identically."""
    decoder = LinkDecoder(side) if frame.TYPE in (FrameType.HELLO, FrameType.WELCOME, FrameType.REJECT) else None
    decoder = decoder or established(side, opened)
    wire = frame.encode()
    assert decoder.feed(wire) == [frame]
    assert frame.encode() == wire and decoder.buffered == 0


def test_round_trips_cover_every_frame_type():
    """The round-trip table has a case for every frame type except the reserved AUTH."""
    covered = {frame.TYPE for _, _, frame in ROUND_TRIPS}
    assert covered == set(FrameType) - {FrameType.AUTH}


def test_header_layout_is_big_endian_12_bytes():
    """The header is magic u16 'DP', type u8, flags u8, stream u32, length u32, all big-endian."""
    wire = Ping(1, 2).encode()
    assert FRAME_HEADER_SIZE == frame_header_size == 12
    assert wire[:12] == b"DP\x10\x00\x00\x00\x00\x00\x00\x00\x00\x10"
    assert wire[12:] == (1).to_bytes(8, "big") + (2).to_bytes(8, "big")


def test_data_header_lets_the_payload_travel_separately():
    """encode_data_header + payload is exactly Data.encode(): the hot path needs no concatenation."""
    raw = random.Random(1).randbytes(5000)
    frame = Data(5, ZSTD, len(raw) * 2, data_checksum(raw), raw)
    head = encode_data_header(5, ZSTD, len(raw) * 2, data_checksum(raw), len(raw))
    assert len(head) == FRAME_HEADER_SIZE + DATA_PREFIX_SIZE
    assert head == frame.header() and head + raw == frame.encode()


def test_data_verify_detects_corruption():
    """Data.verify accepts the right raw bytes and raises DATA_CORRUPT on a flipped byte or wrong size."""
    raw = b"block" * 1000
    frame = Data(1, LZ4, len(raw), data_checksum(raw), b"whatever lz4 made of it")
    frame.verify(raw)
    for bad in (b"blocc" + raw[5:], raw[:-1]):
        with pytest.raises(LinkProtocolError) as info:
            frame.verify(bad)
        assert info.value.code is ErrorCode.DATA_CORRUPT


def test_long_messages_are_cut_on_a_character_boundary():
    """A message longer than MAX_MESSAGE bytes is truncated at encode time without breaking UTF-8."""
    frame = ErrorFrame(ErrorCode.INTERNAL_ERROR, "é" * 2000)
    (decoded,) = established(Side.SERVER).feed(frame.encode())
    assert decoded.message == "é" * (MAX_MESSAGE // 2)


def test_constructors_refuse_malformed_frames():
    """Frames validate themselves, so an encoder can never put a malformed frame on the wire."""
    bad = [
        lambda: Hello(1, 1, LinkRole.META, "x" * 256, SESSION, (), NONCE),
        lambda: Hello(1, 1, LinkRole.META, "", SESSION, (), NONCE),
        lambda: Hello(2, 1, LinkRole.META, "r0", SESSION, (), NONCE),
        lambda: Hello(1, 1, 3, "r0", SESSION, (), NONCE),
        lambda: Hello(1, 1, LinkRole.META, "r0", SESSION[:15], (), NONCE),
        lambda: Hello(1, 1, LinkRole.META, "r0", SESSION, (1, 1), NONCE),
        lambda: Welcome(1, SESSION, (256,), NONCE),
        lambda: Open(2, StreamKind.DATA, Side.CLIENT),  # even ids are the server's
        lambda: Open(0, StreamKind.DATA, Side.SERVER),
        lambda: Data(1, CODEC_RAW, 5, 0, b"four"),
        lambda: Data(1, LZ4, (1 << 20) + 1, 0, b"x"),
        lambda: Data(1, LZ4, 3, 0, b"four"),  # compressed may not be longer than raw
        lambda: Close(1, 256),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


def test_stream_id_allocation_never_collides():
    """The client allocates odd ids, the server even ones, increasing; exhaustion is reported."""
    client, server = StreamIdAllocator(Side.CLIENT), StreamIdAllocator(Side.SERVER)
    assert [client.allocate() for _ in range(3)] == [1, 3, 5] and client.last == 5
    assert [server.allocate() for _ in range(2)] == [2, 4] and StreamIdAllocator(Side.SERVER).last == 0
    client._next = MAX_STREAM_ID
    assert client.allocate() == MAX_STREAM_ID
    with pytest.raises(StreamIdsExhausted):
        client.allocate()


# --- chunking independence -------------------------------------------------------------------


def sample_stream() -> tuple[bytes, list]:
    """What a link client sends: HELLO, heartbeats, two streams with data of many sizes, closes."""
    rng = random.Random(11)
    frames: list = [HELLO, Ping(1, 10), Open(1, StreamKind.DATA, Side.CLIENT), Open(3, StreamKind.META, Side.CLIENT)]
    for i in range(30):
        raw = rng.randbytes(rng.choice([1, 8, 4096, 65536]))
        frames.append(Data.uncompressed(1 if i % 3 else 3, raw))
        if i % 7 == 0:
            frames.append(Data(1, LZ4, 1 << 20, data_checksum(raw), raw))
            frames.append(Pong(i, i * 1000))
    frames += [Data.uncompressed(2, b"for the server's stream 2"), Close(3), Close(1, CloseReason.RESET, "EPIPE")]
    frames.append(GoAway(GoAwayReason.CONNECTION_REMOVED, "del connection"))
    return b"".join(f.encode() for f in frames), frames


STREAM, FRAMES = sample_stream()


def feed_in_chunks(data: bytes, sizes, side: Side = Side.SERVER, max_payload: int = MAX_FRAME_PAYLOAD):
    decoder = LinkDecoder(side, max_payload)
    events, pos = [], 0
    for size in sizes:
        events += decoder.feed(data[pos : pos + size])
        pos += size
        assert decoder.buffered <= max_payload + FRAME_HEADER_SIZE
    events += decoder.feed(data[pos:])
    return events, decoder


def test_one_shot_decodes_every_frame():
    """Fed all at once, the decoder yields every frame in order and ends CLOSED by the GOAWAY."""
    decoder = LinkDecoder(Side.SERVER)
    assert decoder.feed(STREAM) == FRAMES
    assert decoder.phase is Phase.CLOSED and decoder.buffered == 0


def test_byte_at_a_time_matches_one_shot():
    """One byte per feed gives exactly the frames of a single feed."""
    events, decoder = feed_in_chunks(STREAM, [1] * len(STREAM))
    assert events == FRAMES and decoder.buffered == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=90000), max_size=40))
def test_random_chunking_matches_one_shot(sizes):
    """Any chunking (hypothesis picks the cut points, empty feeds included) gives the same frames."""
    events, _ = feed_in_chunks(STREAM, sizes)
    assert events == FRAMES


def test_decoded_payloads_stay_valid_after_later_feeds():
    """DATA payloads are read-only views of immutable received bytes: later feeds, including one
    that completes a frame straddling reads, never change a payload handed out earlier."""
    decoder = established(Side.SERVER, (1,))
    wire = b"".join(Data.uncompressed(1, bytes([c]) * 1000).encode() for c in b"ABC")
    (got,) = decoder.feed(wire[:1500])
    (second,) = decoder.feed(wire[1500:2500])
    (third,) = decoder.feed(wire[2500:])
    for frame, byte in ((got, b"A"), (second, b"B"), (third, b"C")):
        payload = memoryview(frame.payload)
        assert payload.readonly and payload == byte * 1000


# --- errors: reported once, at the right offset, and the decoder stays failed ----------------


def assert_fails(decoder: LinkDecoder, wire: bytes, code: ErrorCode, offset: int = 0) -> LinkError:
    """``wire`` ends in exactly one error with ``code``; afterwards the decoder returns nothing."""
    events = decoder.feed(wire)
    assert isinstance(events[-1], LinkError) and len(errors(events)) == 1
    err = events[-1]
    assert err.code is code, err
    assert err.offset == offset
    assert decoder.failed is err and decoder.buffered == 0
    assert decoder.feed(Ping(1, 1).encode()) == []
    assert err.frame() == ErrorFrame(code, err.message)
    return err


def test_oversized_length_fails_before_the_payload_arrives():
    """A header announcing more than max_payload fails on its 12 bytes alone, with nothing buffered."""
    opened = len(HELLO.encode()) + len(Open(1, StreamKind.DATA, Side.CLIENT).encode())
    big = header(FrameType.DATA, 1, MAX_FRAME_PAYLOAD + 1)
    assert_fails(established(Side.SERVER, (1,)), big, ErrorCode.FRAME_TOO_LARGE, opened)
    small = LinkDecoder(Side.SERVER, max_payload=8192)
    small.feed(HELLO.encode() + Open(1, StreamKind.DATA, Side.CLIENT).encode())
    assert_fails(small, header(FrameType.DATA, 1, 8193), ErrorCode.FRAME_TOO_LARGE, opened)


def test_bad_magic_after_good_frames():
    """Garbage after valid frames: those frames come out, then one error at the garbage's offset."""
    decoder = established(Side.CLIENT)
    good = Ping(1, 2).encode() + Pong(3, 4).encode()
    events = decoder.feed(good + b"SSH-2.0-OpenSSH_9.6\r\n")
    assert events[:2] == [Ping(1, 2), Pong(3, 4)]
    err = events[2]
    assert err.code is ErrorCode.PROTOCOL_ERROR and "magic" in err.message
    assert err.offset == len(WELCOME.encode()) + len(good)
    assert decoder.feed(good) == []


@pytest.mark.parametrize(
    "wire,code,why",
    [
        (header(0x7F), ErrorCode.UNKNOWN_FRAME_TYPE, "unknown"),
        (header(FrameType.AUTH, length=32) + bytes(32), ErrorCode.UNEXPECTED_FRAME, "reserved"),
        (header(FrameType.PING, length=16, flags=1) + bytes(16), ErrorCode.PROTOCOL_ERROR, "flags"),
        (header(FrameType.OPEN, 3, 3) + b"\x01\x01\x00", ErrorCode.PROTOCOL_ERROR, "expected 2..2"),
        (header(FrameType.PING, length=15) + bytes(15), ErrorCode.PROTOCOL_ERROR, "expected 16..16"),
        (header(FrameType.DATA, 1, 9) + bytes(9), ErrorCode.PROTOCOL_ERROR, "expected 10.."),
        (header(FrameType.OPEN, 3, 2) + b"\x07\x01", ErrorCode.PROTOCOL_ERROR, "StreamKind"),
        (header(FrameType.OPEN, 3, 2) + b"\x01\x02", ErrorCode.PROTOCOL_ERROR, "allocated"),
        (header(FrameType.DATA, 1, 12) + b"\x00" + struct.pack(">II", 5, 0) + b"abc",
         ErrorCode.PROTOCOL_ERROR, "raw_length"),
        (header(FrameType.PING, 1, 16) + bytes(16), ErrorCode.STREAM_ERROR, "expected 0"),
        (header(FrameType.CLOSE, 0, 1) + b"\x00", ErrorCode.STREAM_ERROR, "stream 0"),
        (header(FrameType.OPEN, 2, 2) + b"\x01\x01", ErrorCode.STREAM_ERROR, "our id space"),
        (header(FrameType.DATA, 5, 10) + b"\x00" + struct.pack(">II", 1, 0) + b"x",
         ErrorCode.STREAM_ERROR, "never opened"),
        (HELLO.encode(), ErrorCode.UNEXPECTED_FRAME, "phase established"),
        (Open(1, StreamKind.DATA, Side.CLIENT).encode(), ErrorCode.STREAM_ERROR, "ids only grow"),
    ],
)  # fmt: skip
def test_malformed_frames_after_the_handshake(wire, code, why):
    """Unknown or reserved types, flags, wrong payload sizes, bad fields and bad stream ids all fail."""
    decoder = established(Side.SERVER, (1,))
    err = assert_fails(decoder, wire, code, len(HELLO.encode()) + 14)
    assert why in err.message


def test_truncated_fields_inside_a_well_sized_frame():
    """A HELLO whose name length runs past its payload, or whose name is not UTF-8, is malformed."""
    wire = bytearray(HELLO.encode())
    wire[FRAME_HEADER_SIZE + 61] = 200  # name_length far beyond the payload
    assert_fails(LinkDecoder(Side.SERVER), bytes(wire), ErrorCode.PROTOCOL_ERROR)
    wire = bytearray(HELLO.encode())
    wire[FRAME_HEADER_SIZE + 62] = 0xFF  # first byte of the name: invalid UTF-8
    assert_fails(LinkDecoder(Side.SERVER), bytes(wire), ErrorCode.PROTOCOL_ERROR)


def test_data_before_the_handshake_is_an_error():
    """A DATA (or PING, or OPEN) frame before HELLO is refused: the handshake always comes first."""
    for frame in (Data.uncompressed(1, b"x"), Ping(1, 1), Open(1, StreamKind.DATA, Side.CLIENT)):
        decoder = LinkDecoder(Side.SERVER)
        err = assert_fails(decoder, frame.encode(), ErrorCode.UNEXPECTED_FRAME)
        assert "phase handshake" in err.message and decoder.phase is Phase.HANDSHAKE


def test_each_side_accepts_only_the_other_sides_handshake_frames():
    """A server decoder refuses WELCOME and REJECT; a client decoder refuses HELLO."""
    assert_fails(LinkDecoder(Side.SERVER), WELCOME.encode(), ErrorCode.UNEXPECTED_FRAME)
    assert_fails(LinkDecoder(Side.SERVER), Reject(RejectReason.BUSY).encode(), ErrorCode.UNEXPECTED_FRAME)
    assert_fails(LinkDecoder(Side.CLIENT), HELLO.encode(), ErrorCode.UNEXPECTED_FRAME)


def test_nothing_may_follow_reject_goaway_or_error():
    """REJECT, GOAWAY and ERROR are the sender's last frames: anything after them is an error."""
    for first in (Reject(RejectReason.BUSY, "busy"), ErrorFrame(ErrorCode.TIMEOUT, "")):
        decoder = LinkDecoder(Side.CLIENT)
        events = decoder.feed(first.encode() + Ping(1, 1).encode())
        assert events[0] == first and events[1].code is ErrorCode.UNEXPECTED_FRAME
        assert decoder.phase is Phase.CLOSED
    decoder = established(Side.SERVER)
    events = decoder.feed(GoAway(GoAwayReason.SHUTDOWN).encode() + Pong(1, 1).encode())
    assert events[0] == GoAway(GoAwayReason.SHUTDOWN) and "phase closed" in events[1].message


def test_open_ids_must_grow():
    """The peer's OPENs must use strictly increasing ids: a reused or smaller id is an error."""
    decoder = established(Side.SERVER, (1, 5))
    assert_fails(decoder, Open(3, StreamKind.DATA, Side.CLIENT).encode(), ErrorCode.STREAM_ERROR,
                 len(HELLO.encode()) + 2 * 14)  # fmt: skip


def test_data_on_a_closed_stream_is_not_the_decoders_business():
    """DATA or CLOSE for a stream the peer opened and closed earlier decodes fine (races are normal)."""
    decoder = established(Side.CLIENT, (2,))
    frames = [Close(2), Data.uncompressed(2, b"late"), Close(2)]
    assert decoder.feed(b"".join(f.encode() for f in frames)) == frames


def test_decoder_refuses_a_tiny_limit():
    """A decoder limit below 4096 could not even hold a HELLO: it is refused at construction."""
    with pytest.raises(ValueError):
        LinkDecoder(Side.SERVER, 4095)


# --- fuzzing ---------------------------------------------------------------------------------

frame_types = st.sampled_from([int(t) for t in FrameType] + [0, 0x7F, 0xFF])
headers = st.builds(
    lambda t, s, n, f: header(t, s, n, f),
    frame_types,
    st.sampled_from([0, 1, 2, 3, 4, MAX_STREAM_ID]),
    st.one_of(st.integers(0, 80), st.integers(0, 4200), st.integers(0, 2**32 - 1)),
    st.sampled_from([0, 0, 0, 1]),
)
pieces = st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=1000, max_size=3000),
    headers,
    st.sampled_from([f.encode() for f in FRAMES[:6]]),
    st.builds(lambda h, b: h + b, headers, st.binary(max_size=100)),
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(list(Side)))
def test_fuzz_arbitrary_bytes_never_raise(data, side):
    """Arbitrary bytes never raise; the result is frames then at most one final LinkError."""
    events, decoder = feed_in_chunks(data, [7, 100, 3], side)
    errs = errors(events)
    assert len(errs) <= 1 and (not errs or events[-1] is errs[0])
    assert decoder.buffered <= MAX_FRAME_PAYLOAD + FRAME_HEADER_SIZE


#: What each side's peer sends to get past the handshake and open a stream.
PROLOGUE = {
    Side.SERVER: HELLO.encode() + Open(1, StreamKind.DATA, Side.CLIENT).encode(),
    Side.CLIENT: WELCOME.encode() + Open(2, StreamKind.DATA, Side.SERVER).encode(),
}


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=30), st.lists(st.integers(0, 3000), max_size=20), st.sampled_from(list(Side)),
       st.booleans())  # fmt: skip
def test_fuzz_frame_like_bytes_are_chunking_independent_and_bounded(parts, sizes, side, prologue):
    """Near-valid frames: any chunking gives the same events (error offsets included), never raises,
    and between feeds the decoder holds at most one header plus max_payload bytes."""
    data = (PROLOGUE[side] if prologue else b"") + b"".join(parts)
    one_shot = LinkDecoder(side, 4096).feed(data)
    chunked, decoder = feed_in_chunks(data, sizes, side, max_payload=4096)
    assert chunked == one_shot
    assert len(errors(one_shot)) <= 1
    assert decoder.buffered <= 4096 + FRAME_HEADER_SIZE


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4096 - DATA_PREFIX_SIZE), st.data())
def test_fuzz_a_partial_frame_is_the_most_ever_buffered(raw_length, data):
    """While a legal frame trickles in (any split), only its header and payload so far are held,
    never more than max_payload + header; the last byte releases it all."""
    decoder = established(Side.SERVER, (1,))
    small = LinkDecoder(Side.SERVER, 4096)
    small.feed(PROLOGUE[Side.SERVER])
    frame = Data.uncompressed(1, bytes(raw_length)).encode()
    wire = frame + Ping(9, 9).encode()
    cut = data.draw(st.integers(0, len(frame) - 1), label="bytes of the DATA frame fed first")
    sizes = data.draw(st.lists(st.integers(1, 1000), max_size=10), label="chunks")
    for dec in (decoder, small):
        pos = 0
        for size in sizes:
            size = min(size, cut - pos)
            assert dec.feed(wire[pos : pos + size]) == []
            pos += size
            assert dec.buffered == pos <= 4096 + FRAME_HEADER_SIZE
        assert dec.feed(wire[pos:]) == [Data.uncompressed(1, bytes(raw_length)), Ping(9, 9)]
        assert dec.buffered == 0
