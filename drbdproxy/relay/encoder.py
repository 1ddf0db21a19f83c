"""Chunks of DRBD's reads, compressed and checksummed off the reactor thread.

:func:`chunks` splits a read into DATA-frame-sized pieces without copying; a
:class:`ChunkEncoder` compresses them (raw and small ones inline, the rest in worker threads)
into :class:`Encoded` payloads for the link's :class:`~drbdproxy.relay.writer.FrameWriter`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

from twisted.internet.defer import Deferred

from drbdproxy.admin.logs import logger
from drbdproxy.codecs import RAW_CODEC, Buffer, Codec, PluginSpec, codec_for, encode_chunk
from drbdproxy.codecs.adaptive import Candidate, Measured, trial
from drbdproxy.link import Accepted, data_checksum
from drbdproxy.relay.workers import Workers


@dataclass
class Encoded:
    """A chunk ready for a DATA frame."""

    codec: int
    raw_length: int
    crc32c: int
    payload: bytes | memoryview


#: Below this a read is compressed on the reactor thread: a thread hop would cost more, and
#: small reads are DRBD's meta traffic, which must not wait behind compression work.
INLINE_LIMIT = 16 << 10


def _encode(codec: Codec, data: bytes | memoryview) -> Encoded:
    crc = data_checksum(data)
    if codec.id == RAW_CODEC.id:
        return Encoded(0, len(data), crc, data)
    codec_id, payload = encode_chunk(codec, data)
    return Encoded(codec_id, len(data), crc, payload)


class CompressionMeter:
    """The CPU seconds compression took and the raw bytes encoded, for the whole process.

    Plugin ``auto`` subtracts the first from the process's CPU time to learn what relaying
    costs per raw byte beside compression. Worker threads add to it, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cpu_seconds = 0.0
        self.raw_bytes = 0

    def add(self, cpu_seconds: float, raw_bytes: int = 0) -> None:
        with self._lock:
            self.cpu_seconds += cpu_seconds
            self.raw_bytes += raw_bytes

    def read(self) -> tuple[float, int]:
        with self._lock:
            return self.cpu_seconds, self.raw_bytes


def _encode_all(codec: Codec, pieces: list[bytes | memoryview],
                meter: CompressionMeter | None = None) -> list[Encoded]:
    if meter is None:
        return [_encode(codec, piece) for piece in pieces]
    started = time.thread_time()
    encoded = [_encode(codec, piece) for piece in pieces]
    meter.add(time.thread_time() - started, sum(e.raw_length for e in encoded))
    return encoded


def _trial(meter: CompressionMeter, ladder: Sequence[Candidate], samples: Sequence[Buffer]
           ) -> tuple[dict[str, Measured], float]:
    measured, spent = trial(ladder, samples)
    meter.add(spent)
    return measured, spent


class ChunkEncoder:
    """Compresses and checksums chunks off the reactor thread, except small and raw ones.

    A raw chunk only needs its CRC-32C (tens of GB/s): a thread hop would cost more than that.
    All chunks of one DRBD read go to a worker as one job: one hand-off each way per read, not
    per chunk, and on a saturated machine every hand-off is a few futex calls and a GIL switch.
    """

    def __init__(self, workers: Workers) -> None:
        self._workers = workers
        self.meter = CompressionMeter()

    def encodeAll(self, codec: Codec, pieces: list[bytes | memoryview]
                  ) -> list[Encoded] | Deferred[list[Encoded]]:
        """``pieces`` encoded in order, now or (compressing a read of INLINE_LIMIT or more) once
        a worker thread is done with all of them."""
        if codec.id == RAW_CODEC.id:
            self.meter.add(0.0, sum(map(len, pieces)))
            return _encode_all(codec, pieces)
        if sum(map(len, pieces)) < INLINE_LIMIT:
            return _encode_all(codec, pieces, self.meter)
        return self._workers.submit(_encode_all, codec, pieces, self.meter)

    def trial(self, ladder: Sequence[Candidate], samples: Sequence[Buffer]
              ) -> Deferred[tuple[dict[str, Measured], float]]:
        """Every candidate of ``auto`` on ``samples`` in a worker thread, and the CPU seconds
        that took (see adaptive.trial)."""
        return self._workers.submit(_trial, self.meter, ladder, samples)


def chunks(data: bytes, size: int) -> list[bytes | memoryview]:
    """Split ``data`` into pieces of at most ``size`` bytes, in order (no copy when it fits).

    Pieces of immutable bytes are views of it (no copy); those of anything else are copies,
    so nobody can change them while they wait to be compressed or sent.
    """
    if len(data) <= size:
        return [data]
    view = memoryview(data)
    if type(data) is bytes:
        return [view[i : i + size] for i in range(0, len(data), size)]
    return [bytes(view[i : i + size]) for i in range(0, len(data), size)]


_log = logger()


def codec_within(name: str, plugins: Sequence[PluginSpec], accepted: Accepted | None) -> Codec:
    """The codec connection ``name``'s plugin lines ask for, if the peer proxy said in its
    handshake that it can decompress it; raw otherwise (never send it more than it can read)."""
    codec = codec_for(plugins)
    if accepted is not None and int(codec.id) not in accepted.peer_codecs:
        _log.warn("peer proxy of {name} cannot decompress {codec}; sending raw", name=name,
                  codec=codec.describe())
        return codec_for([])
    return codec
