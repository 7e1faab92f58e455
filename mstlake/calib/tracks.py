"""Satellite and aircraft tracks (paper 3.1.4).

The frame is binned 2x2; pixels standing above the background (stars and other compact sources
masked out) go into a Hough transform (``skimage.transform.hough_line``). Each accumulator cell is
compared with what random noise pixels would give along a line of that length inside the frame, so
a track is accepted on its significance, whatever its length. Lines are refined on their own pixels;
then, as in the paper, pixels within 10 px of a line that stand 3 sigma above the background are
marked (plus the track's core), never the cores of stars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy import ndimage
from skimage.transform import hough_line

_ANGLES = np.linspace(-np.pi / 2, np.pi / 2, 720, endpoint=False)


@dataclass(frozen=True)
class Track:
    angle: float  # radians: the line is x cos(angle) + y sin(angle) = distance (full-resolution pixels)
    distance: float
    significance: float
    length_px: float


def chord_lengths(shape: tuple[int, int], angles: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Length of each line x cos(a) + y sin(a) = d inside a [0, nx] x [0, ny] rectangle, for every
    (distance, angle) pair: what the Hough accumulator of an all-ones image would hold."""
    ny, nx = shape
    c, s = np.cos(angles)[None, :], np.sin(angles)[None, :]
    d = distances[:, None]
    # points: (d c - t s, d s + t c); solve the four edge constraints for t
    with np.errstate(divide="ignore", invalid="ignore"):
        tx0, tx1 = (d * c - 0) / s, (d * c - nx) / s
        ty0, ty1 = (0 - d * s) / c, (ny - d * s) / c
    lo = np.maximum(np.where(np.abs(s) > 1e-12, np.minimum(tx0, tx1), -np.inf), np.where(np.abs(c) > 1e-12, np.minimum(ty0, ty1), -np.inf))
    hi = np.minimum(np.where(np.abs(s) > 1e-12, np.maximum(tx0, tx1), np.inf), np.where(np.abs(c) > 1e-12, np.maximum(ty0, ty1), np.inf))
    inside_x = (np.abs(s) > 1e-12) | ((d * c >= 0) & (d * c <= nx))
    inside_y = (np.abs(c) > 1e-12) | ((d * s >= 0) & (d * s <= ny))
    return np.where(inside_x & inside_y, np.clip(hi - lo, 0, None), 0.0)


def compact_source_mask(image: np.ndarray, background_rms: float, *, mask: np.ndarray | None = None, max_elongation: float = 3.0, thresh: float = 3.0) -> np.ndarray:
    """Pixels of stars and other compact sources (elongated detections, i.e. track pieces, are left
    out so the track survives)."""
    data = np.ascontiguousarray(image, dtype=np.float32)
    objects, segmentation = sep.extract(data, thresh, err=background_rms, mask=mask, segmentation_map=True, deblend_cont=1.0, minarea=5)
    compact = np.flatnonzero(objects["a"] <= max_elongation * np.maximum(objects["b"], 0.5)) + 1
    stars = np.isin(segmentation, compact)
    return ndimage.binary_dilation(stars, iterations=3)


def find_tracks(image: np.ndarray, *, background: np.ndarray, background_rms: float, exclude: np.ndarray, pixel_sigma: float = 1.5, min_significance: float = 10.0, max_tracks: int = 10) -> list[Track]:
    """Straight tracks in a calibrated image. ``exclude``: pixels to ignore (stars, bad pixels).

    One line at a time: take the most significant Hough peak, refine it, remove its pixels, repeat
    (a wide or glinting track would otherwise leave side peaks that look like more tracks)."""
    ny, nx = image.shape
    residual = np.where(exclude, 0.0, image - background)
    by, bx = ny // 2, nx // 2
    binned = residual[: 2 * by, : 2 * bx].reshape(by, 2, bx, 2).mean(axis=(1, 3))
    usable = ~exclude[: 2 * by, : 2 * bx].reshape(by, 2, bx, 2).any(axis=(1, 3))
    hot = (binned > pixel_sigma * background_rms / 2.0) & usable
    p = max(hot.sum() / max(usable.sum(), 1), 1e-6)
    rows, cols = np.ogrid[0:by, 0:bx]
    tracks: list[Track] = []
    expected = None
    for _ in range(max_tracks):
        accumulator, angles, distances = hough_line(hot, theta=_ANGLES)
        if expected is None:
            expected = chord_lengths((by, bx), angles, distances) * (usable.sum() / usable.size)
        z = np.where(expected > 20, (accumulator - p * expected) / np.sqrt(np.maximum(p * (1 - p) * expected, 1.0)), 0.0)
        i, j = np.unravel_index(np.argmax(z), z.shape)
        if z[i, j] < min_significance:
            break
        angle, distance = _refine(hot, angles[j], distances[i])
        tracks.append(Track(angle=angle, distance=2 * distance + (np.cos(angle) + np.sin(angle)) * 0.5, significance=float(z[i, j]), length_px=2 * float(expected[i, j])))
        hot &= np.abs(cols * np.cos(angle) + rows * np.sin(angle) - distance) > 4  # this track's pixels are used up
    return tracks


def _refine(hot: np.ndarray, angle: float, distance: float) -> tuple[float, float]:
    """Least-squares line through the above-threshold pixels within 3 binned pixels of a Hough line."""
    rows, cols = np.nonzero(hot)
    d = cols * np.cos(angle) + rows * np.sin(angle) - distance
    on = np.abs(d) < 3
    if on.sum() < 10:
        return float(angle), float(distance)
    x, y = cols[on].astype(float), rows[on].astype(float)
    # total least squares: the line's normal is the direction of least spread
    centre = np.array([x.mean(), y.mean()])
    cov = np.cov(np.vstack([x - centre[0], y - centre[1]]))
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    normal = eigenvectors[:, 0]
    new_angle = float(np.arctan2(normal[1], normal[0]))
    if abs(((new_angle - angle + np.pi / 2) % np.pi) - np.pi / 2) > np.radians(3):
        return float(angle), float(distance)
    new_distance = float(centre @ normal)
    if np.cos(new_angle - angle) < 0:
        new_angle, new_distance = new_angle + np.pi, -new_distance
    return new_angle, new_distance


def _stars_under_track(image: np.ndarray, offset: np.ndarray, along: np.ndarray, core: np.ndarray, background_rms: float, *, bin_px: int = 16, sigma: float = 5.0) -> np.ndarray:
    """Peaks inside a track's core that stand well above the track's own brightness at that point
    along it (a star the track runs over), grown by 2 px."""
    rows, cols = np.nonzero(core)
    if rows.size == 0:
        return np.zeros(image.shape, bool)
    position = np.floor(along[rows, cols] / bin_px).astype(np.int64)
    values = image[rows, cols]
    order = np.argsort(position)
    bins, starts = np.unique(position[order], return_index=True)
    chunks = np.split(values[order], starts[1:])
    medians = np.array([np.median(chunk) for chunk in chunks])
    scatter = np.array([1.4826 * np.median(np.abs(chunk - np.median(chunk))) for chunk in chunks])
    which = np.searchsorted(bins, position)
    level, noise = medians[which], np.maximum(scatter[which], background_rms)
    peak = values == ndimage.maximum_filter(image, size=3)[rows, cols]
    star = (values - level > sigma * noise) & peak
    out = np.zeros(image.shape, bool)
    out[rows[star], cols[star]] = True
    return ndimage.binary_dilation(out, iterations=2)


def track_mask(image: np.ndarray, tracks: list[Track], *, background: np.ndarray, background_rms: float, known_bad: np.ndarray | None = None, half_width: float = 10.0, sigma: float = 3.0, core_half_width: float = 2.5) -> np.ndarray:
    """The paper's rule: pixels within ``half_width`` of a track standing ``sigma`` above the
    background, kept where they connect to the track's core, plus the core itself. Stars are never
    marked: compact sources are found again with the track cores hidden (so a star the track runs
    through is still compact), and peaks inside a core that stand above the track are protected."""
    ny, nx = image.shape
    mask = np.zeros((ny, nx), bool)
    if not tracks:
        return mask
    residual = image - background
    yy, xx = np.ogrid[0:ny, 0:nx]
    geometry = [(np.abs(xx * np.cos(t.angle) + yy * np.sin(t.angle) - t.distance), -xx * np.sin(t.angle) + yy * np.cos(t.angle)) for t in tracks]
    cores = np.logical_or.reduce([offset <= core_half_width for offset, _ in geometry])
    hidden = cores if known_bad is None else cores | known_bad
    stars = compact_source_mask(np.where(hidden, 0.0, residual), background_rms, mask=hidden)
    bright = residual > sigma * background_rms
    for offset, along in geometry:
        core = offset <= core_half_width
        band = (offset <= half_width) & (bright | core)
        labels, _ = ndimage.label(band)
        touching = np.unique(labels[core & band])
        mask |= np.isin(labels, touching[touching > 0]) & (bright | core)
        stars |= _stars_under_track(residual, offset, along, core, background_rms)
    return mask & ~stars
