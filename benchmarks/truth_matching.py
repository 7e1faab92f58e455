"""Scoring helpers shared by the benchmarks: measured sources against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from mstlake.astrom import extract
from mstlake.phot import aperture as ap
from mstlake.phot.frame import FramePhotometry


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


def moffat_alpha(fwhm_px, beta: float):
    """The Moffat core width of a profile with this FWHM."""
    return np.asarray(fwhm_px, float) / (2 * np.sqrt(2 ** (1 / beta) - 1))


def aperture_correction_error_mmag(phot: FramePhotometry, x, y, fwhm_px, beta: float, *, surface=None) -> float:
    """Rms over the stars at (x, y) of the frame's applied aperture correction (or ``surface``)
    minus the true one: -2.5 log10 of a circular Moffat's (the truth's FWHM and beta) encircled
    energy in the reference over the best aperture."""
    alpha = moffat_alpha(fwhm_px, beta)
    energy = lambda r: 1 - (1 + (r / alpha) ** 2) ** (1 - beta)  # noqa: E731
    r_best, r_ref = ap.DIAMETERS_PX[phot.best_aperture] / 2, ap.DIAMETERS_PX[phot.reference_aperture] / 2
    true_correction = -2.5 * np.log10(energy(r_ref) / energy(r_best))
    fitted = (surface or phot.aperture_correction)(np.asarray(x, float), np.asarray(y, float))
    return 1000 * float(np.sqrt(np.mean((fitted - true_correction) ** 2)))
