"""The DRBD packet table: command numbers, names, which socket carries them, fixed payload sizes.

Numbers and sockets are from ``enum drbd_packet`` (drbd-headers/drbd_protocol.h) and the receivers'
dispatch tables; see ``shared/reference/drbd-wire-protocol.md`` section 2.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Cmd(enum.IntEnum):
    P_DATA = 0x00
    P_DATA_REPLY = 0x01
    P_RS_DATA_REPLY = 0x02
    P_BARRIER = 0x03
    P_BITMAP = 0x04
    P_BECOME_SYNC_TARGET = 0x05
    P_BECOME_SYNC_SOURCE = 0x06
    P_UNPLUG_REMOTE = 0x07
    P_DATA_REQUEST = 0x08
    P_RS_DATA_REQUEST = 0x09
    P_SYNC_PARAM = 0x0A
    P_PROTOCOL = 0x0B
    P_UUIDS = 0x0C
    P_SIZES = 0x0D
    P_STATE = 0x0E
    P_SYNC_UUID = 0x0F
    P_AUTH_CHALLENGE = 0x10
    P_AUTH_RESPONSE = 0x11
    P_STATE_CHG_REQ = 0x12
    P_PING = 0x13
    P_PING_ACK = 0x14
    P_RECV_ACK = 0x15
    P_WRITE_ACK = 0x16
    P_RS_WRITE_ACK = 0x17
    P_SUPERSEDED = 0x18
    P_NEG_ACK = 0x19
    P_NEG_DREPLY = 0x1A
    P_NEG_RS_DREPLY = 0x1B
    P_BARRIER_ACK = 0x1C
    P_STATE_CHG_REPLY = 0x1D
    P_OV_REQUEST = 0x1E
    P_OV_REPLY = 0x1F
    P_OV_RESULT = 0x20
    P_CSUM_RS_REQUEST = 0x21
    P_RS_IS_IN_SYNC = 0x22
    P_SYNC_PARAM89 = 0x23
    P_COMPRESSED_BITMAP = 0x24
    P_DELAY_PROBE = 0x27
    P_OUT_OF_SYNC = 0x28
    P_RS_CANCEL = 0x29
    P_CONN_ST_CHG_REQ = 0x2A
    P_CONN_ST_CHG_REPLY = 0x2B
    P_RETRY_WRITE = 0x2C
    P_PROTOCOL_UPDATE = 0x2D
    P_TWOPC_PREPARE = 0x2E
    P_TWOPC_ABORT = 0x2F
    P_DAGTAG = 0x30
    P_TRIM = 0x31
    P_RS_THIN_REQ = 0x32
    P_RS_DEALLOCATED = 0x33
    P_WSAME = 0x34
    P_TWOPC_PREP_RSZ = 0x35
    P_ZEROES = 0x36
    P_PEER_ACK = 0x40
    P_PEERS_IN_SYNC = 0x41
    P_UUIDS110 = 0x42
    P_PEER_DAGTAG = 0x43
    P_CURRENT_UUID = 0x44
    P_TWOPC_YES = 0x45
    P_TWOPC_NO = 0x46
    P_TWOPC_COMMIT = 0x47
    P_TWOPC_RETRY = 0x48
    P_CONFIRM_STABLE = 0x49
    P_RS_CANCEL_AHEAD = 0x4A
    P_DISCONNECT = 0x4B
    P_RS_DAGTAG_REQ = 0x4C
    P_RS_CSUM_DAGTAG_REQ = 0x4D
    P_RS_THIN_DAGTAG_REQ = 0x4E
    P_OV_DAGTAG_REQ = 0x4F
    P_OV_DAGTAG_REPLY = 0x50
    P_WRITE_ACK_IN_SYNC = 0x51
    P_RS_NEG_ACK = 0x52
    P_OV_RESULT_ID = 0x53
    P_RS_DEALLOCATED_ID = 0x54
    P_FLUSH_REQUESTS = 0x55
    P_FLUSH_FORWARD = 0x56
    P_FLUSH_REQUESTS_ACK = 0x57
    P_ENABLE_REPLICATION_NEXT = 0x58
    P_ENABLE_REPLICATION = 0x59
    P_INITIAL_META = 0xFFF1
    P_INITIAL_DATA = 0xFFF2
    P_CONNECTION_FEATURES = 0xFFFE


class Sock(enum.Enum):
    """Which of DRBD's two TCP sockets carries a packet."""

    DATA = "data"
    META = "meta"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class PacketInfo:
    cmd: Cmd
    sock: Sock
    #: Size of the fixed payload struct; None when it varies (bitmaps, strings, digests).
    fixed_size: int | None
    #: True when block data follows the fixed struct (so the payload is larger than fixed_size).
    has_data: bool = False
    #: Known to DRBD 8.4 (False: DRBD 9 only).
    drbd84: bool = True

    @property
    def name(self) -> str:
        return self.cmd.name


D, M, B = Sock.DATA, Sock.META, Sock.BOTH
_BLOCK_ACK = 24
_BLOCK_REQ = 24
_TWOPC_REQ = 36
_TWOPC_REPLY = 32

_TABLE: list[tuple[Cmd, Sock, int | None, bool, bool]] = [
    # cmd, socket, fixed payload, block data follows, in 8.4
    (Cmd.P_DATA, D, 24, True, True),
    (Cmd.P_DATA_REPLY, D, 24, True, True),
    (Cmd.P_RS_DATA_REPLY, D, 24, True, True),
    (Cmd.P_BARRIER, D, 8, False, True),
    (Cmd.P_BITMAP, D, None, False, True),
    (Cmd.P_BECOME_SYNC_TARGET, D, 0, False, True),
    (Cmd.P_BECOME_SYNC_SOURCE, D, 0, False, True),
    (Cmd.P_UNPLUG_REMOTE, D, 0, False, True),
    (Cmd.P_DATA_REQUEST, D, _BLOCK_REQ, False, True),
    (Cmd.P_RS_DATA_REQUEST, D, _BLOCK_REQ, False, True),
    (Cmd.P_SYNC_PARAM, D, None, False, True),
    (Cmd.P_PROTOCOL, D, None, False, True),
    (Cmd.P_UUIDS, D, 48, False, True),
    (Cmd.P_SIZES, D, None, False, True),  # 32, or 56 with o_qlim
    (Cmd.P_STATE, D, 4, False, True),
    (Cmd.P_SYNC_UUID, D, 8, False, True),
    (Cmd.P_AUTH_CHALLENGE, D, None, False, True),
    (Cmd.P_AUTH_RESPONSE, D, None, False, True),
    (Cmd.P_STATE_CHG_REQ, D, 8, False, True),
    (Cmd.P_PING, M, 0, False, True),
    (Cmd.P_PING_ACK, M, 0, False, True),
    (Cmd.P_RECV_ACK, M, _BLOCK_ACK, False, True),
    (Cmd.P_WRITE_ACK, M, _BLOCK_ACK, False, True),
    (Cmd.P_RS_WRITE_ACK, M, _BLOCK_ACK, False, True),
    (Cmd.P_SUPERSEDED, M, _BLOCK_ACK, False, True),
    (Cmd.P_NEG_ACK, M, _BLOCK_ACK, False, True),
    (Cmd.P_NEG_DREPLY, M, _BLOCK_ACK, False, True),
    (Cmd.P_NEG_RS_DREPLY, M, _BLOCK_ACK, False, True),
    (Cmd.P_BARRIER_ACK, M, 8, False, True),
    (Cmd.P_STATE_CHG_REPLY, M, 4, False, True),
    (Cmd.P_OV_REQUEST, D, _BLOCK_REQ, False, True),
    (Cmd.P_OV_REPLY, D, None, False, True),
    (Cmd.P_OV_RESULT, M, _BLOCK_ACK, False, True),
    (Cmd.P_CSUM_RS_REQUEST, D, None, False, True),
    (Cmd.P_RS_IS_IN_SYNC, M, _BLOCK_ACK, False, True),
    (Cmd.P_SYNC_PARAM89, D, None, False, True),
    (Cmd.P_COMPRESSED_BITMAP, D, None, False, True),
    (Cmd.P_DELAY_PROBE, B, 8, False, True),
    (Cmd.P_OUT_OF_SYNC, D, 16, False, True),
    (Cmd.P_RS_CANCEL, M, _BLOCK_ACK, False, True),
    (Cmd.P_CONN_ST_CHG_REQ, D, 8, False, True),
    (Cmd.P_CONN_ST_CHG_REPLY, M, 4, False, True),
    (Cmd.P_RETRY_WRITE, M, _BLOCK_ACK, False, True),
    (Cmd.P_PROTOCOL_UPDATE, D, None, False, True),
    (Cmd.P_TWOPC_PREPARE, D, _TWOPC_REQ, False, False),
    (Cmd.P_TWOPC_ABORT, D, _TWOPC_REQ, False, False),
    (Cmd.P_DAGTAG, D, 8, False, False),
    (Cmd.P_TRIM, D, 28, False, True),
    (Cmd.P_RS_THIN_REQ, D, _BLOCK_REQ, False, True),
    (Cmd.P_RS_DEALLOCATED, D, 16, False, True),
    (Cmd.P_WSAME, D, 28, True, True),
    (Cmd.P_TWOPC_PREP_RSZ, D, _TWOPC_REQ, False, False),
    (Cmd.P_ZEROES, D, 28, False, True),
    (Cmd.P_PEER_ACK, M, 16, False, False),
    (Cmd.P_PEERS_IN_SYNC, M, 24, False, False),
    (Cmd.P_UUIDS110, D, None, False, False),
    (Cmd.P_PEER_DAGTAG, D, 12, False, False),
    (Cmd.P_CURRENT_UUID, D, 16, False, False),
    (Cmd.P_TWOPC_YES, M, _TWOPC_REPLY, False, False),
    (Cmd.P_TWOPC_NO, M, _TWOPC_REPLY, False, False),
    (Cmd.P_TWOPC_COMMIT, D, _TWOPC_REQ, False, False),
    (Cmd.P_TWOPC_RETRY, M, _TWOPC_REPLY, False, False),
    (Cmd.P_CONFIRM_STABLE, M, 24, False, False),
    (Cmd.P_RS_CANCEL_AHEAD, M, _BLOCK_ACK, False, False),
    (Cmd.P_DISCONNECT, D, 0, False, False),
    (Cmd.P_RS_DAGTAG_REQ, D, 32, False, False),
    (Cmd.P_RS_CSUM_DAGTAG_REQ, D, None, False, False),
    (Cmd.P_RS_THIN_DAGTAG_REQ, D, 32, False, False),
    (Cmd.P_OV_DAGTAG_REQ, D, 32, False, False),
    (Cmd.P_OV_DAGTAG_REPLY, D, None, False, False),
    (Cmd.P_WRITE_ACK_IN_SYNC, M, _BLOCK_ACK, False, False),
    (Cmd.P_RS_NEG_ACK, M, _BLOCK_ACK, False, False),
    (Cmd.P_OV_RESULT_ID, M, 32, False, False),
    (Cmd.P_RS_DEALLOCATED_ID, D, _BLOCK_ACK, False, False),
    (Cmd.P_FLUSH_REQUESTS, D, 8, False, False),
    (Cmd.P_FLUSH_FORWARD, M, 12, False, False),
    (Cmd.P_FLUSH_REQUESTS_ACK, D, 12, False, False),
    (Cmd.P_ENABLE_REPLICATION_NEXT, D, 4, False, False),
    (Cmd.P_ENABLE_REPLICATION, D, 4, False, False),
    (Cmd.P_INITIAL_META, M, 0, False, True),
    (Cmd.P_INITIAL_DATA, D, 0, False, True),
    (Cmd.P_CONNECTION_FEATURES, D, 72, False, True),
]

PACKETS: dict[int, PacketInfo] = {
    cmd: PacketInfo(cmd, sock, size, data, in84) for cmd, sock, size, data, in84 in _TABLE
}

#: Commands above this value may be skipped by a receiver that does not know them.
P_MAY_IGNORE = 0x100


def packet_name(command: int) -> str:
    """The DRBD name of a command number, or ``P_UNKNOWN_0xNNNN`` for one not in the table."""
    info = PACKETS.get(command)
    return info.name if info is not None else f"P_UNKNOWN_0x{command:04x}"


def socket_of_initial(command: int) -> Sock | None:
    """The socket kind that a connection's first packet announces (None: not an initial packet)."""
    if command == Cmd.P_INITIAL_DATA:
        return Sock.DATA
    if command == Cmd.P_INITIAL_META:
        return Sock.META
    return None
