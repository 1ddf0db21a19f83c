"""Payload structs a DRBD 8.4-dialect peer needs, each with ``pack()`` and ``unpack()``.

All fields are big-endian except ``block_id`` and ``barrier``: those are opaque host-order cookies
that the peer only echoes, so they are kept as raw bytes here and never interpreted.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar, Self

from drbdproxy.drbd.header import WireError


class PayloadError(WireError):
    """A payload had the wrong size or an impossible value."""


def _check_size(name: str, buf: bytes | memoryview, size: int, exact: bool = True) -> None:
    if (len(buf) != size) if exact else (len(buf) < size):
        raise PayloadError(f"{name} payload is {len(buf)} bytes, expected {size}")


class _FixedStruct:
    """pack()/unpack() for a payload whose fields map one to one onto a struct format."""

    NAME: ClassVar[str]
    _S: ClassVar[struct.Struct]
    #: Every subclass is a dataclass, whose fields are the struct's in order.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    #: unpack() accepts longer payloads (P_DATA: block data follows the struct).
    _PREFIX: ClassVar[bool] = False

    def pack(self) -> bytes:
        return self._S.pack(*(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Self:
        _check_size(cls.NAME, buf, cls._S.size, exact=not cls._PREFIX)
        return cls(*cls._S.unpack_from(buf))


class WireProtocol(enum.IntEnum):
    """DRBD's replication protocols (``net { protocol X; }``)."""

    A = 1
    B = 2
    C = 3


# dp_flags of P_DATA
DP_RW_SYNC = 2
DP_MAY_SET_IN_SYNC = 4
DP_UNPLUG = 8
DP_FUA = 16
DP_FLUSH = 32
DP_SEND_RECEIVE_ACK = 128
DP_SEND_WRITE_ACK = 256

# feature flags of P_CONNECTION_FEATURES
FF_TRIM = 1
FF_THIN_RESYNC = 2
FF_WSAME = 4
FF_WZEROES = 8


@dataclass(frozen=True, slots=True)
class ConnectionFeatures:
    """p_connection_features: 72 bytes, always sent with an h80 header."""

    protocol_min: int
    feature_flags: int
    protocol_max: int
    sender_node_id: int = 0
    receiver_node_id: int = 0

    SIZE: ClassVar[int] = 72
    _S: ClassVar[struct.Struct] = struct.Struct(">IIIIII48x")

    def pack(self) -> bytes:
        return self._S.pack(
            self.protocol_min,
            self.feature_flags,
            self.protocol_max,
            self.sender_node_id,
            self.receiver_node_id,
            0,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> ConnectionFeatures:
        _check_size("P_CONNECTION_FEATURES", buf, cls.SIZE)
        pmin, flags, pmax, snode, rnode, _ = cls._S.unpack(buf)
        return cls(pmin, flags, pmax or pmin, snode, rnode)


def agree_version(mine: ConnectionFeatures, peer: ConnectionFeatures) -> int:
    """The protocol version both sides speak, as ``drbd_do_features`` computes it.

    :raises PayloadError: the version ranges do not overlap.
    """
    if peer.protocol_max < mine.protocol_min or mine.protocol_max < peer.protocol_min:
        raise PayloadError(
            f"incompatible DRBD dialects: I support {mine.protocol_min}-{mine.protocol_max},"
            f" peer supports {peer.protocol_min}-{peer.protocol_max}"
        )
    return min(mine.protocol_max, peer.protocol_max)


@dataclass(frozen=True, slots=True)
class Protocol:
    """p_protocol plus the NUL-terminated integrity_alg string (apv >= 87)."""

    protocol: WireProtocol
    after_sb_0p: int = 0
    after_sb_1p: int = 0
    after_sb_2p: int = 0
    conn_flags: int = 0
    two_primaries: int = 0
    integrity_alg: str = ""

    _S: ClassVar[struct.Struct] = struct.Struct(">6I")

    def pack(self) -> bytes:
        fixed = self._S.pack(
            self.protocol,
            self.after_sb_0p,
            self.after_sb_1p,
            self.after_sb_2p,
            self.conn_flags,
            self.two_primaries,
        )
        return fixed + self.integrity_alg.encode("ascii") + b"\0"

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Protocol:
        _check_size("P_PROTOCOL", buf, cls._S.size + 1, exact=False)
        number, sb_0p, sb_1p, sb_2p, conn_flags, two_primaries = cls._S.unpack_from(buf)
        alg = bytes(buf[cls._S.size :]).split(b"\0", 1)[0].decode("ascii", "replace")
        try:
            proto = WireProtocol(number)
        except ValueError:
            raise PayloadError(f"P_PROTOCOL names unknown protocol {number}") from None
        return cls(proto, sb_0p, sb_1p, sb_2p, conn_flags, two_primaries, integrity_alg=alg)


@dataclass(frozen=True, slots=True)
class SyncParam95:
    """p_rs_param_95: the P_SYNC_PARAM89 payload at apv >= 95 (148 bytes)."""

    resync_rate: int = 250
    verify_alg: str = ""
    csums_alg: str = ""
    c_plan_ahead: int = 20
    c_delay_target: int = 10
    c_fill_target: int = 100
    c_max_rate: int = 102400

    SIZE: ClassVar[int] = 148
    _S: ClassVar[struct.Struct] = struct.Struct(">I64s64sIIII")

    def pack(self) -> bytes:
        return self._S.pack(
            self.resync_rate,
            self.verify_alg.encode("ascii"),
            self.csums_alg.encode("ascii"),
            self.c_plan_ahead,
            self.c_delay_target,
            self.c_fill_target,
            self.c_max_rate,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> SyncParam95:
        _check_size("P_SYNC_PARAM89", buf, cls.SIZE)
        rate, verify, csums, plan, delay, fill, maxr = cls._S.unpack(buf)

        def text(raw: bytes) -> str:
            return raw.split(b"\0", 1)[0].decode("ascii", "replace")

        return cls(rate, text(verify), text(csums), plan, delay, fill, maxr)


@dataclass(frozen=True, slots=True)
class QueueLimits(_FixedStruct):
    """o_qlim: appended to p_sizes when FF_WSAME was agreed (24 bytes)."""

    physical_block_size: int = 512
    logical_block_size: int = 512
    alignment_offset: int = 0
    io_min: int = 512
    io_opt: int = 0
    discard_enabled: int = 0
    discard_zeroes_data: int = 0
    write_same_capable: int = 0
    bm_block_shift_minus_12: int = 0

    SIZE: ClassVar[int] = 24
    NAME: ClassVar[str] = "o_qlim"
    _S: ClassVar[struct.Struct] = struct.Struct(">5I4B")


@dataclass(frozen=True, slots=True)
class Sizes:
    """p_sizes (sizes in 512-byte sectors), with o_qlim when FF_WSAME was agreed."""

    d_size: int
    u_size: int
    c_size: int
    max_bio_size: int = 1 << 20
    queue_order_type: int = 0
    dds_flags: int = 0
    qlim: QueueLimits | None = None

    SIZE: ClassVar[int] = 32
    _S: ClassVar[struct.Struct] = struct.Struct(">QQQIHH")

    def pack(self) -> bytes:
        fixed = self._S.pack(
            self.d_size,
            self.u_size,
            self.c_size,
            self.max_bio_size,
            self.queue_order_type,
            self.dds_flags,
        )
        return fixed + (self.qlim.pack() if self.qlim is not None else b"")

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Sizes:
        if len(buf) not in (cls.SIZE, cls.SIZE + QueueLimits.SIZE):
            raise PayloadError(f"P_SIZES payload is {len(buf)} bytes, expected 32 or 56")
        qlim = QueueLimits.unpack(buf[cls.SIZE :]) if len(buf) > cls.SIZE else None
        d_size, u_size, c_size, max_bio_size, queue_order_type, dds_flags = cls._S.unpack_from(buf)
        return cls(d_size, u_size, c_size, max_bio_size, queue_order_type, dds_flags, qlim=qlim)


@dataclass(frozen=True, slots=True)
class Uuids(_FixedStruct):
    """p_uuids: current, bitmap, two history UUIDs, bitmap weight and flags."""

    current: int
    bitmap: int = 0
    history0: int = 0
    history1: int = 0
    dirty_bits: int = 0
    uuid_flags: int = 0

    SIZE: ClassVar[int] = 48
    NAME: ClassVar[str] = "P_UUIDS"
    _S: ClassVar[struct.Struct] = struct.Struct(">6Q")


class Role(enum.IntEnum):
    PRIMARY = 1
    SECONDARY = 2


class ConnState(enum.IntEnum):
    """8.4 connection states as they appear in P_STATE (the subset a simple peer uses)."""

    WF_CONNECTION = 8
    WF_REPORT_PARAMS = 9
    CONNECTED = 10
    AHEAD = 22
    BEHIND = 23


class DiskState(enum.IntEnum):
    DISKLESS = 0
    INCONSISTENT = 5
    OUTDATED = 6
    DUNKNOWN = 7
    CONSISTENT = 8
    UP_TO_DATE = 9


@dataclass(frozen=True, slots=True)
class State:
    """p_state: DRBD's little-endian ``union drbd_state`` bitfield, sent as a be32."""

    role: int
    peer: int
    conn: int
    disk: int
    pdsk: int
    other: int = 0

    SIZE: ClassVar[int] = 4

    @property
    def word(self) -> int:
        return (
            (self.role & 0x3)
            | (self.peer & 0x3) << 2
            | (self.conn & 0x1F) << 4
            | (self.disk & 0xF) << 9
            | (self.pdsk & 0xF) << 13
            | (self.other << 17)
        )

    def pack(self) -> bytes:
        return self.word.to_bytes(4, "big")

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> State:
        _check_size("P_STATE", buf, cls.SIZE)
        w = int.from_bytes(buf, "big")
        return cls(w & 0x3, (w >> 2) & 0x3, (w >> 4) & 0x1F, (w >> 9) & 0xF, (w >> 13) & 0xF, w >> 17)


@dataclass(frozen=True, slots=True)
class ReqState(_FixedStruct):
    """p_req_state: a state change request (mask and value words)."""

    mask: int
    val: int

    SIZE: ClassVar[int] = 8
    NAME: ClassVar[str] = "state change request"
    _S: ClassVar[struct.Struct] = struct.Struct(">II")


#: SS_SUCCESS, the retcode of a granted state change.
SS_SUCCESS = 1


@dataclass(frozen=True, slots=True)
class ReqStateReply:
    retcode: int

    SIZE: ClassVar[int] = 4

    def pack(self) -> bytes:
        return self.retcode.to_bytes(4, "big", signed=True)

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> ReqStateReply:
        _check_size("state change reply", buf, cls.SIZE)
        return cls(int.from_bytes(buf, "big", signed=True))


@dataclass(frozen=True, slots=True)
class DataHeader(_FixedStruct):
    """p_data: the 24 bytes in front of a P_DATA block."""

    sector: int
    block_id: bytes
    seq_num: int
    dp_flags: int

    SIZE: ClassVar[int] = 24
    NAME: ClassVar[str] = "P_DATA"
    _S: ClassVar[struct.Struct] = struct.Struct(">Q8sII")
    _PREFIX: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class BlockAck(_FixedStruct):
    """p_block_ack: P_RECV_ACK, P_WRITE_ACK and the other meta-socket block acks."""

    sector: int
    block_id: bytes
    blksize: int
    seq_num: int

    SIZE: ClassVar[int] = 24
    NAME: ClassVar[str] = "block ack"
    _S: ClassVar[struct.Struct] = struct.Struct(">Q8sII")


@dataclass(frozen=True, slots=True)
class Barrier:
    """p_barrier: closes an epoch; ``barrier`` is the epoch number in host order (opaque)."""

    barrier: bytes

    SIZE: ClassVar[int] = 8

    def pack(self) -> bytes:
        return self.barrier + b"\0\0\0\0"

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Barrier:
        _check_size("P_BARRIER", buf, cls.SIZE)
        return cls(bytes(buf[:4]))


@dataclass(frozen=True, slots=True)
class BarrierAck:
    """p_barrier_ack: echoes the barrier cookie and counts the writes of that epoch."""

    barrier: bytes
    set_size: int

    SIZE: ClassVar[int] = 8

    def pack(self) -> bytes:
        return self.barrier + self.set_size.to_bytes(4, "big")

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> BarrierAck:
        _check_size("P_BARRIER_ACK", buf, cls.SIZE)
        return cls(bytes(buf[:4]), int.from_bytes(buf[4:], "big"))


@dataclass(frozen=True, slots=True)
class BlockDesc(_FixedStruct):
    """p_block_desc: P_OUT_OF_SYNC (Ahead/Behind mode) and P_RS_DEALLOCATED."""

    sector: int
    blksize: int

    SIZE: ClassVar[int] = 16
    NAME: ClassVar[str] = "block descriptor"
    _S: ClassVar[struct.Struct] = struct.Struct(">QI4x")


def host_cookie(value: int, size: int = 8) -> bytes:
    """An opaque host-order cookie (block_id, barrier) as an x86 kernel would put it on the wire."""
    return value.to_bytes(size, "little")


def cookie_value(raw: bytes) -> int:
    return int.from_bytes(raw, "little")
