"""Fuzzing the DRBD stream parsers: PacketDecoder and PacketScanner on hostile and broken input.

Structure-aware inputs (valid h80/h95/h100 packets, then one header field mutated, the stream cut
short, junk appended or one byte flipped) and plain arbitrary bytes, in arbitrary chunkings. The
scanner (which the relay runs on every DRBD socket) must agree with the full decoder on every
count and on where the stream stops being DRBD.
"""

from __future__ import annotations

import re
import struct
from collections import Counter

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drbdproxy.drbd.decoder import Packet, PacketDecoder, StreamError
from drbdproxy.drbd.header import (
    MAX_PAYLOAD,
    WireError,
    decode_header,
    encode_h80,
    encode_h95,
    encode_h100,
)
from drbdproxy.drbd.packets import Cmd, packet_name
from drbdproxy.drbd.scanner import PacketScanner

#: The largest DRBD header (h100); h80 and h95 are 8 bytes.
MAX_HEADER = 16

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------------

#: Small limits make "just over the limit" and "a legal packet that never completes" cheap to hit.
limits = st.sampled_from([64, 4096, MAX_PAYLOAD])
commands = st.one_of(st.sampled_from([int(c) for c in Cmd]), st.integers(0, 0xFFFF))
#: Where each header kind keeps its length field, and how wide it is.
LENGTH_FIELD = {"h80": (6, ">H"), "h95": (4, ">I"), "h100": (8, ">I")}


@st.composite
def packets(draw, max_payload: int) -> tuple[str, bytearray, bytes]:
    """One valid packet: (header kind, header bytes, payload)."""
    kind = draw(st.sampled_from(sorted(LENGTH_FIELD)))
    command = draw(commands)
    payload = draw(st.binary(max_size=min(300, max_payload)))
    if kind == "h80":
        head = encode_h80(command, len(payload))
    elif kind == "h95":
        head = encode_h95(command, len(payload))
    else:
        head = encode_h100(command, len(payload), draw(st.integers(0, 0xFFFF)))
    return kind, bytearray(head), payload


def lengths(max_payload: int) -> st.SearchStrategy[int]:
    """Payload lengths around the limit, huge ones, and anything in between."""
    return st.one_of(
        st.sampled_from([0, max_payload - 1, max_payload, max_payload + 1, 0xFFFF, 2**32 - 1]),
        st.integers(max(0, max_payload - 32), max_payload + 32),
        st.integers(0, 2**32 - 1),
    )


@st.composite
def mutate_header(draw, kind: str, head: bytearray, max_payload: int) -> None:
    """Break (or merely bend) one field of ``head`` in place."""
    what = draw(st.sampled_from(["magic", "length", "command", "pad", "bytes"]))
    if what == "magic":
        width = 2 if kind == "h95" else 4
        head[:width] = draw(st.binary(min_size=width, max_size=width))
    elif what == "length":
        offset, fmt = LENGTH_FIELD[kind]
        limit = 0xFFFF if fmt == ">H" else 2**32 - 1
        struct.pack_into(fmt, head, offset, min(draw(lengths(max_payload)), limit))
    elif what == "command":
        struct.pack_into(">H", head, 4 if kind != "h95" else 2, draw(st.integers(0, 0xFFFF)))
    elif what == "pad" and kind == "h100":
        head[12:16] = draw(st.binary(min_size=4, max_size=4))
    else:
        pos = draw(st.integers(0, len(head) - 1))
        head[pos] = draw(st.integers(0, 255))


@st.composite
def drbd_streams(draw) -> tuple[bytes, int]:
    """(stream, max_payload): valid packets in mixed header kinds, then some damage (or none)."""
    max_payload = draw(limits)
    parts = draw(st.lists(packets(max_payload), max_size=12))
    if parts and draw(st.booleans()):
        kind, head, _ = parts[draw(st.integers(0, len(parts) - 1))]
        draw(mutate_header(kind, head, max_payload))
    stream = b"".join(bytes(head) + payload for _, head, payload in parts)
    if stream and draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream)))]  # cut short, mid header or payload
    if draw(st.integers(0, 3)) == 0:
        stream += draw(st.one_of(st.binary(max_size=64), st.sampled_from(
            [encode_h95(0, 2**32 - 1), encode_h80(Cmd.P_PING, 0), b"SSH-2.0-x\r\n",
             b"\x16\x03\x01\x02\x00"])))  # fmt: skip
    return stream, max_payload


chunk_sizes = st.lists(st.one_of(st.integers(1, 20), st.integers(1, 700)), max_size=25)


def chunks(stream: bytes, sizes: list[int]):
    pos = 0
    for size in sizes:
        if pos >= len(stream):
            return
        yield stream[pos : pos + size]
        pos += size
    if pos < len(stream):
        yield stream[pos:]


def realistic_stream() -> tuple[bytes, list[Packet]]:
    """A clean stream in all three header kinds, and its packets."""
    body = bytes(range(256)) * 3
    raw = [
        encode_h80(Cmd.P_INITIAL_DATA, 0),
        encode_h80(Cmd.P_CONNECTION_FEATURES, 8) + bytes(8),
        encode_h95(Cmd.P_DATA, len(body)) + body,
        encode_h100(Cmd.P_DATA, 40) + bytes(range(40)),
        encode_h100(Cmd.P_BARRIER_ACK, 8, 0xFFFF) + b"\x83\x74\x02\x67" * 2,  # a magic in a payload
        encode_h80(Cmd.P_PING, 0),
        encode_h100(Cmd.P_PING_ACK, 0),
    ]
    stream = b"".join(raw)
    packets_ = PacketDecoder().feed(stream)
    assert len(packets_) == len(raw) and all(isinstance(p, Packet) for p in packets_)
    return stream, packets_


CLEAN, CLEAN_PACKETS = realistic_stream()


# --- the shared oracle -------------------------------------------------------------------------


def run(stream: bytes, sizes: list[int], max_payload: int) -> tuple[PacketDecoder, PacketScanner, list]:
    """Feed ``stream`` in ``sizes`` chunks to a decoder and a scanner, checking after every feed:

    * feed() never raises; at most one StreamError, and it is the last event ever returned;
    * between feeds the decoder holds at most one header plus max_payload bytes;
    * once failed, the decoder returns nothing more and keeps the same StreamError;
    * the scanner fails exactly when the decoder does, and its counts are the decoder's packets
      plus the one packet whose header is complete but whose payload is still arriving.
    """
    decoder, scanner = PacketDecoder(max_payload), PacketScanner(max_payload)
    events: list = []
    fed = 0
    for chunk in chunks(stream, sizes):
        before = decoder.failed
        new = decoder.feed(chunk)
        scanner.feed(chunk)
        fed += len(chunk)
        if before is not None:
            assert new == [] and decoder.failed is before
        events += new
        errors = [e for e in events if isinstance(e, StreamError)]
        assert len(errors) <= 1 and (not errors or events[-1] is errors[0])
        assert decoder.buffered <= max_payload + MAX_HEADER
        assert fed - decoder.buffered >= 0

        done = [e for e in events if isinstance(e, Packet)]
        expected = Counter(p.name for p in done)
        consumed = sum(len(p.encode()) for p in done)
        if decoder.failed is not None:
            assert decoder.buffered == 0
            assert scanner.opaque is not None, "decoder failed, scanner still counting"
        else:
            assert scanner.opaque is None, f"scanner gave up ({scanner.opaque}), decoder did not"
            assert decoder.buffered == fed - consumed
            pending = decode_header(stream[:fed], consumed, max_payload)  # the decoder accepted it
            if pending is not None:
                expected[packet_name(pending.command)] += 1
        assert scanner.counts == expected
    return decoder, scanner, events


def comparable(events: list) -> list:
    """Events with each StreamError's exception as (type, message): exceptions never compare equal."""
    return [(e.offset, type(e.error), str(e.error)) if isinstance(e, StreamError) else e
            for e in events]


def check_whole(stream: bytes, sizes: list[int], max_payload: int) -> list:
    decoder, scanner, events = run(stream, sizes, max_payload)
    # Chunking never matters: the same packets, and the error at the same offset.
    assert comparable(events) == comparable(PacketDecoder(max_payload).feed(stream))
    # What was decoded is exactly the start of the stream, and an error is reported right after it.
    done = b"".join(e.encode() for e in events if isinstance(e, Packet))
    assert stream.startswith(done)
    if decoder.failed is not None:
        assert decoder.failed.offset == len(done)
        assert isinstance(decoder.failed.error, WireError)
        # Failed stays failed, even for a perfectly valid packet afterwards.
        assert decoder.feed(encode_h80(Cmd.P_PING, 0)) == [] and decoder.buffered == 0
        counts = Counter(scanner.counts)
        scanner.feed(encode_h80(Cmd.P_PING, 0))
        assert scanner.counts == counts
    return events


# --- tests ------------------------------------------------------------------------------------


@FUZZ
@given(drbd_streams(), chunk_sizes)
def test_structured_streams_decoder_and_scanner_agree(stream_limit, sizes):
    """Valid packets with a mutated header field (magic, length up to 2**32-1, command, pad), cut
    short or followed by junk, in any chunking: no exception escapes feed(), the decoder holds at
    most max_payload + 16 bytes, fails closed with the error right after the last good packet, and
    the scanner's per-type counts match the decoder's at every step."""
    stream, max_payload = stream_limit
    check_whole(stream, sizes, max_payload)


@FUZZ
@given(st.binary(max_size=3000), chunk_sizes, limits,
       st.sampled_from([b"", encode_h80(Cmd.P_INITIAL_META, 0), encode_h100(Cmd.P_PING, 0)]))
def test_arbitrary_bytes_decoder_and_scanner_agree(data, sizes, max_payload, prefix):
    """Arbitrary bytes (optionally after a valid first packet): the same invariants hold, and the
    scanner and decoder agree on whether and when the stream stopped being DRBD."""
    check_whole(prefix + data, sizes, max_payload)


@FUZZ
@given(st.integers(0, len(CLEAN) - 1), st.integers(1, 255), chunk_sizes)
def test_one_flipped_byte_in_a_valid_stream(pos, xor, sizes):
    """A clean h80/h95/h100 stream with one byte flipped anywhere: every packet that ends before
    the flipped byte is decoded unchanged; whatever follows, the invariants of the oracle hold."""
    bad = bytearray(CLEAN)
    bad[pos] ^= xor
    events = check_whole(bytes(bad), sizes, MAX_PAYLOAD)
    end = 0
    for original in CLEAN_PACKETS:
        end += len(original.encode())
        if end > pos:
            break
        assert events and events.pop(0) == original


@FUZZ
@given(st.sampled_from(["h80", "h95", "h100"]), commands, lengths(4096), st.binary(max_size=200),
       chunk_sizes)
def test_a_header_alone_with_any_length(kind, command, length, payload, sizes):
    """A lone header announcing any length (0 .. 2**32-1) and a short payload: either an error at
    offset 0 with nothing buffered, or a wait holding only what arrived; never a big buffer."""
    if kind == "h80":
        length = min(length, 0xFFFF)
        head = encode_h80(command, length)
    else:
        head = (encode_h95 if kind == "h95" else encode_h100)(command, length)
    stream = head + payload
    decoder, _, events = run(stream, sizes, 4096)
    if length > 4096:
        assert [type(e) for e in events] == [StreamError] and events[0].offset == 0
    elif length > len(payload):
        assert events == [] and decoder.buffered == len(stream)
    else:
        assert events[0] == Packet(decode_header(head, 0, 4096), payload[:length])


# --- where the stream stops being DRBD --------------------------------------------------------

_OFFSET = re.compile(r"at stream offset (\d+)$")


@st.composite
def good_then_garbage(draw) -> bytes:
    good = b"".join(bytes(h) + p for _, h, p in draw(st.lists(packets(4096), max_size=4)))
    junk = draw(st.binary(min_size=4, max_size=40).filter(lambda b: b[:2] != b"\x83\x5a"
                                                         and b[:4] not in (b"\x83\x74\x02\x67",
                                                                           b"\x86\x20\xec\x20")))
    return good + junk


@FUZZ
@example(stream=encode_h100(Cmd.P_PING, 0) + b"GET / HTTP/1.1\r\n", sizes=[])
@given(good_then_garbage(), chunk_sizes)
def test_scanner_reports_the_same_offset_as_the_decoder(stream, sizes):
    """When a stream stops being DRBD, the scanner's reason names the same stream offset as the
    decoder's StreamError (the start of the first bad header), whatever the chunking."""
    decoder, scanner, _ = run(stream, sizes, 4096)
    assert decoder.failed is not None and scanner.opaque is not None
    match = _OFFSET.search(scanner.opaque)
    assert match is not None, scanner.opaque
    assert int(match.group(1)) == decoder.failed.offset, scanner.opaque
