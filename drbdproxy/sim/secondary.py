"""The secondary's side: verifies every write's content and order, and acks per protocol."""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

from drbdproxy.drbd.decoder import Packet
from drbdproxy.drbd.packets import Cmd
from drbdproxy.drbd.payloads import (
    DP_SEND_RECEIVE_ACK,
    DP_SEND_WRITE_ACK,
    SS_SUCCESS,
    Barrier,
    BarrierAck,
    BlockAck,
    DataHeader,
    ReqState,
    ReqStateReply,
)
from drbdproxy.sim.primary import ProtocolViolation
from drbdproxy.sim.report import Stats
from drbdproxy.sim.sockets import DrbdSocket
from drbdproxy.sim.workload import Corpus, Workload, next_sector


class VerificationError(Exception):
    """What the secondary received is not what the primary wrote."""


class SecondaryVerifier:
    def __init__(
        self,
        clock: IReactorTime,
        data: DrbdSocket,
        meta: DrbdSocket,
        stats: Stats,
        device_sectors: int,
        finished: Callable[[], None],
        corpus: Corpus | None = None,
    ) -> None:
        self._clock = clock
        self._data = data
        self._meta = meta
        self._stats = stats
        self._sectors = device_sectors
        self._finished = finished
        self._corpus = corpus
        self._workload: Workload | None = None
        self._expected_sector = 0
        self._epoch_writes = 0
        self._ack_seq = 0
        self.workload_name: str | None = None
        #: The primary asked to disconnect and we agreed: its close is the clean end of the run.
        self.disconnect_granted = False

    def start(self) -> None:
        # Acks go out on the meta socket: when it backs up, stop reading data (DRBD blocks too).
        self._meta.transport.registerProducer(self._data.transport, True)

    def dataPacket(self, packet: Packet) -> None:
        cmd = packet.command
        if cmd == Cmd.P_DATA:
            self._write(packet)
        elif cmd == Cmd.P_BARRIER:
            barrier = Barrier.unpack(packet.payload)
            self._meta.send(Cmd.P_BARRIER_ACK, BarrierAck(barrier.barrier, self._epoch_writes).pack())
            self._epoch_writes = 0
            self._stats.epochs += 1
        elif cmd == Cmd.P_CONN_ST_CHG_REQ:
            ReqState.unpack(packet.payload)
            if self._epoch_writes:
                raise VerificationError(
                    f"primary disconnected with {self._epoch_writes} writes not closed by a barrier"
                )
            self._stats.finish(self._clock.seconds())
            self._meta.send(Cmd.P_CONN_ST_CHG_REPLY, ReqStateReply(SS_SUCCESS).pack())
            self.disconnect_granted = True
            # The primary closes both sockets once it has read the reply; if it never does,
            # end anyway: everything was verified.
            self._clock.callLater(5.0, self._finished)
        elif cmd in (Cmd.P_STATE, Cmd.P_UNPLUG_REMOTE):
            pass
        else:
            raise ProtocolViolation(f"unexpected {packet.name} on the data socket")

    def _write(self, packet: Packet) -> None:
        stats = self._stats
        head = DataHeader.unpack(packet.payload)
        block = memoryview(packet.payload)[DataHeader.SIZE :]  # checked in place, not copied
        index = stats.writes
        where = f"write #{index + 1} (sector {head.sector}, {len(block)} bytes)"
        if head.seq_num != index + 1:
            raise VerificationError(f"{where}: sequence number {head.seq_num}, expected {index + 1}")
        if head.sector != self._expected_sector:
            raise VerificationError(f"{where}: expected sector {self._expected_sector}")
        if self._workload is None:
            self._workload = Workload.from_stamp(block, self._corpus)  # or CorpusError
            if self._workload is None:
                raise VerificationError(f"{where}: not a block drbd-sim wrote")
            self.workload_name = self._workload.name
        problem = self._workload.check(index, head.sector, block)
        if problem is not None:
            raise VerificationError(f"{where}: content differs from what the primary wrote: {problem}")
        if stats.started is None:
            stats.start(self._clock.seconds())
        stats.writes += 1
        stats.bytes += len(block)
        self._epoch_writes += 1
        self._expected_sector = next_sector(head.sector, len(block), self._sectors)
        for flag, ack in ((DP_SEND_RECEIVE_ACK, Cmd.P_RECV_ACK), (DP_SEND_WRITE_ACK, Cmd.P_WRITE_ACK)):
            if head.dp_flags & flag:
                self._ack_seq += 1
                body = BlockAck(head.sector, head.block_id, len(block), self._ack_seq).pack()
                self._meta.send(ack, body)

    def metaPacket(self, packet: Packet) -> None:
        raise ProtocolViolation(f"unexpected {packet.name} on the meta socket")
