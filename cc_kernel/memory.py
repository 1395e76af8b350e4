"""Process set-up (stdlib only): keep glibc's allocator from handing every large buffer back to the kernel.

Layer: called once at the start of each of our processes (the kernel, the monitor, the worker); imports only
the standard library, so every layer may use it. Invariant: it changes how memory is obtained, never what a
program computes; where it cannot apply (not glibc), it does nothing and says so.

Why (the data path's 1 MiB buffers, what glibc's defaults cost, what was measured): docs/architecture.md,
"Decisions". The price: up to ``TRIM_THRESHOLD`` bytes of freed memory may stay with a process after a large
transfer (idle memory is unchanged).
"""

from __future__ import annotations

import ctypes

#: Allocations below this come from the heap, not from a fresh mmap (glibc's default starts at 128 KiB).
MMAP_THRESHOLD = 8 * 1024 * 1024
#: Free memory at the top of the heap above this is returned to the kernel (glibc's default starts at 128 KiB).
TRIM_THRESHOLD = 32 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False (nothing changed) where there is no
    glibc ``mallopt``, e.g. musl."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
