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

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr
from stack_depth import frame_forced, inputs_true_depths, optimal_gain_of, robust_sigma, with_settings

from mstlake import config as cfg
from mstlake.astrom import extract
from mstlake.paths import LakePaths, SimulationPaths
from mstlake.phot import psf as psf_kernels
from mstlake.phot.frame import background_variance
from mstlake.pipeline.stack import FULL_DEPTH_FRACTION, measure_stack
from mstlake.stack.store import open_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--band", default="g")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--snr", type=float, default=10.0, help="the injected stars' S/N at the optimal error")
    parser.add_argument("--seeds", type=int, default=3, help="independent grids of injected stars")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change a pipeline setting for the measurements, e.g. stack.scene_detect_sigma=2 (repeatable)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    lake, truth_paths = LakePaths(args.lake), SimulationPaths.beside(args.raw)
    pipeline, instrument, field = with_settings(cfg.load_pipeline(), args.set), cfg.load_instrument(), cfg.load_field("f02")
    reference = pd.read_parquet(lake.reference_catalogue(field.name))
    stars = pq.read_table(truth_paths.stars).to_pandas()
    true_mag = dict(zip(stars.library_source_id, stars[f"mag_{args.band}"], strict=True))
    constant = set(stars.library_source_id[(stars.variable_type == "constant") & stars.in_library])
    store = lake.stack(field.name, args.band, f"bench-n{args.n}")
    settings = {"instrument": instrument, "astrometry_cfg": pipeline.astrometry, "photometry_cfg": pipeline.photometry, "stack_cfg": pipeline.stack, "archive_cfg": pipeline.archive, "commit": False}
    first = measure_stack(lake, store, reference, **settings)
    psf, scene = first.photometry.psf, first.photometry.scene
    zero_point = float(np.nanmedian(first.forced.mag - first.forced.mag_inst))

    ds, wcs = open_stack(store)
    inputs = frame_forced(lake, json.loads(ds.attrs["frame_ids"]))
    inputs = inputs.assign(true=inputs.source_id.map(true_mag))
    median_depth, gain = optimal_gain_of(inputs_true_depths(inputs[inputs.source_id.isin(constant) & (inputs.flag == 0)]))
    optimal_error = 10 ** (-0.4 * (median_depth + gain - zero_point)) / 5
    flux = args.snr * optimal_error

    image, variance, count, mask = (ds[name].values for name in ("image", "variance", "count", "mask"))
    bad = (mask != 0) | ~np.isfinite(image) | ~np.isfinite(variance)
    image = np.where(bad, 0.0, image).astype(np.float32)
    variance = np.where(bad, float(np.nanmedian(variance[~bad])), variance).astype(np.float32)
    mask = np.where(bad, 1, 0).astype(np.uint8)
    extraction = extract.extract_sources(image, variance, mask, thresh=pipeline.astrometry.detect_sigma, minarea=pipeline.astrometry.min_area_px)
    residual, noise = image - extraction.background, background_variance(variance, mask, extraction.background_noise)
    hidden = extract.hidden_pixels(mask) | (count < FULL_DEPTH_FRACTION * count.max())
    stack_gain = instrument.detector.gain_e_per_adu * float(np.median(count[count > 0]))
    probe = {"hidden": hidden, "psf": psf, "flux": flux, "gain": stack_gain, "iterations": pipeline.stack.forced_iterations}

    results = {"alone": [], "with_scene": [], "through_pipeline": [], "claimed_over_scatter": [], "bias": []}
    for seed in range(args.seeds):
        x, y = injection_grid(hidden, psf.fwhm, seed=100 + seed)
        injected = psf_kernels.model_image(image.shape, psf, x, y, np.full(x.size, flux)).astype(np.float32)
        for way, modelled in (("alone", scene.iloc[:0]), ("with_scene", scene)):
            results[way].append(fitted_scatter(residual + injected, noise, scene=modelled, x=x, y=y, **probe))
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
        "n": args.n, "settings": args.set, "snr_at_optimum": args.snr, "optimal_error": optimal_error, "seeds": args.seeds,
        "snr_over_optimum": {way: float(np.mean([optimal_error / s for s in results[way]])) for way in ("alone", "with_scene", "through_pipeline")},
        "snr_over_optimum_sem": {way: float(np.std([optimal_error / s for s in results[way]], ddof=1) / np.sqrt(args.seeds)) if args.seeds > 1 else None for way in ("alone", "with_scene", "through_pipeline")},
        "pipeline_over_scene": float(np.mean(np.array(results["with_scene"]) / np.array(results["through_pipeline"]))),
        "pipeline_over_scene_sem": float(np.std(np.array(results["with_scene"]) / np.array(results["through_pipeline"]), ddof=1) / np.sqrt(args.seeds)) if args.seeds > 1 else None,
        "pipeline_claimed_error_over_scatter": float(np.mean(results["claimed_over_scatter"])), "pipeline_median_flux_bias": float(np.mean(results["bias"])),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


def fitted_scatter(image, noise, *, hidden, psf, scene: pd.DataFrame, x, y, flux: float, gain: float, iterations: int) -> float:
    """Robust scatter of the forced PSF fluxes of stars of ``flux`` injected at (x, y) in
    ``image`` (sky subtracted), fitted at their true places together with ``scene`` (x, y, flux:
    the other stars modelled), starting from nothing as a real measurement does."""
    fit = psf_kernels.psf_photometry(image, noise, hidden, psf, np.concatenate([scene.x.values, x]), np.concatenate([scene.y.values, y]), np.concatenate([np.nan_to_num(scene.flux.values), np.zeros(x.size)]), fit_position=False, gain=gain, iterations=iterations)
    got, usable = fit.flux[-x.size :], (fit.flag[-x.size :] == 0) & np.isfinite(fit.flux[-x.size :])
    return robust_sigma(got[usable] - flux)


def injection_grid(hidden: np.ndarray, fwhm: float, *, seed: int, spacing_fwhm: float = 10.0, margin: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Positions on a grid ``spacing_fwhm`` apart, jittered by up to a quarter step, off hidden pixels."""
    ny, nx = hidden.shape
    step = max(int(spacing_fwhm * fwhm), 8)
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[margin + step // 2 : ny - margin : step, margin + step // 2 : nx - margin : step]
    x = gx.ravel() + rng.uniform(-step / 4, step / 4, gx.size)
    y = gy.ravel() + rng.uniform(-step / 4, step / 4, gx.size)
    keep = ~hidden[np.round(y).astype(int), np.round(x).astype(int)]
    return x[keep], y[keep]


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
