"""Source extraction with sep on a calibrated image, its variance and its mask.

Detection on the background-subtracted image with the variance plane as the noise (so vignetted
corners and pepper-and-salt pixels get their own thresholds), masked pixels ignored, close pairs
deblended; then windowed (Gaussian-weighted) centroids, which for barely sampled stars are ~2x more
precise than isophotal barycentres, and shapes. A plain function: arrays in, a table out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sep
from scipy.spatial import cKDTree

from mstlake.calib.apply import PEPPER_SALT

# flag bits beyond sep's own (1 crowded, 2 merged, 4 saturated, 8 truncated, ...)
MASKED = 512  # a masked pixel within 2 px of the centroid (bad, saturated, PS, track, cosmic ray)
NEIGHBOUR = 1024  # another source within 3 FWHM: its light is inside the centroid window
FOUND_ON_RESIDUAL = 2048  # found on the image with every star fitted before subtracted (stacks)


@dataclass(frozen=True)
class Extraction:
    sources: pd.DataFrame
    background: np.ndarray  # float32 map
    background_rms: float
    background_noise: np.ndarray  # float32 map of the background's rms (sigma-clipped, no sources)


def hidden_pixels(mask: np.ndarray, ignore_bits: int = PEPPER_SALT) -> np.ndarray:
    """The pixels measurements leave out: any mask bit but ``ignore_bits`` (by default the
    pepper-and-salt pixels, whose variance already says how far to trust them)."""
    return (np.asarray(mask) & ~np.uint8(ignore_bits)) > 0


def extract_sources(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, *, thresh: float = 3.0, minarea: int = 5, deblend_nthresh: int = 32, deblend_cont: float = 0.005, ignore_bits: int = PEPPER_SALT) -> Extraction:
    """Detect and measure the sources of a calibrated ``image`` (ADU) with its ``variance`` and
    uint8 ``mask``. Mask bits in ``ignore_bits`` (default: pepper-and-salt, whose variance already
    says how far to trust them) do not hide pixels. Columns: x, y (windowed, 0-based), x_iso, y_iso,
    flux (in 2.5 isophotal semi-axes), peak, npix, a, b, theta, fwhm, ellipticity, snr, flag."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    hidden = hidden_pixels(mask, ignore_bits)
    background = sep.Background(image, mask=hidden)
    back = background.back()
    residual = image - back
    variance = np.ascontiguousarray(variance, dtype=np.float32)
    objects = _extract_in_strips(residual, variance, hidden, thresh=thresh, minarea=minarea, deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont)
    if len(objects) == 0:
        return Extraction(pd.DataFrame(columns=["x", "y", "x_iso", "y_iso", "flux", "peak", "npix", "a", "b", "theta", "fwhm", "ellipticity", "snr", "flag"]), back, float(background.globalrms), background.rms())
    x, y = objects["x"], objects["y"]
    # sep's aperture sums refuse an ellipse its own extraction can return: a vertical one-pixel
    # line has theta = float32(pi/2), a hair above pi/2 in float64; degenerate axes are 0 or NaN
    for axis in ("a", "b"):
        objects[axis] = np.where(np.isfinite(objects[axis]), np.maximum(objects[axis], 0.25), 0.25)
    objects["theta"] = np.clip(np.nan_to_num(objects["theta"].astype(np.float64), nan=0.0), -np.pi / 2, np.pi / 2)
    # half-light radius within 6 isophotal semi-axes -> a Gaussian-equivalent width for the window
    radius, _ = sep.flux_radius(residual, x, y, 6.0 * objects["a"], 0.5, subpix=1)
    sigma = np.clip(np.nan_to_num(radius, nan=1.0) * 2.0 / 2.3548, 0.5, 10.0)
    xw, yw, wflag = sep.winpos(residual, x, y, sigma, mask=hidden)
    flux_auto, fluxerr, _ = sep.sum_ellipse(residual, x, y, objects["a"], objects["b"], objects["theta"], 2.5, var=variance, subpix=1)
    near_masked = _near(hidden, x, y, 2)
    fwhm = 2.0 * np.nan_to_num(radius, nan=0.0)
    typical_fwhm = float(np.median(fwhm[fwhm > 0])) if np.any(fwhm > 0) else 3.0
    if len(x) > 1:
        distance, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        crowded = distance[:, 1] < 3.0 * typical_fwhm
    else:
        crowded = np.zeros(len(x), bool)
    good_window = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 2.0)
    table = pd.DataFrame({
        "x": np.where(good_window, xw, x), "y": np.where(good_window, yw, y), "x_iso": x, "y_iso": y,
        "flux": flux_auto.astype(np.float64), "peak": objects["peak"], "npix": objects["npix"],
        "a": objects["a"], "b": objects["b"], "theta": objects["theta"],
        "fwhm": fwhm, "ellipticity": 1.0 - objects["b"] / np.maximum(objects["a"], 1e-6),
        "snr": flux_auto / np.maximum(fluxerr, 1e-12),
        "flag": objects["flag"].astype(np.int32) | np.where(near_masked, MASKED, 0) | np.where(crowded, NEIGHBOUR, 0),
    })
    return Extraction(table, back, float(background.globalrms), background.rms())


STRIP_ROWS = 800  # sep.extract on a 60-Mpx frame takes 2.5x longer whole than in strips of this height
STRIP_OVERLAP = 64  # rows each strip also sees beyond its own: more than any unsaturated star's isophote


def _extract_in_strips(residual: np.ndarray, variance: np.ndarray, hidden: np.ndarray, **extract_args) -> np.ndarray:
    """sep.extract over horizontal strips that overlap by STRIP_OVERLAP rows; each object is kept
    by the one strip whose own rows hold its centroid, so a star on a seam is found whole, once."""
    rows = residual.shape[0]
    starts = list(range(0, rows, STRIP_ROWS))
    if len(starts) > 1 and rows - starts[-1] < STRIP_ROWS // 2:
        starts.pop()  # a thin last strip joins the one before
    sep.set_sub_object_limit(4096)
    found = []
    for number, start in enumerate(starts):
        stop = starts[number + 1] if number + 1 < len(starts) else rows
        low, high = max(0, start - STRIP_OVERLAP), min(rows, stop + STRIP_OVERLAP)
        rows_here = slice(low, high)
        strip = (np.ascontiguousarray(residual[rows_here]), np.ascontiguousarray(variance[rows_here]), np.ascontiguousarray(hidden[rows_here]))
        # sep allocates its pixel stack whole on every call: a small one is faster, and a strip
        # full of bright isophotes (a dense cluster, a scattered-light glow) gets the whole strip
        for pixstack in (1_000_000, strip[0].size):
            sep.set_extract_pixstack(max(pixstack, 300_000))
            try:
                objects = sep.extract(strip[0], var=strip[1], mask=strip[2], **extract_args)
                break
            except Exception as error:
                if "pixel buffer full" not in str(error) or pixstack == strip[0].size:
                    raise
        for column in ("y", "ymin", "ymax", "ycpeak", "ypeak"):
            objects[column] += low
        found.append(objects[(objects["y"] >= start - 0.5) & (objects["y"] < stop - 0.5)])
    return np.concatenate(found)


def _near(hidden: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int) -> np.ndarray:
    ny, nx = hidden.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    out = np.zeros(x.size, bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out |= hidden[np.clip(iy + dy, 0, ny - 1), np.clip(ix + dx, 0, nx - 1)]
    return out
