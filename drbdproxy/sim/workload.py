"""Deterministic block contents that a secondary can regenerate and check byte for byte.

Every block starts with a 32-byte stamp (magic, write index, sector, workload, seed) and is filled
from a per-workload pool at an offset derived from the write index. The secondary reads the
workload from the first stamp, then checks every later block against its own copy of the pool, so
a flipped, lost, duplicated or reordered byte anywhere is caught.

The ``corpus`` workload's pool is not generated but read from a file both nodes are given (the
first up to 64 MiB of it), so a benchmark can replicate real data, e.g. a tar of system files.
Its stamp carries the pool's crc32 in the seed field: a secondary without the file, or with a
different one, says so instead of reporting the first block as corrupt.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

STAMP = struct.Struct(">8sQQB3xI")
STAMP_MAGIC = b"DRBDSIM1"
#: A workload's stamp code is its index here: new ones go at the end.
WORKLOADS = ("disk", "random", "zeros", "corpus")
#: Large enough that slices of it hardly ever repeat within a compressor's window.
POOL_SIZE = 8 << 20
MAX_BLOCK = 1 << 20
#: The corpus workload's pool is the first CORPUS_MAX bytes of its file; a shorter file must
#: still hold CORPUS_MIN, so every block's slice (up to MAX_BLOCK) has at least 1 MiB of offsets.
CORPUS_MAX = 64 << 20
CORPUS_MIN = 2 << 20
_PAGE = 4096
#: Knuth's multiplicative hash: consecutive writes take slices far apart in the pool.
_SPREAD = 2654435761


class CorpusError(ValueError):
    """A corpus file that cannot be used, or not the corpus the primary writes from."""


@dataclass(frozen=True)
class Corpus:
    """The ``corpus`` workload's pool: the first up to CORPUS_MAX bytes of ``path``."""

    path: str
    fingerprint: int  # crc32 of data: what the stamp carries
    data: bytes = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Corpus:
        """Read ``path``'s pool; CorpusError (one line) if unreadable or under CORPUS_MIN."""
        try:
            with open(path, "rb") as f:
                data = f.read(CORPUS_MAX)
        except OSError as e:
            raise CorpusError(f"corpus {os.fspath(path)}: {e.strerror or e}") from None
        if len(data) < CORPUS_MIN:
            raise CorpusError(f"corpus {os.fspath(path)} has {len(data)} bytes: it needs at least"
                              f" {CORPUS_MIN >> 20} MiB ({CORPUS_MIN} bytes)")
        return cls(os.fspath(path), zlib.crc32(data), data)

    def describe(self) -> dict[str, object]:
        """What a report says about it."""
        return {"file": self.path, "bytes": len(self.data), "crc32": f"{self.fingerprint:08x}"}


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
    if workload == "corpus":
        raise ValueError("the corpus workload's pool is its file's: see Corpus")
    raise ValueError(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")


@dataclass(frozen=True)
class Workload:
    """One workload's blocks. For ``corpus``, ``seed`` is the corpus's fingerprint: build it
    with ``Workload.create`` (or give the matching seed)."""

    name: str
    seed: int = 1
    corpus: Corpus | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"unknown workload {self.name!r}: choose from {', '.join(WORKLOADS)}")
        if self.name == "corpus":
            if self.corpus is None:
                raise CorpusError("the corpus workload needs a corpus file (--corpus FILE)")
            if self.seed != self.corpus.fingerprint:
                raise CorpusError(f"corpus {self.corpus.path} has fingerprint"
                                  f" {self.corpus.fingerprint:08x}, not {self.seed:08x}")

    @classmethod
    def create(cls, name: str, seed: int = 1, corpus: Corpus | None = None) -> Workload:
        """The workload a primary writes: ``seed`` for the generated ones, the corpus's
        fingerprint in its place for ``corpus``."""
        if name == "corpus" and corpus is not None:
            seed = corpus.fingerprint
        return cls(name, seed, corpus if name == "corpus" else None)

    @property
    def code(self) -> int:
        return WORKLOADS.index(self.name)

    @property
    def pool_bytes(self) -> bytes:
        """The bytes every block's content is a slice of."""
        if self.name == "corpus":
            assert self.corpus is not None  # __post_init__ saw to it
            return self.corpus.data
        return pool(self.name, self.seed)

    def _offset(self, index: int) -> int:
        if self.name == "corpus":
            # Room for a whole MAX_BLOCK after any offset, as the generated pools have.
            return (index * _SPREAD) % (len(self.pool_bytes) - MAX_BLOCK) & ~511
        return (index * _SPREAD) % POOL_SIZE & ~511

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
        rest = memoryview(self.pool_bytes)[off : off + size - STAMP.size]
        return self._stamp(index, sector), rest

    def check(self, index: int, sector: int, data: bytes | memoryview) -> str | None:
        """None if ``data`` is exactly write ``index`` at ``sector``; otherwise what differs."""
        with memoryview(data) as view:
            # Compared in place (a memcmp): no copy of the expected block on the good path.
            if (len(view) >= STAMP.size and view[: STAMP.size] == self._stamp(index, sector)
                    and self.pool_bytes.startswith(view[STAMP.size :], self._offset(index))):
                return None
        expected = self.block(index, sector, len(data))
        if data == expected:
            return None
        first = next(i for i, (a, b) in enumerate(zip(data, expected)) if a != b)
        return f"byte {first} differs (got 0x{data[first]:02x}, expected 0x{expected[first]:02x})"

    @classmethod
    def from_stamp(cls, data: bytes | memoryview, corpus: Corpus | None = None) -> Workload | None:
        """The workload a block was written with, or None when its stamp is not one of ours.

        A ``corpus`` block needs this node's ``corpus`` to be the primary's: CorpusError, in one
        line, when there is none or its fingerprint differs.
        """
        if len(data) < STAMP.size:
            return None
        magic, _, _, code, seed = STAMP.unpack_from(data)
        if magic != STAMP_MAGIC or code >= len(WORKLOADS):
            return None
        name = WORKLOADS[code]
        if name != "corpus":
            return cls(name, seed)
        if corpus is None:
            raise CorpusError(f"the primary writes the corpus workload (corpus crc32 {seed:08x}):"
                              " give this node the same file with --corpus FILE")
        if corpus.fingerprint != seed:
            raise CorpusError(f"the primary's corpus has crc32 {seed:08x}, this node's --corpus"
                              f" {corpus.path} has {corpus.fingerprint:08x}: not the same file"
                              f" (both nodes need the same first {CORPUS_MAX >> 20} MiB)")
        return cls(name, seed, corpus)



def next_sector(sector: int, size: int, device_sectors: int) -> int:
    """Where the write after this one goes: sequential, wrapping before the device's end."""
    following = sector + size // 512
    return 0 if following + size // 512 > device_sectors else following
