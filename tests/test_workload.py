"""drbd-sim's block contents: deterministic, self-describing, and disk-like for compression."""

import zlib

import lz4.block
import pytest
from hypothesis import given, settings, strategies as st

from drbdproxy.sim.workload import (
    CORPUS_MAX, CORPUS_MIN, MAX_BLOCK, STAMP, WORKLOADS, Corpus, CorpusError, Workload,
    next_sector,
)


def test_blocks_are_deterministic_and_distinct():
    """The same write index gives the same bytes; different indexes give different bytes."""
    w = Workload("disk", seed=3)
    assert w.block(5, 40, 4096) == Workload("disk", seed=3).block(5, 40, 4096)
    assert w.block(5, 40, 4096) != w.block(6, 48, 4096)


@pytest.mark.parametrize("name", ["disk", "random", "zeros"])
def test_check_finds_a_single_flipped_byte(name):
    """check() accepts the exact block and names the first byte that differs after a flip."""
    w = Workload(name)
    block = bytearray(w.block(9, 72, 8192))
    assert w.check(9, 72, bytes(block)) is None
    block[5000] ^= 0x40
    assert "byte 5000 differs" in w.check(9, 72, bytes(block))


def test_stamp_names_the_workload():
    """A secondary learns the workload and seed from the first block's stamp."""
    block = Workload("random", seed=42).block(0, 0, 4096)
    assert Workload.from_stamp(block) == Workload("random", seed=42)
    assert Workload.from_stamp(bytes(4096)) is None
    assert len(block) == 4096 and STAMP.size == 32


def test_disk_workload_is_about_two_to_one_with_lz4():
    """Disk-like data compresses roughly like a full ext4 image (the baseline measured 1.87)."""
    w = Workload("disk")
    data = b"".join(w.block(i, i * 128, 65536) for i in range(256))
    compressed = sum(len(lz4.block.compress(data[i : i + 65536])) for i in range(0, len(data), 65536))
    assert 1.6 < len(data) / compressed < 2.4


def test_random_workload_is_incompressible():
    """Random blocks do not shrink under lz4, so they exercise the raw pass-through."""
    data = b"".join(Workload("random").block(i, i * 128, 65536) for i in range(32))
    assert len(lz4.block.compress(data)) > 0.99 * len(data)


def test_sectors_wrap_before_the_device_end():
    """Writes are sequential and wrap to sector 0 rather than run past the device."""
    assert next_sector(0, 4096, 1000) == 8
    assert next_sector(984, 4096, 1000) == 992  # sectors 992-999 still fit
    assert next_sector(992, 4096, 1000) == 0


#: crc32 over five blocks of each generated workload (seed 1), taken before the corpus workload
#: was added: its pools and slice offsets must stay exactly these.
PINNED = {"disk": 0x102D409B, "random": 0x54D3BC8C, "zeros": 0x0353B3D6}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_generated_workloads_are_unchanged(name):
    """Pools, offsets and stamps of disk, random and zeros are what they always were, so sims
    of different versions still verify each other."""
    w = Workload(name, 1)
    crc = 0
    for index, size in ((0, 4096), (1, 65536), (777, 1 << 20), (123456, 512), (2**31 + 5, 65536)):
        crc = zlib.crc32(w.block(index, index * 8 % 99991, size), crc)
    assert crc == PINNED[name]
    assert zlib.crc32(Workload("disk", 7).block(3, 24, 65536)) == 0xB6571374
    assert WORKLOADS[:3] == ("disk", "random", "zeros")  # the stamp's workload codes


def corpus_file(tmp_path, size=3 << 20, seed=0, name="corpus.bin"):
    """A file of text-like, compressible bytes (its content does not matter, only that it is
    the same on both sides)."""
    import random

    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)) for _ in range(300)]
    data = bytearray()
    while len(data) < size:
        data += b" ".join(rng.choices(words, k=50)) + b"\n"
    path = tmp_path / name
    path.write_bytes(bytes(data[:size]))
    return path


def test_corpus_blocks_are_slices_of_the_file(tmp_path):
    """A corpus block is its stamp then bytes of the file; the stamp carries the file's crc32."""
    path = corpus_file(tmp_path)
    corpus = Corpus.load(path)
    data = path.read_bytes()
    assert corpus.fingerprint == zlib.crc32(data) and corpus.data == data
    w = Workload.create("corpus", seed=99, corpus=corpus)
    assert w.seed == corpus.fingerprint
    for index in (0, 1, 2, 1000, 2**40 + 3):
        block = w.block(index, 8, 65536)
        assert block[STAMP.size:] in data
        assert w.check(index, 8, block) is None
    assert w.block(0, 0, 65536) != w.block(1, 0, 65536)
    assert Workload.from_stamp(w.block(5, 40, 4096), corpus) == w


def test_corpus_check_finds_a_single_flipped_byte(tmp_path):
    """check() on corpus blocks names the first byte that differs, as for the other workloads."""
    w = Workload.create("corpus", corpus=Corpus.load(corpus_file(tmp_path)))
    block = bytearray(w.block(9, 72, 8192))
    block[5000] ^= 0x40
    assert "byte 5000 differs" in w.check(9, 72, bytes(block))


#: Pools of the slice test by length above CORPUS_MIN, built once.
_POOLS: dict[int, bytes] = {}


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, 2**64 - 1), sectors=st.integers(1, MAX_BLOCK // 512),
       extra=st.sampled_from([0, 511, 12345, CORPUS_MAX - CORPUS_MIN]))
def test_corpus_slices_stay_inside_the_pool(index, sectors, extra):
    """Whatever the write index and block size (up to MAX_BLOCK) and whatever the pool's length
    (2 to 64 MiB), a block's slice lies wholly inside the pool and starts on a sector."""
    data = _POOLS.setdefault(extra, bytes(range(256)) * ((CORPUS_MIN + extra) // 256)
                             + bytes((CORPUS_MIN + extra) % 256))
    w = Workload("corpus", 0, Corpus("mem", 0, data))
    size = sectors * 512
    offset = w._offset(index)
    assert offset % 512 == 0 and 0 <= offset and offset + size - STAMP.size <= len(data)
    stamp, rest = w.block_parts(index, 0, size)
    assert len(stamp) + len(rest) == size


def test_corpus_pool_is_the_first_64_mib(tmp_path):
    """A longer file gives only its first CORPUS_MAX bytes; a shorter one all of its bytes."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(b"\1" * (CORPUS_MAX + 4096))
    assert len(Corpus.load(big).data) == CORPUS_MAX
    assert len(Corpus.load(corpus_file(tmp_path, CORPUS_MIN)).data) == CORPUS_MIN


def test_corpus_refuses_small_or_missing_files(tmp_path):
    """Under 2 MiB, or unreadable: one line saying why."""
    small = corpus_file(tmp_path, CORPUS_MIN - 1)
    with pytest.raises(CorpusError, match="needs at least 2 MiB") as e:
        Corpus.load(small)
    assert "\n" not in str(e.value)
    with pytest.raises(CorpusError, match="No such file"):
        Corpus.load(tmp_path / "missing")
    with pytest.raises(CorpusError, match="needs a corpus file"):
        Workload.create("corpus")


def test_corpus_mismatch_is_named_not_counted_as_corruption(tmp_path):
    """A secondary without the primary's corpus, or with another file, learns so from the first
    stamp, in one line naming both fingerprints."""
    ours = Corpus.load(corpus_file(tmp_path))
    other = Corpus.load(corpus_file(tmp_path, seed=1, name="other.bin"))
    block = Workload.create("corpus", corpus=ours).block(0, 0, 4096)
    with pytest.raises(CorpusError, match="--corpus FILE") as missing:
        Workload.from_stamp(block)
    with pytest.raises(CorpusError, match="not the same file") as differs:
        Workload.from_stamp(block, other)
    assert f"{ours.fingerprint:08x}" in str(differs.value)
    assert f"{other.fingerprint:08x}" in str(differs.value)
    for e in (missing, differs):
        assert "\n" not in str(e.value) and "differs (got" not in str(e.value)
    # A corpus given to the secondary does not matter for the generated workloads.
    disk = Workload("disk").block(0, 0, 4096)
    assert Workload.from_stamp(disk, other) == Workload("disk")
