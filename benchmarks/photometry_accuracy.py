"""Photometry, astrometry with PSF centroids, and flux calibration against simulator truth (issue 4).

    python benchmarks/photometry_accuracy.py [--lake /tmp/mstlake-calacc/lake] [--raw /tmp/mstlake-calacc/raw]

    # half-size frames (4788 x 3144, ~10000 detections and ~1200 PSF stars each; ~25 min in all):
    python benchmarks/calibration_accuracy.py --scale 0.5 --nights 5 --out /tmp/mstlake-half --results calibration_accuracy_half.json
    python benchmarks/photometry_accuracy.py --lake /tmp/mstlake-half/lake --raw /tmp/mstlake-half/raw --out photometry_accuracy_half.json

Uses the lake and simulation that ``benchmarks/calibration_accuracy.py`` leaves behind (by default
44 MST2 g frames over 11 nights at 1/10 scale: only 30-40 PSF stars per frame, while the PSF
varies across them as much as across a full frame). Every frame goes through extraction, blind solve and
``mstlake.phot.frame.photometer_frame`` (ePSF, PSF photometry with neighbours subtracted, WCS
refined with PSF centroids, forced photometry at the library's positions, 25 apertures,
aperture correction, zero-point surface). Scored:

* astrometry: S/N > 100 detections (no masked pixel near), PSF centroid through the refined WCS
  minus the true position, rms per axis;
* zero point: per frame, the median of (calibrated forced magnitude - true magnitude) over
  library stars with S/N > 50; the rms of that over frames;
* light curves: the scatter of constant stars' calibrated forced magnitudes over the frames,
  against the simulation's own noise per measurement (Cramer-Rao bound of a PSF fit at a known
  position: photon noise of star and sky, read noise and the detector's own noise in the pixels
  the star covers (pepper-and-salt telegraph noise, dark current), through the frame's true
  Moffat PSF; plus the frame's scintillation; star and sky dimmed by the true vignetting at the
  star), per 1-mag bin, as the median of each star's reduced chi^2 about its weighted mean
  against the median of a chi^2 with its degrees of freedom (the median of sample standard
  deviations over ~19 epochs, used before 2026-11-24, reads 2% low); the excess that must be
  added in quadrature to the bin's theory; a fit of every star's variance as k^2 theory^2 +
  floor^2 that separates a magnitude-independent floor from noise above the theory at every
  magnitude; the same bins against the ideal-detector theory; and again with each frame's
  zero-point error (known from truth) removed, to tell calibration from measurement;
* aperture correction: its residual rms per frame;
* with ``--psf-holdout`` (a diagnostic): stars with an even star_id are kept out of the ePSF, and
  the light curves of those and of the others are scored apart (a model fitted to the stars it
  measures could absorb their noise; on the half-size run it does not);
* magfit (``mstlake.phot.magfit``): the same light-curve bins on magfit magnitudes, fitted per band
  (a) over all nights at once, as a reprocess would, and (b) night by night, as nightly ingest does
  (the first night builds the master, later nights are fitted to the master accumulated so far,
  which only gains stars); same constant stars, frames and MIN_EPOCHS as before magfit, plus the
  fraction of those points magfit left uncorrected (NaN), which the bins then leave out.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import stats
from astropy.io import fits
from truth_matching import aperture_correction_error_mmag, sky_residuals_mas

from mstlake.astrom import frame as frame_kernel
from mstlake.astrom import solve
from mstlake.config import MagfitConfig, load_instrument, load_pipeline
from mstlake.lake import cubes
from mstlake.paths import LakePaths, SimulationPaths
from mstlake.phot.frame import photometer_frame
from mstlake.phot.stamps import cutout_index
from mstlake.phot.magfit import magfit
from mstlake.simulate.optics import moffat_alpha

MIN_EPOCHS = 10  # measurements of a star for its light-curve scatter


def crlb_sigma_e(flux_e, fwhm_px, beta, sky_e, read_noise_e, *, x=None, y=None, pixel_variance_e=None) -> np.ndarray:
    """Flux error (e-) of a PSF fit at a known position: 1 / sqrt(sum P^2 / V) over pixels with
    V = sky + f P + rn^2 (+ the pixel's own variance), for a circular Moffat of the given FWHM,
    pixel-integrated (4x4 sub-samples).

    Without ``pixel_variance_e`` (an ideal detector) the profiles are tabulated at 200 FWHMs across
    the stars' range and averaged over three sub-pixel phases. With it (a map, e-^2: the
    pepper-and-salt pixels' telegraph noise and dark current, which the simulator adds and which
    take information out of the pixels they hit) each star is evaluated at its own position (x, y)
    on the pixels it covers."""
    flux_e = np.atleast_1d(np.asarray(flux_e, float))
    fwhm_px = np.broadcast_to(np.asarray(fwhm_px, float), flux_e.shape)
    sky = np.broadcast_to(np.asarray(sky_e, float), flux_e.shape)
    grid = np.arange(-15, 16)
    if pixel_variance_e is not None:
        x, y = np.asarray(x, float), np.asarray(y, float)
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        alpha = np.asarray(moffat_alpha(fwhm_px, beta), float)
        out = np.empty(flux_e.size)
        for start in range(0, flux_e.size, 500):
            c = slice(start, start + 500)
            p = _moffat_pixels(grid[None, None, :] - (x[c] - ix[c])[:, None, None], grid[None, :, None] - (y[c] - iy[c])[:, None, None], alpha[c, None, None], beta)
            flat, inside = cutout_index(pixel_variance_e.shape, iy[c, None] + grid, ix[c, None] + grid)
            variance = sky[c, None, None] + flux_e[c, None, None] * p + read_noise_e**2 + pixel_variance_e.reshape(-1)[flat]
            out[c] = 1 / np.sqrt(np.sum(np.where(inside, p**2 / variance, 0.0), axis=(1, 2)))
        return out
    widths = np.linspace(np.nanmin(fwhm_px), np.nanmax(fwhm_px), 200) if flux_e.size else np.array([1.0])
    nearest = np.clip(np.rint((fwhm_px - widths[0]) / max(widths[-1] - widths[0], 1e-9) * (widths.size - 1)).astype(int), 0, widths.size - 1)
    out = np.empty(flux_e.size)
    for k in np.unique(nearest):
        alpha = float(moffat_alpha(widths[k], beta))
        stars = np.flatnonzero(nearest == k)
        info = np.zeros(stars.size)
        for phase in ((0.0, 0.0), (0.5, 0.5), (0.25, 0.0)):
            p = _moffat_pixels(grid[None, :] - phase[0], grid[:, None] - phase[1], alpha, beta).ravel()
            info += np.sum(p[None, :] ** 2 / (sky[stars, None] + flux_e[stars, None] * p[None, :] + read_noise_e**2), axis=1) / 3
        out[stars] = 1 / np.sqrt(info)
    return out


def _moffat_pixels(dx, dy, alpha, beta: float) -> np.ndarray:
    """A circular Moffat of unit flux integrated over pixels (4x4 sub-samples) whose centres are
    (dx, dy) from the star (broadcast together with ``alpha``)."""
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    dx, dy, alpha = (np.asarray(a, float)[..., None, None] for a in (dx, dy, alpha))
    r2 = (dx + sub[None, :]) ** 2 + (dy + sub[:, None]) ** 2
    return ((1 + r2 / alpha**2) ** -beta).mean(axis=(-2, -1)) * (beta - 1) / (np.pi * alpha[..., 0, 0] ** 2)


def detector_pixel_variance_e(sim: SimulationPaths, telescope: str, *, gain: float, exptime: float) -> np.ndarray:
    """The simulated detector's own per-pixel variance (e-^2): telegraph noise of the pepper-and-
    salt pixels and the dark current's shot noise (hot pixels, which the pipeline masks, included)."""
    ps_std = fits.getdata(sim.static_map(telescope, "ps_std")).astype(float)
    dark = fits.getdata(sim.static_map(telescope, "dark_current")).astype(float)
    return (ps_std * gain) ** 2 + dark * exptime


def main() -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, default=Path("/tmp/mstlake-calacc/lake"))
    parser.add_argument("--raw", type=Path, default=Path("/tmp/mstlake-calacc/raw"))
    parser.add_argument("--frames", type=int, help="at most this many frames per cube")
    parser.add_argument("--out", default="photometry_accuracy.json", help="file name under benchmarks/results/")
    parser.add_argument("--measurements", type=Path, help="where the measurements are saved for --rescore (default: photometry_measurements.pkl beside the lake)")
    parser.add_argument("--paired", type=Path, metavar="BEFORE_PKL",
                        help="with --rescore: compare these measurements with an earlier set of the same frames star by star "
                             "(median per-star ratio of light-curve chi^2, square-rooted, per 1-mag bin), print it and stop")
    parser.add_argument("--rescore", action="store_true", help="score the measurements the last run saved beside the lake")
    parser.add_argument("--psf-holdout", action="store_true",
                        help="diagnostic: stars with an even star_id never enter the ePSF model; light curves scored for them and for the others apart "
                             "(a model fitted to the stars it measures can absorb their noise and hide its own error)")
    args = parser.parse_args()
    holdout = _hold_out_of_psf() if args.psf_holdout else None
    saved = args.measurements or args.lake.parent / "photometry_measurements.pkl"
    if args.rescore:
        table, astrometric, apcorr_rms, extra = pd.read_pickle(saved)
        sim = SimulationPaths.beside(args.raw)
        truth_frames, det, static_maps = pq.read_table(sim.frames).to_pandas().set_index("stem"), load_instrument().detector, {}
        constant = set(pq.read_table(sim.stars).to_pandas().query("variable_type == 'constant'").star_id)

        def with_theory(table: pd.DataFrame) -> pd.DataFrame:  # saved measurements get the current theory
            table = pd.concat([add_theory(group, truth_frames.loc[stem], sim, det, static_maps) for stem, group in table.groupby("frame", sort=False)], ignore_index=True)
            return table.assign(constant=table.star_id.isin(constant))

        table = with_theory(table)
        if args.paired:
            print_paired(_light_curves(_scored_points(with_theory(pd.read_pickle(args.paired)[0]))), _light_curves(_scored_points(table)))
            return
        table = _frame_columns(table, pq.read_table(LakePaths(args.lake).frames_table).to_pandas(), pq.read_table(sim.standard_library).to_pandas())
        table, magfit_runs = add_magfit(table, shape=tuple(extra["frame_shape"]), cfg=load_pipeline().magfit)
        results = summarise(table, astrometric, apcorr_rms, magfit_runs)
        results.update(extra)
        (Path(__file__).parent / "results" / args.out).write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
        print_magfit_table(results)
        return
    instrument, pipeline = load_instrument(), load_pipeline()
    lake, sim = LakePaths(args.lake), SimulationPaths.beside(args.raw)
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    truth_frames = pq.read_table(sim.frames).to_pandas().set_index("stem")
    library = pq.read_table(sim.standard_library).to_pandas()
    stars = pq.read_table(sim.stars).to_pandas()
    star_of_source = dict(zip(stars.library_source_id, stars.star_id, strict=True))
    constant = set(stars.star_id[stars.variable_type == "constant"])
    stars = stars.set_index("star_id")
    det = instrument.detector
    astrometric, apcorr_rms, apcorr_truth, apcorr_truth_direct, seconds, failures, measurements = [], [], [], [], [], [], []
    static_maps: dict = {}
    for *_, cube in lake.field_cubes():
        ds = cubes.open_store(cube)
        for i, frame_id in enumerate(ds.frame_id.values[: args.frames]):
            row = frames.loc[int(frame_id)]
            stem = SimulationPaths.stem(row.path)
            band = row.band
            image, variance, mask = ds.image[i].values, ds.variance[i].values, ds.mask[i].values
            started = time.perf_counter()
            try:
                found = frame_kernel.solve_image(image, variance, mask, pointing=(float(row.ra_pointing), float(row.dec_pointing)), ref_ra=library.ra, ref_dec=library.dec, ref_mag=library[f"mag_{band}"], pixel_scale_deg=det.pixel_scale_arcsec / 3600, cfg=pipeline.astrometry)
                if holdout is not None:
                    holdout.update(truth=pq.read_table(sim.frame_stars(stem), columns=["star_id", "x", "y"]).to_pandas(), calls=0)
                phot = photometer_frame(image, variance, mask, found.extraction, found.solution.wcs, library, band=band, gain=det.gain_e_per_adu, cfg=pipeline.photometry)
            except solve.SolveError as err:
                failures.append(f"{stem}: {err}")
                continue
            seconds.append(time.perf_counter() - started)
            truth = pq.read_table(sim.frame_stars(stem)).to_pandas()
            tf = truth_frames.loc[stem]
            astrometric.append(sky_residuals_mas(phot.sources, truth, stars))
            # forced photometry of library stars against truth
            forced = phot.forced.assign(source_id=library.source_id.values[phot.forced.reference_index.values])
            forced["star_id"] = forced.source_id.map(star_of_source)
            forced = forced.merge(truth[["star_id", "mag", "flux_e", "fwhm_px"]].rename(columns={"mag": "mag_true"}), on="star_id", how="inner")
            forced["constant"] = forced.star_id.isin(constant)
            forced["snr"] = forced.flux / forced.flux_err
            forced["frame"] = stem
            forced["frame_id"] = int(frame_id)
            forced["band"] = band
            forced["night"] = int(row.night)
            forced["colour"] = (library.mag_g - library.mag_r).values[forced.reference_index.values] if {"mag_g", "mag_r"} <= set(library.columns) else np.nan
            forced = add_theory(forced, tf, sim, det, static_maps)
            forced["zero_point_ok"] = phot.zero_point is not None
            forced["flagged_cloudy"] = phot.cloudy
            forced["calibrators"] = phot.zero_point.n_calibrators if phot.zero_point else 0
            forced["truly_cloudy"] = bool(tf.cloudy)
            if phot.aperture_correction is not None:
                shape_truth = {"beta": float(tf.psf_beta), "ellipticity": float(tf.psf_ellipticity), "angle_deg": float(tf.psf_angle_deg)}
                apcorr_truth.append(aperture_correction_error_mmag(phot, forced.x, forced.y, forced.fwhm_px, **shape_truth))
                apcorr_truth_direct.append(aperture_correction_error_mmag(phot, forced.x, forced.y, forced.fwhm_px, surface=phot.measured_correction, **shape_truth))
            measurements.append(forced)
            apcorr = phot.measured_correction.rms * 1000 if phot.measured_correction is not None else float("nan")
            apcorr_rms.append(apcorr)
            print(f"{stem}: {len(phot.sources)} sources, psf degree {phot.psf.degree}, zp n={phot.zero_point.n_calibrators if phot.zero_point else 0} rms={1000 * phot.zero_point.rms if phot.zero_point else float('nan'):.1f} mmag, apcorr {apcorr:.1f} mmag, ref ap {phot.reference_aperture}, {seconds[-1]:.1f} s", flush=True)
    table = pd.concat(measurements, ignore_index=True)
    extra = {"aperture_correction_error_vs_truth_mmag": {"frames": len(apcorr_truth), "method": pipeline.photometry.aperture_correction, "median": round(float(np.median(apcorr_truth)), 2) if apcorr_truth else None, "p90": round(float(np.percentile(apcorr_truth, 90)), 2) if apcorr_truth else None,
                                                          "direct_fit_median": round(float(np.median(apcorr_truth_direct)), 2) if apcorr_truth_direct else None},
             "frames_measured": len(seconds), "failures": failures[:10], "seconds_per_frame": round(float(np.mean(seconds)), 2), "frame_shape": list(image.shape)}
    pd.to_pickle((table, np.vstack(astrometric), apcorr_rms, extra), saved)
    table, magfit_runs = add_magfit(table, shape=image.shape, cfg=pipeline.magfit)
    results = summarise(table, np.vstack(astrometric), apcorr_rms, magfit_runs)
    results.update(extra)
    if holdout is not None:
        good = _scored_points(table)
        results["psf_holdout"] = {"never_in_the_psf": _light_curve_bins(good[good.star_id % 2 == 0]), "eligible_for_the_psf": _light_curve_bins(good[good.star_id % 2 == 1])}
        for name, bins in results["psf_holdout"].items():
            print(f"{name}: " + "; ".join(f"{b['mag']} n={b['stars']} ratio {b['ratio']} excess {b['excess_in_quadrature_mmag']}" for b in bins if float(b['mag'].split('-')[0]) < 17))
    (Path(__file__).parent / "results" / args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print_magfit_table(results)


def add_theory(forced: pd.DataFrame, truth_frame: pd.Series, sim: SimulationPaths, det, static_maps: dict) -> pd.DataFrame:
    """The simulation's own noise for each measurement of one frame: ``theory_e`` (Cramer-Rao bound
    with the detector's pepper-and-salt and dark-current noise in the pixels each star covers),
    ``theory_ideal_e`` (the same on an ideal detector, the figure before 2026-11-24) and the
    frame's scintillation. The optics' vignetting dims star and sky alike before they reach the
    detector."""
    telescope = truth_frame.telescope
    if telescope not in static_maps:
        static_maps[telescope] = (fits.getdata(sim.static_map(telescope, "vignetting")).astype(float),
                                  detector_pixel_variance_e(sim, telescope, gain=det.gain_e_per_adu, exptime=float(truth_frame.exptime)))
    vignetting, pixel_variance = static_maps[telescope]
    ny, nx = vignetting.shape
    shade = vignetting[np.clip(np.rint(forced.y.values).astype(int), 0, ny - 1), np.clip(np.rint(forced.x.values).astype(int), 0, nx - 1)]
    flux, sky, beta = forced.flux_e.values * shade, float(truth_frame.sky_e_per_pix) * shade, float(truth_frame.psf_beta)
    return forced.assign(theory_e=crlb_sigma_e(flux, forced.fwhm_px.values, beta, sky, det.read_noise_e, x=forced.x.values, y=forced.y.values, pixel_variance_e=pixel_variance) / shade,
                         theory_ideal_e=crlb_sigma_e(flux, forced.fwhm_px.values, beta, sky, det.read_noise_e) / shade,
                         scintillation=float(truth_frame.scintillation_sigma))


def print_paired(before: pd.DataFrame, after: pd.DataFrame) -> None:
    """Star by star, the same stars with the same epochs: the square root of the median ratio of
    their light-curves' reduced chi^2 (after / before) per 1-mag bin, far less noisy than the
    difference of two bins' ratios."""
    joined = before.merge(after, on="star_id", suffixes=("", "_after"))
    joined = joined[joined.n == joined.n_after]
    print("mag    stars  scatter after/before")
    for lo in range(int(np.floor(joined.mag.min())), int(np.ceil(joined.mag.max()))):
        b = joined[(joined.mag >= lo) & (joined.mag < lo + 1)]
        if len(b) >= 3:
            print(f"{lo}-{lo + 1} {len(b):7d} {np.sqrt(np.median(b.chi2_after / b.chi2)):10.4f}")


def _hold_out_of_psf() -> dict:
    """Make photometer_frame leave stars with an even star_id out of its ePSF (its first use of
    point_like each frame picks the PSF stars; the later ones, the aperture-correction sample, are
    left alone). Returns the state the caller fills with each frame's truth before measuring it."""
    from scipy.spatial import cKDTree

    import mstlake.phot.frame as frame_module

    original, state = frame_module.point_like, {}

    def point_like(sources, **kwargs):
        keep = original(sources, **kwargs)
        state["calls"] += 1
        if state["calls"] > 1 or not len(sources):
            return keep
        truth = state["truth"]
        distance, nearest = cKDTree(truth[["x", "y"]].to_numpy()).query(np.c_[sources.x.to_numpy(), sources.y.to_numpy()])
        return keep & ~((distance < 1.5) & (truth.star_id.to_numpy()[nearest] % 2 == 0))

    frame_module.point_like = point_like
    return state


def _frame_columns(table: pd.DataFrame, lake_frames: pd.DataFrame, library: pd.DataFrame) -> pd.DataFrame:
    """Frame id, band, night and colour for measurements saved before they were recorded."""
    by_stem = lake_frames.assign(frame=lake_frames.path.map(SimulationPaths.stem)).drop_duplicates("frame").set_index("frame")
    for column in ("frame_id", "band", "night"):
        if column not in table:
            table[column] = table.frame.map(by_stem[column]).values
    if "colour" not in table:
        colour = (library.mag_g - library.mag_r).values if {"mag_g", "mag_r"} <= set(library.columns) else np.full(len(library), np.nan)
        table["colour"] = table.source_id.map(pd.Series(colour, index=library.source_id.values)).values
    return table


MAGFIT_RUNS = {"all_nights": "mag_magfit_all_nights", "night_by_night": "mag_magfit_night_by_night"}


def _magfit_good(table: pd.DataFrame) -> np.ndarray:
    """Rows that may enter magfit's fits and master: clean flag, finite magnitude, a frame with a
    zero point that was not flagged cloudy (what nightly ingest passes as ``good``)."""
    return ((table.flag.values == 0) & np.isfinite(table.mag.values) & table.zero_point_ok.values.astype(bool) & ~table.flagged_cloudy.values.astype(bool))


def _run_magfit(rows: pd.DataFrame, good: np.ndarray, shape, cfg: MagfitConfig, master: pd.Series | None = None):
    return magfit(rows.frame_id.values, rows.source_id.values, rows.x.values, rows.y.values, rows.mag.values, rows.mag_inst_err.values, good=good, colour=rows.colour.values, shape=tuple(shape), master=master, cfg=cfg)


def _magfit_summary(results: list, seconds: float, unusable: set) -> dict:
    rms = pd.concat([r.frame_rms for r in results])
    skipped = [frame for r in results for frame in r.skipped.index]
    return {"seconds": round(seconds, 2), "calls": len(results), "iterations": [r.iterations for r in results], "converged": [bool(r.converged) for r in results],
            "frames_skipped": len(skipped), "frames_skipped_flagged_cloudy_or_without_zero_point": sum(frame in unusable for frame in skipped), "frame_rms_median_mmag": round(1000 * float(np.nanmedian(rms)), 2) if np.isfinite(rms).any() else None,
            "frame_stars_median": float(np.median(pd.concat([r.frame_stars for r in results]))), "master_stars": len(results[-1].master)}


def add_magfit(table: pd.DataFrame, *, shape, cfg: MagfitConfig) -> tuple[pd.DataFrame, dict]:
    """Magfit magnitudes of every forced measurement, per band: over all nights at once, and night
    by night against the master accumulated from the earlier nights (new stars added from each
    night's result, values already there kept)."""
    table = table.reset_index(drop=True)
    good = _magfit_good(table)
    out = {column: np.full(len(table), np.nan) for column in MAGFIT_RUNS.values()}
    runs: dict[str, dict] = {}
    unusable = set(table.frame_id[table.flagged_cloudy.astype(bool) | ~table.zero_point_ok.astype(bool)])
    for band, rows in table.groupby("band"):
        index = rows.index.values
        started = time.perf_counter()
        result = _run_magfit(rows, good[index], shape, cfg)
        out[MAGFIT_RUNS["all_nights"]][index] = result.mag
        runs.setdefault("all_nights", {})[band] = _magfit_summary([result], time.perf_counter() - started, unusable)
        started, master, nightly = time.perf_counter(), None, []
        for _, night_rows in rows.groupby("night", sort=True):
            night_index = night_rows.index.values
            result = _run_magfit(night_rows, good[night_index], shape, cfg, master=master)
            out[MAGFIT_RUNS["night_by_night"]][night_index] = result.mag
            if master is None:
                master = result.master.dropna()
            else:
                master = pd.concat([master, result.master[~result.master.index.isin(master.index)].dropna()])
            nightly.append(result)
        runs.setdefault("night_by_night", {})[band] = _magfit_summary(nightly, time.perf_counter() - started, unusable)
        for name, column in MAGFIT_RUNS.items():  # every forced row, cloudy frames and rows without a magnitude included
            runs[name][band]["uncorrected_fraction_all_rows"] = round(float(np.mean(np.isnan(out[column][index]))), 5)
    return table.assign(**out), runs


def _light_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Per constant star with MIN_EPOCHS measurements and S/N > 5: its true magnitude, light-curve
    scatter (5-sigma outliers dropped), theoretical noise, points used, and its reduced chi^2 about
    the weighted mean in units of the theory (which, unlike the median of the scatters, is an
    unbiased measure: with ~19 epochs the median of a sample std is 2% below the true sigma)."""
    curves = []
    for star_id, group in table.groupby("star_id"):
        if len(group) < MIN_EPOCHS:
            continue
        mags = group.mag.values
        centre = np.median(mags)
        spread = 1.4826 * np.median(np.abs(mags - centre))
        keep = np.abs(mags - centre) < 5 * max(spread, 1e-4)  # cosmic-ray hits and the like
        theory = group.sigma_theory.values[keep]
        weights = 1 / theory**2
        mean = np.sum(weights * mags[keep]) / weights.sum()
        chi2 = float(np.sum(weights * (mags[keep] - mean) ** 2) / (keep.sum() - 1))
        curves.append((star_id, float(np.median(group.mag_true)), float(np.std(mags[keep], ddof=1)), float(np.sqrt(np.mean(theory**2))), int(keep.sum()), chi2))
    curves = pd.DataFrame(curves, columns=["star_id", "mag", "scatter", "theory", "n", "chi2"])
    return curves[curves.theory < 1.0857 / 5]  # down to S/N = 5


def _noise_ratio(curves: pd.DataFrame) -> float:
    """sigma_measured / sigma_theory of a set of stars: the median of their reduced chi^2, each
    divided by the median of a chi^2 with its own degrees of freedom (robust to the few stars a
    blend or a variable spoils, and unbiased when all follow the theory)."""
    dof = curves.n.values - 1
    return float(np.sqrt(np.median(curves.chi2.values / (stats.chi2.median(dof) / dof))))


def _light_curve_bins(table: pd.DataFrame, before: pd.DataFrame | None = None) -> list[dict]:
    """Per 1-mag bin of true magnitude: the light-curve scatter of constant stars against their
    theoretical noise (``_noise_ratio``) and the excess that must be added in quadrature to the
    bin's median theory to make it. With ``before`` (the ``_light_curves`` of the same stars before
    a correction): also the median per-star ratio of the scatters, a paired comparison far less
    noisy than the difference of the bins' ratios."""
    curves = _light_curves(table)
    if curves.empty:
        raise SystemExit(f"no constant star has {MIN_EPOCHS} good measurements: run on more frames")
    bins = []
    for lo in np.arange(np.floor(curves.mag.min()), np.ceil(curves.mag.max())):
        b = curves[(curves.mag >= lo) & (curves.mag < lo + 1)]
        if len(b) < 3:
            continue
        ratio = _noise_ratio(b)
        theory = float(np.median(b.theory))
        bins.append({"mag": f"{lo:.0f}-{lo + 1:.0f}", "stars": len(b), "scatter_mmag": round(1000 * float(np.median(b.scatter)), 2), "theory_mmag": round(1000 * theory, 2),
                     "ratio": round(ratio, 3), "ratio_error": round(float(ratio / np.sqrt(2 * np.sum(b.n - 1)) * 1.25), 3),
                     "excess_in_quadrature_mmag": round(1000 * theory * float(np.sqrt(max(ratio**2 - 1, 0.0))), 2)})
        if before is not None:
            paired = b.scatter.values / b.star_id.map(before.set_index("star_id").scatter).values
            bins[-1]["scatter_vs_before"] = round(float(np.nanmedian(paired)), 4) if np.isfinite(paired).any() else None
    return bins


def floor_fit(table: pd.DataFrame, *, faintest: float = 17.0) -> dict:
    """A magnitude-independent floor separated from noise that scales with the theory: each
    constant star's variance fitted as k^2 theory^2 + floor^2 over the stars brighter than
    ``faintest`` (weights from the chi^2 spread of each star's variance), stars the fit calls
    outliers at p < 0.001 (blends, unflagged artefacts) left out and counted. The floor is what the
    photometry would keep however bright a star; k is the fraction above the theory at every
    magnitude (a property of the estimator and the theory, not a floor)."""
    curves = _light_curves(table)
    curves = curves[curves.mag < faintest]
    variance = curves.scatter.values**2
    theory2 = curves.theory.values**2
    dof = curves.n.values - 1
    use = np.ones(len(curves), bool)
    design = np.vstack([theory2, np.ones_like(theory2)]).T
    solution = np.array([1.1, 1e-6])
    for _ in range(4):
        expected = solution[0] * theory2 + max(solution[1], 0.0)
        weight = use * dof / (2 * expected**2)
        covariance = np.linalg.inv(design.T @ (design * weight[:, None]))
        solution = covariance @ (design.T @ (weight * variance))
        model = solution[0] * theory2 + max(solution[1], 0.0)
        use = stats.chi2.sf(variance / model * dof, dof) > 1e-3
    floor2, floor2_error = float(solution[1]), float(np.sqrt(covariance[1, 1]))
    return {"stars": int(use.sum()), "outlier_stars": int((~use).sum()), "magnitudes": f"< {faintest:g}",
            "k": round(float(np.sqrt(solution[0])), 4), "k_error": round(float(np.sqrt(covariance[0, 0]) / (2 * np.sqrt(solution[0]))), 4),
            "floor_squared_mmag2": round(1e6 * floor2, 3), "floor_squared_error_mmag2": round(1e6 * floor2_error, 3),
            "floor_mmag": round(1000 * float(np.sqrt(max(floor2, 0.0))), 2),
            "floor_95_upper_mmag": round(1000 * float(np.sqrt(max(floor2 + 1.645 * floor2_error, 0.0))), 2)}


def _scored_points(table: pd.DataFrame) -> pd.DataFrame:
    """The light-curve points scored: constant stars, unflagged, on clear calibrated frames, with
    their theoretical noise (magnitudes)."""
    table = table[table.zero_point_ok & ~table.flagged_cloudy & table.constant & (table.flag == 0) & np.isfinite(table.mag)]
    return table.assign(sigma_theory=1.0857 * np.hypot(table.theory_e / table.flux_e, table.scintillation))


def summarise(table: pd.DataFrame, astrometric: np.ndarray, apcorr_rms: list[float], magfit_runs: dict | None = None) -> dict:
    frames = table.groupby("frame")[["flagged_cloudy", "truly_cloudy"]].first()
    cloud_flags = {"frames": len(frames), "flagged_cloudy": int(frames.flagged_cloudy.sum()), "truly_cloudy": int(frames.truly_cloudy.sum()),
                   "flagged_and_truly": int((frames.flagged_cloudy & frames.truly_cloudy).sum())}
    table = _scored_points(table)
    bins = _light_curve_bins(table)
    curves_before = _light_curves(table)
    # diagnosis: the same with each frame's zero-point error (known from truth) taken out
    offsets = {frame: float(np.median(g.mag - g.mag_true)) for frame, g in table[table.snr > 50].groupby("frame")}
    bins_true_zp = _light_curve_bins(table.assign(mag=table.mag - table.frame.map(offsets).fillna(0.0)))
    # per frame: calibrated minus true magnitude of the well-measured constant library stars
    zp = np.array([float(np.median(g.mag - g.mag_true)) for _, g in table[table.snr > 50].groupby("frame") if len(g) >= 5])
    apcorr_rms = [v for v in apcorr_rms if np.isfinite(v)]
    magfit_results = {}
    for name, column in MAGFIT_RUNS.items():
        if column not in table:
            continue
        corrected = np.isfinite(table[column].values)
        entry = {"frames_used": int(table.frame[corrected].nunique()), "points": len(table), "uncorrected_points": int((~corrected).sum()),
                 "uncorrected_fraction": round(float(np.mean(~corrected)), 5) if len(table) else None, "bins": _light_curve_bins(table[corrected].assign(mag=table[column][corrected]), curves_before)}
        if not corrected.all():  # before magfit on the points magfit corrected, for a like-for-like comparison
            entry["bins_before_magfit_same_points"] = _light_curve_bins(table[corrected])
        entry["floor_fit"] = floor_fit(table[corrected].assign(mag=table[column][corrected]))
        entry["magfit"] = (magfit_runs or {}).get(name)
        magfit_results[f"light_curves_magfit_{name}"] = entry
    return {
        "astrometry_snr_above_100": {"stars": len(astrometric), "rms_mas_per_axis": [round(float(np.sqrt(np.mean(astrometric[:, k] ** 2))), 1) for k in (0, 1)]},
        "zero_point_error_mmag_clear_frames": {"frames": len(zp), "calibrators_per_frame_median": float(table.groupby("frame").calibrators.first().median()), "rms_over_frames": round(1000 * float(np.sqrt(np.mean((zp - 0) ** 2))), 2), "rms_about_mean": round(1000 * float(np.std(zp)), 2), "mean": round(1000 * float(np.mean(zp)), 2)},
        "cloudy_frames": cloud_flags,
        "light_curves": {"frames_used": int(table.frame.nunique()), "theory": "Cramer-Rao bound with the detector's own pixel noise", "bins": bins, "floor_fit": floor_fit(table)},
        "light_curves_ideal_detector_theory": {"theory": "Cramer-Rao bound without pepper-and-salt or dark-current noise",
                                               "bins": _light_curve_bins(table.assign(sigma_theory=1.0857 * np.hypot(table.theory_ideal_e / table.flux_e, table.scintillation))) if "theory_ideal_e" in table else None},
        "light_curves_with_true_zero_points": {"bins": bins_true_zp},
        **magfit_results,
        "aperture_correction_fit_residual_rms_mmag": {"frames": len(apcorr_rms), "median": round(float(np.median(apcorr_rms)), 2) if apcorr_rms else None, "max": round(float(np.max(apcorr_rms)), 2) if apcorr_rms else None},
    }


def print_magfit_table(results: dict) -> None:
    """Light-curve bins before magfit, with true zero points, and after magfit (all nights at once;
    night by night) side by side: stars, scatter/theory and the excess in quadrature (mmag)."""
    columns = {"before": results["light_curves"]["bins"], "true zp": results["light_curves_with_true_zero_points"]["bins"]}
    for name in MAGFIT_RUNS:
        if f"light_curves_magfit_{name}" in results:
            columns[f"magfit {name.replace('_', ' ')}"] = results[f"light_curves_magfit_{name}"]["bins"]
    by_mag = {label: {b["mag"]: b for b in bins} for label, bins in columns.items()}
    mags = sorted({b["mag"] for bins in columns.values() for b in bins}, key=lambda m: float(m.split("-")[0]))
    print("\nlight curves of constant stars: stars / scatter:theory ratio / excess in quadrature (mmag) [/ median per-star scatter after:before magfit]")
    print(f"{'mag':>6} " + " ".join(f"{label:>34}" for label in columns))
    for mag in mags:
        cells = []
        for label in columns:
            b = by_mag[label].get(mag)
            paired = f" {b['scatter_vs_before']:>7.4f}" if b and b.get("scatter_vs_before") is not None else " " * 8
            cells.append(f"{b['stars']:>6} {b['ratio']:>7.3f} {b['excess_in_quadrature_mmag']:>10.2f}{paired}" if b else "-")
        print(f"{mag:>6} " + " ".join(f"{c:>34}" for c in cells))
    for name in MAGFIT_RUNS:
        entry = results.get(f"light_curves_magfit_{name}")
        if entry:
            print(f"magfit {name}: {entry['uncorrected_points']} of {entry['points']} light-curve points uncorrected ({100 * entry['uncorrected_fraction']:.2f}%); {entry['magfit']}")


if __name__ == "__main__":
    main()
