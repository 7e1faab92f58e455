"""Cosmic rays on barely sampled images.

The MST PSF has a FWHM of only 2-3 pixels, and a muon's charge diffuses over 1-4 pixels, so to
L.A.Cosmic's fine-structure test (van Dokkum 2001, via astroscrappy) many hits look like stars:
on simulated MST frames it finds two thirds of the hits while flagging 0.3% of star cores.

The test used here follows from the optics instead: a star can put at most a fixed fraction of its
flux (within the 5x5 pixels around its peak) into its brightest pixel, the fraction a perfectly
centred star of the frame's sharpest PSF would. A local peak whose fraction is significantly above
that (given the noise in the variance plane) cannot be a star; it is a hit, grown over the
connected pixels standing above the noise. L.A.Cosmic, run with a strict ``objlim`` so that it never
takes a star core, adds the long, thin tracks and worms whose peaks are not concentrated.
"""

from __future__ import annotations

import astroscrappy
import numpy as np
import sep
from scipy import ndimage

_BOX = 5


def max_peak_fraction(fwhm_px: float, beta: float = 3.0) -> float:
    """Largest fraction of a star's 5x5-box flux that its brightest pixel can hold: a Moffat of
    this FWHM, centred on a pixel, integrated over pixels."""
    alpha = fwhm_px / (2 * np.sqrt(2 ** (1 / beta) - 1))
    sub = 11
    offsets = (np.arange(_BOX * sub) + 0.5) / sub - _BOX / 2
    xx, yy = np.meshgrid(offsets, offsets)
    profile = (1 + (xx * xx + yy * yy) / alpha**2) ** (-beta)
    pixels = profile.reshape(_BOX, sub, _BOX, sub).sum(axis=(1, 3))
    return float(pixels.max() / pixels.sum())


def _gather(array: np.ndarray, rows: np.ndarray, cols: np.ndarray, dy: int, dx: int) -> np.ndarray:
    ny, nx = array.shape
    return array[np.clip(rows + dy, 0, ny - 1), np.clip(cols + dx, 0, nx - 1)]


def sharp_peaks(residual: np.ndarray, variance: np.ndarray, *, known_bad: np.ndarray, fwhm_px: float, min_snr: float, significance: float) -> np.ndarray:
    """Local maxima too concentrated to be stars. Only pixels above ``min_snr`` are examined, so a
    60-Mpx frame costs a fraction of a second."""
    above = (residual > min_snr * np.sqrt(np.maximum(variance, 1e-12))) & ~known_bad
    rows, cols = np.nonzero(above)
    out = np.zeros(residual.shape, bool)
    if rows.size == 0:
        return out
    # a local peak among good pixels: known-bad pixels take no part (a hit whose brightest pixel is a
    # pepper-and-salt pixel still has a peak among its good pixels)
    centre = residual[rows, cols]
    good_only = np.where(known_bad, -np.inf, residual)
    is_peak = np.ones(rows.size, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                is_peak &= centre >= _gather(good_only, rows, cols, dy, dx)
    rows, cols, p = rows[is_peak], cols[is_peak], centre[is_peak]
    half = _BOX // 2
    offsets = [(dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1)]
    s = np.sum([_gather(residual, rows, cols, dy, dx) for dy, dx in offsets], axis=0)
    var_s = np.sum([_gather(variance, rows, cols, dy, dx) for dy, dx in offsets], axis=0)
    var_p = variance[rows, cols]
    ratio = p / np.maximum(s, 1e-6)
    # the peak is part of the box sum: var(p/s) = (var_p (s - p)^2 + p^2 (var_s - var_p)) / s^4
    sigma = np.sqrt(np.maximum(var_p * (s - p) ** 2 + p * p * (var_s - var_p), 0)) / np.maximum(s, 1e-6) ** 2
    hit = (s > 0) & (ratio - max_peak_fraction(fwhm_px) > significance * sigma)
    out[rows[hit], cols[hit]] = True
    return out


def grow(seeds: np.ndarray, residual: np.ndarray, variance: np.ndarray, *, sigma: float, radius: int = 4) -> np.ndarray:
    """The seeds plus the pixels above ``sigma`` connected to them within ``radius`` pixels, worked
    out in a small window around each seed (a whole-frame labelling of a 60-Mpx frame is slow)."""
    out = seeds.copy()
    ny, nx = residual.shape
    for y, x in zip(*np.nonzero(seeds), strict=True):
        y0, y1, x0, x1 = max(y - radius, 0), min(y + radius + 1, ny), max(x - radius, 0), min(x + radius + 1, nx)
        window = residual[y0:y1, x0:x1] > sigma * np.sqrt(np.maximum(variance[y0:y1, x0:x1], 1e-12))
        window[y - y0, x - x0] = True
        labels, _ = ndimage.label(window, structure=np.ones((3, 3), bool))
        out[y0:y1, x0:x1] |= labels == labels[y - y0, x - x0]
    return out


def cosmic_ray_mask(
    image: np.ndarray,
    variance: np.ndarray,
    background: np.ndarray,
    *,
    known_bad: np.ndarray,
    fwhm_px: float,
    gain: float,
    read_noise_e: float,
    saturation_adu: float,
    min_snr: float = 5.0,
    significance: float = 3.0,
    grow_sigma: float = 2.5,
    lacosmic_objlim: float = 0.0,
) -> np.ndarray:
    """Pixels hit by cosmic rays in a calibrated image (ADU, sky included) with its variance.
    ``fwhm_px`` is the sharpest PSF on the frame (e.g. a low percentile of the stars' FWHM)."""
    residual = (image - background).astype(np.float32)
    seeds = sharp_peaks(residual, variance, known_bad=known_bad, fwhm_px=fwhm_px, min_snr=min_snr, significance=significance)
    flagged = grow(seeds, residual, variance, sigma=grow_sigma)
    if lacosmic_objlim > 0:
        flagged |= extended_hits(image, background, known_bad=known_bad, gain=gain, read_noise_e=read_noise_e, saturation_adu=saturation_adu, objlim=lacosmic_objlim)
    return flagged & ~known_bad


def extended_hits(image: np.ndarray, background: np.ndarray, *, known_bad: np.ndarray, gain: float, read_noise_e: float, saturation_adu: float, objlim: float, min_pixels: int = 6) -> np.ndarray:
    """L.A.Cosmic detections of at least ``min_pixels`` connected pixels: the curly low-energy
    electron tracks ("worms") whose charge is spread too widely for the peak test. Known-bad pixels
    are filled from their 3x3 neighbourhood first (a hole in a star would look like a sharp edge)."""
    provisional = np.where(known_bad, background, image)
    filled = np.where(known_bad, ndimage.median_filter(provisional, size=3), image).astype(np.float32)
    lacosmic, _ = astroscrappy.detect_cosmics(
        filled, inmask=np.ascontiguousarray(known_bad), sigclip=4.5, sigfrac=0.3, objlim=objlim, gain=gain,
        readnoise=read_noise_e, satlevel=saturation_adu, niter=4, sepmed=True, cleantype="meanmask", fsmode="median", verbose=False,
    )
    labels, n = ndimage.label(np.asarray(lacosmic, bool), structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(image.shape, bool)
    sizes = ndimage.sum(np.ones(image.shape), labels, np.arange(1, n + 1))
    return np.isin(labels, np.flatnonzero(sizes >= min_pixels) + 1)


def sharpest_fwhm(residual: np.ndarray, rms: float, exclude: np.ndarray) -> float:
    """A low percentile of the stars' FWHM: the sharpest PSF on the frame, with room for noise. When
    it cannot be measured, 1.5 px: too sharp a guess only makes the cosmic-ray test more careful
    with stars."""
    sep.set_extract_pixstack(20_000_000)  # a crowded 60-Mpx frame overflows sep's default buffer
    try:
        objects = sep.extract(np.ascontiguousarray(residual, dtype=np.float32), 10.0, err=rms, mask=exclude, minarea=5)
    except Exception:  # sep raises plain Exceptions for buffer overflows
        return 1.5
    good = objects[(objects["flag"] == 0) & (objects["peak"] < 0.5 * np.nanmax(residual))]
    if len(good) < 5:
        return 1.5
    radius, _ = sep.flux_radius(np.ascontiguousarray(residual, dtype=np.float32), good["x"], good["y"], 6.0 * good["a"], 0.5, normflux=good["flux"], subpix=5)
    fwhm = 2.0 * radius
    return float(max(np.percentile(fwhm[np.isfinite(fwhm)], 10) * 0.9, 1.2))
