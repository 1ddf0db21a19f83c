"""The primary's side of replication: a write generator with DRBD's epochs and transfer log."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from drbdproxy.drbd.decoder import Packet
from drbdproxy.drbd.packets import Cmd
from drbdproxy.drbd.payloads import (
    DP_RW_SYNC,
    DP_SEND_RECEIVE_ACK,
    DP_SEND_WRITE_ACK,
    SS_SUCCESS,
    Barrier,
    BarrierAck,
    BlockAck,
    DataHeader,
    ReqState,
    ReqStateReply,
    WireProtocol,
    cookie_value,
    host_cookie,
)
from drbdproxy.sim.config import SimConfig
from drbdproxy.sim.report import Stats
from drbdproxy.sim.sockets import DrbdSocket
from drbdproxy.sim.workload import Workload, next_sector

#: Bytes written per reactor turn before yielding, so acks and pings are read in time.
_TURN_BUDGET = 2 << 20
#: Connection state "Disconnecting" (C_DISCONNECTING) in a P_CONN_ST_CHG_REQ.
_CONN_MASK = 0x1F << 4
_CONN_DISCONNECTING = 1 << 4


class ProtocolViolation(Exception):
    pass


@dataclass
class Epoch:
    number: int
    submitted: list[float] = field(default_factory=list)

    @property
    def cookie(self) -> bytes:
        return host_cookie(self.number, 4)


@implementer(IPushProducer)
class PrimaryStream:
    """Streams P_DATA in epochs on the data socket and checks every ack that comes back."""

    def __init__(
        self,
        config: SimConfig,
        clock: IReactorTime,
        data: DrbdSocket,
        meta: DrbdSocket,
        stats: Stats,
        finished: Callable[[], None],
    ) -> None:
        self._config = config
        self._clock = clock
        self._data = data
        self._meta = meta
        self._stats = stats
        self._finished = finished
        self._workload = Workload.create(config.workload, config.seed, config.corpus)
        self._sectors = config.device_size // 512
        self._next_sector = 0
        self._epoch = Epoch(1)
        self._unacked_epochs: deque[Epoch] = deque()
        self._inflight: dict[int, tuple[float, int, int]] = {}
        self._paused = False
        self._writing = True
        self._disconnecting = False
        self._pump_call: IDelayedCall | None = None
        self._deadline: float | None = None

    def start(self) -> None:
        now = self._clock.seconds()
        self._stats.start(now)
        if self._config.duration is not None:
            self._deadline = now + self._config.duration
        self._data.transport.registerProducer(self, True)
        self._kick()

    # -- IPushProducer -------------------------------------------------------------------------
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._kick()

    def stopProducing(self) -> None:
        self._writing = False
        self._cancelPump()

    # -- writing -------------------------------------------------------------------------------
    def _kick(self, delay: float = 0) -> None:
        if self._pump_call is None or not self._pump_call.active():
            self._pump_call = self._clock.callLater(delay, self._pump)

    def _cancelPump(self) -> None:
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None

    def _pump(self) -> None:
        self._pump_call = None
        self._data.cork()
        try:
            self._pumpTurn()
        finally:
            self._data.uncork()

    def _pumpTurn(self) -> None:
        written = 0
        while self._writing and not self._paused:
            if self._limitReached():
                self._endWriting()
                return
            if self._config.iodepth and len(self._inflight) >= self._config.iodepth:
                self._closeEpoch()  # going idle: DRBD sends the barrier now
                return
            wait = self._rateWait()
            if wait > 0:
                self._closeEpoch()
                self._kick(wait)
                return
            written += self._writeOne()
            if written >= _TURN_BUDGET:
                self._kick()
                return

    def _limitReached(self) -> bool:
        size = self._config.size
        if size is not None and self._stats.bytes + self._config.block_size > size:
            return True
        return self._deadline is not None and self._clock.seconds() >= self._deadline

    def _rateWait(self) -> float:
        rate = self._config.rate
        if not rate or self._stats.started is None:
            return 0.0
        due = self._stats.started + (self._stats.bytes + self._config.block_size) / rate
        return max(0.0, due - self._clock.seconds())

    def _writeOne(self) -> int:
        config = self._config
        if len(self._epoch.submitted) >= config.epoch:
            self._closeEpoch()
        index = self._stats.writes
        size = config.block_size
        sector = self._next_sector
        block = self._workload.block_parts(index, sector, size)
        flags = DP_RW_SYNC
        if config.protocol is WireProtocol.C:
            flags |= DP_SEND_WRITE_ACK
        elif config.protocol is WireProtocol.B:
            flags |= DP_SEND_RECEIVE_ACK
        block_id = index + 1
        now = self._clock.seconds()
        if config.protocol is not WireProtocol.A:
            self._inflight[block_id] = (now, sector, size)
        self._epoch.submitted.append(now)
        self._stats.writes += 1
        self._stats.bytes += size
        self._next_sector = next_sector(sector, size, self._sectors)
        header = DataHeader(sector, host_cookie(block_id), index + 1, flags)
        self._data.send(Cmd.P_DATA, header.pack(), *block)
        return size

    def _closeEpoch(self) -> None:
        """Send P_BARRIER for the current epoch if it holds writes, and start the next one."""
        if not self._epoch.submitted:
            return
        self._data.send(Cmd.P_BARRIER, Barrier(self._epoch.cookie).pack())
        self._unacked_epochs.append(self._epoch)
        self._stats.epochs += 1
        self._epoch = Epoch(self._epoch.number + 1)

    def endWriting(self) -> None:
        """Write no more: the last epoch's barrier goes now, and the run ends cleanly once
        everything written is acknowledged (as when --size or --duration is reached)."""
        self._endWriting()

    def _endWriting(self) -> None:
        if not self._writing:
            return
        self._writing = False
        self._closeEpoch()
        self._maybeDisconnect()

    def _maybeDisconnect(self) -> None:
        if self._writing or self._disconnecting or self._inflight or self._unacked_epochs:
            return
        self._disconnecting = True
        self._stats.finish(self._clock.seconds())
        # A graceful "drbdadm disconnect": ask the peer to go to Disconnecting.
        self._data.send(Cmd.P_CONN_ST_CHG_REQ, ReqState(_CONN_MASK, _CONN_DISCONNECTING).pack())

    def dataPacket(self, packet: Packet) -> None:
        if packet.command not in (Cmd.P_STATE, Cmd.P_UNPLUG_REMOTE):
            raise ProtocolViolation(f"unexpected {packet.name} on the primary's data socket")

    # -- acks from the meta socket -------------------------------------------------------------
    def metaPacket(self, packet: Packet) -> None:
        cmd = packet.command
        if cmd in (Cmd.P_WRITE_ACK, Cmd.P_RECV_ACK):
            self._blockAck(packet)
        elif cmd == Cmd.P_BARRIER_ACK:
            self._barrierAck(BarrierAck.unpack(packet.payload))
        elif cmd == Cmd.P_CONN_ST_CHG_REPLY:
            reply = ReqStateReply.unpack(packet.payload)
            if not self._disconnecting:
                raise ProtocolViolation("P_CONN_ST_CHG_REPLY without a request")
            if reply.retcode != SS_SUCCESS:
                raise ProtocolViolation(f"peer refused to disconnect (retcode {reply.retcode})")
            self._finished()
        else:
            raise ProtocolViolation(f"unexpected {packet.name} on the meta socket")

    def _blockAck(self, packet: Packet) -> None:
        expected = Cmd.P_WRITE_ACK if self._config.protocol is WireProtocol.C else Cmd.P_RECV_ACK
        if packet.command != expected:
            raise ProtocolViolation(
                f"{packet.name} under protocol {self._config.protocol.name}"
            )
        ack = BlockAck.unpack(packet.payload)
        block_id = cookie_value(ack.block_id)
        entry = self._inflight.pop(block_id, None)
        if entry is None:
            raise ProtocolViolation(f"{packet.name} for unknown block_id {block_id}")
        submitted, sector, size = entry
        if (ack.sector, ack.blksize) != (sector, size):
            raise ProtocolViolation(
                f"{packet.name} for block_id {block_id} names sector {ack.sector} size"
                f" {ack.blksize}, the write was sector {sector} size {size}"
            )
        self._stats.write_latency.append(self._clock.seconds() - submitted)
        if self._config.iodepth:
            self._kick()
        self._maybeDisconnect()

    def _barrierAck(self, ack: BarrierAck) -> None:
        if not self._unacked_epochs:
            raise ProtocolViolation("P_BARRIER_ACK with no epoch outstanding")
        epoch = self._unacked_epochs.popleft()
        if ack.barrier != epoch.cookie or ack.set_size != len(epoch.submitted):
            raise ProtocolViolation(
                f"BarrierAck #{cookie_value(ack.barrier)} received with n_writes={ack.set_size},"
                f" expected #{epoch.number} with n_writes={len(epoch.submitted)}"
            )
        if self._config.protocol is WireProtocol.A:
            # Protocol A completes writes locally; the sim reports how long an epoch took to be
            # acknowledged, which is what a proxy buffer stretches.
            now = self._clock.seconds()
            self._stats.write_latency.extend(now - t for t in epoch.submitted)
        self._maybeDisconnect()
