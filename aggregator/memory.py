"""How the process asks glibc's malloc for memory and gives it back: the main process's
peak is a benchmark target (bench/README.md), and a long-running daemon should not keep
pages it no longer uses."""

from __future__ import annotations

import ctypes
import functools
import os
import time
from typing import Any


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has mallopt and malloc_trim); else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
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
    MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ in the environment are left to decide;
    elsewhere than glibc, nothing.
    """
    libc = _glibc()
    if libc is None:
        return
    mallopt = libc.mallopt
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(_M_ARENA_MAX, 1)  # before the process starts any thread
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


#: least seconds between two trims: a trim walks every free block
TRIM_INTERVAL = 1.0
_last_trim = 0.0


def return_free_memory(least_interval: float = TRIM_INTERVAL) -> None:
    """Give the free pages inside the heap back to the system (malloc_trim), unless the
    last trim was less than `least_interval` seconds ago. glibc returns only the heap's
    top on its own; the pages freed between live blocks (a feed's parsed entries, a
    batch's rows) stay with the process, and what is allocated next (a render) takes
    fresh ones beside them."""
    global _last_trim
    now = time.monotonic()
    if now - _last_trim < least_interval:
        return
    _last_trim = now
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
