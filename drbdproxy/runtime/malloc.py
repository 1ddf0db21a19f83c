"""glibc malloc tuning for processes that move bulk data through Python bytes objects."""

from __future__ import annotations

import ctypes
import os
from typing import Any


def _glibc() -> Any:
    """glibc, when this process runs on it (elsewhere there is nothing to tune)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


#: glibc mallopt() parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tune_malloc(arenas: int = 2, mmap_threshold: int = 4 << 20, trim: int = 4 << 20) -> None:
    """Keep the data path's buffers in reused heap memory.

    - Arenas: glibc gives every compression thread its own arena; with buffers churning through
      them the process keeps far more memory than it holds. Two keep RSS near memlimit.
    - Thresholds: every socket read and frame is 64 KiB to 1 MiB. By default glibc serves such
      blocks from fresh mmap()s or trims the heap top after each free, so every byte relayed
      first costs a page fault (measured: about a sixth of a proxy's CPU). Blocks below 4 MiB
      come from the heap, and up to 4 MiB of free heap top is kept for the next read.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, trim)


def trim_heap() -> None:
    """Give free heap pages back to the kernel (glibc's malloc_trim(0); elsewhere nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_bytes() -> int | None:
    """This process's resident set size (Linux /proc; elsewhere None)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Decides when free heap memory is worth giving back to the kernel.

    With the thresholds above, freed buffers stay in the heap for the next read, which is what
    a busy proxy wants. Two cases would keep that memory resident for good:

    - After a burst (64 connections x 16 MiB filled and drained) the heap keeps the peak: once
      what is held has fallen ``slack`` bytes below the most held since the last trim, trim.
    - Under sustained overload what is held stays near memlimit, but reads and frames of
      different sizes churn through it and the free holes between live frames add up (measured:
      +20 MiB resident over 60 s at 256 MiB held, with held steady). Once resident memory exceeds
      what is held by ``slack`` more than the least excess seen (or than what the last such trim
      achieved, so a trim that cannot help is not repeated), trim.
    """

    def __init__(self, slack: int = 32 << 20) -> None:
        self.slack = slack
        self._high = 0
        #: resident - held that is normal for this process: its code, objects and idle heap.
        self._floor: int | None = None
        self._measure_floor = False
        self.trims = 0

    def observe(self, held: int, resident: int | None = None) -> bool:
        """Whether to trim now, given the bytes held by connections and the resident set."""
        if resident is not None:
            excess = resident - held
            # Right after a trim, what it left is the floor; otherwise the least excess seen.
            floor = self._floor
            self._floor = excess if floor is None or self._measure_floor else min(floor, excess)
            self._measure_floor = False
            if excess - self._floor >= self.slack:
                self._measure_floor = True
                return self._trimmed(held)
        if self._high - held >= self.slack:
            return self._trimmed(held)
        self._high = max(self._high, held)
        return False

    def _trimmed(self, held: int) -> bool:
        self._high = held
        self.trims += 1
        return True
