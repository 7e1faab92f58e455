"""Where a crowded stack's forced photometry loses S/N (issue 6): stars injected into a stack
and measured three ways, each in units of the optimal error.

    python benchmarks/stack_injection.py --lake /tmp/stack400/lake --raw /tmp/stack400/raw/f02 --n 8

Reads the stack ``bench-n{N}`` that ``benchmarks/stack_depth.py`` leaves in the lake. The unit is
the optimal error: what optimal weighting of its input frames would give a star on empty sky
(from the frames' depths as the truth shows them, as in ``stack_crowding_bound.py``). Stars of
S/N ``--snr`` at the optimum, drawn with the stack's own PSF model on a jittered grid 10 FWHM
apart over the area every frame covers, are measured

* *alone*: fitted at their true positions on the stack with nothing else modelled;
* *with the scene*: fitted together with every star the stack's measurement modelled (library
  stars and those its second detection pass found), from zero flux;
* *through the pipeline*: added to a copy of the stack and to the reference catalogue, and the
  copy measured by ``measure_stack`` from the start (detection, PSF, scene search, forced fit).

All three see the same injected stars at the same places (per seed), so their difference is the
method's, not the draw's (~3.5% per seed for ~500 stars).

The S/N each gives over the optimum (optimal error / robust scatter of measured - injected flux)
separates what the scene costs (alone against with the scene) from what the pipeline's own
choices cost (with the scene against through the pipeline); the claimed error over the scatter
says whether the pipeline's errors are honest for them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from stack_depth import library_truth, optimal_error, robust_sigma, stack_parser, with_settings

from mstlake import config as cfg
from mstlake.astrom import extract
from mstlake.paths import LakePaths
from mstlake.phot import psf as psf_kernels
from mstlake.phot.frame import background_variance, forced_scatter, jittered_grid
from mstlake.pipeline.stack import FULL_DEPTH_FRACTION, measurable_planes, measure_stack, stack_gain
from mstlake.stack.store import open_stack


def main() -> None:
    parser = stack_parser(__doc__, n=8)
    parser.add_argument("--snr", type=float, default=10.0, help="the injected stars' S/N at the optimal error")
    parser.add_argument("--seeds", type=int, default=3, help="independent grids of injected stars")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change a pipeline setting for the measurements, e.g. stack.scene_detect_sigma=2 (repeatable)")
    args = parser.parse_args()

    lake = LakePaths(args.lake)
    pipeline, instrument, field = with_settings(cfg.load_pipeline(), args.set), cfg.load_instrument(), cfg.load_field("f02")
    reference = pd.read_parquet(lake.reference_catalogue(field.name))
    _, true_mag, constant = library_truth(args.raw, args.band)
    store = lake.stack(field.name, args.band, f"bench-n{args.n}")
    settings = {"instrument": instrument, "astrometry_cfg": pipeline.astrometry, "photometry_cfg": pipeline.photometry, "stack_cfg": pipeline.stack, "archive_cfg": pipeline.archive, "commit": False}
    first = measure_stack(lake, store, reference, **settings)
    psf, scene = first.photometry.psf, first.photometry.scene
    zero_point = float(np.nanmedian(first.forced.mag - first.forced.mag_inst))

    ds, wcs = open_stack(store)
    unit = optimal_error(lake, json.loads(ds.attrs["frame_ids"]), true_mag, constant, zero_point)
    flux = args.snr * unit

    image, variance, mask, count, _ = measurable_planes(ds)
    extraction = extract.extract_sources(image, variance, mask, thresh=pipeline.astrometry.detect_sigma, minarea=pipeline.astrometry.min_area_px)
    residual, noise = image - extraction.background, background_variance(variance, mask, extraction.background_noise)
    hidden = extract.hidden_pixels(mask) | (count < FULL_DEPTH_FRACTION * count.max())
    probe = {"hidden": hidden, "psf": psf, "flux": flux, "start": 0.0, "gain": stack_gain(instrument.detector.gain_e_per_adu, count), "iterations": pipeline.stack.forced_iterations}

    results = {"alone": [], "with_scene": [], "through_pipeline": [], "claimed_over_scatter": [], "bias": []}
    for seed in range(args.seeds):
        # 20 px from the edges, 10 FWHM apart: they leave each other alone
        x, y = jittered_grid(hidden, max(int(10 * psf.fwhm), 8), margin=20, seed=100 + seed)
        injected = psf_kernels.model_image(image.shape, psf, x, y, np.full(x.size, flux)).astype(np.float32)
        for way, modelled in (("alone", scene.iloc[:0]), ("with_scene", scene)):
            # from nothing, as a real measurement starts
            results[way].append(forced_scatter(residual + injected, noise, scene=modelled, x=x, y=y, min_stars=1, **probe))
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / store.name
            shutil.copytree(store, copy)
            planes = zarr.open_group(str(copy), mode="r+")
            planes["image"][...] = planes["image"][...] + injected.astype(planes["image"].dtype)
            ra, dec = wcs.pixel_to_world_values(x, y)
            measured = measure_stack(lake, copy, pd.concat([reference, injected_rows(reference, ra, dec, zero_point - 2.5 * np.log10(flux))], ignore_index=True), **settings)
        got = measured.forced[(measured.forced.source_id < 0) & (measured.forced.flag == 0)]
        scatter = robust_sigma(got.flux - flux)
        results["through_pipeline"].append(scatter)
        results["claimed_over_scatter"].append(float(np.median(got.flux_err)) / scatter)
        results["bias"].append(float(np.median(got.flux)) / flux - 1)
    summary = {
        "n": args.n, "settings": args.set, "snr_at_optimum": args.snr, "optimal_error": unit, "seeds": args.seeds,
        "snr_over_optimum": {way: float(np.mean([unit / s for s in results[way]])) for way in ("alone", "with_scene", "through_pipeline")},
        "snr_over_optimum_sem": {way: float(np.std([unit / s for s in results[way]], ddof=1) / np.sqrt(args.seeds)) if args.seeds > 1 else None for way in ("alone", "with_scene", "through_pipeline")},
        "pipeline_over_scene": float(np.mean(np.array(results["with_scene"]) / np.array(results["through_pipeline"]))),
        "pipeline_over_scene_sem": float(np.std(np.array(results["with_scene"]) / np.array(results["through_pipeline"]), ddof=1) / np.sqrt(args.seeds)) if args.seeds > 1 else None,
        "pipeline_claimed_error_over_scatter": float(np.mean(results["claimed_over_scatter"])), "pipeline_median_flux_bias": float(np.mean(results["bias"])),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


def injected_rows(reference: pd.DataFrame, ra, dec, mag: float) -> pd.DataFrame:
    """Reference-catalogue rows for injected stars (source_id < 0), of a typical star's colours."""
    typical = reference.median(numeric_only=True)
    rows = pd.DataFrame({column: np.repeat(reference[column].iloc[:1].to_numpy(), len(ra)) for column in reference.columns})
    rows["source_id"] = -np.arange(1, len(ra) + 1)
    rows["ra"], rows["dec"] = ra, dec
    for band in "gri":
        if f"mag_{band}" in rows:
            rows[f"mag_{band}"] = mag - (typical["mag_g"] - typical[f"mag_{band}"])
    return rows.astype(reference.dtypes.to_dict())


if __name__ == "__main__":
    main()
