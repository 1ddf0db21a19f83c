"""The 8.4-dialect connection handshake on the data socket, as a small sans-IO state holder.

Both nodes send P_CONNECTION_FEATURES (h80), agree on a protocol version, then send P_PROTOCOL,
P_SYNC_PARAM89, P_SIZES, P_UUIDS and P_STATE. The handshake is complete when the peer's
parameters have all arrived and agree with ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drbdproxy.drbd.decoder import Packet
from drbdproxy.drbd.packets import Cmd
from drbdproxy.drbd.payloads import (
    FF_THIN_RESYNC,
    FF_TRIM,
    FF_WSAME,
    FF_WZEROES,
    ConnectionFeatures,
    ConnState,
    DiskState,
    PayloadError,
    Protocol,
    QueueLimits,
    Role,
    Sizes,
    State,
    SyncParam95,
    Uuids,
    WireProtocol,
    agree_version,
)

PROTOCOL_MIN = 86
PROTOCOL_MAX = 101
#: What both simulated nodes' disks hold at the start: equal UUIDs, so no resync is needed.
CURRENT_UUID = 0x5EED_D8BD_0000_0004
FEATURES = ConnectionFeatures(
    PROTOCOL_MIN, FF_TRIM | FF_THIN_RESYNC | FF_WSAME | FF_WZEROES, PROTOCOL_MAX
)


class HandshakeError(Exception):
    """The peer is not one we can replicate with; the message says why."""


def state_packet(primary: bool, conn: ConnState) -> bytes:
    me, peer = (Role.PRIMARY, Role.SECONDARY) if primary else (Role.SECONDARY, Role.PRIMARY)
    return State(me, peer, conn, DiskState.UP_TO_DATE, DiskState.UP_TO_DATE).pack()


def parameter_packets(
    primary: bool, protocol: WireProtocol, device_sectors: int, features: int
) -> list[tuple[Cmd, bytes]]:
    """What a node sends after features, in DRBD's order (``drbd_connected``)."""
    # With FF_WSAME agreed, DRBD appends its queue limits to P_SIZES.
    qlim = QueueLimits() if features & FF_WSAME else None
    sizes = Sizes(device_sectors, device_sectors, device_sectors, qlim=qlim)
    return [
        (Cmd.P_PROTOCOL, Protocol(protocol).pack()),
        (Cmd.P_SYNC_PARAM89, SyncParam95().pack()),
        (Cmd.P_SIZES, sizes.pack()),
        (Cmd.P_UUIDS, Uuids(CURRENT_UUID, dirty_bits=0).pack()),
        (Cmd.P_STATE, state_packet(primary, ConnState.WF_REPORT_PARAMS)),
    ]


@dataclass
class Handshake:
    primary: bool
    protocol: WireProtocol
    agreed_version: int | None = None
    agreed_features: int = 0
    peer_sizes: Sizes | None = None
    peer_state: State | None = None
    _seen: set[Cmd] = field(default_factory=set)

    REQUIRED = frozenset({Cmd.P_PROTOCOL, Cmd.P_SYNC_PARAM89, Cmd.P_SIZES, Cmd.P_UUIDS, Cmd.P_STATE})

    @property
    def complete(self) -> bool:
        return self.agreed_version is not None and self.REQUIRED <= self._seen

    def receive(self, packet: Packet) -> None:
        """Take one handshake packet from the peer.

        :raises HandshakeError: on anything DRBD itself would refuse.
        """
        try:
            self._receive(packet)
        except PayloadError as e:
            raise HandshakeError(str(e)) from None

    def _receive(self, packet: Packet) -> None:
        cmd = packet.command
        if self.agreed_version is None:
            if cmd != Cmd.P_CONNECTION_FEATURES:
                raise HandshakeError(f"expected P_CONNECTION_FEATURES, got {packet.name}")
            peer = ConnectionFeatures.unpack(packet.payload)
            self.agreed_version = agree_version(FEATURES, peer)
            self.agreed_features = FEATURES.feature_flags & peer.feature_flags
            return
        if cmd == Cmd.P_PROTOCOL:
            params = Protocol.unpack(packet.payload)
            if params.protocol != self.protocol:
                raise HandshakeError(
                    f"incompatible communication protocols: peer uses {params.protocol.name},"
                    f" this node {self.protocol.name}"
                )
        elif cmd == Cmd.P_SYNC_PARAM89:
            SyncParam95.unpack(packet.payload)
        elif cmd == Cmd.P_SIZES:
            self.peer_sizes = Sizes.unpack(packet.payload)
        elif cmd == Cmd.P_UUIDS:
            Uuids.unpack(packet.payload)
        elif cmd == Cmd.P_STATE:
            self.peer_state = State.unpack(packet.payload)
            self._checkRoles(self.peer_state)
        else:
            raise HandshakeError(f"unexpected {packet.name} during the handshake")
        self._seen.add(Cmd(cmd))

    def _checkRoles(self, state: State) -> None:
        if state.role == Role.PRIMARY and self.primary:
            raise HandshakeError("both nodes are primary (two-primaries is not allowed)")
        if state.role != Role.PRIMARY and not self.primary:
            raise HandshakeError("the peer is secondary too: one drbd-sim must be --role primary")
