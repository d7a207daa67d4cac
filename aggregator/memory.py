"""How the process asks glibc's malloc for memory and gives it back: the main process's
peak is a benchmark target (bench/README.md), and a long-running daemon should not keep
pages it no longer uses."""

from __future__ import annotations

import functools
import os
import time
from typing import Any


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has mallopt and malloc_trim); else None (also
    on a Python built without ctypes: the tuning is skipped, nothing fails)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    return libc


#: glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: blocks of this size and larger get pages of their own (glibc's initial threshold)
MMAP_THRESHOLD = 128 * 1024


def one_malloc_arena() -> None:
    """Have glibc's malloc serve every thread of this process from one arena, and give
    large blocks pages of their own for good.

    By default each thread that allocates (the store's, the event loop's helpers) gets an
    arena of its own, up to 8 per core, and memory freed in one is not reused by another:
    the store thread's render at the end of a cold `poll --once` took 5-8 MB of fresh
    pages while the round's freed ones sat in the main arena (600 feeds: peak 79 -> 74
    MB). The threads allocate under the GIL mostly, so sharing one costs no waiting.

    glibc also raises its mmap threshold each time a large mmapped block is freed, up to
    32 MB: after the first big feed body or parse result, such blocks come from the heap,
    between long-lived small ones, and their pages stay with the process once freed (a
    2,000-feed cold round: 74 MB at the start of polling, 83 at its end). A fixed
    threshold keeps them mmapped, returned whole when freed (76-78 MB through the round).
    MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ or the same glibc.malloc tunables in
    GLIBC_TUNABLES are left to decide (a later mallopt would override them); elsewhere
    than glibc, nothing.
    """
    libc = _glibc()
    if libc is None:
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_ARENA_MAX" not in os.environ and "malloc.arena_max" not in tunables:
        libc.mallopt(_M_ARENA_MAX, 1)  # before the process starts any thread
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and "malloc.mmap_threshold" not in tunables:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


#: least seconds between two trims: a trim walks every free block
TRIM_INTERVAL = 1.0
_last_trim = 0.0


def return_free_memory(least_interval: float = TRIM_INTERVAL) -> None:
    """Give the free pages inside the heap back to the system (malloc_trim), unless the
    last trim was less than `least_interval` seconds ago. glibc returns only the heap's
    top on its own; the pages freed between live blocks (a feed's parsed entries, a
    batch's rows) stay with the process, and what is allocated next (a render) takes
    fresh ones beside them. A trim holds malloc's lock while it walks the heap (10-16 ms
    on a fragmented 100 MB one): callers trim between transactions, not inside one."""
    global _last_trim
    now = time.monotonic()
    if now - _last_trim < least_interval:
        return
    _last_trim = now
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
