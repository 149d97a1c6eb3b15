"""Keep freed memory in the process, so that a loop of large tensors does not pay the kernel each time.

glibc's malloc serves a large request (above a threshold that adapts up to 32 MB) with a fresh
``mmap`` and gives it back on ``free``. A training step allocates and frees tensors of tens of MB
every time (activations, gradients), so every step the kernel maps and zeroes those pages again:
on the 2-core AVX2 VM this project is measured on, that was a sixth of a PLT training step and a
quarter of a CLT's (498 against 600 ms and 3.3 against 4.4 s on two threads;
``python benchmarks/training_step.py``).
Raising the mmap and trim thresholds lets those blocks come from the heap and stay there for
the next step. It is what PyTorch's CPU tuning guide gets from jemalloc or tcmalloc, without a
preloaded library.

The cost: up to ``limit`` bytes of freed memory stay with the process instead of going back to
the system until it exits. It changes nothing on other C libraries or allocators (macOS, musl, a
preloaded jemalloc), and a user's own ``MALLOC_*`` or ``GLIBC_TUNABLES`` settings win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_done = False


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let blocks below ``limit`` bytes come from the heap, and keep up to ``limit`` bytes freed at
    its top, on glibc; once per process. Returns whether the setting is in force."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(limit), 2**31 - 1)
    _done = bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
    if _done:
        log.debug("malloc keeps freed blocks below %d bytes in the heap", value)
    return _done
