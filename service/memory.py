"""Give the heap that compiling left free back to the operating system.

Exporting a call to ONNX (or tracing it) allocates and frees hundreds of megabytes in small
blocks; glibc's malloc keeps freed blocks for reuse, so a worker's memory stayed at its
peak. ``malloc_trim(0)`` returns the free pages at the top and in the middle of the heap
(glibc 2.8+). Measured with 2 workers, every shipped model and ``LATENTSERVE_TRACE_AT_START``:
1,353 MB PSS without, 1,001 MB with; it takes under a millisecond. The expensive lane
(batching.py, ``trim_after_idle_s``) calls it too once it has been idle a second after
batches that grew the process by 32 MB: its large calls (generate n=64, sampling) leave
freed heap of their own; after one request of every operation, 1,153-1,165 MB without,
1,061-1,073 with (one server each way and setting). Not after every batch: the next call
then pays page faults for its working set again (GAN inversion through the service: 51-52
-> 55-56 ms p50). A no-op where the C library has no ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def return_freed_memory() -> bool:
    """Hand the C heap's free pages back to the OS; True if the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
