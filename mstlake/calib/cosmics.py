"""Cosmic rays on barely sampled images.

The MST PSF has a FWHM of only 2-3 pixels, and a muon's charge diffuses over 1-4 pixels, so to
L.A.Cosmic's fine-structure test (van Dokkum 2001, via astroscrappy) many hits look like stars:
on simulated MST frames it finds two thirds of the hits while flagging 0.3% of star cores.

The test used here follows from the optics instead: a star can put at most a fixed fraction of its
flux (within the 5x5 pixels around its peak) into its brightest pixel, the fraction a perfectly
centred star of the frame's sharpest PSF would; it is measured on the frame's own bright stars
(falling back to a Moffat of the measured FWHM). A local peak whose fraction is significantly above
that (given the noise in the variance plane; known-bad pixels in the box are filled from their
neighbours) cannot be a star; it is a hit, grown over the
connected pixels standing above the noise. L.A.Cosmic, run with a strict ``objlim`` so that it never
takes a star core, adds the long, thin tracks and worms whose peaks are not concentrated.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _gather_filled(residual, variance, known_bad, rows, cols, dy, dx):
    """Value and variance at an offset from each position; a known-bad pixel (a pepper-and-salt
    pixel can be off by a hundred ADU) is replaced by the mean of its good 3x3 neighbours."""
    value, var = _gather(residual, rows, cols, dy, dx), _gather(variance, rows, cols, dy, dx)
    bad = _gather(known_bad, rows, cols, dy, dx)
    if bad.any():
        r, c = rows[bad] + dy, cols[bad] + dx
        total, total_var, count = np.zeros(r.size), np.zeros(r.size), np.zeros(r.size)
        for ny_ in (-1, 0, 1):
            for nx_ in (-1, 0, 1):
                if ny_ or nx_:
                    good = ~_gather(known_bad, r, c, ny_, nx_)
                    total += np.where(good, _gather(residual, r, c, ny_, nx_), 0)
                    total_var += np.where(good, _gather(variance, r, c, ny_, nx_), 0)
                    count += good
        value, var = value.copy(), var.copy()
        value[bad] = np.where(count > 0, total / np.maximum(count, 1), 0)
        var[bad] = np.where(count > 0, total_var / np.maximum(count, 1) ** 2 * 2, var[bad])
    return value, var


@dataclass(frozen=True)
class PeakFractions:
    """Local maxima of a frame and the share of their 5x5-box light in the peak pixel."""

    rows: np.ndarray
    cols: np.ndarray
    snr: np.ndarray  # the peak pixel's signal-to-noise
    ratio: np.ndarray  # peak / 5x5 sum (inf when the sum is not positive)
    sigma: np.ndarray  # noise of ratio


def peak_fractions(residual: np.ndarray, variance: np.ndarray, known_bad: np.ndarray, min_snr: float) -> PeakFractions:
    """Local maxima among good pixels above ``min_snr``: positions, the fraction of the 5x5 box's
    light in the peak pixel, and that fraction's noise. Only pixels above ``min_snr`` are examined,
    so a 60-Mpx frame costs about a second."""
    noise = np.sqrt(np.maximum(variance, 1e-12))
    above = (residual > min_snr * noise) & ~known_bad
    rows, cols = np.nonzero(above)
    if rows.size == 0:
        empty = np.zeros(0)
        return PeakFractions(rows, cols, empty, empty, empty)
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
    s = np.zeros(rows.size)
    var_s = np.zeros(rows.size)
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            value, var = _gather_filled(residual, variance, known_bad, rows, cols, dy, dx)
            s += value
            var_s += var
    var_p = variance[rows, cols]
    ratio = p / np.maximum(s, 1e-6)
    # the peak is part of the box sum: var(p/s) = (var_p (s - p)^2 + p^2 (var_s - var_p)) / s^4
    sigma = np.sqrt(np.maximum(var_p * (s - p) ** 2 + p * p * (var_s - var_p), 0)) / np.maximum(s, 1e-6) ** 2
    ratio = np.where(s > 0, ratio, np.inf)
    return PeakFractions(rows, cols, p / noise[rows, cols], ratio, sigma)


def star_peak_fraction(peaks: PeakFractions, *, min_snr: float = 20.0, max_noise: float = 0.02, min_stars: int = 20) -> float | None:
    """The largest fraction of its 5x5-box light a star on this frame puts in its brightest pixel,
    measured on the frame's bright stars: their fractions form one population (spread by where each
    star falls on its pixel); cosmic rays, far more concentrated, stand above it and are left out.
    None when too few bright stars (use ``max_peak_fraction`` of a measured FWHM instead)."""
    ratio = peaks.ratio[np.isfinite(peaks.ratio) & (peaks.sigma < max_noise) & (peaks.snr > min_snr)]
    if ratio.size < min_stars:
        return None
    centre = np.median(ratio)
    spread = 1.4826 * np.median(np.abs(ratio - centre))
    stars = ratio[ratio <= centre + 4 * max(spread, 0.01)]
    # the brightest-pixel share rises steeply as a star falls nearer a pixel centre: the 99th
    # percentile of a few hundred stars is a little short of the largest possible, hence the margin
    return float(1.1 * np.percentile(stars, 99)) if stars.size >= min_stars else None


def sharp_peaks(peaks: PeakFractions, shape: tuple[int, int], *, max_fraction: float, significance: float) -> np.ndarray:
    """Local maxima too concentrated to be stars: the fraction of the 5x5-box light in the peak
    exceeds ``max_fraction`` (a star's largest) by ``significance`` times its noise."""
    out = np.zeros(shape, bool)
    hit = np.isfinite(peaks.ratio) & (peaks.ratio - max_fraction > significance * peaks.sigma)
    out[peaks.rows[hit], peaks.cols[hit]] = True
    return out


def _separate_sources(values: np.ndarray, noise: np.ndarray, seed: tuple[int, int], *, star_snr: float, dip: float = 0.6) -> np.ndarray:
    """Other sources' peaks in a window around a cosmic-ray seed: local maxima above ``star_snr``
    with a dip between them and the seed (the light along the straight line between them falls
    below ``dip`` of the peak). Pixels along one worm do not dip; a star beside a hit does."""
    peaks = (values >= ndimage.maximum_filter(values, size=3, mode="nearest")) & (values > star_snr * noise)
    peaks[seed] = False
    out = np.zeros(values.shape, bool)
    for py, px in zip(*np.nonzero(peaks)):
        steps = max(abs(py - seed[0]), abs(px - seed[1]))
        if steps < 2:
            continue
        t = np.linspace(0, 1, 2 * steps + 1)[1:-1]
        between = ndimage.map_coordinates(values, [seed[0] + t * (py - seed[0]), seed[1] + t * (px - seed[1])], order=1)
        if between.min() < dip * values[py, px]:
            out[py, px] = True
    return out


def grow(seeds: np.ndarray, residual: np.ndarray, variance: np.ndarray, *, sigma: float, radius: int = 4, star_snr: float = 5.0) -> np.ndarray:
    """The seeds plus the pixels above ``sigma`` connected to them within ``radius`` pixels, worked
    out in a small window around each seed (a whole-frame labelling of a 60-Mpx frame is slow).
    The growth stops at the core (peak and neighbours) of any separate source, so a hit next to a
    star does not swallow it."""
    out = seeds.copy()
    ny, nx = residual.shape
    for y, x in zip(*np.nonzero(seeds), strict=True):
        y0, y1, x0, x1 = max(y - radius, 0), min(y + radius + 1, ny), max(x - radius, 0), min(x + radius + 1, nx)
        values = residual[y0:y1, x0:x1]
        noise = np.sqrt(np.maximum(variance[y0:y1, x0:x1], 1e-12))
        others = _separate_sources(values, noise, (y - y0, x - x0), star_snr=star_snr) & ~seeds[y0:y1, x0:x1]
        window = (values > sigma * noise) & ~ndimage.binary_dilation(others, structure=np.ones((3, 3), bool))
        window[y - y0, x - x0] = True
        labels, _ = ndimage.label(window, structure=np.ones((3, 3), bool))
        out[y0:y1, x0:x1] |= labels == labels[y - y0, x - x0]
    return out


def cosmic_ray_mask(
    residual: np.ndarray,
    variance: np.ndarray,
    *,
    known_bad: np.ndarray,
    gain: float,
    read_noise_e: float,
    saturation_adu: float,
    min_snr: float = 5.0,
    significance: float = 3.0,
    grow_sigma: float = 2.5,
    lacosmic_objlim: float = 0.0,
    max_fraction: float | None = None,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Pixels hit by cosmic rays in a calibrated image less its background (``residual``, ADU; the
    ``background`` itself is needed only for the L.A.Cosmic option) with its variance, and
    the largest share of its 5x5-box light a star on this frame puts in one pixel
    (``max_fraction``: measured on the frame's stars unless given; from the sharpest FWHM when the
    frame has too few bright stars)."""
    residual = np.asarray(residual, dtype=np.float32)
    peaks = peak_fractions(residual, variance, known_bad, min_snr)
    if max_fraction is None:
        max_fraction = star_peak_fraction(peaks)
    if max_fraction is None:
        max_fraction = max_peak_fraction(sharpest_fwhm(residual, float(np.sqrt(np.median(variance[::16, ::16]))), known_bad))
    seeds = sharp_peaks(peaks, residual.shape, max_fraction=max_fraction, significance=significance)
    flagged = grow(seeds, residual, variance, sigma=grow_sigma)
    if lacosmic_objlim > 0:
        if background is None:
            raise ValueError("the L.A.Cosmic option (lacosmic_objlim > 0) needs the background")
        flagged |= extended_hits(residual + background, background, known_bad=known_bad, gain=gain, read_noise_e=read_noise_e, saturation_adu=saturation_adu, objlim=lacosmic_objlim)
    return flagged & ~known_bad, max_fraction


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
    """A low percentile of the stars' FWHM (objects much sharper than the median are cosmic rays):
    the sharpest PSF on the frame, with room for noise. When
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
    # half-light radii within 6 isophotal semi-axes (the isophotal flux misses the wings), as the
    # FWHM of a Moffat (beta = 3) profile, the shape ``max_peak_fraction`` assumes
    radius, _ = sep.flux_radius(np.ascontiguousarray(residual, dtype=np.float32), good["x"], good["y"], 6.0 * good["a"], 0.5, subpix=5)
    fwhm = 2.0 * radius / 1.262
    fwhm = fwhm[np.isfinite(fwhm)]
    # cosmic rays are among the objects: anything much sharper than the typical source is not a star
    stars = fwhm[fwhm > 0.6 * np.median(fwhm)] if fwhm.size else fwhm
    if stars.size < 5:
        return 1.5
    return float(max(np.percentile(stars, 10) * 0.9, 1.2))
