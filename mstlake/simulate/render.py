"""Putting light and charge onto pixels.

* **Stars**: elliptical Moffat profiles integrated over each pixel (3x3 sub-samples per pixel), each
  star in a stamp large enough that the flux left outside is below max(0.5 e-, 1e-4 of the star).
* **Satellite tracks**: straight lines crossing (or starting/ending in) the frame, Gaussian across
  (FWHM 2-4 px), surface brightness from below the sky noise to far above it, some glinting.
* **Aircraft**: two parallel dashed lines (strobes) with a faint continuous navigation light.
* **Cosmic rays**: muons through a ~5 um sensitive layer (short straight tracks, ~80 e-/um with
  Landau-like fluctuations, incidence following cos^2) and 10% low-energy electrons (curly worms).

Everything returns electrons (before the flat field for light, after it for charge deposited in the
silicon).
"""

from __future__ import annotations

import numpy as np

_STAMP_RADII = np.array([4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128, 181, 256])
_CORE_HALF = 2  # the central 5x5 pixels are integrated over the pixel (5x5 sub-samples)
_CORE_OVERSAMPLE = 5
_CHUNK_ELEMENTS = 4_000_000


def stamp_radius(flux_e, alpha_major, beta) -> np.ndarray:
    """Smallest radius (from a fixed ladder) that leaves < max(1 e-, 1e-4 flux) outside."""
    tolerance = np.maximum(1.0, 1e-4 * flux_e)
    ratio = np.maximum(flux_e / tolerance, 1.0)
    needed = alpha_major * np.sqrt(np.maximum(ratio ** (1.0 / (beta - 1.0)) - 1.0, 0.0))
    needed = np.maximum(needed, 3.0 * alpha_major)
    idx = np.searchsorted(_STAMP_RADII, needed)
    return _STAMP_RADII[np.minimum(idx, _STAMP_RADII.size - 1)]


def _moffat(dx, dy, qa, qb, qc, beta):
    q = qa * dx * dx + 2 * qb * dx * dy + qc * dy * dy
    return np.power(1.0 + q, -beta)


def render_stars(shape, x, y, flux_e, alpha_major, alpha_minor, angle, beta: float):
    """Expected electrons from point sources: (float64 image, electrons in each star's brightest pixel).

    Each stamp is normalised to hold exactly the star's flux, so the truth flux is what is on the
    pixels; the flux a full Moffat would put beyond the stamp is below max(1 e-, 1e-4) anyway.
    """
    ny, nx = shape
    image = np.zeros(ny * nx, np.float64)
    x, y, flux_e = np.asarray(x, float), np.asarray(y, float), np.asarray(flux_e, float)
    peak = np.zeros(x.size)
    radius = stamp_radius(flux_e, alpha_major, beta)
    c, s = np.cos(angle), np.sin(angle)
    inv_a2, inv_b2 = 1.0 / alpha_major**2, 1.0 / alpha_minor**2
    qa = (c * c * inv_a2 + s * s * inv_b2).astype(np.float32)
    qb = (c * s * (inv_a2 - inv_b2)).astype(np.float32)
    qc = (s * s * inv_a2 + c * c * inv_b2).astype(np.float32)
    sub = (np.arange(_CORE_OVERSAMPLE) + 0.5) / _CORE_OVERSAMPLE - 0.5
    core_offsets = np.arange(-_CORE_HALF, _CORE_HALF + 1)
    core_fine = (core_offsets[:, None] + sub[None, :]).reshape(-1).astype(np.float32)
    k = 2 * _CORE_HALF + 1
    for r in np.unique(radius):
        members = np.flatnonzero(radius == r)
        members = members[np.argsort(y[members])]  # neighbouring rows: cheap accumulation
        size = 2 * r + 1
        chunk = max(1, _CHUNK_ELEMENTS // (size * size + (k * _CORE_OVERSAMPLE) ** 2))
        offsets = np.arange(-r, r + 1)
        for start in range(0, members.size, chunk):
            m = members[start : start + chunk]
            ix, iy = np.rint(x[m]).astype(np.int64), np.rint(y[m]).astype(np.int64)
            fx, fy = (x[m] - ix).astype(np.float32), (y[m] - iy).astype(np.float32)
            a3, b3, c3 = qa[m, None, None], qb[m, None, None], qc[m, None, None]
            dx = offsets[None, None, :].astype(np.float32) - fx[:, None, None]
            dy = offsets[None, :, None].astype(np.float32) - fy[:, None, None]
            profile = _moffat(dx, dy, a3, b3, c3, beta)
            cdx = core_fine[None, None, :] - fx[:, None, None]
            cdy = core_fine[None, :, None] - fy[:, None, None]
            core = _moffat(cdx, cdy, a3, b3, c3, beta)
            core = core.reshape(m.size, k, _CORE_OVERSAMPLE, k, _CORE_OVERSAMPLE).mean(axis=(2, 4))
            profile[:, r - _CORE_HALF : r + _CORE_HALF + 1, r - _CORE_HALF : r + _CORE_HALF + 1] = core
            profile /= profile.sum(axis=(1, 2), keepdims=True)
            peak[m] = profile.max(axis=(1, 2)) * flux_e[m]
            values = profile * flux_e[m][:, None, None]
            cols = ix[:, None, None] + offsets[None, None, :]
            rows = iy[:, None, None] + offsets[None, :, None]
            inside = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
            flat_index = (rows * nx + cols)[inside]
            if flat_index.size == 0:
                continue
            lo = int(flat_index.min())
            image[lo : lo + 1 + int(flat_index.max()) - lo] += np.bincount(flat_index - lo, weights=values[inside])
    return image.reshape(shape), peak


# -- tracks -------------------------------------------------------------------------------------


def _line_pixels(shape, x0, y0, angle, half_width: int):
    """Pixels within half_width of a line through (x0, y0) at ``angle``: (rows, cols, along, across)."""
    ny, nx = shape
    c, s = np.cos(angle), np.sin(angle)
    if abs(c) >= abs(s):  # shallow: step in x
        cols = np.arange(nx)
        centre = y0 + (cols - x0) * s / c
        rows = np.rint(centre)[:, None] + np.arange(-half_width, half_width + 1)[None, :]
        cols = np.broadcast_to(cols[:, None], rows.shape)
    else:
        rows = np.arange(ny)
        centre = x0 + (rows - y0) * c / s
        cols = np.rint(centre)[:, None] + np.arange(-half_width, half_width + 1)[None, :]
        rows = np.broadcast_to(rows[:, None], cols.shape)
    rows, cols = rows.astype(np.int64).ravel(), cols.astype(np.int64).ravel()
    keep = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rows, cols = rows[keep], cols[keep]
    along = (cols - x0) * c + (rows - y0) * s
    across = -(cols - x0) * s + (rows - y0) * c
    return rows, cols, along, across


def add_satellite(rng: np.random.Generator, image: np.ndarray, *, sky_noise_e: float) -> None:
    ny, nx = image.shape
    x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
    angle = rng.uniform(0, np.pi)
    fwhm = rng.uniform(2.0, 4.0)
    sigma = fwhm / 2.3548
    peak = sky_noise_e * 10 ** rng.uniform(np.log10(0.7), np.log10(60.0))
    rows, cols, along, across = _line_pixels(image.shape, x0, y0, angle, int(np.ceil(4 * sigma)) + 1)
    value = peak * np.exp(-0.5 * (across / sigma) ** 2)
    if rng.random() < 0.25:  # enters the Earth's shadow (or appears) inside the frame
        cut = rng.uniform(-0.3, 0.3) * np.hypot(nx, ny)
        value *= (along > cut) if rng.random() < 0.5 else (along < cut)
    if rng.random() < 0.3:  # tumbling: periodic glints
        period = rng.uniform(100, 1500)
        value *= 1.0 + 2.0 * np.clip(np.sin(2 * np.pi * along / period), 0, None) ** 8
    np.add.at(image, (rows, cols), value)


def add_aircraft(rng: np.random.Generator, image: np.ndarray, *, sky_noise_e: float) -> None:
    ny, nx = image.shape
    x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
    angle = rng.uniform(0, np.pi)
    separation = rng.uniform(8, 20)
    period = rng.uniform(40, 200)
    duty = rng.uniform(0.2, 0.4)
    strobe = sky_noise_e * rng.uniform(20, 150)
    nav = sky_noise_e * rng.uniform(0.5, 3.0)
    sigma = rng.uniform(1.0, 1.8)
    for offset in (-separation / 2, separation / 2):
        xs, ys = x0 - offset * np.sin(angle), y0 + offset * np.cos(angle)
        rows, cols, along, across = _line_pixels(image.shape, xs, ys, angle, int(np.ceil(4 * sigma)) + 1)
        dash = (np.mod(along, period) < duty * period).astype(float)
        value = (strobe * dash + nav) * np.exp(-0.5 * (across / sigma) ** 2)
        np.add.at(image, (rows, cols), value)


# -- cosmic rays --------------------------------------------------------------------------------


def add_cosmic_rays(rng: np.random.Generator, image: np.ndarray, count: int, *, pixel_um: float, depth_um: float = 5.0) -> None:
    ny, nx = image.shape
    for _ in range(count):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        if rng.random() < 0.9:  # muon: cos^2 zenith distribution, short straight track
            cos_t = rng.random() ** (1 / 3)
            tan_t = np.sqrt(max(1 - cos_t**2, 0)) / cos_t
            length_px = min(depth_um * tan_t / pixel_um, 30.0)
            charge = 80.0 * depth_um / cos_t * (1.0 + 0.3 * rng.gumbel(0, 1))
            charge = max(charge, 150.0)
            phi = rng.uniform(0, 2 * np.pi)
            n_steps = max(int(np.ceil(length_px * 3)), 1)
            t = np.linspace(0, 1, n_steps)
            px, py = x0 + t * length_px * np.cos(phi), y0 + t * length_px * np.sin(phi)
            q = np.full(n_steps, charge / n_steps)
        else:  # low-energy electron: a curly worm with more charge
            n_steps = int(rng.integers(8, 40))
            steps = rng.normal(0, 0.8, (n_steps, 2)).cumsum(axis=0)
            px, py = x0 + steps[:, 0], y0 + steps[:, 1]
            q = np.full(n_steps, rng.uniform(1500, 8000) / n_steps)
        # charge diffusion: split each deposit over the 2x2 nearest pixels (bilinear)
        fx, fy = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
        wx, wy = px - fx, py - fy
        for ddx, ddy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
            cols, rows = fx + ddx, fy + ddy
            ok = (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
            np.add.at(image, (rows[ok], cols[ok]), (q * w)[ok])


def smooth_random_field(rng: np.random.Generator, shape, cells=(4, 6)) -> np.ndarray:
    """A smooth unit-variance random field (for clouds and sky structure)."""
    from scipy import ndimage

    coarse = rng.normal(0, 1, cells)
    out = ndimage.zoom(coarse, (shape[0] / cells[0], shape[1] / cells[1]), order=3, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    return out / max(float(out.std()), 1e-12)
