"""Progress bars for Dask computations (rich), usable with the local schedulers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _TaskCounter(Callback):
    def __init__(self, progress: Progress, task_id, prefix: str):
        super().__init__()
        self._progress, self._task_id, self._prefix = progress, task_id, prefix

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(self._prefix):
            self._progress.advance(self._task_id)


@contextlib.contextmanager
def dask_progress(description: str, total: int, *, key_prefix: str, console: Console | None = None, enabled: bool = True) -> Iterator[None]:
    """Show a bar that advances once per finished task whose key starts with ``key_prefix``."""
    if not enabled or total == 0:
        yield
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        task_id = progress.add_task(description, total=total)
        with _TaskCounter(progress, task_id, key_prefix):
            yield
