"""drbd-sim's block contents: deterministic, self-describing, and disk-like for compression."""

import lz4.block
import pytest

from drbdproxy.sim.workload import STAMP, Workload, next_sector


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
