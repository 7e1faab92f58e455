"""The one place HEALPix indices are computed: NESTED everywhere (healpy defaults to RING)."""

from __future__ import annotations

import healpy as hp
import numpy as np

SPATIAL_ORDER = 29  # the order of the spatial index column, as HATS defines it (_healpix_29)


def spatial_index(ra_deg, dec_deg) -> np.ndarray:
    """NESTED HEALPix pixel at order 29 of each position (int64), the same as
    ``hats.pixel_math.spatial_index.compute_spatial_index``."""
    return np.asarray(hp.ang2pix(2**SPATIAL_ORDER, np.asarray(ra_deg, float), np.asarray(dec_deg, float), nest=True, lonlat=True), np.int64)


def parent_pixel(index_29, order: int) -> np.ndarray:
    """The NESTED pixel at ``order`` that holds each order-29 pixel (NESTED children share their
    parent's leading bits)."""
    if not 0 <= order <= SPATIAL_ORDER:
        raise ValueError(f"HEALPix order must be 0-{SPATIAL_ORDER}, not {order}")
    return np.right_shift(np.asarray(index_29, np.int64), 2 * (SPATIAL_ORDER - order))
