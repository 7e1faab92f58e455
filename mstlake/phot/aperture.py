"""Aperture photometry in 25 circular apertures, and the per-frame choices the paper makes with it.

* ``aperture_fluxes``: fluxes and errors (variance plane) in apertures of diameter 2, 4, ..., 50 px
  on a background-subtracted image, masked pixels left out and counted.
* ``best_aperture``: for bright stars (errors 0.002-0.008 mag), each star's aperture of highest S/N;
  the frame's best aperture is their median.
* ``reference_aperture``: from the median growth curve of those stars, the first aperture where
  mag(n) - mag(n-2) < 1e-4 mag (all the light, to that precision).
* ``aperture_correction``: mag_ref - mag_best over the reference stars as a 2nd-order polynomial in
  (x, y), fitted with clipping; applied to every source; its residual rms is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

from mstlake.phot.stamps import cutout_index
from mstlake.phot.surface import Surface, fit_surface

DIAMETERS_PX = tuple(float(d) for d in range(2, 51, 2))


@dataclass(frozen=True)
class ApertureFluxes:
    diameters: np.ndarray  # (n_apertures,)
    flux: np.ndarray  # (n_sources, n_apertures), image units
    flux_err: np.ndarray
    masked: np.ndarray  # bool (n_sources, n_apertures): a masked pixel inside the aperture


def aperture_fluxes(residual: np.ndarray, variance: np.ndarray, x, y, *, mask: np.ndarray | None = None, diameters=DIAMETERS_PX, exact_up_to_px: float = 20.0) -> ApertureFluxes:
    """Sums in circular apertures centred on (x, y) (0-based) of a background-subtracted image.

    Apertures up to ``exact_up_to_px`` in diameter: sep, exact pixel overlaps. Larger ones with
    integer radii: one pass over each star's cutout, a pixel counting in full inside r - 1/2 of
    its centre's distance and by the linear share (r + 1/2 - d) across the edge (0.1% of the
    area's edge from exact at r > 10, where a star's light per pixel is < 1e-4 of its flux;
    25 separate sep sums cost 6x as much)."""
    data = np.ascontiguousarray(residual, dtype=np.float32)
    var = np.ascontiguousarray(variance, dtype=np.float32)
    x, y = np.asarray(x, float), np.asarray(y, float)
    hidden = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    diameters = np.asarray(diameters, float)
    flux = np.empty((x.size, diameters.size))
    error = np.empty_like(flux)
    masked = np.zeros(flux.shape, bool)
    radii = diameters / 2
    ringed = (diameters > exact_up_to_px) & (radii == np.round(radii))
    for k in np.flatnonzero(~ringed):
        f, e, flag = sep.sum_circle(data, x, y, radii[k], var=var, mask=hidden, subpix=0)
        flux[:, k], error[:, k] = f, e
        masked[:, k] = (flag & (sep.APER_HASMASKED | sep.APER_TRUNC)) > 0
    if ringed.any() and x.size:
        f, v, m = _ring_sums(data, var, hidden, x, y, radii[ringed].astype(int))
        flux[:, ringed], error[:, ringed], masked[:, ringed] = f, np.sqrt(v), m
    return ApertureFluxes(diameters, flux, error, masked)


def _ring_sums(data, var, hidden, x, y, radii: np.ndarray, chunk: int = 3000):
    """Flux, variance and masked flag within integer ``radii`` for every star, from one cutout."""
    top = int(radii.max())
    half = top + 1
    offsets = np.arange(-half, half + 1)
    flux = np.empty((x.size, radii.size))
    variance = np.empty_like(flux)
    masked = np.zeros(flux.shape, bool)
    rings = top + 1  # ring j: centres at distance [j - 1/2, j + 1/2)
    for start in range(0, x.size, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        n = xs.size
        rows = np.rint(ys).astype(int)[:, None] + offsets
        cols = np.rint(xs).astype(int)[:, None] + offsets
        flat, inside = cutout_index(data.shape, rows, cols)
        dx = (cols - xs[:, None]).astype(np.float32)[:, None, :]
        dy = (rows - ys[:, None]).astype(np.float32)[:, :, None]
        distance = np.sqrt(dx * dx + dy * dy)
        ring = (distance + np.float32(0.5)).astype(np.int32)  # floor: distances are >= 0
        near = ring <= top
        bad = ~inside if hidden is None else ~inside | hidden.reshape(-1)[flat]
        use = near & ~bad
        index = (np.arange(n, dtype=np.int32)[:, None, None] * rings + ring)
        chosen_index, chosen_flat = index[use], flat[use]
        share = np.float32(0.5) + ring[use] - distance[use]  # of the pixel inside radius = ring
        values, noise = data.reshape(-1)[chosen_flat], var.reshape(-1)[chosen_flat]
        size = n * rings
        whole = np.bincount(chosen_index, weights=values, minlength=size).reshape(n, rings)
        part = np.bincount(chosen_index, weights=values * share, minlength=size).reshape(n, rings)
        whole_var = np.bincount(chosen_index, weights=noise, minlength=size).reshape(n, rings)
        part_var = np.bincount(chosen_index, weights=noise * share, minlength=size).reshape(n, rings)
        bad_count = np.bincount(index[near & bad], minlength=size).reshape(n, rings)
        inner = np.cumsum(whole, axis=1) - whole  # rings below j
        inner_var = np.cumsum(whole_var, axis=1) - whole_var
        inner_bad = np.cumsum(bad_count, axis=1)
        flux[start : start + n] = (inner + part)[:, radii]
        variance[start : start + n] = (inner_var + part_var)[:, radii]
        masked[start : start + n] = inner_bad[:, radii] > 0
    return flux, variance, masked


def magnitudes(flux: np.ndarray, flux_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instrumental magnitudes (NaN for non-positive flux) and their errors."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(flux), np.nan)
        err = np.where(flux > 0, 2.5 / np.log(10) * flux_err / flux, np.nan)
    return mag, err


def best_aperture(fluxes: ApertureFluxes, *, min_error: float = 0.002, max_error: float = 0.008) -> tuple[int, np.ndarray]:
    """Index of the frame's best aperture and the stars that chose it (a bool selection): stars
    whose best error lies in [min_error, max_error] mag, no masked pixel within 20 px diameter."""
    snr = fluxes.flux / np.maximum(fluxes.flux_err, 1e-30)
    each = np.argmax(snr, axis=1)
    best_error = 2.5 / np.log(10) / snr[np.arange(len(snr)), each]
    # clean out to 20 px (a masked pixel somewhere in a 50-px aperture is the rule in a crowded frame)
    inner = fluxes.diameters <= 20
    chosen = (best_error >= min_error) & (best_error <= max_error) & ~fluxes.masked[:, inner].any(axis=1) & (fluxes.flux > 0).all(axis=1)
    if not chosen.any():
        raise ValueError(f"no star with errors between {min_error} and {max_error} mag in every aperture")
    return int(np.round(np.median(each[chosen]))), chosen


def reference_aperture(fluxes: ApertureFluxes, stars: np.ndarray, *, tolerance_mag: float = 1e-4) -> int:
    """The first aperture n (n >= 2) where the median growth curve of ``stars`` changes by less
    than ``tolerance_mag`` from aperture n - 2; the largest aperture if it never settles."""
    mag, _ = magnitudes(fluxes.flux[stars], fluxes.flux_err[stars])
    curve = np.nanmedian(mag - mag[:, -1:], axis=0)  # relative to the largest aperture
    for n in range(2, curve.size):
        if abs(curve[n] - curve[n - 2]) < tolerance_mag:
            return n
    return curve.size - 1


def aperture_correction(x, y, mag_best, mag_ref, *, shape: tuple[int, int], clip_sigma: float = 3.0) -> Surface:
    """mag_ref - mag_best as a 2nd-order polynomial of position on a detector of ``shape``
    (ny, nx), with sigma clipping; its ``rms`` is the residual scatter of the kept stars."""
    delta = np.asarray(mag_ref, float) - np.asarray(mag_best, float)
    if np.isfinite(delta).sum() < 6:
        raise ValueError(f"only {np.isfinite(delta).sum()} stars for a 6-term aperture correction")
    return fit_surface(x, y, delta, shape=shape, degree=2, clip_sigma=clip_sigma)


def model_aperture_correction(x, y, total: ApertureFluxes, own: ApertureFluxes, best: int, reference: int, *, model_half_px: float, shape: tuple[int, int]) -> Surface:
    """mag_ref - mag_best with its level measured and its shape modelled (as DAOGROW leans on a
    model where single stars are noisy): the level is the median over the stars of the measured
    neighbour-free growth (``total``) from the best to the reference aperture; the variation
    across the detector is that of the stars' own noise-free PSF models (``own``) inside the
    model's extent, about their median (an empirical PSF misses a few tenths of a percent of its
    wings, so its growth sets no level). Fitted as a 2nd-order surface."""
    inside = np.flatnonzero(total.diameters / 2 <= model_half_px - 1)
    mid = int(min(reference, max(best, inside.max() if inside.size else best)))
    with np.errstate(divide="ignore", invalid="ignore"):
        modelled = -2.5 * np.log10(own.flux[:, mid] / own.flux[:, best])
        measured = -2.5 * np.log10(total.flux[:, reference] / total.flux[:, best])
    level = float(np.nanmedian(measured)) if np.isfinite(measured).any() else 0.0
    variation = modelled - np.nanmedian(modelled) if np.isfinite(modelled).any() else np.zeros_like(modelled)
    return fit_surface(x, y, variation + level, shape=shape, degree=2)
