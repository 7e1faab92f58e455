"""A simulated night through the whole ingest chain on a local Dask cluster of 1 and of 2 worker
processes (issue 7): wall time, frames per hour, speed-up, peak memory per worker, and where the
time goes (calibration masters, calibrating a frame, measuring a frame, the night's archive commit).

    python benchmarks/ingest_cluster.py                 # 8 frames at 1/2 scale (1/4 of the pixels)
    python benchmarks/ingest_cluster.py --scale 1       # full-size frames (~20 GB of raw files)

Per-frame figures are also given per full-size frame (times / scale^2: every stage's cost grows
with the pixels). The night's masters (pepper-and-salt map from 100 biases, master bias, flats)
are built once per night; with a handful of science frames they weigh far more than on a real
night of hundreds, so the per-frame cost is reported both with them and without them (from the
task stream: the frame tasks' own compute time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def peak_memory_sampler(client, peaks: dict, stop: threading.Event, every_s: float = 0.5) -> None:
    """Record each worker's largest resident memory (GB) until ``stop`` is set."""

    def rss() -> float:
        import psutil

        return psutil.Process().memory_info().rss / 1e9

    while not stop.is_set():
        try:
            for address, gb in client.run(rss).items():
                peaks[address] = max(peaks.get(address, 0.0), gb)
        except Exception:  # a worker restarting, the cluster closing
            pass
        stop.wait(every_s)


def compute_seconds_by_kind(task_stream: list[dict]) -> dict[str, float]:
    """Total compute seconds of the tasks, by what they are (their key's prefix)."""
    kinds = {"calibrate-science": "calibrate_frame", "static-frame": "measure_frame", "static-night": "night_files_magfit_and_archive_commit"}
    totals = defaultdict(float)
    for task in task_stream:
        key = str(task["key"])
        kind = next((name for prefix, name in kinds.items() if prefix in key), "masters_and_other")
        totals[kind] += sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
    return dict(totals)


def run_chain(raw: Path, lake_dir: Path, field, workers: int) -> dict:
    from distributed import get_task_stream

    from mstlake.config import load_fields, load_instrument, load_pipeline
    from mstlake.lake.refcat import load_reference
    from mstlake.paths import LakePaths
    from mstlake.pipeline.calibrate import calibrate_nights
    from mstlake.pipeline.execute import cluster
    from mstlake.pipeline.inventory import run_inventory
    from mstlake.pipeline.static import measure_field

    instrument, pipeline = load_instrument(), load_pipeline()
    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = LakePaths(lake_dir)
    peaks, stop = {}, threading.Event()
    with cluster(workers=workers, memory_limit=None) as client:
        sampler = threading.Thread(target=peak_memory_sampler, args=(client, peaks, stop), daemon=True)
        sampler.start()
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            run_inventory(raw, lake, instrument=instrument, fields=load_fields(), config=pipeline.inventory, progress=False)
            inventoried = time.perf_counter()
            calibrated = calibrate_nights(lake, instrument=instrument, cfg=pipeline.calibration, progress=False)
            calibrated_at = time.perf_counter()
            reference = load_reference(field, lake, base=raw)
            measured = measure_field(lake, field.name, reference, instrument=instrument, astrometry_cfg=pipeline.astrometry, photometry_cfg=pipeline.photometry, archive_cfg=pipeline.archive, magfit_cfg=pipeline.magfit, progress=False)
            finished = time.perf_counter()
        stop.set()
        sampler.join()
    frames = sum(r.science for r in calibrated)
    return {
        "workers": workers, "frames": frames, "failed_calibration": sum(len(r.failed) for r in calibrated), "solved": measured.solved, "flux_calibrated": measured.calibrated,
        "seconds": {"inventory": round(inventoried - started, 1), "calibration": round(calibrated_at - inventoried, 1), "astrometry_photometry_archive": round(finished - calibrated_at, 1), "total": round(finished - started, 1)},
        "compute_seconds_by_kind": {k: round(v, 1) for k, v in compute_seconds_by_kind(stream.data).items()},
        "frames_per_hour": round(3600 * frames / (finished - started), 1),
        "peak_memory_gb_per_worker": sorted(round(v, 2) for v in peaks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="science frames in the night")
    parser.add_argument("--scale", type=float, default=0.5, help="detector size relative to the real one (1: full-size frames)")
    parser.add_argument("--workers", default="1,2", help="cluster sizes to compare")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mstlake-ingest-bench"))
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest_cluster.json")
    args = parser.parse_args()

    from mstlake.config import ReferenceCatalogueConfig, load_field, load_instrument, load_simulation
    from mstlake.paths import SimulationPaths
    from mstlake.pipeline.simulate import SimulationRequest, simulate

    raw = args.workdir / f"raw-s{args.scale}-n{args.frames}" / "f02"
    paths = SimulationPaths.beside(raw)
    if not paths.frames.exists():
        started = time.perf_counter()
        request = SimulationRequest(field="f02", nights=1, frames_per_night=args.frames, telescopes=("MST2",), scale=args.scale, seed=args.seed)
        simulate(request, paths, instrument=load_instrument(), sim=load_simulation(), field_cfg=load_field("f02"), progress=True)
        print(f"simulated in {time.perf_counter() - started:.0f} s")
    field = dataclasses.replace(load_field("f02"), reference=ReferenceCatalogueConfig(path=str(paths.standard_library)))
    runs = []
    for workers in [int(w) for w in args.workers.split(",")]:
        run = run_chain(raw, args.workdir / f"lake-w{workers}", field, workers)
        print(json.dumps(run), flush=True)
        runs.append(run)
    full_size = 1 / args.scale**2
    summary = {"scale": args.scale, "frames": args.frames, "frame_shape": None, "runs": runs}
    base = runs[0]
    for run in runs:
        per_frame = run["seconds"]["total"] * run["workers"] / run["frames"]
        own = (run["compute_seconds_by_kind"].get("calibrate_frame", 0) + run["compute_seconds_by_kind"].get("measure_frame", 0)) / run["frames"]
        run["speed_up"] = round(base["seconds"]["total"] / run["seconds"]["total"], 2)
        run["seconds_per_frame_per_core"] = round(per_frame, 1)
        run["seconds_per_full_size_frame_per_core"] = round(per_frame * full_size, 1)
        run["frame_tasks_seconds_per_full_size_frame"] = round(own * full_size, 1)
    import pyarrow.parquet as pq

    from mstlake.paths import LakePaths

    frames = pq.read_table(LakePaths(args.workdir / f"lake-w{runs[-1]['workers']}").frames_table).to_pandas()
    science = frames[frames.type == "science"]
    summary["frame_shape"] = [int(science.naxis2.iloc[0]), int(science.naxis1.iloc[0])]
    args.out.write_text(json.dumps(summary, indent=1))
    for run in runs:
        print(f"{run['workers']} worker(s): {run['seconds']['total']} s, {run['frames_per_hour']} frames/h, speed-up {run['speed_up']}, "
              f"{run['seconds_per_full_size_frame_per_core']} s per full-size frame per core ({run['frame_tasks_seconds_per_full_size_frame']} s in the frame tasks), "
              f"peak memory per worker {run['peak_memory_gb_per_worker']} GB")


if __name__ == "__main__":
    main()
