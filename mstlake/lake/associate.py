"""Association of detections with objects: pure functions on positions, no I/O.

Positions become unit vectors, so a match radius is a chord length and works the same at the
poles and across ra = 0/360 and HEALPix pixel edges (the caller reads the objects of the pixels
around the detections, neighbours included).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.deg2rad(np.asarray(ra_deg, float)), np.deg2rad(np.asarray(dec_deg, float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _chord(radius_arcsec: float) -> float:
    return 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)


def nearest_within(ra_deg, dec_deg, target_ra_deg, target_dec_deg, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """For each position, the index of the nearest target within ``radius_arcsec`` (-1 when none)
    and its separation in arcsec (NaN when none)."""
    n = len(np.atleast_1d(ra_deg))
    index, separation = np.full(n, -1, np.int64), np.full(n, np.nan)
    if n == 0 or len(np.atleast_1d(target_ra_deg)) == 0:
        return index, separation
    distance, nearest = cKDTree(unit_vectors(target_ra_deg, target_dec_deg)).query(unit_vectors(ra_deg, dec_deg), k=1, distance_upper_bound=_chord(radius_arcsec))
    found = np.isfinite(distance)
    index[found] = nearest[found]
    separation[found] = np.rad2deg(2.0 * np.arcsin(distance[found] / 2.0)) * 3600.0
    return index, separation


def group_positions(ra_deg, dec_deg, radius_arcsec: float) -> np.ndarray:
    """Friends-of-friends groups (labels 0..k-1) of positions linked within ``radius_arcsec``: the
    detections of one new object on several frames of a night become one object."""
    n = len(np.atleast_1d(ra_deg))
    if n == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(unit_vectors(ra_deg, dec_deg)).query_pairs(_chord(radius_arcsec), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def mean_positions(ra_deg, dec_deg, labels) -> tuple[np.ndarray, np.ndarray]:
    """Mean position of each group (through unit vectors: right across ra = 0/360 and at the poles)."""
    labels = np.asarray(labels)
    vectors = unit_vectors(ra_deg, dec_deg)
    k = int(labels.max()) + 1 if labels.size else 0
    summed = np.zeros((k, 3))
    np.add.at(summed, labels, vectors)
    summed /= np.linalg.norm(summed, axis=1, keepdims=True)
    ra = np.rad2deg(np.arctan2(summed[:, 1], summed[:, 0])) % 360.0
    ra[ra >= 360.0] = 0.0  # -1e-15 % 360 is 360
    dec = np.rad2deg(np.arcsin(np.clip(summed[:, 2], -1.0, 1.0)))
    return ra, dec
