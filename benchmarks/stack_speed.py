"""Speed and memory of a 64-frame image stack of full-size (9576 x 6288) frames (issue 6).

    python benchmarks/stack_speed.py --work /tmp/stackspeed            # builds the frames once (~8 GB)
    python benchmarks/stack_speed.py --work /tmp/stackspeed --reuse    # stacks again

The frames are calibrated frames as the cubes hold them, made here rather than simulated and
calibrated (64 full frames would take hours; the stacking's cost does not depend on what the
pixels show): sky with photon noise quantised as the calibration stores it, the 7% of
pepper-and-salt pixels with their larger variance, a few bad pixels, a few thousand stars, each
frame at its own pointing (offsets of a few arcmin) and rotation (0.3 deg) with a TAN-SIP
distortion. The stack is made by ``mstlake.pipeline.stack.stack_frames`` (the graph ``mstlake
stack`` runs) on the field f02 grid cut to the frames' footprints (larger than one frame),
with the shipped ``[stack]`` configuration (two worker processes). The figures: wall time,
peak resident memory of the whole process tree (the main process and its workers, sampled every
0.2 s) and of its largest process, the grid and tile sizes.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from astropy.wcs import WCS, Sip

from mstlake import config as cfg
from mstlake.lake import cubes
from mstlake.paths import LakePaths
from mstlake.pipeline.stack import stack_frames, stack_grid_for

SHAPE = (6288, 9576)
SCALE_DEG = 0.862 / 3600
SKY_ADU, SKY_NOISE_ADU, ZERO_POINT = 800.0, 28.0, 27.0


def frame_wcs(rng, ra0: float, dec0: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crval = [ra0 + rng.normal(0, 2 / 60) / np.cos(np.radians(dec0)), dec0 + rng.normal(0, 2 / 60)]
    wcs.wcs.crpix = [SHAPE[1] / 2 + 0.5, SHAPE[0] / 2 + 0.5]
    angle = np.radians(rng.normal(0, 0.3))
    wcs.wcs.cd = SCALE_DEG * np.array([[-np.cos(angle), np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[0, 2], b[1, 1], a[3, 0], b[0, 3] = 2e-7, -1e-7, 1.5e-7, 3e-12, -2e-12
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def build(lake: LakePaths, n_frames: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    field = cfg.load_field("f02")
    store = lake.cube("f02", "g", 20300101)
    staging = cubes.create_cube(LakePaths.staging(store), shape=SHAPE, coords={"frame_id": np.arange(n_frames), "mjd": 62000 + np.arange(n_frames) / 96, "exptime": np.full(n_frames, 60.0), "airmass": np.full(n_frames, 1.1)}, provenance={"benchmark": "stack_speed"})
    pepper_salt = rng.random(SHAPE) < 0.07
    bad = rng.random(SHAPE) < 5e-4
    mask = np.where(bad, 1, np.where(pepper_salt, 4, 0)).astype(np.uint8)
    variance = np.where(pepper_salt, 3.0, 1.0).astype(np.float32) * SKY_NOISE_ADU**2
    n_stars = 4000
    star_ra = field.centre_ra_deg + rng.uniform(-1.1, 1.1, n_stars) / np.cos(np.radians(field.centre_dec_deg))
    star_dec = field.centre_dec_deg + rng.uniform(-0.75, 0.75, n_stars)
    star_flux = 10 ** rng.uniform(2.5, 5.0, n_stars)
    stamp = np.arange(-7, 8)
    rows = []
    for i in range(n_frames):
        started = time.perf_counter()
        wcs = frame_wcs(rng, field.centre_ra_deg, field.centre_dec_deg)
        image = rng.normal(SKY_ADU, SKY_NOISE_ADU, SHAPE).astype(np.float32)
        image[pepper_salt] += rng.normal(0, SKY_NOISE_ADU * np.sqrt(2), int(pepper_salt.sum())).astype(np.float32)
        x, y = wcs.world_to_pixel_values(star_ra, star_dec)
        inside = (x > 8) & (x < SHAPE[1] - 9) & (y > 8) & (y < SHAPE[0] - 9)
        sigma = rng.uniform(2.6, 3.6) / 2.3548
        for xs, ys, flux in zip(x[inside], y[inside], star_flux[inside], strict=True):
            ix, iy = int(xs), int(ys)
            profile_x = np.exp(-((ix + stamp - xs) ** 2) / (2 * sigma**2))
            profile_y = np.exp(-((iy + stamp - ys) ** 2) / (2 * sigma**2))
            image[iy - 7 : iy + 8, ix - 7 : ix + 8] += (flux / (2 * np.pi * sigma**2) * np.outer(profile_y, profile_x)).astype(np.float32)
        image, _ = cubes.quantise(image, SKY_NOISE_ADU)
        cubes.write_frame(staging, i, image=image[None][0], variance=variance, mask=mask)
        rows.append({"frame_id": i, "store": str(store), "index": i, "wcs": wcs.to_header(relax=True).tostring(), "naxis1": SHAPE[1], "naxis2": SHAPE[0],
                     "zero_point": [ZERO_POINT + rng.normal(0, 0.05)], "psf_fwhm_px": sigma * 2.3548, "exptime": 60.0, "mjd": 62000 + i / 96, "night": 20300101})
        print(f"frame {i + 1}/{n_frames} written in {time.perf_counter() - started:.1f} s", flush=True)
    cubes.commit(staging, store)
    frames = pd.DataFrame(rows)
    frames["zero_point_mag"] = [z[0] for z in frames.zero_point]
    frames.to_pickle(lake.root / "frames.pkl")
    return frames


class PeakMemory:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak_total, self.peak_process = interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            sizes = []
            for process in [me, *me.children(recursive=True)]:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_total, self.peak_process = max(self.peak_total, sum(sizes)), max(self.peak_process, max(sizes, default=0))
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--reuse", action="store_true", help="stack the frames an earlier run built")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stack_speed.json")
    args = parser.parse_args()
    lake = LakePaths(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    frames = pd.read_pickle(lake.root / "frames.pkl") if args.reuse else build(lake, args.frames)
    stack_cfg = cfg.load_pipeline().stack
    grid = stack_grid_for(cfg.load_field("f02"), frames, pixel_scale_arcsec=0.862, cfg=stack_cfg)
    print(f"grid {grid.shape[1]} x {grid.shape[0]} ({grid.shape[0] * grid.shape[1] / 1e6:.1f} Mpx), {len(grid.tiles())} tiles of {grid.tile_px} px, {len(frames)} frames", flush=True)
    started = time.perf_counter()
    with PeakMemory() as memory:
        stack_frames(frames, grid, lake.stack("f02", "g", "speed"), lake.stack_fits("f02", "g", "speed"), cfg=stack_cfg, provenance={"field": "f02", "band": "g"}, progress=True)
    seconds = time.perf_counter() - started
    result = {
        "frames": len(frames), "frame_shape": list(SHAPE), "grid": list(grid.shape), "grid_mpx": grid.shape[0] * grid.shape[1] / 1e6, "tile_px": grid.tile_px, "tiles": len(grid.tiles()),
        "scheduler": stack_cfg.scheduler, "workers": stack_cfg.workers, "tile_memory_gb": stack_cfg.tile_memory_gb,
        "wall_s": round(seconds, 1), "s_per_frame": round(seconds / len(frames), 2), "peak_rss_total_gb": round(memory.peak_total / 1e9, 2), "peak_rss_largest_process_gb": round(memory.peak_process / 1e9, 2),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
