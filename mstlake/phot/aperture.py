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

from mstlake.phot.surface import Surface, fit_surface

DIAMETERS_PX = tuple(float(d) for d in range(2, 51, 2))


@dataclass(frozen=True)
class ApertureFluxes:
    diameters: np.ndarray  # (n_apertures,)
    flux: np.ndarray  # (n_sources, n_apertures), image units
    flux_err: np.ndarray
    masked: np.ndarray  # bool (n_sources, n_apertures): a masked pixel inside the aperture


def aperture_fluxes(residual: np.ndarray, variance: np.ndarray, x, y, *, mask: np.ndarray | None = None, diameters=DIAMETERS_PX) -> ApertureFluxes:
    """Sums in circular apertures centred on (x, y) (0-based) of a background-subtracted image."""
    data = np.ascontiguousarray(residual, dtype=np.float32)
    var = np.ascontiguousarray(variance, dtype=np.float32)
    x, y = np.asarray(x, float), np.asarray(y, float)
    hidden = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    flux = np.empty((x.size, len(diameters)))
    error = np.empty_like(flux)
    masked = np.zeros(flux.shape, bool)
    for k, diameter in enumerate(diameters):
        f, e, flag = sep.sum_circle(data, x, y, diameter / 2, var=var, mask=hidden, subpix=5)
        flux[:, k], error[:, k] = f, e
        masked[:, k] = (flag & sep.APER_HASMASKED) > 0
    return ApertureFluxes(np.asarray(diameters, float), flux, error, masked)


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
