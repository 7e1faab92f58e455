"""Astrometric solution of a frame: a blind solve from the header pointing, then a TAN-SIP fit.

Blind solve: the reference stars around the pointing are projected onto the tangent plane and the
brightest image sources are matched to them by asterisms (triangles, ``asterism``; astroalign's
RANSAC took 30-70 s per frame and missed a third of them); that gives a similarity transform
(rotation, scale, shift) of either parity, so a mirrored camera is solved too. The pointing may be off by ~10 arcmin: the catalogue is taken wide enough.

Refine: the catalogue is projected through the current solution, matched to the sources by
nearest neighbour, and a TAN-SIP solution fitted by linear least squares (``fit_tan_sip``; astropy's
``fit_wcs_from_points`` does the same non-linearly and took ~1 s per iteration on 300 stars) with
clipping, widening the matched set from the bright centre of the field to all of it as the
distortion is learnt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

from mstlake.astrom import asterism
from mstlake.phot.surface import detector_cell


class SolveError(RuntimeError):
    """The frame could not be solved (too few sources, no asterism match)."""


@dataclass(frozen=True)
class Solution:
    wcs: WCS
    rms_x_px: float  # per-axis rms of the fit's residuals
    rms_y_px: float
    n_matched: int
    source_index: np.ndarray  # matched sources (rows of the source table) ...
    reference_index: np.ndarray  # ... and their reference stars
    residual_x_px: np.ndarray  # source minus projected reference, per match
    residual_y_px: np.ndarray
    parity: int  # of the pixel -> standard-coordinate map: +1 puts east to the right of north, as a mirror does; a sky image as normally seen is -1
    matched_x_px: np.ndarray  # the matched sources' positions
    matched_y_px: np.ndarray
    shape: tuple[int, int]

    def residual_map(self) -> tuple[np.ndarray, np.ndarray]:
        """Median residuals (x, y, px) of the matched stars per detector cell (``residual_map``)."""
        return residual_map(self.matched_x_px, self.matched_y_px, self.residual_x_px, self.residual_y_px, self.shape)


def standard_coordinates(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates (xi east, eta north; degrees) about (ra0, dec0)."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return np.degrees(xi), np.degrees(eta)


def blind_solve(x, y, flux, ref_ra, ref_dec, ref_mag, *, pointing: tuple[float, float], pixel_scale_deg: float, shape: tuple[int, int], n_bright: int = 60, scale_tolerance: float = 0.1) -> tuple[WCS, int, int]:
    """A first TAN solution from asterisms: (wcs, number of asterism matches, parity). ``x, y,
    flux``: the image sources; ``ref_*``: the reference stars around the pointing (wider than the
    frame by the pointing error)."""
    ny, nx = shape
    order = np.argsort(-np.asarray(flux, float))[:n_bright]
    image_xy = np.column_stack([np.asarray(x, float)[order], np.asarray(y, float)[order]])
    xi, eta = standard_coordinates(ref_ra, ref_dec, *pointing)
    # as many catalogue stars as fall on the frame's area among the brightest within reach
    reach = np.max(np.abs(np.column_stack([xi, eta])), axis=1)
    ref_order = np.argsort(np.asarray(ref_mag, float))
    area_ratio = (2 * reach.max()) ** 2 / (nx * ny * pixel_scale_deg**2)
    n_ref = int(np.clip(1.5 * n_bright * area_ratio, n_bright, 3000))
    ref_order = ref_order[:n_ref]
    ref_uv = np.column_stack([xi[ref_order], eta[ref_order]]) / pixel_scale_deg
    if len(image_xy) < 5 or len(ref_uv) < 5:
        raise SolveError(f"too few stars to match ({len(image_xy)} sources, {len(ref_uv)} reference stars)")
    found = asterism.match(image_xy, ref_uv, expected_scale=1.0, scale_tolerance=scale_tolerance)
    if found is None:
        raise SolveError("no asterism match between the brightest sources and the reference stars")
    transform, matched, _ = found
    n_matched, parity = len(matched), transform.parity
    # uv = M @ (parity x, y) + t, and (xi, eta) = scale * uv: the tangent point (the pointing) sits at
    # the pixel where uv = 0
    m = transform.matrix
    t = transform.shift
    crpix = -np.linalg.solve(m, t)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(pointing)
    wcs.wcs.crpix = crpix + 1.0  # FITS pixels are 1-based
    wcs.wcs.cd = m * pixel_scale_deg
    return wcs, n_matched, parity


def refine(wcs: WCS, x, y, ref_ra, ref_dec, *, shape: tuple[int, int], sip_degree: int = 4, match_radius_px: float = 6.0, clip_sigma: float = 3.0, iterations: int = 6, parity: int = 1) -> Solution:
    """Fit TAN-SIP by projecting the reference stars, matching, fitting and clipping, repeatedly.
    The match radius shrinks to 5x the fit's rms (never below 1 px); the SIP degree rises from 2 to
    ``sip_degree`` after the first passes, so the first matches are not pulled by an unfit
    distortion, and only as far as there are >= 8 matched stars per polynomial term."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ny, nx = shape
    tree = cKDTree(np.column_stack([x, y]))
    radius = match_radius_px
    ref_ra, ref_dec = np.asarray(ref_ra, float), np.asarray(ref_dec, float)
    for iteration in range(iterations):
        px, py = project(wcs, ref_ra, ref_dec, shape)
        on = (px > -2) & (px < nx + 1) & (py > -2) & (py < ny + 1)
        ref_idx = np.flatnonzero(on)
        distance, src_idx = tree.query(np.column_stack([px[on], py[on]]), distance_upper_bound=radius)
        ok = np.isfinite(distance)
        ref_idx, src_idx = ref_idx[ok], src_idx[ok]
        # one reference star per source: keep the nearest
        order = np.argsort(distance[ok])
        _, first = np.unique(src_idx[order], return_index=True)
        ref_idx, src_idx = ref_idx[order][first], src_idx[order][first]
        if len(ref_idx) < 10:
            raise SolveError(f"only {len(ref_idx)} reference stars matched within {radius:.1f} px")
        # a polynomial needs many stars per term, or it bends between them and at the edges
        affordable = max((d for d in range(1, sip_degree + 1) if len(ref_idx) >= 8 * (d + 1) * (d + 2) / 2), default=1)
        degree = min(2 if iteration < 2 else sip_degree, affordable)
        wcs = fit_tan_sip(x[src_idx], y[src_idx], ref_ra[ref_idx], ref_dec[ref_idx], shape=shape, degree=degree, guess=wcs)
        fx, fy = wcs.all_world2pix(ref_ra[ref_idx], ref_dec[ref_idx], 0, quiet=True)
        dx, dy = x[src_idx] - fx, y[src_idx] - fy
        rms = np.sqrt(np.mean(dx**2 + dy**2) / 2)
        clipped = np.hypot(dx, dy) > clip_sigma * np.sqrt(2) * rms
        if clipped.any():
            keep = ~clipped
            wcs = fit_tan_sip(x[src_idx][keep], y[src_idx][keep], ref_ra[ref_idx][keep], ref_dec[ref_idx][keep], shape=shape, degree=degree, guess=wcs)
            ref_idx, src_idx = ref_idx[keep], src_idx[keep]
            fx, fy = wcs.all_world2pix(ref_ra[ref_idx], ref_dec[ref_idx], 0, quiet=True)
            dx, dy = x[src_idx] - fx, y[src_idx] - fy
            rms = np.sqrt(np.mean(dx**2 + dy**2) / 2)
        radius = max(5.0 * rms, 1.0)
    return Solution(wcs, float(np.std(dx)), float(np.std(dy)), len(ref_idx), src_idx, ref_idx, dx, dy, parity, x[src_idx], y[src_idx], (ny, nx))


def project(wcs: WCS, ra: np.ndarray, dec: np.ndarray, shape: tuple[int, int], margin: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of sky positions; those the linear part puts far off the frame are left at
    the linear position (a fitted SIP polynomial must not be extrapolated, nor inverted, there)."""
    ny, nx = shape
    px, py = wcs.wcs_world2pix(ra, dec, 0)
    near = (px > -margin) & (px < nx + margin) & (py > -margin) & (py < ny + margin)
    if near.any() and wcs.sip is not None:
        px[near], py[near] = wcs.all_world2pix(ra[near], dec[near], 0, quiet=True)
    return px, py


def _powers(degree: int, minimum: int = 0) -> list[tuple[int, int]]:
    return [(p, q) for total in range(minimum, degree + 1) for p in range(total, -1, -1) for q in [total - p]]


def _design(u: np.ndarray, v: np.ndarray, powers) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in powers])


def fit_tan_sip(x, y, ra, dec, *, shape: tuple[int, int], degree: int, guess: WCS, passes: int = 2) -> WCS:
    """TAN-SIP by linear least squares: the standard coordinates of the reference stars about the
    tangent point are polynomials of degree ``degree`` in the pixel offsets from the frame's centre;
    the linear terms are the CD matrix, the rest (through CD's inverse) SIP's A and B. The tangent
    point moves to where the constant terms vanish. AP/BP (the inverse) are fitted on a grid so FITS
    readers without iterative inversion (DS9) agree."""
    x, y, ra, dec = (np.asarray(a, float) for a in (x, y, ra, dec))
    ny, nx = shape
    crpix = np.array([(nx - 1) / 2, (ny - 1) / 2])
    crval = np.array(guess.all_pix2world([crpix], 0)[0], float)
    u, v = x - crpix[0], y - crpix[1]
    norm = max(nx, ny) / 2
    powers = _powers(degree)
    design = _design(u / norm, v / norm, powers)
    for step in range(passes):
        xi, eta = standard_coordinates(ra, dec, *crval)
        coef_xi = np.linalg.lstsq(design, xi, rcond=None)[0]
        coef_eta = np.linalg.lstsq(design, eta, rcond=None)[0]
        if step < passes - 1:  # move the tangent point to the sky position of the centre pixel
            crval = np.array(_from_standard(coef_xi[0], coef_eta[0], *crval))
    scale = np.array([norm**-(p + q) for p, q in powers])
    cx, ce = coef_xi * scale, coef_eta * scale
    index = {pq: k for k, pq in enumerate(powers)}
    cd = np.array([[cx[index[(1, 0)]], cx[index[(0, 1)]]], [ce[index[(1, 0)]], ce[index[(0, 1)]]]])
    inverse_cd = np.linalg.inv(cd)
    a = np.zeros((degree + 1, degree + 1))
    b = np.zeros((degree + 1, degree + 1))
    for (p, q), k in index.items():
        if p + q >= 2:
            a[p, q], b[p, q] = inverse_cd @ np.array([cx[k], ce[k]])
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crpix = crpix + 1.0
    wcs.wcs.crval = crval
    wcs.wcs.cd = cd
    ap, bp = _inverse_sip(a, b, shape, crpix, degree)
    wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    return wcs


def _from_standard(xi_deg: float, eta_deg: float, ra0_deg: float, dec0_deg: float) -> tuple[float, float]:
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    denominator = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denominator)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denominator))
    return float(np.degrees(ra) % 360), float(np.degrees(dec))


def _inverse_sip(a: np.ndarray, b: np.ndarray, shape, crpix, degree: int, grid: int = 40) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    gu, gv = np.meshgrid(np.linspace(-crpix[0], nx - 1 - crpix[0], grid), np.linspace(-crpix[1], ny - 1 - crpix[1], grid))
    u, v = gu.ravel(), gv.ravel()
    fu = u + sum(a[p, q] * u**p * v**q for p in range(degree + 1) for q in range(degree + 1 - p))
    fv = v + sum(b[p, q] * u**p * v**q for p in range(degree + 1) for q in range(degree + 1 - p))
    norm = max(nx, ny) / 2
    powers = _powers(degree, minimum=1)
    design = _design(fu / norm, fv / norm, powers)
    coef_u = np.linalg.lstsq(design, (u - fu), rcond=None)[0]
    coef_v = np.linalg.lstsq(design, (v - fv), rcond=None)[0]
    ap = np.zeros((degree + 1, degree + 1))
    bp = np.zeros((degree + 1, degree + 1))
    for (p, q), cu, cv in zip(powers, coef_u, coef_v):
        ap[p, q], bp[p, q] = cu * norm ** -(p + q), cv * norm ** -(p + q)
    return ap, bp


RESIDUAL_GRID = (5, 8)  # rows x columns of the per-frame residual map


def residual_map(x, y, dx, dy, shape: tuple[int, int], grid: tuple[int, int] = RESIDUAL_GRID, min_stars: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Median fit residuals (dx, dy, px) of matched stars in a grid of cells over the detector,
    row-major; NaN where a cell has fewer than ``min_stars``. Systematic patterns here are
    distortion the fit does not follow."""
    dx, dy = np.asarray(dx, float), np.asarray(dy, float)
    cell = detector_cell(x, y, shape, grid)
    maps = np.full((2, grid[0] * grid[1]), np.nan)
    for k in np.unique(cell):
        chosen = cell == k
        if chosen.sum() >= min_stars:
            maps[0, k], maps[1, k] = np.median(dx[chosen]), np.median(dy[chosen])
    return maps[0], maps[1]
