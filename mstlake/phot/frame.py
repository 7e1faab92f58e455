"""Photometry of one solved frame, start to finish (arrays and tables in, tables out).

1. Noise: the background variance (sky + read noise, smooth) from the variance plane without
   the sources; pepper-and-salt pixels keep their own, larger variance.
2. PSF: an ePSF from bright, clean, isolated stars, varying across the detector.
3. PSF photometry of every detection, each with all others subtracted; positions refined for
   S/N > ``fit_position_min_snr`` (these PSF centroids, free of neighbours' light, then refine
   the WCS).
4. Forced photometry at every reference star's position projected through the WCS (detections
   without a catalogue counterpart stay in the model at their own positions, so their light is
   not given to catalogue stars); fluxes are kept when negative.
5. Aperture photometry in 25 apertures; best and reference aperture and the aperture correction
   from stars with their neighbours subtracted.
6. Zero point ZP(x, y) from the standards (forced PSF magnitudes against the library), applied to
   PSF, forced and aperture magnitudes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sep
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from mstlake.astrom import extract, solve
from mstlake.calib.apply import PEPPER_SALT
from mstlake.calib.combine import robust_std
from mstlake.config import PhotometryConfig
from mstlake.phot import aperture as ap
from mstlake.phot import psf as psf_kernels
from mstlake.phot.stamps import scatter_into
from mstlake.phot.surface import Surface
from mstlake.phot.zeropoint import ZeroPoint, ZeroPointError, fit_zero_point


@dataclass(frozen=True)
class FramePhotometry:
    sources: pd.DataFrame  # every detection: PSF and aperture photometry, calibrated magnitudes
    forced: pd.DataFrame  # every reference star on the frame: forced PSF flux and magnitude
    psf: psf_kernels.EffectivePSF
    psf_stars: int
    aperture_fluxes: ap.ApertureFluxes  # of every detection, rows as in sources
    solution: solve.Solution  # the WCS refined with the PSF centroids
    zero_point: ZeroPoint | None
    zero_point_problem: str | None
    cloudy: bool  # the standards scatter about the smooth zero point more than clear sky allows
    best_aperture: int | None
    reference_aperture: int | None
    aperture_correction: Surface | None  # applied to aperture magnitudes
    measured_correction: Surface | None  # the direct fit of measured mag_ref - mag_best (its rms: the stars' scatter)
    scene: pd.DataFrame  # every star the forced fit modelled (x, y, flux): reference stars and blends of them, other detections


def background_variance(variance: np.ndarray, mask: np.ndarray, background_noise: np.ndarray) -> np.ndarray:
    """The variance of a pixel without the sources' photon noise: the background's own rms map
    squared (sky, read noise and the faint stars nobody detects), with pepper-and-salt pixels'
    larger variance from the variance plane kept."""
    noise = np.square(background_noise, dtype=np.float32)
    telegraph = np.flatnonzero(np.asarray(mask).reshape(-1) & PEPPER_SALT)
    flat = noise.reshape(-1)
    flat[telegraph] = np.maximum(np.asarray(variance).reshape(-1)[telegraph], flat[telegraph])
    return noise


def photometer_frame(image, variance, mask, extraction: extract.Extraction, wcs, reference: pd.DataFrame, *, band: str, gain: float, cfg: PhotometryConfig, sip_degree: int = 4, clip_sigma: float = 3.0, timings: dict | None = None, forced_extra: pd.DataFrame | None = None) -> FramePhotometry:
    """Photometry and flux calibration of one solved frame (``wcs``: its blind solution).
    ``reference``: the reference stars near the frame with columns ra, dec, mag_<band> and
    mag_<band>_error (the standard_library schema). ``forced_extra`` (ra, dec): more positions to
    measure by forced photometry (objects the library lacks), after the reference stars in
    ``forced.reference_index``; they play no part in the astrometry or the zero point.
    Instrumental magnitudes are -2.5 log10(ADU); ``timings`` (a dict), when given, receives the
    seconds of each step."""
    clock = _Laps(timings)
    image = np.asarray(image, np.float32)
    ny, nx = image.shape
    hidden = extract.hidden_pixels(mask)
    residual = image - extraction.background
    noise = background_variance(variance, mask, extraction.background_noise)
    sources = extraction.sources.reset_index(drop=True)

    clock.lap("noise")
    # the PSF from bright, clean (no masked or saturated pixel near), isolated stars
    candidates = sources[(sources.flag == 0) & (sources.snr > cfg.psf_min_snr)]
    candidates = candidates[point_like(candidates)].nlargest(cfg.psf_max_stars, "snr")
    fwhm = float(np.median(candidates.fwhm)) if len(candidates) else float(np.median(sources.fwhm))
    model = psf_kernels.build_psf(residual, noise, hidden, candidates.x, candidates.y, candidates.flux, fwhm=fwhm, gain=gain)

    clock.lap("psf_model")
    # PSF photometry of every detection (positions refined for the brighter ones)
    fit = psf_kernels.psf_photometry(residual, noise, hidden, model, sources.x, sources.y, sources.flux, fit_position=sources.snr.values > cfg.fit_position_min_snr, gain=gain, iterations=cfg.psf_iterations)
    if cfg.psf_rebuild:
        # again from an image without the other stars: crowded bright stars become usable and
        # the PSF stars' own cutouts lose their neighbours' light (DAOPHOT's second pass)
        psf_like = (sources.flag.values & ~extract.NEIGHBOUR) == 0
        bright = psf_like & (sources.snr.values > cfg.psf_min_snr) & ((fit.flag & (psf_kernels.PSF_NOT_CONVERGED | psf_kernels.PSF_POOR_FIT)) == 0)
        chosen = np.flatnonzero(bright)[np.argsort(-sources.snr.values[bright])][: cfg.psf_max_stars]
        keep = np.zeros(len(sources), bool)
        keep[chosen] = True
        alone = psf_kernels.subtract_stars(residual, model, fit.x, fit.y, np.nan_to_num(fit.flux), keep=keep)
        model = psf_kernels.build_psf(alone, noise, hidden, fit.x[chosen], fit.y[chosen], fit.flux[chosen], fwhm=model.fwhm, gain=gain)
        candidates = sources.iloc[chosen]
        fit = psf_kernels.psf_photometry(residual, noise, hidden, model, fit.x, fit.y, np.nan_to_num(fit.flux), fit_position=sources.snr.values > cfg.fit_position_min_snr, gain=gain, iterations=cfg.psf_iterations)
    psf_ok = (fit.flag & psf_kernels.PSF_NOT_CONVERGED) == 0
    sources = sources.assign(x_psf=fit.x, y_psf=fit.y, flux_psf=fit.flux, flux_psf_err=fit.flux_err, chi2_psf=fit.chi2_reduced, flag_psf=fit.flag)

    clock.lap("psf_photometry")
    # the WCS again, from the neighbour-free centroids
    clean = (sources.flag.values & ~extract.NEIGHBOUR) == 0
    use = clean & psf_ok & (fit.flag & psf_kernels.PSF_POOR_FIT == 0) & np.isfinite(fit.x)
    solution = solve.refine(wcs, fit.x[use], fit.y[use], reference.ra.values, reference.dec.values, shape=(ny, nx), sip_degree=sip_degree, match_radius_px=2.0, clip_sigma=clip_sigma)
    # the adopted positions: the PSF fit's where it converged, else the windowed centroid
    det_x, det_y = np.where(psf_ok, fit.x, sources.x), np.where(psf_ok, fit.y, sources.y)
    ra, dec = solution.wcs.all_pix2world(det_x, det_y, 0)
    sources = sources.assign(x_best=det_x, y_best=det_y, ra=ra, dec=dec)

    clock.lap("wcs_refit")
    # forced photometry at the catalogue positions; unmatched detections stay in the model
    targets = reference if forced_extra is None or not len(forced_extra) else pd.concat([reference, forced_extra[["ra", "dec"]]], ignore_index=True)
    rx, ry = solve.project(solution.wcs, targets.ra.values.astype(float), targets.dec.values.astype(float), (ny, nx))
    on_frame = np.isfinite(rx) & np.isfinite(ry) & (rx > -0.5) & (rx < nx - 0.5) & (ry > -0.5) & (ry < ny - 0.5)
    ref = targets[on_frame].reset_index(drop=True)
    rx, ry = rx[on_frame], ry[on_frame]
    matched_detection = np.full(len(ref), -1)
    if len(ref) and len(sources):
        distance, nearest = cKDTree(np.column_stack([det_x, det_y])).query(np.column_stack([rx, ry]), distance_upper_bound=cfg.forced_match_radius_px)
        matched_detection = np.where(np.isfinite(distance), nearest, -1)
    others = np.setdiff1d(np.arange(len(sources)), matched_detection[matched_detection >= 0])
    # catalogue brightness: shares a detection's flux among the stars it holds, and an unresolved
    # blend's among its members
    catalogue_flux = 10 ** (-0.4 * np.nan_to_num(ref[f"mag_{band}"].values.astype(float), nan=30.0))
    held_by = np.maximum(matched_detection, 0)
    detection_total = np.bincount(held_by, weights=np.where(matched_detection >= 0, catalogue_flux, 0.0), minlength=len(sources))
    start_flux = np.where(matched_detection >= 0, np.nan_to_num(fit.flux[held_by]) * catalogue_flux / np.maximum(detection_total[held_by], 1e-300), 0.0)
    blend, blend_x, blend_y = unresolved_blends(rx, ry, catalogue_flux, cfg.blend_separation_fwhm * model.fwhm)
    n_fit = blend_x.size
    scene_x, scene_y = np.concatenate([blend_x, det_x[others]]), np.concatenate([blend_y, det_y[others]])
    forced_fit = psf_kernels.psf_photometry(
        residual, noise, hidden, model, scene_x, scene_y,
        np.concatenate([np.bincount(blend, weights=start_flux, minlength=n_fit), np.nan_to_num(fit.flux[others])]), fit_position=False, gain=gain, iterations=cfg.forced_iterations,
    )
    modelled = pd.DataFrame({"x": scene_x, "y": scene_y, "flux": forced_fit.flux})
    share = catalogue_flux / np.bincount(blend, weights=catalogue_flux, minlength=n_fit)[blend]
    blended = np.bincount(blend, minlength=n_fit)[blend] > 1
    forced = pd.DataFrame({
        "reference_index": np.flatnonzero(on_frame), "x": rx, "y": ry,
        "flux": forced_fit.flux[blend] * share, "flux_err": forced_fit.flux_err[blend] * share, "chi2": forced_fit.chi2_reduced[blend],
        "flag": forced_fit.flag[blend] | np.where(blended, psf_kernels.PSF_BLENDED, 0).astype(np.int32),
        "detection": matched_detection,
    })
    forced["mag_inst"], forced["mag_inst_err"] = ap.magnitudes(forced.flux.values, forced.flux_err.values)

    clock.lap("forced_photometry")
    # aperture photometry; growth curve and aperture correction on neighbour-subtracted stars
    fluxes = ap.aperture_fluxes(residual, variance, sources.x, sources.y, mask=hidden)
    best = reference_index = correction = measured_correction = None
    try:
        best, chosen = ap.best_aperture(fluxes)
        sample = np.flatnonzero(chosen & clean & psf_ok & np.isfinite(fit.flux))
        sample = sample[point_like(sources.iloc[sample])]
        sample = sample[np.argsort(-fit.flux[sample])][: cfg.apcorr_max_stars]
        # every star the forced photometry fitted, catalogue stars included: faint ones that the
        # detection missed beside a bright star (in its wings) would otherwise stay in its large apertures
        scene = scene_index_of_detections(len(sources), matched_detection, blend, others)
        sample = sample[scene[sample] >= 0]
        growth, own = neighbour_free_apertures(residual, variance, hidden, model, scene_x, scene_y, np.nan_to_num(forced_fit.flux), scene[sample])
        reference_index = ap.reference_aperture(growth, np.ones(sample.size, bool))
        mag_sample, _ = ap.magnitudes(growth.flux, growth.flux_err)
        measured_correction = ap.aperture_correction(det_x[sample], det_y[sample], mag_sample[:, best], mag_sample[:, reference_index], shape=(ny, nx))
        if cfg.aperture_correction == "model":
            correction = ap.model_aperture_correction(det_x[sample], det_y[sample], growth, own, best, reference_index, model_half_px=model.half, shape=(ny, nx))
        else:
            correction = measured_correction
    except ValueError:
        pass  # too few good stars: aperture magnitudes stay uncorrected (best_aperture is None)
    mag_ap, mag_ap_err = ap.magnitudes(fluxes.flux, fluxes.flux_err)
    mag_psf, mag_psf_err = ap.magnitudes(fit.flux, fit.flux_err)
    sources = sources.assign(mag_psf_inst=mag_psf, mag_psf_inst_err=mag_psf_err)

    clock.lap("apertures_and_correction")
    # zero point from the standards' forced PSF magnitudes
    zero_point, problem = None, None
    mag_column, err_column = f"mag_{band}", f"mag_{band}_error"
    calibrators = (forced.detection.values >= 0) & (forced.flag.values == 0) & (forced.chi2.values < cfg.calibrator_max_chi2)
    if len(ref):
        det = np.maximum(forced.detection.values, 0)
        calibrators &= (sources.flag.values[det] & ~extract.NEIGHBOUR) == 0
    try:
        ref_err = ref[err_column].values if err_column in ref else np.full(len(ref), 0.01)
        zero_point = fit_zero_point(forced.x[calibrators], forced.y[calibrators], forced.mag_inst[calibrators], forced.mag_inst_err[calibrators], ref[mag_column].values[calibrators], ref_err[calibrators], shape=(ny, nx), degree=cfg.zero_point_degree, max_error=cfg.calibrator_max_error, clip_sigma=cfg.zero_point_clip_sigma)
    except ZeroPointError as err:
        problem = str(err)
    zp_sources = zero_point(det_x, det_y) if zero_point is not None else np.full(len(sources), np.nan)
    forced["mag"] = forced.mag_inst + zero_point(forced.x, forced.y) if zero_point is not None else np.nan
    sources = sources.assign(mag_psf=sources.mag_psf_inst + zp_sources)
    if best is not None:
        apcorr = correction(sources.x, sources.y) if correction is not None else 0.0
        sources = sources.assign(mag_ap_best_inst=mag_ap[:, best], mag_ap_best_err=mag_ap_err[:, best], mag_ap=mag_ap[:, best] + apcorr + zp_sources)
    clock.lap("zero_point")
    cloudy = zero_point is None or zero_point.rms > cfg.cloudy_zero_point_rms
    return FramePhotometry(sources, forced, model, len(candidates), fluxes, solution, zero_point, problem, cloudy, best, reference_index, correction, measured_correction, modelled)


def find_unmodelled(residual, variance, mask, psf: psf_kernels.EffectivePSF, modelled: pd.DataFrame, *, thresh: float, minarea: int, same_star_px: float = 1.0) -> pd.DataFrame:
    """The sources left on ``residual`` (background-subtracted) once every star of ``modelled``
    (x, y, flux; ``FramePhotometry.scene``) is subtracted: stars too faint for the first detection
    and those it could not split from a brighter star's wing (DAOPHOT's second pass). A detection
    within ``same_star_px`` of a modelled star is that star's own residual and is dropped. Returns
    the new sources (extraction columns, flag ``extract.FOUND_ON_RESIDUAL`` set)."""
    without = residual - psf_kernels.model_image(residual.shape, psf, modelled.x.values, modelled.y.values, modelled.flux.values)
    found = extract.extract_sources(without, variance, mask, thresh=thresh, minarea=minarea).sources
    if len(found) and len(modelled):
        distance, _ = cKDTree(modelled[["x", "y"]].to_numpy()).query(found[["x", "y"]].to_numpy())
        found = found[distance > same_star_px]
    found = found.reset_index(drop=True)
    return found.assign(flag=found.flag.values.astype(np.int32) | extract.FOUND_ON_RESIDUAL)


def jittered_grid(hidden: np.ndarray, step: int, *, margin: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``step`` apart over the image (``margin`` from its edges), each moved by up to a
    quarter step at random, those on ``hidden`` pixels left out: places for artificial stars that
    leave each other alone."""
    ny, nx = hidden.shape
    rng = np.random.default_rng(seed)
    gy, gx = np.mgrid[margin + step // 2 : ny - margin : step, margin + step // 2 : nx - margin : step]
    x = gx.ravel() + rng.uniform(-step / 4, step / 4, gx.size)
    y = gy.ravel() + rng.uniform(-step / 4, step / 4, gx.size)
    keep = ~hidden[np.round(y).astype(int), np.round(x).astype(int)]
    return x[keep], y[keep]


def forced_scatter(image, noise, *, hidden, psf: psf_kernels.EffectivePSF, scene: pd.DataFrame, x, y, flux: float, start, gain: float, iterations: int, min_stars: int = 50) -> float:
    """Robust scatter about ``flux`` of the forced PSF fluxes of the stars at (x, y) of ``image``
    (sky subtracted), fitted at those places together with every star of ``scene`` (x, y, flux),
    from ``start`` (their first guess); NaN with fewer than ``min_stars`` good fits."""
    fit = psf_kernels.psf_photometry(image, noise, hidden, psf, np.concatenate([scene.x.values, x]), np.concatenate([scene.y.values, y]), np.concatenate([np.nan_to_num(scene.flux.values), np.broadcast_to(np.asarray(start, float), np.shape(x))]), fit_position=False, gain=gain, iterations=iterations)
    got, flag = fit.flux[-len(x) :], fit.flag[-len(x) :]
    usable = np.isfinite(got) & (flag == 0)
    if usable.sum() < min_stars:
        return float("nan")
    return float(robust_std(got[usable] - flux))


def artificial_star_scatter(residual, noise, *, hidden, psf: psf_kernels.EffectivePSF, scene: pd.DataFrame, flux: float, gain: float, iterations: int, spacing_fwhm: float = 10.0, seed: int = 0) -> float:
    """The noise of forced PSF photometry where the stars are, as artificial stars show it: stars of
    ``flux`` added to ``residual`` on a jittered grid (``spacing_fwhm`` apart: they leave each
    other alone), fitted at their known positions together with every star of ``scene`` (x, y,
    flux), and the robust scatter of what comes back about what went in. Everything the fit sees
    is in it: the sky, the light of stars nobody modelled, the neighbours' own fitting noise.
    ``noise``: the background variance the fit weights by (``background_variance``)."""
    margin = psf.half + 1
    if residual.shape[0] <= 2 * margin or residual.shape[1] <= 2 * margin:
        return float("nan")
    x, y = jittered_grid(hidden, max(int(spacing_fwhm * psf.fwhm), 8), margin=margin, seed=seed)
    if x.size < 50:
        return float("nan")
    added = residual + psf_kernels.model_image(residual.shape, psf, x, y, np.full(x.size, flux))
    return forced_scatter(added, noise, hidden=hidden, psf=psf, scene=scene, x=x, y=y, flux=flux, start=flux, gain=gain, iterations=iterations)


def background_without_stars(image: np.ndarray, hidden: np.ndarray, psf: psf_kernels.EffectivePSF, scene: pd.DataFrame, *, mesh_px: int = 64, clip_sigma: float = 3.0) -> np.ndarray:
    """The background mapped on ``image`` with every star of ``scene`` (x, y, flux) subtracted,
    as the clipped mean of each ``mesh_px`` cell (3 x 3 median-filtered, spline-interpolated;
    ``hidden`` pixels left out). Two biases of a map made with the stars in go: under a deep
    stack's crowd of faint stars it sits high by a share of their light, which subtracted takes a
    fixed amount off every star nearby (5% of an S/N-10 star's flux at N = 8); and a mode (sep's)
    sits below the mean light of the stars no one can fit, which a forced flux measures above as
    much as below."""
    from scipy import ndimage

    stars = psf_kernels.model_image(image.shape, psf, scene.x.values, scene.y.values, np.nan_to_num(scene.flux.values))
    left = np.where(hidden, np.nan, image - stars).astype(np.float32)
    ny, nx = left.shape
    cells_y, cells_x = -(-ny // mesh_px), -(-nx // mesh_px)
    padded = np.full((cells_y * mesh_px, cells_x * mesh_px), np.nan, np.float32)
    padded[:ny, :nx] = left
    cells = padded.reshape(cells_y, mesh_px, cells_x, mesh_px).transpose(0, 2, 1, 3).reshape(cells_y, cells_x, -1)
    centre = np.nanmedian(cells, axis=2)
    for _ in range(3):
        spread = 1.4826 * np.nanmedian(np.abs(cells - centre[..., None]), axis=2)
        kept = np.where(np.abs(cells - centre[..., None]) <= clip_sigma * spread[..., None], cells, np.nan)
        centre = np.nanmean(kept, axis=2)
    centre = ndimage.median_filter(np.where(np.isfinite(centre), centre, np.nanmedian(centre)), size=3, mode="nearest")
    # cell centres sit at (k + 0.5) mesh_px - 0.5 in pixels: map every pixel onto the cell grid
    yy = (np.arange(ny) + 0.5) / mesh_px - 0.5
    xx = (np.arange(nx) + 0.5) / mesh_px - 0.5
    return ndimage.map_coordinates(centre, np.meshgrid(yy, xx, indexing="ij"), order=3, mode="nearest").astype(np.float32)


def point_like(sources: pd.DataFrame, *, width_range: tuple[float, float] = (0.67, 1.5), max_elongation_excess: float = 0.3) -> np.ndarray:
    """Detections shaped like the frame's stars: FWHM within ``width_range`` times the median and
    elongation (a / b) at most the median's plus ``max_elongation_excess``. Satellite-track pieces,
    galaxies and merged pairs are often the brightest clean detections on a frame, and one of them
    among the ePSF's stars bends its wings."""
    if not len(sources):
        return np.zeros(0, bool)
    fwhm = sources.fwhm.values
    elongation = sources.a.values / np.maximum(sources.b.values, 1e-6)
    typical_fwhm, typical_elongation = np.median(fwhm), np.median(elongation)
    return (fwhm >= width_range[0] * typical_fwhm) & (fwhm <= width_range[1] * typical_fwhm) & (elongation <= typical_elongation + max_elongation_excess)


def scene_index_of_detections(n_detections: int, matched_detection, blend, others) -> np.ndarray:
    """Where each detection sits among the forced photometry's fitted stars (the catalogue's
    blend groups, then the detections the catalogue does not hold, ``others``): its group when it
    holds exactly one catalogue star that is fitted alone, its own entry when it holds none, -1
    when it holds several (its light is shared out)."""
    matched_detection, blend, others = (np.asarray(a, int) for a in (matched_detection, blend, others))
    index = np.full(n_detections, -1)
    index[others] = blend.max(initial=-1) + 1 + np.arange(others.size)
    held = matched_detection >= 0
    stars_held = np.bincount(matched_detection[held], minlength=n_detections)
    group_size = np.bincount(blend, minlength=blend.max(initial=-1) + 1)
    single = held & (stars_held[np.maximum(matched_detection, 0)] == 1) & (group_size[blend] == 1)
    index[matched_detection[single]] = blend[single]
    return index


def unresolved_blends(x, y, brightness, separation_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of catalogue stars closer than ``separation_px`` (chained): fitted apart, their fluxes
    would trade light with each other (two PSFs half a FWHM apart correlate at ~0.7). Returns each
    star's group number and the groups' light centroids (by ``brightness``), where the group is fitted."""
    x, y, brightness = (np.asarray(a, float) for a in (x, y, brightness))
    n = x.size
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(separation_px, output_type="ndarray") if n > 1 else np.empty((0, 2), int)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    weight = np.maximum(brightness, 1e-300)
    total = np.bincount(group, weights=weight)
    return group, np.bincount(group, weights=weight * x) / total, np.bincount(group, weights=weight * y) / total


class _Laps:
    """Seconds per step into ``timings`` (when given), for the speed benchmark."""

    def __init__(self, timings: dict | None):
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = now - self.last
        self.last = now


def neighbour_free_apertures(residual, variance, hidden, model: psf_kernels.EffectivePSF, x, y, flux, sample) -> tuple[ap.ApertureFluxes, ap.ApertureFluxes]:
    """Aperture fluxes of the stars ``sample`` (indices) as if each were alone: every star's PSF
    model is removed from the image (masked pixels then hold the models' best guess, zero), and
    the star's own model's share of each aperture is added back, measured on its own stamp. The
    background is measured again locally, in an annulus beyond the largest aperture on the image
    without the stars: the frame's background map, made with the stars in, sits a little high
    under bright stars, and 2000 px of a large aperture multiply any such offset. Returns these
    fluxes and those of the stars' own models alone."""
    x, y, flux = (np.asarray(a, float) for a in (x, y, flux))
    # the annulus starts well beyond the largest aperture: a Moffat wing still holds ~1e-3 of the
    # flux between 27 and 35 px, which taken as background would cost the 50-px aperture ~1.6 mmag
    inner, outer = max(ap.DIAMETERS_PX) / 2 + 15, max(ap.DIAMETERS_PX) / 2 + 25
    # only the stars whose models reach a sample star's background annulus matter
    reach = outer + model.half * np.sqrt(2) + 1
    nearby = cKDTree(np.column_stack([x[sample], y[sample]])).query(np.column_stack([x, y]), distance_upper_bound=reach)[0]
    near = np.isfinite(nearby)
    others_removed = psf_kernels.subtract_stars(residual, model, x[near], y[near], flux[near])
    others_removed[hidden] = 0.0
    around = ap.aperture_fluxes(others_removed, variance, x[sample], y[sample])
    ring, _, _ = sep.sum_circann(np.ascontiguousarray(others_removed, dtype=np.float32), x[sample], y[sample], inner, outer, subpix=1)
    local = ring / (np.pi * (outer**2 - inner**2))
    around = ap.ApertureFluxes(around.diameters, around.flux - local[:, None] * np.pi * (around.diameters[None, :] / 2) ** 2, around.flux_err, around.masked)
    # own models in a mosaic of tiles, one star per tile, wide enough for the largest aperture;
    # each is the model where the star really is (the mosaic's own coordinates would pick the
    # PSF of the detector's corner), moved whole onto its tile
    half = int(np.ceil(max(ap.DIAMETERS_PX) / 2)) + 2
    tile = 2 * half + 1
    columns = int(np.ceil(np.sqrt(max(sample.size, 1))))
    mosaic = np.zeros((tile * int(np.ceil(sample.size / columns) or 1), tile * columns), np.float32)
    centre_col = (np.arange(sample.size) % columns) * tile + half
    centre_row = (np.arange(sample.size) // columns) * tile + half
    ix, iy = np.rint(x[sample]).astype(int), np.rint(y[sample]).astype(int)
    rows, cols, stamp = model.phase_stamps(model.half, derivatives=False).evaluate(x[sample], y[sample])
    scatter_into(mosaic, rows - iy[:, None] + centre_row[:, None], cols - ix[:, None] + centre_col[:, None], flux[sample, None, None] * stamp)
    tile_x, tile_y = centre_col + (x[sample] - ix), centre_row + (y[sample] - iy)
    alone = ap.aperture_fluxes(mosaic, np.zeros_like(mosaic), tile_x, tile_y)
    return ap.ApertureFluxes(around.diameters, around.flux + alone.flux, around.flux_err, np.zeros_like(around.masked)), alone
