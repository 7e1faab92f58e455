"""Square cutouts around many stars at once: where their pixels are in an image, reading them,
and adding stamps back (the shared plumbing of PSF fitting and aperture sums)."""

from __future__ import annotations

import numpy as np


def cutout_index(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each star's rows (n, s) and columns (n, s): the flat indices (n, s, s) of its cutout's
    pixels, clipped onto the image, and whether each pixel really lies on it. Index once, then
    read any number of same-shaped images with ``image.reshape(-1)[flat]``."""
    ny, nx = shape
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    flat = np.clip(rows, 0, ny - 1)[:, :, None] * nx + np.clip(cols, 0, nx - 1)[:, None, :]
    return flat, inside


def scatter_into(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
    """Add the stamps ``values`` (n, s, s) placed at (rows x cols) to ``image`` in place
    (overlapping stamps add up). ``np.add.at`` touches only the stamps' pixels: a bincount over
    the stars' range would sweep (and allocate) a frame-sized array for a few stars."""
    flat, inside = cutout_index(image.shape, rows, cols)
    np.add.at(image.reshape(-1), flat[inside], values[inside].astype(image.dtype, copy=False))  # same dtype: the fast path
