"""The C allocator tuned for the pipeline's large, short-lived arrays (decision 0010)."""

from __future__ import annotations

import sys

__all__ = ["reuse_freed_memory"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MIB = 1 << 20


def reuse_freed_memory() -> None:
    """Keep the pipeline's freed arrays for the next image instead of giving them back.

    Every removal allocates arrays of megabytes (the decoded image, the model input, the
    cutout, the foreground estimate's levels). By default glibc maps each from the kernel and
    unmaps it when freed, and the next image pays page faults and zeroing for all of it
    again: a sixth of decontamination's time (docs/performance.md). Arrays up to 32 MiB (the
    most glibc allows) now come from the heap, and freed heap memory is kept; resident memory
    stays at the pipeline's peak, which the working-memory budget bounds.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is None:  # not glibc (musl has none)
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * _MIB)
    mallopt(_M_TRIM_THRESHOLD, 1024 * _MIB)
    mallopt(_M_TOP_PAD, 64 * _MIB)
