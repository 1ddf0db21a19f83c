"""DRBD header codec: h80, h95 and h100 exactly as the kernel lays them out."""

import pytest

from drbdproxy.drbd.header import (
    MAX_PAYLOAD,
    BadMagic,
    BadPadding,
    Header,
    HeaderVersion,
    OversizedPacket,
    decode_header,
    encode,
    encode_h80,
    encode_h95,
    encode_h100,
    encode_header,
)
from drbdproxy.drbd.packets import Cmd


def test_initial_packets_are_the_documented_bytes():
    """P_INITIAL_DATA/META are the 8 bytes DRBD's dtt_send_first_packet writes."""
    assert encode_h80(Cmd.P_INITIAL_DATA, 0) == bytes.fromhex("83740267fff20000")
    assert encode_h80(Cmd.P_INITIAL_META, 0) == bytes.fromhex("83740267fff10000")


def test_h100_layout():
    """h100: magic, volume, command, length, zero pad, all big-endian, 16 bytes."""
    raw = encode_h100(Cmd.P_DATA, 0x1018, volume=3)
    assert raw == bytes.fromhex("8620ec20" "0003" "0000" "00001018" "00000000")
    assert decode_header(raw) == Header(HeaderVersion.H100, Cmd.P_DATA, 0x1018, 3)


def test_h95_layout():
    """h95: a 16-bit magic, the command, then a 32-bit length."""
    raw = encode_h95(Cmd.P_DATA, 40000)
    assert raw == bytes.fromhex("835a" "0000" "00009c40")
    assert decode_header(raw) == Header(HeaderVersion.H95, Cmd.P_DATA, 40000)


@pytest.mark.parametrize(
    "version, length, expected",
    [
        (101, 10, HeaderVersion.H100),
        (100, 70000, HeaderVersion.H100),
        (96, 100, HeaderVersion.H80),
        (96, 40000, HeaderVersion.H95),
        (94, 100, HeaderVersion.H80),
        (80, 0, HeaderVersion.H80),
    ],
)
def test_encode_header_follows_prepare_header(version, length, expected):
    """The header kind depends on the agreed version and the size, as in prepare_header()."""
    header = decode_header(encode_header(Cmd.P_DATA, length, version))
    assert header is not None and header.version is expected and header.length == length


def test_round_trip_every_version():
    """Decoding then encoding gives back exactly the same bytes."""
    for raw in (encode_h80(0x0E, 4), encode_h95(0x00, 1 << 16), encode_h100(0x13, 0, 0xFFFF)):
        header = decode_header(raw)
        assert header is not None and encode(header) == raw


def test_incomplete_header_is_none():
    """Fewer bytes than the header needs: no header yet, and no error."""
    raw = encode_h100(Cmd.P_PING, 0)
    for cut in range(len(raw)):
        assert decode_header(raw[:cut]) is None


def test_bad_magic_is_an_error():
    """Four bytes that are no DRBD magic raise BadMagic, naming the bytes."""
    with pytest.raises(BadMagic, match="0x47455420"):
        decode_header(b"GET / HTTP/1.1\r\n")


def test_nonzero_padding_is_an_error():
    """DRBD refuses an h100 header whose pad is not zero; so do we."""
    raw = bytearray(encode_h100(Cmd.P_PING, 0))
    raw[15] = 1
    with pytest.raises(BadPadding):
        decode_header(bytes(raw))


def test_oversized_length_is_an_error():
    """A length beyond the largest DRBD packet is refused before any payload is buffered."""
    with pytest.raises(OversizedPacket):
        decode_header(encode_h100(Cmd.P_DATA, MAX_PAYLOAD + 1))
    with pytest.raises(OversizedPacket):
        decode_header(encode_h100(Cmd.P_DATA, 5000), max_payload=4096)
