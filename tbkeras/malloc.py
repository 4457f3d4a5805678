"""glibc malloc settings for a process that streams large tensors (batches of video clips).

TensorFlow frees and allocates blocks of megabytes to tens of megabytes all the time: every clip,
every batch (a batch of 4 SSL videos is ~100 MB of float32), every activation. glibc's defaults hand
such blocks back to the kernel when they are freed (`mmap`/`munmap` above a threshold, heap
trimming, one heap per thread arena), so each new block page-faults and is zeroed again. On the
SSL input pipeline that was a quarter to a third of all CPU time, as system time (BENCHMARKS.md).

`tune_malloc` keeps freed memory in the process for reuse instead. The cost: the heap does not
shrink after a peak, and threads share one arena (a lock, cheap next to the page faults for
tensor-sized blocks). It is a process-wide setting, so entry points call it, first thing; the library
never does. Elsewhere than glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# glibc before 2.35 refuses an mmap threshold above half its 64 MiB heap size.
_FALLBACK_MMAP_THRESHOLD = 32 << 20


def tune_malloc(mmap_threshold: int = 1 << 30, arena_max: int = 1) -> bool:
    """Keep freed blocks below `mmap_threshold` bytes in the heap, never trim it, use `arena_max`
    arenas. Call before TensorFlow starts its threads: threads that already have an arena keep it.

    Returns True if glibc took the settings, False if this is not glibc (nothing changed).
    """
    if mmap_threshold <= 0 or arena_max < 1:
        raise ValueError(f"tune_malloc needs mmap_threshold > 0 and arena_max >= 1, got {mmap_threshold}, {arena_max}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("tune_malloc: no glibc mallopt here; allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    threshold = min(mmap_threshold, 2**31 - 1)
    if not mallopt(_M_MMAP_THRESHOLD, threshold):
        mallopt(_M_MMAP_THRESHOLD, min(threshold, _FALLBACK_MMAP_THRESHOLD))
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_ARENA_MAX, arena_max))
