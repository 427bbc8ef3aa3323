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

While serving, the opposite: a batch's large buffers (ONNX Runtime's, without its arena,
and torch's) are reused from the heap instead of being mapped and faulted in afresh for every
batch (``keep_batch_buffers``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable


@functools.cache
def _libc_function(name: str) -> Callable[..., int] | None:
    """The C library's function ``name``, or None where there is none (musl, macOS)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    return function


#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap (glibc's own ceiling for its adaptive threshold)
MMAP_THRESHOLD = 32 << 20
#: free heap at the top kept for the next batch, up to this; an idle lane trims the rest
TRIM_THRESHOLD = 64 << 20


def keep_batch_buffers() -> bool:
    """Have glibc's malloc serve a batch's large buffers from the heap and keep them free
    for the next batch; True if it could (glibc, and neither threshold set by the
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` variables, which then rule).

    Why: glibc maps a block over its adaptive threshold with ``mmap`` and unmaps it on
    ``free``, and gives the heap's top back once more than twice that threshold is free; a
    forward pass at batch 64 allocates and frees megabytes per layer, so every batch paid
    the page faults of its whole working set again. Measured here, one thread, ONNX Runtime
    at batch 64 (per image): the GAN generator 530-600 us (four runs) with glibc's defaults,
    445-451 with these thresholds; ae-fashion reconstruct 237 -> 225. Memory: an idle lane
    still trims what a burst left (``return_freed_memory``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def return_freed_memory() -> bool:
    """Hand the C heap's free pages back to the OS; True if the C library could."""
    trim = _libc_function("malloc_trim")
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
