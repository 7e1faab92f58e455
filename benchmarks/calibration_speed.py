"""Full-size calibration speed and memory, per step, on this machine.

    python benchmarks/calibration_speed.py [--raw /tmp/mstlake-fullframe/raw] [--workers 2]

Simulates (once, then reuses) one MST2 night of real 9576x6288 frames: 110 bias (10 + the 100-frame
pepper-and-salt series), 20 twilight flats, 3 darks and 2 science frames. Then times, each as its own
Dask computation: the master bias from 10 frames, the PS map from the 100-frame series, hot pixels,
the night's small-scale flat from 20 flats, and calibrating + masking one science frame (calibrate,
static mask, background, tracks, cosmic rays, quantise, write to the Zarr cube). Peak resident memory
is sampled during each step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import dask
import numpy as np
import psutil

from mstlake.calib import bias as calib_bias
from mstlake.calib import flat as flat_kernels
from mstlake.config import load_field, load_fields, load_instrument, load_pipeline, load_simulation
from mstlake.lake import cubes
from mstlake.lake.tables import read_table
from mstlake.paths import LakePaths, SimulationPaths
from mstlake.pipeline import calibrate as cal
from mstlake.pipeline.inventory import run_inventory
from mstlake.pipeline.simulate import SimulationRequest, simulate
from mstlake.schemas import load_schema


class PeakMemory:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        process = psutil.Process()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, process.memory_info().rss)
                time.sleep(0.05)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(results, name, func, workers):
    with PeakMemory() as memory:
        started = time.perf_counter()
        with dask.config.set(scheduler="threads", num_workers=workers):
            value = func()
        seconds = time.perf_counter() - started
    results[name] = {"seconds": round(seconds, 1), "peak_rss_gb": round(memory.peak / 1024**3, 2)}
    print(name, results[name], flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("/tmp/mstlake-fullframe/raw"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    instrument, sim, pipeline = load_instrument(), load_simulation(), load_pipeline()
    cfg = pipeline.calibration
    paths = SimulationPaths.beside(args.raw)
    results: dict = {"workers": args.workers}
    if not paths.frames.exists():
        started = time.perf_counter()
        simulate(SimulationRequest(field="f02", nights=1, frames_per_night=2, telescopes=("MST2",), scale=1.0, seed=1), paths, instrument=instrument, sim=sim, field_cfg=load_field("f02"), workers=args.workers)
        results["simulate_night_seconds"] = round(time.perf_counter() - started, 1)
    lake = LakePaths(args.raw.parent / "lake")
    if lake.root.exists():
        shutil.rmtree(lake.root)  # each run starts from a fresh lake
    started = time.perf_counter()
    run_inventory(paths.raw, lake, instrument=instrument, fields=load_fields(), config=pipeline.inventory, progress=False)
    results["inventory_seconds"] = round(time.perf_counter() - started, 1)
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().sort_values("mjd")
    shape = (int(frames.naxis2.iloc[0]), int(frames.naxis1.iloc[0]))
    bias_rows = frames[frames.type == "bias"]
    bias_paths = bias_rows.path.tolist()
    flats = frames[frames.type == "flat"]
    darks = frames[frames.type == "dark"].path.tolist()
    science = frames[frames.type == "science"].path.tolist()

    def compute(*delayed):
        return dask.compute(*delayed)

    ps_mask, bias_std = timed(results, "pepper_salt_map_100_frames", lambda: compute(*cal.pepper_salt_graph(bias_paths[10:110], shape, cfg)), args.workers)
    master, _ = timed(results, "master_bias_10_frames", lambda: compute(*cal.master_bias_graph(bias_paths[:10], bias_rows.median_adu[:10].tolist(), bias_rows.robust_std_adu[:10].tolist(), shape, cfg, bias_std)), args.workers)
    (hot,) = timed(results, "hot_pixels_3_darks", lambda: compute(cal.hot_graph(darks, master, shape, cfg)), args.workers)

    def nightly():
        prepared = [dask.delayed(cal._prepare_flat)(p, master, cfg, instrument.detector.saturation_adu, instrument.detector.gain_e_per_adu) for p in flats.path]
        return compute(dask.delayed(flat_kernels.nightly_flat_from_prepared, nout=2)(prepared, night_mjd=0.0, cfg=cfg, gain=instrument.detector.gain_e_per_adu))[0]

    (nightly_flat, reasons) = timed(results, "night_flat_20_frames", nightly, args.workers)
    results["flats_rejected"] = [r for r in reasons if r]
    small = nightly_flat.small_scale
    bad = calib_bias.bad_pixel_map(hot, ps_mask, small, dead_response_max=cfg.dead_response_max)
    masters = (master, bias_std, ps_mask, bad, small, None)
    staging = lake.staging(lake.cube("f02", "g", 0))
    science_ids = frames[frames.type == "science"].frame_id.to_numpy()
    cubes.create_cube(staging, shape=shape, coords={"frame_id": science_ids, "mjd": np.zeros(len(science)), "exptime": np.full(len(science), 60.0), "airmass": np.ones(len(science))}, provenance={})
    outcome = timed(results, "calibrate_and_mask_one_science_frame", lambda: cal._calibrate_science(science[0], 60.0, 0, staging, masters, cfg, instrument), 1)
    results["science_frame_outcome"] = {"error": outcome[1], **{k: v for k, v in outcome[2].items() if k != "traceback"}}
    size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and "/c/0/" in str(p))
    # the cube stays for `benchmarks/astrometry_accuracy.py --cube ... --frames 1` (full-size astrometry)
    print(f"calibrated full-size frame in {staging}")
    results["cube_bytes_per_pixel_one_frame"] = round(size / (shape[0] * shape[1]), 2)
    out = Path(__file__).parent / "results" / "calibration_speed.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
