"""Matching two point sets by triangles (asterisms), allowing any rotation, a mirror flip and a
shift, at a scale known to ~10%.

Each point makes triangles with pairs of its nearest neighbours; a triangle is described by its two
side ratios (which do not change under rotation, scaling or reflection) and by its orientation
(which a reflection reverses). Every pair of similar triangles votes for the transform it implies;
the transform with the most votes is checked against all points and refined by least squares.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Similarity:
    """target = scale * R(angle) @ (parity * x, y) + shift."""

    scale: float
    angle: float  # radians
    parity: int
    shift: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.scale * np.array([[c, -s], [s, c]]) @ np.diag([self.parity, 1.0])

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, float) @ self.matrix.T + self.shift


def _triangles(points: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles (vertex indices ordered opposite the shortest, middle and longest side), their
    invariants (shortest/longest, middle/longest) and orientations (+1 / -1)."""
    k = min(neighbours + 1, len(points))
    _, near = cKDTree(points).query(points, k=k)
    triples = {tuple(sorted((i, j, m))) for i, row in enumerate(near) for j, m in combinations(row[1:], 2)}
    if not triples:
        return np.zeros((0, 3), int), np.zeros((0, 2)), np.zeros(0)
    tri = np.array(sorted(triples))
    p = points[tri]  # (n, 3, 2)
    sides = np.stack([np.linalg.norm(p[:, 1] - p[:, 2], axis=1), np.linalg.norm(p[:, 0] - p[:, 2], axis=1), np.linalg.norm(p[:, 0] - p[:, 1], axis=1)], axis=1)
    order = np.argsort(sides, axis=1)  # side i is opposite vertex i
    tri = np.take_along_axis(tri, order, axis=1)
    sides = np.take_along_axis(sides, order, axis=1)
    p = points[tri]
    cross = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    good = sides[:, 0] > 1e-9
    return tri[good], (sides[:, :2] / sides[:, 2:3])[good], np.sign(cross[good])


def fit_similarity(source: np.ndarray, target: np.ndarray, parity: int) -> Similarity:
    """Least-squares similarity (with the given parity) taking ``source`` onto ``target``."""
    src = np.asarray(source, float) * np.array([parity, 1.0])
    tgt = np.asarray(target, float)
    ms, mt = src.mean(axis=0), tgt.mean(axis=0)
    a, b = src - ms, tgt - mt
    # complex-number form: target = z * source with z = scale * exp(i angle)
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    z = np.sum(np.conj(za) * zb) / max(np.sum(np.abs(za) ** 2), 1e-12)
    scale, angle = float(np.abs(z)), float(np.angle(z))
    shift = mt - Similarity(scale, angle, 1, np.zeros(2)).matrix @ ms
    return Similarity(scale, angle, parity, shift)


def match(source: np.ndarray, target: np.ndarray, *, expected_scale: float = 1.0, scale_tolerance: float = 0.1, neighbours: int = 6, tolerance: float = 0.01, match_radius: float = 3.0, min_matches: int = 6) -> tuple[Similarity, np.ndarray, np.ndarray] | None:
    """The similarity taking ``source`` points onto ``target`` points and the matched index pairs
    (source, target), or None. Scale within ``scale_tolerance`` of ``expected_scale``."""
    source, target = np.asarray(source, float), np.asarray(target, float)
    if len(source) < 3 or len(target) < 3:
        return None
    s_tri, s_inv, s_orient = _triangles(source, neighbours)
    t_tri, t_inv, t_orient = _triangles(target, neighbours)
    if len(s_tri) == 0 or len(t_tri) == 0:
        return None
    pairs = cKDTree(t_inv).query_ball_point(s_inv, r=tolerance)
    votes = []
    for i, candidates in enumerate(pairs):
        for j in candidates:
            parity = int(s_orient[i] * t_orient[j])
            transform = fit_similarity(source[s_tri[i]], target[t_tri[j]], parity)
            if abs(transform.scale / expected_scale - 1) > scale_tolerance:
                continue
            votes.append((parity, transform.angle, np.log(transform.scale), *transform.shift, i, j))
    if not votes:
        return None
    votes = np.array(votes)
    # cluster: parity, 2-degree angle bins, 1% scale bins, shift bins of 4 match radii
    keys = np.column_stack([votes[:, 0], np.floor(np.degrees(votes[:, 1]) / 2), np.floor(votes[:, 2] / 0.01), np.floor(votes[:, 3] / (4 * match_radius)), np.floor(votes[:, 4] / (4 * match_radius))])
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    best = None
    for cluster in np.argsort(-counts)[:5]:  # neighbouring bins can split a cluster: check a few
        members = votes[inverse.ravel() == cluster]
        parity = int(members[0, 0])
        pairs_s = np.concatenate([s_tri[int(i)] for i in members[:, 5]])
        pairs_t = np.concatenate([t_tri[int(j)] for j in members[:, 6]])
        transform = fit_similarity(source[pairs_s], target[pairs_t], parity)
        for _ in range(3):
            distance, nearest = cKDTree(target).query(transform(source), distance_upper_bound=match_radius)
            ok = np.isfinite(distance)
            if ok.sum() < 3:
                break
            transform = fit_similarity(source[ok], target[nearest[ok]], parity)
        distance, nearest = cKDTree(target).query(transform(source), distance_upper_bound=match_radius)
        ok = np.isfinite(distance)
        if best is None or ok.sum() > best[1].size:
            best = (transform, np.flatnonzero(ok), nearest[ok])
    if best is None or best[1].size < min_matches:
        return None
    return best
