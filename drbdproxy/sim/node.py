"""A simulated DRBD node: connects to its peer, handshakes, replicates, and reports."""

from __future__ import annotations

import sys
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from drbdproxy.drbd.decoder import Packet
from drbdproxy.drbd.header import WireError
from drbdproxy.drbd.packets import Cmd, Sock
from drbdproxy.drbd.payloads import ConnState
from drbdproxy.sim.config import SimConfig
from drbdproxy.sim.handshake import (
    FEATURES,
    Handshake,
    HandshakeError,
    parameter_packets,
    state_packet,
)
from drbdproxy.sim.primary import PrimaryStream, ProtocolViolation
from drbdproxy.sim.report import Stats, build_report
from drbdproxy.sim.secondary import SecondaryVerifier, VerificationError
from drbdproxy.sim.sockets import DrbdSocket, Establisher
from drbdproxy.sim.workload import STAMP, WORKLOADS, CorpusError, Workload


def stderr_log(role: str) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"drbd-sim[{role}]: {message}", file=sys.stderr, flush=True)

    return log


class Pinger:
    """DRBD's asender keep-alive: P_PING every ping-int, P_PING_ACK due within ping-timeout."""

    def __init__(self, node: Node, meta: DrbdSocket) -> None:
        self._node = node
        self._meta = meta
        self._clock = node.reactor
        self._sent_at: float | None = None
        self._timeout: IDelayedCall | None = None
        self._loop = LoopingCall(self._ping)
        self._loop.clock = node.reactor

    def start(self) -> None:
        self._loop.start(self._node.config.ping_int, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()

    def _ping(self) -> None:
        if self._sent_at is not None:
            return  # still waiting for the last ack; its timeout decides
        self._sent_at = self._clock.seconds()
        self._meta.send(Cmd.P_PING)
        self._timeout = self._clock.callLater(self._node.config.ping_timeout, self._expired)

    def _expired(self) -> None:
        self._node.fail(
            f"PingAck did not arrive in time (ping-timeout {self._node.config.ping_timeout} s)"
        )

    def pingAck(self) -> None:
        if self._sent_at is None:
            raise ProtocolViolation("P_PING_ACK without a P_PING")
        self._node.stats.ping_rtt.append(self._clock.seconds() - self._sent_at)
        self._sent_at = None
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()


class Node:
    """One drbd-sim node. ``run()`` returns a Deferred that fires with the JSON report dict."""

    def __init__(self, config: SimConfig, reactor: Any, log: Callable[[str], None]) -> None:
        self.config = config
        self.reactor = reactor
        self.log = log
        self.stats = Stats()
        self.error: str | None = None
        self._done: Deferred[dict[str, Any]] = Deferred()
        self._establisher = Establisher(
            reactor, reactor, self, config.listen, config.peer,
            config.connect_int, config.sock_check, log,
        )
        self._establisher.ready = self._established
        self._data: DrbdSocket | None = None
        self._meta: DrbdSocket | None = None
        self._handshake: Handshake | None = None
        self._handshake_timer: IDelayedCall | None = None
        self._connect_timer: IDelayedCall | None = None
        self._pinger: Pinger | None = None
        self._role: PrimaryStream | SecondaryVerifier | None = None
        self._connected = False
        self._early_meta: list[Packet] = []
        self._finished = False
        self._progress: LoopingCall | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> Deferred[dict[str, Any]]:
        # Building a workload's pool takes a moment: do it now, not while pings are due. The
        # secondary learns the workload from the first block, so it prepares all of them (a
        # corpus was read already, if it was given).
        for name in (self.config.workload,) if self.config.primary else WORKLOADS:
            if name != "corpus":
                Workload(name, self.config.seed).block(0, 0, STAMP.size)
        self._establisher.listen()
        self.log(f"listening on {_fmt(self.config.listen)}, connecting to {_fmt(self.config.peer)}")
        self._establisher.start()
        self._connect_timer = self.reactor.callLater(self.config.connect_timeout, self._noPeer)
        return self._done

    def stopWriting(self) -> None:
        """A primary writes nothing more and ends cleanly once all it wrote is acknowledged
        (at once if it never connected); a secondary ignores it."""
        if not self.config.primary or self._finished:
            return
        if isinstance(self._role, PrimaryStream):  # made as it connected
            self._role.endWriting()
        else:
            self.fail("stopped before it connected")

    def _noPeer(self) -> None:
        self.fail(f"no connection to the peer at {_fmt(self.config.peer)} within"
                  f" {self.config.connect_timeout} s")

    def fail(self, message: str) -> None:
        if self._finished:
            return
        self.error = message
        self.log(f"error: {message}")
        self._finish()

    def _complete(self) -> None:
        self.log("replication complete, peer disconnected cleanly")
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for timer in (self._connect_timer, self._handshake_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self._pinger is not None:
            self._pinger.stop()
        if self._progress is not None and self._progress.running:
            self._progress.stop()
        if isinstance(self._role, PrimaryStream):
            self._role.stopProducing()
        self._establisher.stop()
        self._establisher.stopListening()
        self._establisher.dropAll()
        for sock in (self._data, self._meta):
            if sock is not None:
                sock.close()
        if self.stats.finished is None and self.stats.started is not None:
            self.stats.finish(self.reactor.seconds())
        verified = self.error is None and self._connected
        extra = _report_fields(self.config, self._handshake, self._workloadName())
        self._done.callback(build_report(self.config.role, self.stats, self.error, verified, extra))

    def _workloadName(self) -> str | None:
        if isinstance(self._role, SecondaryVerifier):
            return self._role.workload_name
        return self.config.workload if self.config.primary else None

    # -- socket events (SocketOwner) -----------------------------------------------------------
    def countSent(self, name: str) -> None:
        self.stats.packets_sent[name] += 1

    def countReceived(self, name: str) -> None:
        self.stats.packets_received[name] += 1

    def socketMade(self, sock: DrbdSocket) -> None:
        self._establisher.made(sock)

    def socketIdentified(self, sock: DrbdSocket) -> None:
        self._establisher.identified(sock)

    def socketFailed(self, sock: DrbdSocket, message: str) -> None:
        if self._isSession(sock):
            self.fail(message)
        else:
            self.log(f"dropping a socket: {message}")
            sock.close()

    def socketLost(self, sock: DrbdSocket, reason: Failure) -> None:
        if self._finished:
            return
        if not self._isSession(sock):
            self._establisher.lost(sock)
            return
        if isinstance(self._role, SecondaryVerifier) and self._role.disconnect_granted:
            self._complete()
            return
        if self._connected:
            self.fail(f"connection lost: {sock.kind.value if sock.kind else '?'} socket closed"
                      f" ({reason.getErrorMessage()})")
            return
        self.log("a socket closed during the handshake; connecting again")
        self._restartEstablishing()

    def _isSession(self, sock: DrbdSocket) -> bool:
        return sock is self._data or sock is self._meta

    def packetReceived(self, sock: DrbdSocket, packet: Packet) -> None:
        if self._finished:
            return
        if not self._isSession(sock):
            # The peer's socket check can end before ours: keep its first handshake packets.
            kept = sock.kind is not None and self._establisher.slots.get(sock.kind) is sock
            if kept and len(sock.early) < 16:
                sock.early.append(packet)
            else:
                self.socketFailed(sock, f"{packet.name} before the connection was established")
            return
        try:
            self._dispatch(sock, packet)
        except (HandshakeError, ProtocolViolation, VerificationError, WireError,
                CorpusError) as e:
            self.fail(str(e))

    # -- establishing and the handshake --------------------------------------------------------
    def _established(self, data: DrbdSocket, meta: DrbdSocket) -> None:
        self._data, self._meta = data, meta
        self._handshake = Handshake(self.config.primary, self.config.protocol)
        self._handshake_timer = self.reactor.callLater(
            self.config.handshake_timeout, self._handshakeTimedOut
        )
        data.send(Cmd.P_CONNECTION_FEATURES, FEATURES.pack())
        for sock in (data, meta):
            early, sock.early = sock.early, []
            for packet in early:
                self.packetReceived(sock, packet)

    def _handshakeTimedOut(self) -> None:
        self.log("handshake timed out; connecting again")
        self._restartEstablishing()

    def _restartEstablishing(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        for sock in (self._data, self._meta):
            if sock is not None:
                sock.close()
        self._data = self._meta = None
        self._handshake = None
        self._early_meta = []
        self._establisher.slots.clear()
        self._establisher.start()

    def _dispatch(self, sock: DrbdSocket, packet: Packet) -> None:
        if not self._connected:
            if sock.kind is Sock.DATA:
                self._handshakeStep(packet)
            elif len(self._early_meta) < 16:
                # The peer may finish its handshake first and ping at once: keep it for later.
                self._early_meta.append(packet)
            else:
                raise HandshakeError(f"{packet.name} on the meta socket during the handshake")
            return
        # Connected: _connectedUp made all three before it dispatched the first packet.
        assert self._meta is not None and self._pinger is not None and self._role is not None
        if packet.command == Cmd.P_PING:
            self._meta.send(Cmd.P_PING_ACK)
        elif packet.command == Cmd.P_PING_ACK:
            self._pinger.pingAck()
        elif sock.kind is Sock.META:
            self._role.metaPacket(packet)
        else:
            self._role.dataPacket(packet)

    def _handshakeStep(self, packet: Packet) -> None:
        hs = self._handshake
        assert hs is not None and self._data is not None and self._meta is not None
        first = hs.agreed_version is None
        hs.receive(packet)
        if first:
            self._data.agreed_version = self._meta.agreed_version = hs.agreed_version or 80
            for cmd, payload in parameter_packets(
                self.config.primary,
                self.config.protocol,
                self.config.device_size // 512,
                hs.agreed_features,
            ):
                self._data.send(cmd, payload)
        if hs.complete:
            self._connectedUp()

    def _connectedUp(self) -> None:
        assert self._data is not None and self._meta is not None and self._handshake is not None
        for timer in (self._handshake_timer, self._connect_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._connected = True
        self._establisher.stopListening()
        self._data.send(Cmd.P_STATE, state_packet(self.config.primary, ConnState.CONNECTED))
        self.log(
            f"connected: protocol {self.config.protocol.name},"
            f" agreed version {self._handshake.agreed_version}"
        )
        self._pinger = Pinger(self, self._meta)
        self._pinger.start()
        self._role = _role(self.config, self.reactor, self._data, self._meta, self.stats,
                           self._handshake, self._complete)
        self._role.start()
        early, self._early_meta = self._early_meta, []
        for packet in early:
            self._dispatch(self._meta, packet)
        if self.config.progress > 0:
            self._progress = LoopingCall(self._showProgress)
            self._progress.clock = self.reactor
            self._progress.start(self.config.progress, now=False)

    def _showProgress(self) -> None:
        self.log(f"progress: {self.stats.bytes} bytes, {self.stats.writes} writes")


def _role(config: SimConfig, reactor: Any, data: DrbdSocket, meta: DrbdSocket, stats: Stats,
          handshake: Handshake, complete: Callable[[], None]
          ) -> PrimaryStream | SecondaryVerifier:
    """What a node does once connected: write (primary), or receive and verify (secondary)."""
    if config.primary:
        return PrimaryStream(config, reactor, data, meta, stats, complete)
    sizes = handshake.peer_sizes
    sectors = sizes.c_size if sizes else config.device_size // 512
    return SecondaryVerifier(reactor, data, meta, stats, sectors, complete, config.corpus)


def _report_fields(config: SimConfig, handshake: Handshake | None, workload: str | None
                   ) -> dict[str, Any]:
    """The node-specific fields of its report."""
    fields: dict[str, Any] = {
        "protocol": config.protocol.name,
        "workload": workload,
        "agreed_version": handshake.agreed_version if handshake else None,
    }
    if workload == "corpus" and config.corpus is not None:
        fields["corpus"] = config.corpus.describe()
    return fields


def _fmt(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
