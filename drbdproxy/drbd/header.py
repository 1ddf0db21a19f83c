"""DRBD packet headers h80, h95 and h100 (all big-endian; ``length`` counts payload bytes only)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

DRBD_MAGIC = 0x83740267
DRBD_MAGIC_BIG = 0x835A
DRBD_MAGIC_100 = 0x8620EC20

#: DRBD's largest bio is 1 MiB; P_DATA adds its 24-byte p_data and maybe a digest (at most 64 bytes).
MAX_PAYLOAD = (1 << 20) + 4096

#: The most bytes a header can need before its size is known.
MAGIC_PEEK = 4

_H80 = struct.Struct(">IHH")
_H95 = struct.Struct(">HHI")
_H100 = struct.Struct(">IHHII")


class WireError(ValueError):
    """The byte stream is not (or no longer) a valid DRBD packet stream."""


class BadMagic(WireError):
    """A header began with none of the three DRBD magics."""


class OversizedPacket(WireError):
    """A header announced a payload larger than any DRBD packet can be."""


class BadPadding(WireError):
    """An h100 header had a non-zero pad field (DRBD rejects it too)."""


class HeaderVersion(enum.IntEnum):
    H80 = 80
    H95 = 95
    H100 = 100

    @property
    def size(self) -> int:
        return 16 if self is HeaderVersion.H100 else 8


@dataclass(frozen=True, slots=True)
class Header:
    version: HeaderVersion
    command: int
    length: int
    #: h100 only; 0xFFFF means connection-wide in DRBD 9.
    volume: int = 0

    @property
    def size(self) -> int:
        return self.version.size


def header_version(buf: bytes | bytearray | memoryview, offset: int = 0) -> HeaderVersion | None:
    """Which header starts at ``offset``: None when fewer than 4 bytes are there yet.

    The 32-bit magics are checked before the 16-bit one, as the kernel and Wireshark do.
    """
    if len(buf) - offset < MAGIC_PEEK:
        return None
    magic32 = int.from_bytes(buf[offset : offset + 4], "big")
    if magic32 == DRBD_MAGIC:
        return HeaderVersion.H80
    if magic32 == DRBD_MAGIC_100:
        return HeaderVersion.H100
    if magic32 >> 16 == DRBD_MAGIC_BIG:
        return HeaderVersion.H95
    raise BadMagic(f"bad DRBD magic 0x{magic32:08x}")


def decode_header(
    buf: bytes | bytearray | memoryview, offset: int = 0, max_payload: int = MAX_PAYLOAD
) -> Header | None:
    """Decode the header at ``offset``, or None if it is not complete yet.

    :raises WireError: bad magic, non-zero h100 padding, or a payload above ``max_payload``.
    """
    version = header_version(buf, offset)
    if version is None or len(buf) - offset < version.size:
        return None
    if version is HeaderVersion.H80:
        _, command, length = _H80.unpack_from(buf, offset)
        header = Header(version, command, length)
    elif version is HeaderVersion.H95:
        _, command, length = _H95.unpack_from(buf, offset)
        header = Header(version, command, length)
    else:
        _, volume, command, length, pad = _H100.unpack_from(buf, offset)
        if pad:
            raise BadPadding(f"h100 header padding is 0x{pad:08x}, not zero")
        header = Header(version, command, length, volume)
    if header.length > max_payload:
        raise OversizedPacket(
            f"packet 0x{header.command:04x} announces {header.length} payload bytes"
            f" (limit {max_payload})"
        )
    return header


def encode_h80(command: int, length: int) -> bytes:
    if length > 0xFFFF:
        raise ValueError(f"h80 cannot carry {length} payload bytes")
    return _H80.pack(DRBD_MAGIC, command, length)


def encode_h95(command: int, length: int) -> bytes:
    return _H95.pack(DRBD_MAGIC_BIG, command, length)


def encode_h100(command: int, length: int, volume: int = 0) -> bytes:
    return _H100.pack(DRBD_MAGIC_100, volume, command, length, 0)


#: Above this payload size an h80 header cannot be used (DRBD_MAX_SIZE_H80_PACKET).
MAX_SIZE_H80_PACKET = 1 << 15


def encode_header(command: int, length: int, agreed_version: int, volume: int = 0) -> bytes:
    """The header DRBD's ``prepare_header()`` would choose for this agreed protocol version."""
    if agreed_version >= 100:
        return encode_h100(command, length, volume)
    if agreed_version >= 95 and length > MAX_SIZE_H80_PACKET:
        return encode_h95(command, length)
    return encode_h80(command, length)


def encode(header: Header) -> bytes:
    """Encode a decoded header back to exactly its bytes."""
    if header.version is HeaderVersion.H80:
        return encode_h80(header.command, header.length)
    if header.version is HeaderVersion.H95:
        return encode_h95(header.command, header.length)
    return encode_h100(header.command, header.length, header.volume)
