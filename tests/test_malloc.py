"""Heap tuning: drained buffers go back to the kernel after a burst, not while the proxy is busy."""

from __future__ import annotations

import pytest
from twisted.application.service import Service
from twisted.internet.task import Clock

from drbdproxy.control import registry as registry_module
from drbdproxy.runtime.malloc import HeapTrimmer, resident_bytes, trim_heap
from drbdproxy.relay.budget import Budget
from drbdproxy.control.registry import TRIM_INTERVAL, ConnectionRegistry

MiB = 1 << 20


def test_trims_once_held_bytes_fall_a_slack_below_the_high_mark() -> None:
    """Rising or steady usage never trims; a fall of at least the slack trims once, and the
    high mark restarts from there."""
    trimmer = HeapTrimmer(slack=32 * MiB)
    assert [trimmer.observe(n * MiB) for n in (0, 100, 900, 1000, 990, 969)] == [False] * 6
    assert trimmer.observe(968 * MiB) is True
    assert trimmer.observe(968 * MiB) is False  # the high mark is now 968 MiB
    assert trimmer.observe(0) is True and trimmer.trims == 2


def test_trims_when_resident_memory_creeps_above_what_is_held() -> None:
    """Held bytes steady at memlimit, resident memory creeping (free holes between frames): a
    trim once the excess over held is a slack above the least excess seen; a trim that gave
    nothing back is not repeated until the excess grows by another slack."""
    trimmer = HeapTrimmer(slack=32 * MiB)
    base = 60 * MiB  # the idle process
    assert trimmer.observe(0, base) is False
    held = 250 * MiB
    assert [trimmer.observe(held, base + held + n * MiB) for n in (10, 20, 31)] == [False] * 3
    assert trimmer.observe(held, base + held + 32 * MiB) is True
    # That trim gave nothing back: the excess it left is the new floor.
    assert trimmer.observe(held, base + held + 32 * MiB) is False
    assert trimmer.observe(held, base + held + 63 * MiB) is False
    assert trimmer.observe(held, base + held + 64 * MiB) is True
    # This one did: the floor is measured again and the least excess is kept.
    assert trimmer.observe(held, base + held + 2 * MiB) is False
    assert trimmer.observe(held, base + held + 33 * MiB) is False
    assert trimmer.observe(held, base + held + 34 * MiB) is True and trimmer.trims == 3


def test_resident_bytes_reads_this_process() -> None:
    """The resident set comes from /proc and grows when this process touches new memory."""
    before = resident_bytes()
    block = bytearray(64 * MiB)  # zero pages: resident once written
    block[:: 4096] = b"x" * len(block[:: 4096])
    after = resident_bytes()
    assert before is not None and after is not None and after - before >= 48 * MiB
    del block


def test_trim_heap_runs_here() -> None:
    """malloc_trim exists on this glibc machine and is harmless to call."""
    trim_heap()


def test_the_registry_trims_the_heap_after_its_buffers_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TRIM_INTERVAL the registry sums what its connections hold; after 64 MiB drain it
    trims once, and not again while nothing changes."""
    trims: list[int] = []
    monkeypatch.setattr(registry_module, "trim_heap", lambda: trims.append(1))
    # A steady resident set: only the held bytes move (pytest's own memory must not trigger).
    monkeypatch.setattr(registry_module, "resident_bytes", lambda: 100 * MiB)
    clock = Clock()
    registry = ConnectionRegistry(clock)
    conn = Service()  # stands in for a ProxyConnection: a named child with a budget
    conn.setName("r0")
    conn.budget = Budget(128 * MiB)  # type: ignore[attr-defined]
    conn.setServiceParent(registry)
    registry.startService()
    try:
        conn.budget.add(64 * MiB)  # type: ignore[attr-defined]
        clock.advance(TRIM_INTERVAL)
        assert trims == []
        conn.budget.sub(64 * MiB)  # type: ignore[attr-defined]
        for _ in range(3):
            clock.advance(TRIM_INTERVAL)
        assert trims == [1]
    finally:
        registry.stopService()
