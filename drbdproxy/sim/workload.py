"""Deterministic block contents that a secondary can regenerate and check byte for byte.

Every block starts with a 32-byte stamp (magic, write index, sector, workload, seed) and is filled
from a per-workload pool at an offset derived from the write index. The secondary reads the
workload from the first stamp, then checks every later block against its own copy of the pool, so
a flipped, lost, duplicated or reordered byte anywhere is caught.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from functools import lru_cache

STAMP = struct.Struct(">8sQQB3xI")
STAMP_MAGIC = b"DRBDSIM1"
WORKLOADS = ("disk", "random", "zeros")
#: Large enough that slices of it hardly ever repeat within a compressor's window.
POOL_SIZE = 8 << 20
MAX_BLOCK = 1 << 20
_PAGE = 4096


def _text(rng: random.Random, size: int) -> bytes:
    # A Zipf-like vocabulary, as in logs, man pages and source files.
    alphabet = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rng.choices(alphabet, k=rng.randint(2, 9))) for _ in range(600)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    out: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, weights, k=rng.randint(3, 14))) + "\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def _records(rng: random.Random, size: int) -> bytes:
    # Inode-table-like: fixed-size records whose fields mostly repeat or count up.
    rec = struct.Struct("<IIQHH8s")
    base = rng.getrandbits(32)
    out = bytearray()
    i = 0
    while len(out) < size:
        out += rec.pack(base + i, 0o100644, rng.getrandbits(20), 1, 0, rng.randbytes(4) * 2)
        i += 1
    return bytes(out[:size])


def _disk_pool(rng: random.Random) -> bytes:
    """Pages in a mix like a full filesystem image: binary, zeros, text, metadata records.

    The mix is tuned so lz4 compresses it about 2:1, like the ext4 image in the baselines.
    """
    text = _text(rng, 2 << 20)
    records = _records(rng, 1 << 20)
    pages = []
    for _ in range((POOL_SIZE + MAX_BLOCK) // _PAGE):
        kind = rng.random()
        if kind < 0.24:
            pages.append(rng.randbytes(_PAGE))
        elif kind < 0.44:
            pages.append(bytes(_PAGE))
        elif kind < 0.80:
            off = rng.randrange(len(text) - _PAGE)
            pages.append(text[off : off + _PAGE])
        else:
            off = rng.randrange(len(records) - _PAGE)
            pages.append(records[off : off + _PAGE])
    return b"".join(pages)


@lru_cache(maxsize=4)
def pool(workload: str, seed: int) -> bytes:
    rng = random.Random(f"{workload}:{seed}")
    if workload == "disk":
        return _disk_pool(rng)
    if workload == "random":
        return rng.randbytes(POOL_SIZE + MAX_BLOCK)
    if workload == "zeros":
        return bytes(POOL_SIZE + MAX_BLOCK)
    raise ValueError(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")


@dataclass(frozen=True)
class Workload:
    name: str
    seed: int = 1

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"unknown workload {self.name!r}: choose from {', '.join(WORKLOADS)}")

    @property
    def code(self) -> int:
        return WORKLOADS.index(self.name)

    def _offset(self, index: int) -> int:
        return (index * 2654435761) % POOL_SIZE & ~511

    def _stamp(self, index: int, sector: int) -> bytes:
        return STAMP.pack(STAMP_MAGIC, index, sector, self.code, self.seed)

    def block(self, index: int, sector: int, size: int) -> bytes:
        """The content of write number ``index`` (from 0) at ``sector``."""
        return b"".join(self.block_parts(index, sector, size))

    def block_parts(self, index: int, sector: int, size: int) -> tuple[bytes, memoryview]:
        """``block()`` as its stamp and a view into the pool: whoever writes it copies it once."""
        if not STAMP.size <= size <= MAX_BLOCK:
            raise ValueError(f"block size {size} outside {STAMP.size}..{MAX_BLOCK}")
        off = self._offset(index)
        rest = memoryview(pool(self.name, self.seed))[off : off + size - STAMP.size]
        return self._stamp(index, sector), rest

    def check(self, index: int, sector: int, data: bytes | memoryview) -> str | None:
        """None if ``data`` is exactly write ``index`` at ``sector``; otherwise what differs."""
        with memoryview(data) as view:
            # Compared in place (a memcmp): no copy of the expected block on the good path.
            if (len(view) >= STAMP.size and view[: STAMP.size] == self._stamp(index, sector)
                    and pool(self.name, self.seed).startswith(view[STAMP.size :],
                                                              self._offset(index))):
                return None
        expected = self.block(index, sector, len(data))
        if data == expected:
            return None
        first = next(i for i, (a, b) in enumerate(zip(data, expected)) if a != b)
        return f"byte {first} differs (got 0x{data[first]:02x}, expected 0x{expected[first]:02x})"

    @classmethod
    def from_stamp(cls, data: bytes | memoryview) -> Workload | None:
        """The workload a block was written with, or None when its stamp is not one of ours."""
        if len(data) < STAMP.size:
            return None
        magic, _, _, code, seed = STAMP.unpack_from(data)
        if magic != STAMP_MAGIC or code >= len(WORKLOADS):
            return None
        return cls(WORKLOADS[code], seed)



def next_sector(sector: int, size: int, device_sectors: int) -> int:
    """Where the write after this one goes: sequential, wrapping before the device's end."""
    following = sector + size // 512
    return 0 if following + size // 512 > device_sectors else following
