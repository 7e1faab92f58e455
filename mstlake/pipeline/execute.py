"""Where the pipeline's Dask graphs run: the local schedulers the stage configs name, or a
``distributed`` cluster (a local one started for the run, or a running scheduler).

Every stage computes through ``compute``: inside ``cluster(...)`` it runs on that cluster, otherwise
on the stage's configured local scheduler; either way with one progress bar over the tasks it
tracks (one per frame or tile).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import dask
from rich.console import Console

from mstlake.pipeline.progress import dask_progress, progress_bar


class ClusterError(RuntimeError):
    """A cluster that cannot be started or reached."""


@contextlib.contextmanager
def cluster(*, scheduler_address: str | None = None, workers: int | None = None, threads_per_worker: int = 1, memory_limit: str | None = "auto", connect_timeout: str = "10s", console: Console | None = None) -> Iterator[object | None]:
    """Run the stages computed inside on a ``distributed`` cluster: the running scheduler at
    ``scheduler_address`` (``tcp://host:8786``), or a local cluster of ``workers`` worker
    processes started for the purpose (and stopped after). Neither given: nothing changes, each
    stage uses its configured local scheduler. Yields the client (or None)."""
    if scheduler_address is None and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    console = console or Console(stderr=True)
    if scheduler_address is not None:
        try:
            client = Client(scheduler_address, timeout=connect_timeout)
        except OSError as err:
            raise ClusterError(f"no Dask scheduler answers at {scheduler_address}: {err}") from err
        with client:
            console.print(f"Dask cluster: [cyan]{scheduler_address}[/] ({len(client.scheduler_info()['workers'])} workers); dashboard {client.dashboard_link}")
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True, memory_limit=memory_limit, dashboard_address=":0") as local, Client(local) as client:
        console.print(f"Dask cluster: {workers} local worker processes; dashboard {client.dashboard_link}")
        yield client


def current_client():
    """The ``distributed`` client this process computes on, or None."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def compute(outputs: Sequence, *, tracked: Sequence = (), description: str, scheduler: str, workers: int | None, progress: bool = True) -> list:
    """Compute ``outputs`` (Dask delayed objects) and return their values. ``tracked``: the tasks
    (delayed, part of the outputs' graph) the progress bar counts, one per frame or tile. On the
    current ``distributed`` client if there is one, else on the local ``scheduler`` with
    ``workers``."""
    outputs, tracked = list(outputs), list(tracked)
    client = current_client()
    if client is None:
        with dask_progress(description, len(tracked), keys={t.key for t in tracked}, enabled=progress):
            return list(dask.compute(*outputs, scheduler=scheduler, num_workers=workers)) if outputs else []
    from distributed import as_completed

    futures = client.compute(tracked + outputs)
    tracked_futures, output_futures = futures[: len(tracked)], futures[len(tracked) :]
    with progress_bar(description, len(tracked), enabled=progress) as advance:
        for done in as_completed(tracked_futures):
            if done.status == "error":
                break  # the outputs that depend on it raise below
            advance()
    del tracked_futures, futures
    return client.gather(output_futures)
