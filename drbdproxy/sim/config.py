"""drbd-sim's settings, as plain data (the command line fills them in)."""

from __future__ import annotations

from dataclasses import dataclass

from drbdproxy.drbd.payloads import WireProtocol
from drbdproxy.sim.workload import Corpus


@dataclass(frozen=True)
class SimConfig:
    role: str
    listen: tuple[str, int]
    peer: tuple[str, int]
    protocol: WireProtocol = WireProtocol.C
    workload: str = "disk"
    seed: int = 1
    #: The corpus workload's pool (--corpus): the primary writes from it, the secondary checks
    #: against it; loaded once and shared by every connection of the process.
    corpus: Corpus | None = None
    #: Stop writing after this many bytes (None: only --duration limits the run).
    size: int | None = 64 << 20
    duration: float | None = None
    block_size: int = 64 << 10
    epoch: int = 2048
    rate: float | None = None
    iodepth: int = 0
    ping_int: float = 1.0
    ping_timeout: float = 0.5
    connect_int: float = 0.5
    connect_timeout: float = 60.0
    device_size: int = 1 << 30
    progress: float = 0.0

    @property
    def primary(self) -> bool:
        return self.role == "primary"

    @property
    def sock_check(self) -> float:
        """How long both sockets must survive before the handshake (DRBD: sock-check-timeo)."""
        return min(self.ping_timeout, 0.5)

    @property
    def handshake_timeout(self) -> float:
        # DRBD uses 4 x ping-timeout for the handshake; a proxy pair in between adds its own delay.
        return max(4 * self.ping_timeout, 5.0)
