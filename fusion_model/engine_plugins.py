"""The Dask worker plugin of :mod:`fusion_model.engine` (its own module: distributed is imported only when a
cluster starts, and the workers import the plugin by name)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from fusion_model.engine import limit_threads


class ThreadLimits(WorkerPlugin):
    """:func:`~fusion_model.engine.limit_threads` to the worker's task threads on every worker, including those
    started later (a replacement for one that died)."""

    name = "fusion-model-thread-limits"

    def setup(self, worker) -> None:
        """Called by Dask on each worker as it joins."""
        limit_threads(max(1, int(worker.state.nthreads)))
