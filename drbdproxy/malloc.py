"""glibc malloc tuning for processes that move bulk data through Python bytes objects."""

from __future__ import annotations

import ctypes
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


class HeapTrimmer:
    """Decides when buffers that drained are worth giving back to the kernel.

    With the thresholds above, freed buffers stay in the heap for the next read, which is what
    a busy proxy wants. After a burst (64 connections x 16 MiB filled and drained) that would keep
    the peak as RSS for good: once what is held has fallen ``slack`` bytes below the most held
    since the last trim, ``observe`` says trim.
    """

    def __init__(self, slack: int = 32 << 20) -> None:
        self.slack = slack
        self._high = 0
        self.trims = 0

    def observe(self, held: int) -> bool:
        if self._high - held >= self.slack:
            self._high = held
            self.trims += 1
            return True
        self._high = max(self._high, held)
        return False
