"""The Dask worker plugin of :mod:`fusion_model.engine` (its own module, a leaf: distributed is imported only
when a cluster starts, and the workers import the plugin by name)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin


def limit_threads(threads: int) -> None:
    """Run torch and SimpleITK (ITK) with ``threads`` threads in this process: a worker process gets as many as it
    has task threads, so N single-threaded workers on N cores do not each start N threads."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


class ThreadLimits(WorkerPlugin):
    """:func:`limit_threads` to the worker's task threads on every worker, including those
    started later (a replacement for one that died)."""

    name = "fusion-model-thread-limits"

    def setup(self, worker) -> None:
        """Called by Dask on each worker as it joins."""
        limit_threads(max(1, int(worker.state.nthreads)))
