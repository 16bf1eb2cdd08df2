"""A process-wide allocator setting that makes CPU training steps cheaper: freed memory is kept for reuse."""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_heap_reuse_enabled = False


def reuse_freed_memory() -> bool:
    """Serve large CPU tensors from glibc's heap and keep freed memory there; True if now in effect.

    glibc hands every allocation above 32 MiB to a fresh mmap and unmaps it on free, so each
    step's per-example gradients (hundreds of MiB for a conventional CNN), and the temporaries
    of clipping them, are page-faulted and zeroed by the kernel afresh: on the 2-core benchmark
    machine ~1 ms per MiB, as much as the contractions that fill them (docs/BENCHMARKS.md). With
    mmap off and trimming off, freed blocks are reused by the next step. Process-wide, and the
    process keeps its peak heap until it exits, which a training process does anyway; a no-op
    off glibc (macOS, musl).
    """
    global _heap_reuse_enabled
    if _heap_reuse_enabled:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _heap_reuse_enabled = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    logger.debug("glibc heap reuse for large allocations: %s", _heap_reuse_enabled)
    return _heap_reuse_enabled
