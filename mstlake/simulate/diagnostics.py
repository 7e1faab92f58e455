"""Measurements of simulated data against its truth (arrays in, numbers out).

Used by the simulator's tests and by ``benchmarks/simulator_properties.py`` to state what the
simulator actually produces.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mstlake.calib.combine import robust_std


def star_free_mask(shape, x, y, flux_e, fwhm_px, *, floor_e: float = 30.0) -> np.ndarray:
    """Pixels far enough from every star brighter than ``floor_e`` that its light is negligible."""
    mask = np.ones(shape, bool)
    ny, nx = shape
    radius = np.clip(np.asarray(fwhm_px) * (1 + np.log10(np.maximum(np.asarray(flux_e), floor_e) / floor_e)), 2, 40)
    for xc, yc, r, f in zip(x, y, radius, flux_e):
        if f < floor_e:
            continue
        y0, y1 = max(int(yc - r), 0), min(int(yc + r) + 2, ny)
        x0, x1 = max(int(xc - r), 0), min(int(xc + r) + 2, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] &= (xx - xc) ** 2 + (yy - yc) ** 2 > r * r
    return mask


def background_pull(image, *, bias, flat, sky_e: float, gain: float, read_noise_e: float, row_noise_adu: float, clean) -> tuple[float, float]:
    """Robust std and median of (raw - bias - sky) / expected noise over ``clean`` pixels; (1, 0)
    when the noise is exactly photon + read + row noise."""
    sky_adu = sky_e * flat / gain
    variance = sky_e * flat / gain**2 + (read_noise_e / gain) ** 2 + row_noise_adu**2
    pull = ((image - bias - sky_adu) / np.sqrt(variance))[clean]
    return float(robust_std(pull)), float(np.median(pull))


def saturation_magnitude(mags, peak_above_bias_adu, flag_above_bias_adu: float) -> float:
    """Magnitude at which a star's brightest pixel reaches the flag level (peak scales with flux)."""
    usable = (peak_above_bias_adu > 100) & (peak_above_bias_adu < 1.2 * flag_above_bias_adu)
    return float(np.median(mags[usable] + 2.5 * np.log10(peak_above_bias_adu[usable] / flag_above_bias_adu)))


def small_scale(flat, size: int = 15) -> np.ndarray:
    """Pixel-scale structure: the flat over its running median."""
    return flat / ndimage.median_filter(flat, size)


def affine_residuals(u, v, x, y) -> np.ndarray:
    """Distance of (x, y) from the best affine map of (u, v)."""
    design = np.column_stack([u, v, np.ones_like(u)])
    coef_x = np.linalg.lstsq(design, x, rcond=None)[0]
    coef_y = np.linalg.lstsq(design, y, rcond=None)[0]
    return np.hypot(design @ coef_x - x, design @ coef_y - y)
