"""The Dask worker plugin of :mod:`fusion_model.engine` (its own module, a leaf: distributed is imported only
when a cluster starts, and the workers import the plugin by name)."""

from __future__ import annotations

import ctypes
import ctypes.util

from distributed.diagnostics.plugin import WorkerPlugin

# glibc's malloc: arrays up to this size come from the heap, and up to TRIM of freed memory stays there. Dask's
# nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes the mmap threshold at 128 KiB: every
# volume-sized temporary is then a fresh mapping whose pages the kernel faults in and zeroes, 20-25% of a lesion's
# time on a worker (benchmarks/distributed_extraction.py; a process without the setting reuses its heap).
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def limit_threads(threads: int) -> None:
    """Run torch and SimpleITK (ITK) with ``threads`` threads in this process: a worker process gets as many as it
    has task threads, so N single-threaded workers on N cores do not each start N threads."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def reuse_freed_memory() -> bool:
    """Let glibc's malloc in this process serve volume-sized arrays from its heap and keep freed memory for the next
    (``MMAP_THRESHOLD_BYTES``, ``TRIM_THRESHOLD_BYTES``); False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows: their allocators have no such switch
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD_BYTES))


class WorkerSettings(WorkerPlugin):
    """On every worker, including those started later (a replacement for one that died): :func:`limit_threads` to
    the worker's task threads and :func:`reuse_freed_memory`."""

    name = "fusion-model-worker-settings"

    def setup(self, worker) -> None:
        """Called by Dask on each worker as it joins."""
        limit_threads(max(1, int(worker.state.nthreads)))
        reuse_freed_memory()
