"""Where the heavy per-lesion and per-scan passes run: in this process (the default), on a local Dask cluster of
N worker processes on this machine (``--workers N``), or on an existing Dask cluster (``--scheduler ADDRESS``:
dask-jobqueue on SLURM/PBS, dask-kubernetes, a ``dask scheduler`` started by hand).

A pass is ``engine.map(function, items)``: one task per item, results in the items' order, whichever engine
ran them. The function must be picklable (module level, or a ``functools.partial`` of one) and deterministic:
the results are the same whether one process or many computed them. A worker that dies mid-pass has its tasks
redone on the others (Dask's scheduler reassigns them). Before any task runs on a cluster, the engine checks what
would otherwise fail in the middle of the pass: that the scheduler answers, that the workers run the same
package versions as this process, that they can see the files the pass reads and write where it writes; each is
one :class:`UserInputError` naming what and where.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fusion_model.errors import UserInputError
from fusion_model.progress import Progress, track

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 10
# packages whose versions must agree between this process and the workers (a pickled task or result of another
# version can unpickle into something else, or fail in the middle of a pass)
CHECKED_PACKAGES = ("fusion-model", "numpy", "pandas", "SimpleITK", "torch", "monai", "scipy", "dask", "distributed",
                    "cloudpickle", "msgpack")


@dataclass(frozen=True)
class EngineSettings:
    """Which engine runs a pass: ``workers`` local worker processes, or the Dask cluster at ``scheduler``;
    neither: this process."""

    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.scheduler is not None:
            raise UserInputError("--workers and --scheduler: give one (--workers N starts a local cluster, "
                                 "--scheduler ADDRESS uses a running one)")
        if self.workers is not None and self.workers < 1:
            raise UserInputError(f"--workers {self.workers}: give at least 1 worker process")
        if self.scheduler is not None and not self.scheduler.strip():
            raise UserInputError("--scheduler is empty: give the scheduler's address, e.g. tcp://10.0.0.5:8786")

    @property
    def distributed(self) -> bool:
        """True when a Dask cluster runs the pass."""
        return self.workers is not None or self.scheduler is not None

    def describe(self) -> str:
        """How messages name this engine."""
        if self.scheduler is not None:
            return f"the Dask cluster at {self.scheduler}"
        if self.workers is not None:
            return f"a local Dask cluster of {self.workers} worker process(es)"
        return "this process"


def package_versions(names: Sequence[str] = CHECKED_PACKAGES) -> dict[str, str]:
    """The installed version of each package ("missing" where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def version_mismatches(client_versions: dict[str, str], worker_versions: dict[str, dict[str, str]]) -> str | None:
    """One sentence naming every package whose version differs between this process and a worker, or None."""
    problems = []
    for package, here in sorted(client_versions.items()):
        there = {}
        for worker, versions in sorted(worker_versions.items()):
            version = versions.get(package, "missing") if isinstance(versions, dict) else "unknown"
            if version != here:
                there.setdefault(version, []).append(worker)
        for version, workers in there.items():
            more = f" and {len(workers) - 1} more" if len(workers) > 1 else ""
            problems.append(f"{package} {here} here, {version} on {workers[0]}{more}")
    if not problems:
        return None
    return ("the Dask workers run other package versions than this process (" + "; ".join(problems) + "): install "
            "the same environment on the workers (the same fusion-model and its dependencies) and restart them")


def _missing_paths(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def _unwritable_folders(folders: Sequence[str]) -> list[str]:
    bad = []
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError:
            bad.append(folder)
    return bad


def _first_problem(results: dict[str, list[str]]) -> tuple[str, list[str], int] | None:
    bad = {worker: paths for worker, paths in sorted(results.items()) if paths}
    if not bad:
        return None
    worker, paths = next(iter(bad.items()))
    return worker, paths, len(bad)


def task_threads() -> int | None:
    """Inside a Dask worker: its task threads (torch and ITK run with as many there); elsewhere None."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def on_cluster(engine: Engine | None) -> bool:
    """True when ``engine`` (None: this process) runs the passes on a Dask cluster."""
    return engine is not None and engine.on_cluster


class Engine:
    """A context manager that runs passes (:meth:`map`) on the engine of ``settings``; a local cluster is started
    on entering and stopped on leaving, a client of an existing cluster closed."""

    def __init__(self, settings: EngineSettings | None = None):
        self.settings = settings or EngineSettings()
        self.client = None
        self._cluster = None

    def __enter__(self) -> Engine:
        if self.settings.distributed:
            try:
                self._start()
            except BaseException:  # a refused cluster (versions, no workers) is not left running
                self.close()
                raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and stop a local cluster (idempotent)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        if self.settings.workers is not None:
            # no dashboard; the scheduler's own HTTP routes on a free port of this machine (not 8787, which another
            # cluster may hold: Dask would warn and move)
            self._cluster = LocalCluster(n_workers=self.settings.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                         silence_logs=logging.ERROR)
            self.client = Client(self._cluster)
        else:
            address = self.settings.scheduler
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as err:
                raise UserInputError(
                    f"--scheduler {address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s ({err}); start "
                    "one ('dask scheduler', or your dask-jobqueue / dask-kubernetes cluster) and give its address, "
                    "e.g. tcp://HOST:8786") from None
            if not self.client.scheduler_info().get("workers"):
                self.close()
                raise UserInputError(f"--scheduler {address}: the scheduler has no workers; start some "
                                     f"('dask worker {address}') or scale your cluster up")
        self.check_versions()
        from fusion_model.engine_plugins import WorkerSettings

        self.client.register_plugin(WorkerSettings())

    @property
    def on_cluster(self) -> bool:
        """True when the passes run on a Dask cluster (not in this process)."""
        return self.client is not None

    @property
    def workers(self) -> int:
        """Worker processes available (1 for this process)."""
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def check_versions(self) -> None:
        """Refuse workers whose package versions differ from this process's."""
        if self.client is None:
            return
        message = version_mismatches(package_versions(), self.client.run(package_versions))
        if message:
            raise UserInputError(f"{self.settings.describe()}: {message}")

    def check_paths(self, paths: Iterable[Path | str], what: str) -> None:
        """Refuse workers that cannot see ``paths`` (the cohort's files must be on a filesystem every worker
        mounts at the same path)."""
        paths = sorted({str(Path(p).absolute()) for p in paths})
        if self.client is None or not paths:
            return
        problem = _first_problem(self.client.run(_missing_paths, paths))
        if problem:
            worker, missing, workers = problem
            more = f" ({len(missing)} path(s) missing there" + (f"; {workers} workers affected" if workers > 1 else "")
            raise UserInputError(
                f"{self.settings.describe()}: worker {worker} cannot see {what} {missing[0]}{more}): the workers must "
                "mount the same shared filesystem at the same path as this machine")

    def check_writable(self, folders: Iterable[Path | str], what: str) -> None:
        """Refuse a folder this process or a worker cannot write (a read-only shared cache, say)."""
        folders = sorted({str(Path(f).absolute()) for f in folders})
        bad_here = _unwritable_folders(folders)
        if bad_here:
            raise UserInputError(f"{what} {bad_here[0]} is not writable from this machine: give a folder you can write "
                                 "(--cache DIR), or make it writable")
        if self.client is None:
            return
        problem = _first_problem(self.client.run(_unwritable_folders, folders))
        if problem:
            worker, bad, _ = problem
            raise UserInputError(f"{self.settings.describe()}: worker {worker} cannot write {what} {bad[0]}: give "
                                 "a shared folder every worker can write (--cache DIR), or make it writable there")

    def map(self, function: Callable[..., R], items: Sequence[T], description: str, progress: bool = True,
            shared: dict[str, Any] | None = None) -> Iterator[R]:
        """``function(item, **shared)`` for every item, yielded in the items' order. In this process the tasks run
        one at a time as the results are taken; on a cluster all are submitted at once, the progress bar follows
        their completion, and each result is yielded as soon as it and every one before it are done (the caller's
        work on it overlaps the workers'). ``shared``: large arguments every task takes (arrays of crops): sent to
        each worker once, not with every task. A task that raises re-raises here."""
        items = list(items)
        shared = dict(shared or {})
        if self.client is None or not items:
            for item in track(items, description, total=len(items), enabled=progress):
                yield function(item, **shared)
            return
        yield from self._map_distributed(function, items, description, progress, shared)

    def _map_distributed(self, function: Callable, items: list, description: str, progress: bool,
                         shared: dict) -> Iterator:
        import dask
        from distributed import KilledWorker, as_completed

        run = uuid.uuid4().hex[:12]
        keys = [f"{description.replace(' ', '-')}-{run}-{i}" for i in range(len(items))]
        scattered = {name: None if value is None else self.client.scatter(value, broadcast=True, hash=False)
                     for name, value in shared.items()}
        futures = self.client.map(function, items, key=keys, pure=False, **scattered)
        index_of = {future.key: i for i, future in enumerate(futures)}
        results: dict[int, Any] = {}  # done but not yet yielded, by position
        next_index = 0
        try:
            with Progress(progress) as bar:
                task = bar.add_task(description, total=len(items))
                for future in as_completed(futures):
                    try:
                        results[index_of[future.key]] = future.result()  # a task's exception is raised here
                    except KilledWorker:
                        failures = dask.config.get("distributed.scheduler.allowed-failures") + 1
                        raise UserInputError(
                            f"{self.settings.describe()}: {description}: item {index_of[future.key] + 1} of "
                            f"{len(items)} made {failures} workers die while they ran it (out of memory?): "
                            "give the workers more memory, or fewer threads per worker") from None
                    bar.update(task, advance=1)
                    while next_index in results:
                        futures[next_index].release()  # its result is here: the worker may forget it
                        yield results.pop(next_index)
                        next_index += 1
        finally:
            for future in [*futures, *(f for f in scattered.values() if f is not None)]:
                future.release()
