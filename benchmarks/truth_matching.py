"""Scoring helpers shared by the benchmarks: measured sources against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sep
from scipy.spatial import cKDTree

from mstlake.astrom import extract
from mstlake.phot import aperture as ap
from mstlake.phot.frame import FramePhotometry
from mstlake.simulate import render
from mstlake.simulate.optics import moffat_alpha


def sky_residuals_mas(sources: pd.DataFrame, truth: pd.DataFrame, stars: pd.DataFrame, *, min_snr: float = 100.0) -> np.ndarray:
    """(n, 2) measured minus true (RA cos Dec, Dec) in mas for clean detections above ``min_snr``
    (no masked pixel near, PSF fit unflagged). Each detection is the brightest true star within
    1.5 px of its PSF position (the nearest one is often a faint star under a bright one).
    ``truth``: the frame's truth_frame_stars; ``stars``: truth_stars indexed by star_id."""
    distance, nearest = cKDTree(np.column_stack([truth.x, truth.y])).query(np.column_stack([sources.x_psf, sources.y_psf]), k=8, distance_upper_bound=1.5)
    flux_near = np.where(np.isfinite(distance), truth.flux_e.values[np.minimum(nearest, len(truth) - 1)], -1.0)
    pick = np.argmax(flux_near, axis=1)
    rows = np.arange(len(sources))
    matched = flux_near[rows, pick] > 0
    t = truth.iloc[nearest[rows, pick][matched]]
    s = sources[matched]
    bright = (s.snr.values > min_snr) & ((s.flag.values & ~extract.NEIGHBOUR) == 0) & (s.flag_psf.values == 0)
    sky = stars.loc[t.star_id.values[bright]]
    return np.column_stack([(s.ra.values[bright] - sky.ra.values) * np.cos(np.radians(sky.dec.values)) * 3.6e6, (s.dec.values[bright] - sky.dec.values) * 3.6e6])


def true_aperture_growth_mag(fwhm_px, beta: float, diameter_inner: float, diameter_outer: float, *, ellipticity: float = 0.0, angle_deg: float = 0.0) -> np.ndarray:
    """-2.5 log10 of the light in a circular aperture of ``diameter_outer`` over ``diameter_inner``
    for the stars as the simulator put them on the pixels (its own renderer: a Moffat integrated
    over the central pixels, normalised to the star's flux; the frame's ellipticity; averaged over
    sub-pixel phases), interpolated in FWHM. A continuous circular Moffat is ~1 mmag off this
    at the best aperture of a 3-px PSF."""
    fwhm_px = np.asarray(fwhm_px, float)
    grid = np.linspace(np.nanmin(fwhm_px) * 0.999, np.nanmax(fwhm_px) * 1.001, 12)
    phases = ((0.0, 0.0), (0.5, 0.5), (0.25, 0.75), (0.75, 0.25))
    size = int(2 * np.ceil(diameter_outer) + 41)
    growth = []
    for fwhm in grid:
        alpha = float(moffat_alpha(fwhm, beta))
        values = []
        for px, py in phases:
            cx, cy = size // 2 + px, size // 2 + py
            image, _ = render.render_stars((size, size), np.array([cx]), np.array([cy]), np.array([1e6]), np.array([alpha / np.sqrt(1 - ellipticity)]), np.array([alpha * np.sqrt(1 - ellipticity)]), np.array([np.radians(angle_deg)]), beta)
            image = image.reshape(size, size).astype(np.float32)
            inner, outer = (sep.sum_circle(image, np.array([cx]), np.array([cy]), [d / 2], subpix=0)[0][0] for d in (diameter_inner, diameter_outer))
            values.append(-2.5 * np.log10(outer / inner))
        growth.append(np.mean(values))
    return np.interp(fwhm_px, grid, growth)


def aperture_correction_error_mmag(phot: FramePhotometry, x, y, fwhm_px, beta: float, *, ellipticity: float = 0.0, angle_deg: float = 0.0, surface=None) -> float:
    """Rms over the stars at (x, y) of the frame's applied aperture correction (or ``surface``)
    minus the true one: the growth from the best to the reference aperture of the stars as the
    simulator rendered them (``true_aperture_growth_mag``)."""
    d_best, d_ref = ap.DIAMETERS_PX[phot.best_aperture], ap.DIAMETERS_PX[phot.reference_aperture]
    true_correction = true_aperture_growth_mag(fwhm_px, beta, d_best, d_ref, ellipticity=ellipticity, angle_deg=angle_deg)
    fitted = (surface or phot.aperture_correction)(np.asarray(x, float), np.asarray(y, float))
    return 1000 * float(np.sqrt(np.mean((fitted - true_correction) ** 2)))
