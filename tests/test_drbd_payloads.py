"""Payload structs pack to DRBD's exact sizes and layouts and unpack back."""

import pytest

from drbdproxy.drbd.packets import PACKETS, Cmd, Sock, packet_name
from drbdproxy.drbd.payloads import (
    Barrier,
    BarrierAck,
    BlockAck,
    BlockDesc,
    ConnectionFeatures,
    DataHeader,
    PayloadError,
    Protocol,
    QueueLimits,
    ReqState,
    ReqStateReply,
    Sizes,
    State,
    SyncParam95,
    Uuids,
    WireProtocol,
    agree_version,
    host_cookie,
)


@pytest.mark.parametrize(
    "obj, cmd",
    [
        (ConnectionFeatures(86, 0xF, 101, 0, 1), Cmd.P_CONNECTION_FEATURES),
        (SyncParam95(verify_alg="crc32c"), Cmd.P_SYNC_PARAM89),
        (Sizes(2097152, 2097152, 2097152), Cmd.P_SIZES),
        (Sizes(8, 8, 8, qlim=QueueLimits(io_opt=4096)), Cmd.P_SIZES),
        (Uuids(0x1234, 5, 6, 7, 8, 0), Cmd.P_UUIDS),
        (State(1, 2, 10, 9, 9), Cmd.P_STATE),
        (Barrier(host_cookie(7, 4)), Cmd.P_BARRIER),
        (BarrierAck(host_cookie(7, 4), 2048), Cmd.P_BARRIER_ACK),
        (BlockAck(2048, host_cookie(99), 4096, 3), Cmd.P_WRITE_ACK),
        (BlockDesc(4096, 65536), Cmd.P_OUT_OF_SYNC),
        (ReqState(0x1F0, 0x10), Cmd.P_CONN_ST_CHG_REQ),
        (ReqStateReply(1), Cmd.P_CONN_ST_CHG_REPLY),
    ],
)
def test_round_trip_and_size(obj, cmd):
    """Each struct packs to the table's fixed size and unpacks to an equal object."""
    raw = obj.pack()
    if PACKETS[cmd].fixed_size is not None and cmd != Cmd.P_SIZES:
        assert len(raw) == PACKETS[cmd].fixed_size
    assert type(obj).unpack(raw) == obj


def test_state_word_matches_tshark_decoding():
    """Primary/Secondary, Connected, UpToDate/UpToDate is 0x000132a9, as Wireshark decodes it."""
    assert State(1, 2, 10, 9, 9).pack() == bytes.fromhex("000132a9")


def test_protocol_carries_the_integrity_alg_string():
    """P_PROTOCOL is 24 bytes plus a NUL-terminated algorithm name (25 bytes when empty)."""
    assert len(Protocol(WireProtocol.C).pack()) == 25
    proto = Protocol(WireProtocol.A, integrity_alg="sha1")
    assert Protocol.unpack(proto.pack()) == proto


def test_data_header_keeps_block_id_opaque():
    """block_id is an opaque host-order cookie: the bytes are kept, never byte-swapped."""
    raw = DataHeader(2048, bytes.fromhex("785634128888ffff"), 1, 0x102).pack()
    assert raw[8:16] == bytes.fromhex("785634128888ffff")


def test_wrong_sizes_are_payload_errors():
    """A struct of the wrong size is a clear PayloadError, not a struct.error."""
    with pytest.raises(PayloadError, match="P_CONNECTION_FEATURES payload is 71 bytes"):
        ConnectionFeatures.unpack(bytes(71))
    with pytest.raises(PayloadError):
        BarrierAck.unpack(bytes(9))


def test_version_agreement():
    """The agreed version is the lower maximum; disjoint ranges are refused with both ranges."""
    mine = ConnectionFeatures(86, 0, 101)
    assert agree_version(mine, ConnectionFeatures(86, 0, 124)) == 101
    assert agree_version(mine, ConnectionFeatures(86, 0, 96)) == 96
    with pytest.raises(PayloadError, match="86-101.*118-124"):
        agree_version(mine, ConnectionFeatures(118, 0, 124))


def test_packet_table():
    """Names and sockets follow drbd_protocol.h; unknown numbers get a readable name."""
    assert packet_name(0x00) == "P_DATA"
    assert PACKETS[Cmd.P_PING].sock is Sock.META
    assert PACKETS[Cmd.P_BARRIER].sock is Sock.DATA
    assert PACKETS[Cmd.P_OUT_OF_SYNC].fixed_size == 16
    assert packet_name(0x7777) == "P_UNKNOWN_0x7777"
