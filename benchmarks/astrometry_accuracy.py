"""Astrometry against simulator truth (issue 4's astrometric figures), on calibrated cubes.

    python benchmarks/astrometry_accuracy.py [--lake /tmp/mstlake-calacc/lake] [--raw /tmp/mstlake-calacc/raw]

    # one full-size frame, as calibrated by benchmarks/calibration_speed.py:
    python benchmarks/astrometry_accuracy.py --lake /tmp/mstlake-fullframe/lake --raw /tmp/mstlake-fullframe/raw \
        --cube /tmp/mstlake-fullframe/lake/cubes/f02/g/.0.zarr.staging --frames 1 --out astrometry_accuracy_fullsize.json

Uses the lake and simulation that ``benchmarks/calibration_accuracy.py`` leaves behind. Every
calibrated frame: sep extraction, blind solve from the header pointing against the simulated
standard library, TAN-SIP (4th order) refinement. Scored: solved fraction; for stars with S/N > 100,
the rms per axis of (measured centroid through the fitted WCS) minus the true position (the issue's
figure; unflagged sources: no masked pixel near, no detected neighbour within 3 FWHM), split into the WCS's own error (true position through the WCS vs the true pixel position)
and the centroid error (measured vs true pixel position); the centroid-noise limit is what the
centroids alone give.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mstlake.astrom import frame as frame_kernel
from mstlake.astrom import solve
from mstlake.config import load_instrument, load_pipeline
from mstlake.lake import cubes
from mstlake.paths import LakePaths, SimulationPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, default=Path("/tmp/mstlake-calacc/lake"))
    parser.add_argument("--raw", type=Path, default=Path("/tmp/mstlake-calacc/raw"))
    parser.add_argument("--cube", type=Path, help="one cube to use instead of all the lake's")
    parser.add_argument("--frames", type=int, help="at most this many frames per cube")
    parser.add_argument("--out", default="astrometry_accuracy.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    instrument, cfg = load_instrument(), load_pipeline().astrometry
    lake, sim = LakePaths(args.lake), SimulationPaths.beside(args.raw)
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    library = pq.read_table(sim.standard_library).to_pandas()
    stars = pq.read_table(sim.stars).to_pandas().set_index("star_id")
    scale = instrument.detector.pixel_scale_arcsec / 3600
    mas_per_px = instrument.detector.pixel_scale_arcsec * 1000
    totals = {"frames": 0, "solved": 0, "failures": [], "seconds": []}
    world_residuals, wcs_residuals, centroid_residuals = [], [], []
    for cube in [args.cube] if args.cube else [path for *_, path in lake.field_cubes()]:
        ds = cubes.open_store(cube)
        for i, frame_id in enumerate(ds.frame_id.values[: args.frames]):
            totals["frames"] += 1
            row = frames.loc[int(frame_id)]
            stem = SimulationPaths.stem(row.path)
            image, variance, mask = ds.image[i].values, ds.variance[i].values, ds.mask[i].values
            started = time.perf_counter()
            try:
                pointing = (float(row.ra_pointing), float(row.dec_pointing))
                found = frame_kernel.solve_image(image, variance, mask, pointing=pointing, ref_ra=library.ra, ref_dec=library.dec, ref_mag=library[f"mag_{row.band}"], pixel_scale_deg=scale, cfg=cfg)
            except solve.SolveError as err:
                totals["failures"].append(f"{stem}: {err}")
                continue
            totals["seconds"].append(time.perf_counter() - started)
            solution, clean = found.solution, found.fitted
            totals["solved"] += 1
            truth = pq.read_table(sim.frame_stars(stem)).to_pandas()
            truth = truth[(truth.x > 5) & (truth.y > 5) & (truth.x < image.shape[1] - 6) & (truth.y < image.shape[0] - 6)]
            # nearest source within 1 px of each true star
            from scipy.spatial import cKDTree

            distance, nearest = cKDTree(np.column_stack([clean.x, clean.y])).query(np.column_stack([truth.x, truth.y]), distance_upper_bound=1.0)
            ok = np.isfinite(distance)
            t, s = truth[ok], clean.iloc[nearest[ok]]
            bright = (s.snr.values > 100) & (s.flag.values == 0)
            t, s = t[bright], s[bright]
            true_ra, true_dec = stars.loc[t.star_id, "ra"].values, stars.loc[t.star_id, "dec"].values
            ra, dec = solution.wcs.all_pix2world(s.x.values, s.y.values, 0)
            world_residuals.append(np.column_stack([(ra - true_ra) * np.cos(np.radians(true_dec)) * 3.6e6, (dec - true_dec) * 3.6e6]))
            px, py = solution.wcs.all_world2pix(true_ra, true_dec, 0)
            wcs_residuals.append(np.column_stack([px - t.x.values, py - t.y.values]) * mas_per_px)
            centroid_residuals.append(np.column_stack([s.x.values - t.x.values, s.y.values - t.y.values]) * mas_per_px)
    world, wcs_err, centroid = (np.vstack(r) for r in (world_residuals, wcs_residuals, centroid_residuals))
    out = {
        "frames": totals["frames"], "solved": totals["solved"], "solved_fraction": round(totals["solved"] / max(totals["frames"], 1), 4), "failures": totals["failures"][:10],
        "stars_snr_above_100": len(world),
        "rms_mas_per_axis_measured_vs_true": [round(float(np.sqrt(np.mean(world[:, k] ** 2))), 1) for k in (0, 1)],
        "rms_mas_per_axis_wcs_only": [round(float(np.sqrt(np.mean(wcs_err[:, k] ** 2))), 1) for k in (0, 1)],
        "rms_mas_per_axis_centroids_only": [round(float(np.sqrt(np.mean(centroid[:, k] ** 2))), 1) for k in (0, 1)],
        "seconds_per_frame_extract_and_solve": round(float(np.mean(totals["seconds"])), 2),
        "frame_shape": list(image.shape),
    }
    (Path(__file__).parent / "results" / args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
