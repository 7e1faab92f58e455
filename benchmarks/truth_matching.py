"""Scoring helpers shared by the benchmarks: measured sources against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from mstlake.astrom import extract


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
