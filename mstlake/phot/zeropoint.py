"""Flux calibration of one frame: the zero point as a smooth function of detector position.

mag_calibrated = mag_instrumental + ZP(x, y), fitted to the standard stars matched on the frame
(errors < ``max_error`` in both, clean flags), weighted by their errors, with clipping (variables,
blends and mismatches drop out). The paper fits the zero point as a function of position on the
detector; a surface up to 2nd order absorbs vignetting residuals, the PSF's variation and
extinction across the field, its degree chosen by the data (a few dozen standards on a small
frame measure a constant better than a surface; thousands on a full frame pay for all six terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstlake.phot.surface import Surface, fit_surface


class ZeroPointError(ValueError):
    """Too few usable standard stars on a frame to calibrate it."""


@dataclass(frozen=True)
class ZeroPoint:
    surface: Surface
    at_centre: float  # mag
    rms: float  # of the calibrators about the surface, mag
    n_calibrators: int
    n_rejected: int

    def __call__(self, x, y) -> np.ndarray:
        return self.surface(x, y)


def fit_zero_point(x, y, mag_instrumental, error_instrumental, mag_standard, error_standard, *, shape: tuple[int, int], degree: int = 2, max_error: float = 0.02, clip_sigma: float = 3.0, min_calibrators: int = 10, error_floor: float = 0.002) -> ZeroPoint:
    """Fit ZP(x, y) = mag_standard - mag_instrumental over the standards with both errors below
    ``max_error`` (pass only clean detections). ``error_floor`` (mag) keeps the brightest stars
    from deciding alone. Raises ``ZeroPointError`` with fewer than ``min_calibrators``."""
    mag_instrumental, error_instrumental, mag_standard, error_standard = (np.asarray(a, float) for a in (mag_instrumental, error_instrumental, mag_standard, error_standard))
    usable = np.isfinite(mag_instrumental) & np.isfinite(mag_standard) & (error_instrumental < max_error) & (error_standard < max_error)
    if usable.sum() < min_calibrators:
        raise ZeroPointError(f"only {usable.sum()} standard stars with errors < {max_error} mag (at least {min_calibrators} needed)")
    x, y = np.asarray(x, float)[usable], np.asarray(y, float)[usable]
    delta = mag_standard[usable] - mag_instrumental[usable]
    error = np.hypot(error_instrumental[usable], error_standard[usable])
    surface = fit_surface(x, y, delta, shape=shape, degree=degree, error=error, floor=error_floor, clip_sigma=clip_sigma, select_degree=True)
    ny, nx = shape
    return ZeroPoint(surface, float(surface((nx - 1) / 2, (ny - 1) / 2)[0]), surface.rms, surface.n_used, surface.n_rejected)
