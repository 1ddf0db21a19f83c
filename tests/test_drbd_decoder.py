"""The streaming decoder gives the same packets whatever the TCP segment boundaries."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from drbdproxy.drbd.decoder import Packet, PacketDecoder, StreamError
from drbdproxy.drbd.header import BadMagic, OversizedPacket, encode_h80, encode_h95, encode_h100
from drbdproxy.drbd.packets import Cmd
from drbdproxy.drbd.payloads import BarrierAck, ConnectionFeatures, DataHeader, host_cookie


def sample_stream() -> tuple[bytes, int]:
    """A realistic mix: initial packet, features (h80), h100 data and barriers, an h95 packet."""
    rng = random.Random(7)
    parts = [encode_h80(Cmd.P_INITIAL_DATA, 0)]
    features = ConnectionFeatures(86, 0, 101).pack()
    parts.append(encode_h80(Cmd.P_CONNECTION_FEATURES, len(features)) + features)
    count = 2
    for i in range(40):
        block = rng.randbytes(rng.choice([512, 4096, 65536]))
        body = DataHeader(i * 8, host_cookie(i), i + 1, 0x100).pack() + block
        parts.append(encode_h100(Cmd.P_DATA, len(body)) + body)
        count += 1
        if i % 9 == 8:
            ack = BarrierAck(host_cookie(i, 4), 9).pack()
            parts.append(encode_h100(Cmd.P_BARRIER_ACK, len(ack)) + ack)
            count += 1
    big = rng.randbytes(40000)
    parts.append(encode_h95(Cmd.P_DATA, len(big)) + big)
    parts.append(encode_h100(Cmd.P_PING, 0, 0xFFFF))
    return b"".join(parts), count + 2


def decode_in_chunks(stream: bytes, sizes) -> list:
    decoder = PacketDecoder()
    events = []
    pos = 0
    for size in sizes:
        events += decoder.feed(stream[pos : pos + size])
        pos += size
    events += decoder.feed(stream[pos:])
    return events


STREAM, COUNT = sample_stream()


def test_one_shot_decodes_every_packet():
    """Fed all at once, the decoder yields every packet, and they re-encode to the stream."""
    events = PacketDecoder().feed(STREAM)
    assert len(events) == COUNT
    assert all(isinstance(e, Packet) for e in events)
    assert b"".join(e.encode() for e in events) == STREAM


def test_byte_at_a_time_matches_one_shot():
    """One byte per feed gives exactly the packets of a single feed."""
    decoder = PacketDecoder()
    events = []
    for i in range(len(STREAM)):
        events += decoder.feed(STREAM[i : i + 1])
    assert events == PacketDecoder().feed(STREAM)
    assert decoder.buffered == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=70000), max_size=60))
def test_random_chunking_matches_one_shot(sizes):
    """Any chunking (hypothesis picks the cut points) gives the same packets."""
    assert decode_in_chunks(STREAM, sizes) == PacketDecoder().feed(STREAM)


def test_bad_magic_is_reported_with_its_offset():
    """Garbage after valid packets: those packets come out, then one StreamError at the offset."""
    good = encode_h100(Cmd.P_PING, 0) + encode_h100(Cmd.P_PING_ACK, 0)
    decoder = PacketDecoder()
    events = decoder.feed(good + b"SSH-2.0-OpenSSH\r\n")
    assert [e.name for e in events[:2]] == ["P_PING", "P_PING_ACK"]
    assert isinstance(events[2], StreamError)
    assert events[2].offset == 32 and isinstance(events[2].error, BadMagic)
    assert decoder.feed(good) == []  # a broken stream stays broken: no resync by guessing


def test_oversized_length_is_reported_not_buffered():
    """A header announcing 1 GiB is an error at once; the decoder does not wait for the bytes."""
    decoder = PacketDecoder()
    events = decoder.feed(encode_h100(Cmd.P_DATA, 1 << 30))
    assert len(events) == 1 and isinstance(events[0].error, OversizedPacket)
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(data):
    """Whatever arrives, feed() returns events; it never raises and never holds a huge buffer."""
    decoder = PacketDecoder()
    for i in range(0, len(data), 97):
        decoder.feed(data[i : i + 97])
    assert decoder.buffered <= len(data)


def test_blocks_in_immutable_reads_are_views_and_the_rest_copies():
    """A block that arrives whole in received bytes is handed out as a view of them (no copy);
    small packets, and anything from a mutable buffer, are copies nobody can change later."""
    stream, _ = sample_stream()
    packets = [e for e in PacketDecoder().feed(stream) if isinstance(e, Packet)]
    big = [p for p in packets if len(p.payload) >= 4096]
    assert big and all(isinstance(p.payload, memoryview) and p.payload.obj is stream for p in big)
    assert all(type(p.payload) is bytes for p in packets if len(p.payload) < 4096)
    mutable = bytearray(stream)
    copied = [e for e in PacketDecoder().feed(mutable) if isinstance(e, Packet)]
    mutable[:] = bytes(len(mutable))
    assert all(type(p.payload) is bytes for p in copied) and copied == packets


def test_a_packet_straddling_reads_takes_only_the_bytes_it_needs():
    """Completing a held packet consumes just its missing bytes: the packets wholly inside the
    next read are still cut straight out of it (views), in order."""
    stream, count = sample_stream()
    cut = len(stream) // 3
    decoder = PacketDecoder()
    first = decoder.feed(stream[:cut])
    assert decoder.buffered  # the cut fell inside a packet
    rest = stream[cut:]
    second = decoder.feed(rest)
    assert len(first) + len(second) == count
    assert any(isinstance(p.payload, memoryview) and p.payload.obj is rest for p in second[1:])
    assert decoder.buffered == 0
