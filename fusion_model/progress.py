"""Progress bars for long work (rich), quiet when not wanted."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

T = TypeVar("T")
R = TypeVar("R")


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with a rich progress bar (or silently)."""
    if not enabled:
        yield from items
        return
    columns = (
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    with RichProgress(*columns, transient=False) as progress:
        yield from progress.track(items, total=total, description=description)


class _Silent:
    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


@contextmanager
def Progress(enabled: bool = True):  # noqa: N802 - reads like rich's Progress at call sites
    """A rich progress display with add_task / update, or a silent stand-in."""
    if not enabled:
        yield _Silent()
        return
    columns = (TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with RichProgress(*columns, transient=False) as progress:
        yield progress


def map_tracked(function: Callable[[T], R], tasks: list[T], workers: int, description: str,
                enabled: bool = True) -> list[R]:
    """``[function(t) for t in tasks]`` with a progress bar, in ``workers`` processes when more than one (one
    task at a time per process, results in order); ``function`` must be picklable (module level)."""
    if workers > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(track(pool.map(function, tasks, chunksize=1), description, total=len(tasks),
                              enabled=enabled))
    return [function(t) for t in track(tasks, description, total=len(tasks), enabled=enabled)]
