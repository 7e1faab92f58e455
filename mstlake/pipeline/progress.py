"""Progress bars for Dask computations (rich): with the local schedulers through a callback on
finished tasks, and a plain bar that ``mstlake.pipeline.execute`` advances on a cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _TaskCounter(Callback):
    def __init__(self, advance: Callable[[], None], keys: set):
        super().__init__()
        self._advance, self._keys = advance, keys

    def _posttask(self, key, result, dsk, state, worker_id):
        if key in self._keys:
            self._advance()


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, console: Console | None = None, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A bar of ``total`` steps; yields the function that advances it by one."""
    if not enabled or total == 0:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        task_id = progress.add_task(description, total=total)
        yield lambda: progress.advance(task_id)


@contextlib.contextmanager
def dask_progress(description: str, total: int, *, keys: set, console: Console | None = None, enabled: bool = True) -> Iterator[None]:
    """Show a bar that advances once per finished local-scheduler task among ``keys``."""
    with progress_bar(description, total, console=console, enabled=enabled) as advance, _TaskCounter(advance, keys):
        yield
