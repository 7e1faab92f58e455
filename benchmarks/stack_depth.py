"""Image stacks against simulator truth (issue 6): depth, S/N, photometry, astrometry and PSF
width for N = 1, 2, 4, ..., 64 stacked frames.

    # the 416-frame g-band run of benchmarks/catalog_stack.py (26 nights x 16 frames, 1/10 scale)
    python benchmarks/stack_depth.py --lake /tmp/stack400/lake --raw /tmp/stack400/raw/f02

For each N, the first N clear frames in time (so N = 64 spans four nights), and with ``--repeats K``
the next runs of N frames too (up to K disjoint stacks per N), are stacked with
``mstlake.pipeline.stack.stack_field`` and measured with ``measure_stack`` (not committed). Figures:

* 5-sigma depth of the stack's forced PSF photometry of library stars (over the area >= 90% of
  the frames cover: the edges of a grid that dithered frames span see fewer), against the median depth
  of its input frames (each from its own forced photometry, the same fit): the gain, next to
  1.25 log10 N (equal frames) and to the gain optimal weighting would reach on these very frames
  (1.25 log10 sum 10^(0.8 (depth_i - depth_median)): frames differ in sky, seeing, transparency);
  both as the errors claim (S/N = 5 from flux / flux_err) and as the truth shows (five times the
  robust scatter of flux - true flux of faint stars), with the faint stars' error chi (their
  scatter about the truth over their claimed errors, 2 < true S/N < 20: 1 when the errors are
  right), the stack's and the median of its inputs';
* S/N of each star in the stack over its S/N in the N = 1 stack, median per star, against sqrt(N)
  (background-limited stars, 5 < S/N(1) < 30), and the faint-star S/N over what optimal weighting
  of these frames would give (10^(0.4 (gain - optimal gain)), from the errors and from the truth);
* median magnitude error per 1-mag bin of true magnitude;
* calibrated magnitude minus truth for bright constant stars (median and robust scatter);
* astrometry against true positions (robust scatter per axis), S/N > 100 clean detections of
  isolated stars (no star within 6" brighter than 4 mag fainter): through the stack's grid WCS
  (no refit: the registration of the inputs) and through the stack's refitted WCS, against the
  single frames' own residuals (their sources' positions);
* PSF FWHM of the stack against the FWHM of the weighted mean of Gaussian profiles of the inputs'
  FWHMs (what perfect registration and resampling give); for N = 1 against the frame's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mstlake import config as cfg
from mstlake.paths import LakePaths, SimulationPaths
from mstlake.pipeline.stack import FrameSelection, depth_5sigma, measure_stack, select_frames, sky_error, stack_field, stack_gain, typical_variance
from mstlake.stack.store import open_stack

SIZES = (1, 2, 4, 8, 16, 32, 64)


def robust_sigma(values) -> float:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else float("nan")


def mixture_fwhm(fwhms, weights) -> float:
    """FWHM of the weighted mean of unit-flux circular Gaussians of these FWHMs."""
    r = np.linspace(0, 10 * max(fwhms), 20001)
    sigma = np.asarray(fwhms) / 2.3548
    profile = np.sum(np.asarray(weights)[:, None] / (2 * np.pi * sigma[:, None] ** 2) * np.exp(-(r**2) / (2 * sigma[:, None] ** 2)), axis=0)
    return float(2 * r[np.argmax(profile < profile[0] / 2)])


def empirical_depth(flux, zero_point, true_mag, *, faint_snr: tuple[float, float] = (2.0, 30.0), bright_snr: float = 300.0) -> float:
    """The 5-sigma depth the truth shows, independent of any error the photometry claims: the
    scatter of (flux - true flux) is fitted as sigma^2 = noise^2 + (e x true flux)^2 over bins
    of true flux (stars up to S/N ``bright_snr``): the part that grows with the flux (colour
    terms, the zero-point surface: calibration, not depth) is set apart from the noise, and the
    magnitude whose flux is five times the noise is the depth. Without enough bins, the robust
    scatter of the stars the noise dominates (true S/N in ``faint_snr``)."""
    flux, zero_point, true_mag = (np.asarray(a, float) for a in (flux, zero_point, true_mag))
    true_flux = 10 ** (-0.4 * (true_mag - zero_point))
    good = np.isfinite(flux) & np.isfinite(true_flux)
    sigma = robust_sigma((flux - true_flux)[good])
    for _ in range(3):  # the stars the sky's noise dominates, at the scatter found so far
        faint = good & (true_flux / sigma > faint_snr[0]) & (true_flux / sigma < faint_snr[1])
        sigma = robust_sigma((flux - true_flux)[faint])
    used = good & (true_flux / sigma > 1.0) & (true_flux / sigma < bright_snr)
    floor = noise_floor(true_flux[used], (flux - true_flux)[used])
    return float(np.median(zero_point[good]) - 2.5 * np.log10(5 * (floor or sigma)))


def noise_floor(level, deviation, *, per_bin: int = 40, min_bin: int = 20) -> float | None:
    """The flux-independent part of a scatter: over bins of ``level`` (true flux or S/N), the
    robust variance of ``deviation`` (measured - true) fitted as noise^2 + (e x level)^2, so that
    an error growing with the flux (colour terms, the zero-point surface: calibration, not
    depth) is set apart from the noise. Returns noise, or None without 3 bins or a sane fit."""
    order = np.argsort(level)
    groups = [g for g in np.array_split(order, max(1, order.size // per_bin)) if g.size >= min_bin]
    if len(groups) < 3:
        return None
    bin_level = np.array([np.median(level[g]) for g in groups])
    variance = np.array([robust_sigma(deviation[g]) ** 2 for g in groups])
    # each bin's variance is known to ~sqrt(2 / n) of itself: weight by its inverse
    weight = np.array([np.sqrt(g.size / 2) for g in groups]) / variance
    (noise2, slope2), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(bin_level), bin_level**2]) * weight[:, None], variance * weight, rcond=None)
    return float(np.sqrt(noise2)) if noise2 > 0 and slope2 >= 0 else None


def inputs_true_depths(forced_inputs: pd.DataFrame) -> np.ndarray:
    """Each input frame's depth as the truth shows it (``empirical_depth``) from its forced
    photometry of constant library stars (columns flux, zero_point, true)."""
    return np.array([empirical_depth(g.flux, g.zero_point, g.true) for _, g in forced_inputs.groupby("frame_id")])


def optimal_gain_of(depths) -> tuple[float, float]:
    """The frames' median depth, and the depth gain over it that optimal weighting of frames of
    these depths gives: 1.25 log10 sum 10^(0.8 (depth_i - median))."""
    depths = np.asarray(depths, float)
    median = float(np.nanmedian(depths))
    return median, float(1.25 * np.log10(np.nansum(10 ** (0.8 * (depths - median)))))


def library_truth(raw: Path, band: str) -> tuple[pd.DataFrame, dict, set]:
    """The simulation's stars beside ``raw``, each library star's true magnitude in ``band``
    (by library source_id), and the library's constant stars."""
    stars = pq.read_table(SimulationPaths.beside(raw).stars).to_pandas()
    true_mag = dict(zip(stars.library_source_id, stars[f"mag_{band}"], strict=True))
    return stars, true_mag, set(stars.library_source_id[(stars.variable_type == "constant") & stars.in_library])


def optimal_error(lake: LakePaths, frame_ids, true_mag: dict, constant: set, zero_point: float) -> float:
    """The flux error (at ``zero_point``) optimal weighting of these frames would give a star on
    empty sky: from the frames' own depths as the truth shows them (``inputs_true_depths``)."""
    inputs = frame_forced(lake, frame_ids)
    inputs = inputs.assign(true=inputs.source_id.map(true_mag))
    median_depth, gain = optimal_gain_of(inputs_true_depths(inputs[inputs.source_id.isin(constant) & (inputs.flag == 0)]))
    return 10 ** (-0.4 * (median_depth + gain - zero_point)) / 5


def stack_parser(description: str, *, n: int) -> argparse.ArgumentParser:
    """The arguments of the benchmarks that read one stack ``bench-n{N}`` of ``stack_depth.py``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True, help="the simulation's raw directory (its truth beside it)")
    parser.add_argument("--band", default="g")
    parser.add_argument("--n", type=int, default=n, help="the stack bench-n{N} that stack_depth.py left in the lake")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def with_settings(pipeline, settings: list[str]):
    """``pipeline`` with each SECTION.KEY=VALUE of ``settings`` changed (VALUE read as its type)."""
    for setting in settings:
        name, value = setting.split("=", 1)
        section, key = name.split(".", 1)
        part = getattr(pipeline, section)
        kind = type(getattr(part, key))
        typed = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        pipeline = dataclasses.replace(pipeline, **{section: dataclasses.replace(part, **{key: typed})})
    return pipeline


def optimal_depth_per_star(coverage: pd.DataFrame, frame_depth: dict) -> pd.Series:
    """Per star (source_id), the depth optimal weighting of the frames that held it would give
    (1.25 log10 sum 10^(0.8 depth_i)): ``coverage`` has a row (source_id, frame_id) per frame whose
    forced photometry holds the star. Dithers and pointing errors leave a multi-night stack few
    stars every frame covered; this way every star counts, against its own optimum."""
    weight = coverage.frame_id.map({f: 10 ** (0.8 * d) for f, d in frame_depth.items() if np.isfinite(d)})
    return 1.25 * np.log10(weight.groupby(coverage.source_id).sum(min_count=1))


def snr_over_optimum(flux, flux_err, true_flux, optimal_error, *, gain: float, faint_snr: tuple[float, float] = (2.0, 20.0), bright_snr: float = 200.0) -> tuple[float, float, int, float]:
    """The stack's S/N over the optimum, every star against its own optimal error: from the errors
    (median of optimal error / claimed error without the star's photon noise, faint stars) and from
    the truth (the scatter of (flux - true flux) / optimal error fitted as a^2 + (e x S/N)^2 over
    bins of optimal S/N, as in ``empirical_depth``: 1 / a). And the number of faint stars, and
    the median (flux - true flux) / optimal error of stars at optimal S/N 3-10 (0 when faint
    fluxes are unbiased)."""
    flux, flux_err, true_flux, optimal_error = (np.asarray(a, float) for a in (flux, flux_err, true_flux, optimal_error))
    snr = true_flux / optimal_error
    good = np.isfinite(flux) & np.isfinite(snr) & (flux_err > 0)
    faint = good & (snr > faint_snr[0]) & (snr < faint_snr[1])
    from_errors = float(np.median((optimal_error / sky_error(flux, flux_err, gain=gain))[faint])) if faint.sum() >= 10 else float("nan")
    residual = (flux - true_flux) / optimal_error
    used = good & (snr > 1.0) & (snr < bright_snr)
    floor = noise_floor(snr[used], residual[used])
    from_truth = 1 / floor if floor else (robust_sigma(residual[faint]) ** -1 if faint.sum() >= 10 else float("nan"))
    near_limit = good & (snr > 3) & (snr < 10)
    bias = float(np.median(residual[near_limit])) if near_limit.sum() >= 10 else float("nan")
    return from_errors, from_truth, int(faint.sum()), bias


def error_chi(flux, flux_err, zero_point, true_mag, *, true_snr: tuple[float, float] = (2.0, 20.0)) -> float:
    """Robust scatter of (flux - true flux) / flux error over the stars whose true S/N is in
    ``true_snr`` (chosen by the truth, not by what noise made of them): 1 when the errors are right."""
    flux, flux_err, zero_point, true_mag = (np.asarray(a, float) for a in (flux, flux_err, zero_point, true_mag))
    true_flux = 10 ** (-0.4 * (true_mag - zero_point))
    snr = true_flux / np.where(flux_err > 0, flux_err, np.nan)
    use = np.isfinite(flux) & (snr > true_snr[0]) & (snr < true_snr[1])
    return robust_sigma(((flux - true_flux) / flux_err)[use]) if use.sum() >= 10 else float("nan")


def isolated(truth: pd.DataFrame, everything: pd.DataFrame, mag_column: str, *, radius_arcsec: float = 6.0, contrast_mag: float = 4.0) -> pd.DataFrame:
    """The stars of ``truth`` with no star within ``radius_arcsec`` brighter than their magnitude +
    ``contrast_mag`` (a neighbour that a stack detects shifts the centroid of a blend)."""
    from scipy.spatial import cKDTree

    from mstlake.lake.associate import unit_vectors

    tree = cKDTree(unit_vectors(everything.ra.values, everything.dec.values))
    chord = 2 * np.sin(np.radians(radius_arcsec / 3600) / 2)
    keep = []
    for i, near in enumerate(tree.query_ball_point(unit_vectors(truth.ra.values, truth.dec.values), chord)):
        mags = everything[mag_column].values[near]
        keep.append(int(np.sum(mags < truth[mag_column].values[i] + contrast_mag)) <= 1)
    return truth[np.array(keep, bool)]


def frame_forced(lake: LakePaths, frame_ids) -> pd.DataFrame:
    wanted = set(int(f) for f in frame_ids)
    parts = [pq.read_table(p, filters=[("frame_id", "in", list(wanted))]).to_pandas() for p in sorted(Path(lake.forced_dir).rglob("*.parquet"))]
    return pd.concat([p for p in parts if len(p)], ignore_index=True)


def frame_sources(lake: LakePaths, frame_ids) -> pd.DataFrame:
    wanted = list(set(int(f) for f in frame_ids))
    parts = [pq.read_table(p, filters=[("frame_id", "in", wanted)]).to_pandas() for p in sorted(Path(lake.sources_dir).rglob("*.parquet"))]
    return pd.concat([p for p in parts if len(p)], ignore_index=True)


def astrometric_residuals(ra, dec, truth: pd.DataFrame) -> tuple[float, float, int]:
    """Robust scatter (mas, per axis) of positions about their true stars, and the number matched."""
    from mstlake.lake.associate import nearest_within

    nearest, _ = nearest_within(ra, dec, truth.ra.values, truth.dec.values, 1.0)
    hit = nearest >= 0
    if hit.sum() < 5:
        return float("nan"), float("nan"), int(hit.sum())
    d_ra = (np.asarray(ra)[hit] - truth.ra.values[nearest[hit]]) * np.cos(np.radians(truth.dec.values[nearest[hit]])) * 3.6e6
    d_dec = (np.asarray(dec)[hit] - truth.dec.values[nearest[hit]]) * 3.6e6
    # robust (1.4826 MAD): one blend at the grid's edge reads 1" off and would rule an rms
    return robust_sigma(d_ra), robust_sigma(d_dec), int(hit.sum())


def earlier_stack(lake: LakePaths, field: str, band: str, selection: FrameSelection, name: str) -> SimpleNamespace:
    """A stack an earlier run made, as ``stack_field`` describes what it makes; its frames must be
    the ones ``selection`` chooses now."""
    frames, _ = select_frames(lake, field, band, selection)
    store = lake.stack(field, band, name)
    ds, _ = open_stack(store)
    if sorted(json.loads(ds.attrs["frame_ids"])) != sorted(int(f) for f in frames.frame_id):
        raise SystemExit(f"{store} holds other frames than {selection.describe()}: run without --reuse-stacks")
    return SimpleNamespace(store=store, frames=frames, shape=tuple(ds["image"].shape))


SUMMARISED = ("depth_gain_mag", "true_depth_gain_mag", "optimal_gain_mag", "optimal_true_gain_mag", "faint_error_chi", "inputs_median_faint_error_chi", "snr_over_optimal", "true_snr_over_optimal", "snr_over_optimal_every_star", "true_snr_over_optimal_every_star", "faint_flux_bias_optimal_errors", "fwhm_ratio")


def summarise(results: list[dict]) -> dict:
    """Per N, each figure's mean over the disjoint stacks and its standard error (nan from one)."""
    summary = {}
    for n in sorted({r["n"] for r in results}):
        rows = [r for r in results if r["n"] == n]
        figures = {"stacks": len(rows)}
        for key in SUMMARISED:
            values = np.array([r[key] for r in rows if r[key] is not None], float)
            values = values[np.isfinite(values)]
            figures[key] = [float(values.mean()) if values.size else float("nan"), float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")]
        summary[n] = figures
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True, help="the simulation's raw directory (its truth beside it)")
    parser.add_argument("--band", default="g")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--repeats", type=int, default=1, help="disjoint runs of N consecutive frames stacked per N (as many as the frames allow, up to this): the summary gives each figure's mean and standard error")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change a pipeline setting, e.g. stack.background_without_stars=false (repeatable)")
    parser.add_argument("--reuse-stacks", action="store_true", help="measure the stacks an earlier run left in the lake (same names, same frames) instead of stacking again")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stack_depth.json")
    args = parser.parse_args()

    lake = LakePaths(args.lake)
    pipeline, instrument, field = with_settings(cfg.load_pipeline(), args.set), cfg.load_instrument(), cfg.load_field("f02")
    stack_cfg = pipeline.stack
    reference = pd.read_parquet(lake.reference_catalogue(field.name))
    stars, true_mag, constant = library_truth(args.raw, args.band)
    mag_column = f"mag_{args.band}"
    bright_truth = isolated(stars[stars[mag_column] < 17.5], stars, mag_column)
    all_frames, _ = select_frames(lake, field.name, args.band, FrameSelection())
    results, snr_one = [], None
    runs = [(n, k) for n in (int(s) for s in args.sizes.split(",")) for k in range(max(1, min(args.repeats, len(all_frames) // n)))]
    for n, k in runs:
        started = time.perf_counter()
        selection, name = FrameSelection(first_n=n, skip=k * n), f"bench-n{n}" + (f"-r{k}" if k else "")
        if args.reuse_stacks and lake.stack(field.name, args.band, name).exists():
            made = earlier_stack(lake, field.name, args.band, selection, name)
        else:
            made = stack_field(lake, field, args.band, selection, instrument=instrument, cfg=stack_cfg, name=name, fits_file=False, progress=False)
        stack_seconds = time.perf_counter() - started
        measured = measure_stack(lake, made.store, reference, instrument=instrument, astrometry_cfg=pipeline.astrometry, photometry_cfg=pipeline.photometry, stack_cfg=pipeline.stack, archive_cfg=pipeline.archive, commit=False)
        row = measured.stack.to_pylist()[0]
        inputs = all_frames.set_index("frame_id").loc[made.frames.frame_id]

        # depth: the stack's against its inputs' (each from its own forced photometry)
        forced_inputs = frame_forced(lake, made.frames.frame_id)
        coverage = forced_inputs[["source_id", "frame_id"]]
        by_frame = [(frame_id, g) for frame_id, g in forced_inputs.groupby("frame_id")]
        input_depths = np.array([depth_5sigma(g.flux.values, g.flux_err.values, g.zero_point.values, gain=instrument.detector.gain_e_per_adu) or np.nan for _, g in by_frame])
        median_depth, optimal_gain = optimal_gain_of(input_depths)
        forced_inputs = forced_inputs.assign(true=forced_inputs.source_id.map(true_mag))
        forced_inputs = forced_inputs[forced_inputs.source_id.isin(constant) & (forced_inputs.flag == 0)]
        input_true_depths = inputs_true_depths(forced_inputs)
        median_true_depth, optimal_true_gain = optimal_gain_of(input_true_depths)
        frame_depths = {"errors": dict(zip([f for f, _ in by_frame], input_depths, strict=True)), "truth": dict(zip(sorted(forced_inputs.frame_id.unique()), input_true_depths, strict=True))}
        everywhere = measured.forced.assign(true=measured.forced.source_id.map(true_mag))
        everywhere = everywhere[everywhere.source_id.isin(constant) & (everywhere.flag == 0)]
        zp_everywhere = (everywhere.mag - everywhere.mag_inst).fillna(float(np.nanmedian(everywhere.mag - everywhere.mag_inst)))
        optimal = {}
        for label, depths in frame_depths.items():
            depth = everywhere.source_id.map(optimal_depth_per_star(coverage, depths))
            optimal[label] = 10 ** (-0.4 * (depth - zp_everywhere)) / 5
        true_flux = 10 ** (-0.4 * (everywhere.true - zp_everywhere))
        gain = stack_gain(instrument.detector.gain_e_per_adu, open_stack(made.store)[0]["count"].values)
        per_star_errors, *_ = snr_over_optimum(everywhere.flux, everywhere.flux_err, true_flux, optimal["errors"], gain=gain)
        _, per_star_truth, per_star_stars, faint_bias = snr_over_optimum(everywhere.flux, everywhere.flux_err, true_flux, optimal["truth"], gain=gain)

        f = measured.forced.assign(snr=measured.forced.flux / measured.forced.flux_err, true=measured.forced.source_id.map(true_mag))
        f = f[f.source_id.isin(constant) & (f.flag == 0) & f.full_depth]  # where (nearly) every frame entered
        by_star = f.set_index("source_id").snr
        if n == 1 and k == 0:
            snr_one = by_star
        common = by_star.index.intersection(snr_one.index[(snr_one > 5) & (snr_one < 30)]) if snr_one is not None else []
        snr_gain = float(np.median(by_star.loc[common] / snr_one.loc[common])) if len(common) else float("nan")

        errors = {}
        for low in range(12, 22):
            in_bin = f[(f.true >= low) & (f.true < low + 1)]
            if len(in_bin) >= 5:
                errors[f"{low}-{low + 1}"] = float(np.median(in_bin.mag_inst_err))
        local_zp = (f.mag - f.mag_inst).where(np.isfinite(f.mag - f.mag_inst), float(np.nanmedian(f.mag - f.mag_inst)))
        true_depth = empirical_depth(f.flux, local_zp, f.true)
        chi = error_chi(f.flux, f.flux_err, local_zp, f.true)
        inputs_chi = float(np.nanmedian([error_chi(g.flux, g.flux_err, g.zero_point, g.true) for _, g in forced_inputs.groupby("frame_id")]))
        bright = f[(f.mag_inst_err < 0.01) & np.isfinite(f.mag)]
        offset = (bright.mag - bright.true).values

        # astrometry against truth: grid WCS (registration), refitted WCS, and the inputs' own
        from astropy.io import fits
        from astropy.wcs import WCS

        grid_wcs = WCS(fits.Header.fromstring(row["wcs_header"]))
        s = measured.sources.to_pandas()
        clean = s[(s.flag == 0) & (s.snr > 100)]
        grid_ra, grid_dec = grid_wcs.pixel_to_world_values(clean.x.values, clean.y.values)
        registration = astrometric_residuals(grid_ra, grid_dec, bright_truth)
        refitted = astrometric_residuals(clean.ra.values, clean.dec.values, bright_truth)
        singles = frame_sources(lake, made.frames.frame_id)
        singles = singles[(singles.flag == 0) & (singles.snr > 100)]
        single = [astrometric_residuals(g.ra.values, g.dec.values, bright_truth) for _, g in singles.groupby("frame_id")]

        weights = [1 / typical_variance(Path(r.store), int(r.index)) / 10 ** (0.8 * (float(np.median(inputs.zero_point_mag)) - r.zero_point_mag)) for r in inputs.itertuples()]
        predicted_fwhm = mixture_fwhm(inputs.psf_fwhm_px.values, weights)
        result = {
            "n": n, "repeat": k, "first_frame": k * n + 1, "frames": len(made.frames), "nights": int(inputs.night.nunique()), "grid": list(made.shape), "stack_s": round(stack_seconds, 1),
            "depth_5sigma_mag": row["depth_5sigma_mag"], "inputs_median_depth_mag": median_depth, "depth_gain_mag": row["depth_5sigma_mag"] - median_depth,
            "equal_frames_gain_mag": 1.25 * np.log10(n), "optimal_gain_mag": optimal_gain,
            "true_depth_mag": true_depth, "inputs_median_true_depth_mag": median_true_depth, "true_depth_gain_mag": true_depth - median_true_depth, "optimal_true_gain_mag": optimal_true_gain,
            "faint_error_chi": chi, "inputs_median_faint_error_chi": inputs_chi,
            "snr_over_optimal": 10 ** (0.4 * (row["depth_5sigma_mag"] - median_depth - optimal_gain)), "true_snr_over_optimal": 10 ** (0.4 * (true_depth - median_true_depth - optimal_true_gain)),
            "snr_over_optimal_every_star": per_star_errors, "true_snr_over_optimal_every_star": per_star_truth, "every_star_faint_stars": per_star_stars, "faint_flux_bias_optimal_errors": faint_bias,
            "snr_gain_over_n1": snr_gain, "snr_gain_over_sqrt_n": snr_gain / np.sqrt(n), "snr_stars": len(common),
            "mag_err_by_true_mag": errors, "zero_point_mag": row["zero_point_mag"], "zero_point_ref_mag": row["zero_point_ref_mag"],
            "bright_minus_truth_median_mag": float(np.median(offset)) if len(offset) else None, "bright_minus_truth_robust_sigma_mag": robust_sigma(offset), "bright_stars": len(offset),
            "astrometry_grid_wcs_mas": registration, "astrometry_refitted_mas": refitted,
            "astrometry_single_frames_median_mas": [float(np.nanmedian([a[0] for a in single])), float(np.nanmedian([a[1] for a in single]))],
            "psf_fwhm_px": row["psf_fwhm_px"], "predicted_fwhm_px": predicted_fwhm, "fwhm_ratio": row["psf_fwhm_px"] / predicted_fwhm,
            "inputs_fwhm_px": [float(v) for v in inputs.psf_fwhm_px.values] if n == 1 else None,
        }
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "mag_err_by_true_mag"}, default=float), flush=True)
    summary = summarise(results)
    for n, figures in summary.items():
        print(f"N = {n:>2} ({figures['stacks']} stacks): " + ", ".join(f"{key} {value[0]:.3f} +- {value[1]:.3f}" for key, value in figures.items() if key != "stacks"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"lake": str(args.lake), "band": args.band, "summary": summary, "results": results}, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
