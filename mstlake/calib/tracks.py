"""Satellite and aircraft tracks (paper 3.1.4).

The frame is binned 2x2; pixels standing above the background (stars and other compact sources
masked out) go into a Hough transform (``skimage.transform.hough_line``). Each accumulator cell is
compared with what random noise pixels would give along a line of that length inside the frame, so
a track is accepted on its significance, whatever its length. Lines are refined on their own pixels;
then, as in the paper, pixels within 10 px of a line that stand 3 sigma above the background are
marked (plus the track's core where the track is seen), leaving out the stars in that band: round
peaks standing above the track's own level (an aircraft's flashes are flat blobs along the line).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.transform import hough_line

_ANGLES = np.linspace(-np.pi / 2, np.pi / 2, 720, endpoint=False)


@dataclass(frozen=True)
class Track:
    angle: float  # radians: the line is x cos(angle) + y sin(angle) = distance (full-resolution pixels)
    distance: float
    significance: float
    length_px: float


def _bin(array: np.ndarray, f: int, how: str) -> np.ndarray:
    """Block reduction by ``f`` x ``f`` ("mean", "all" or "any"), trailing rows/columns dropped;
    strided slices, several times quicker than a reshaped reduction over two axes."""
    by, bx = array.shape[0] // f, array.shape[1] // f
    parts = (array[dy : f * by : f, dx : f * bx : f] for dy in range(f) for dx in range(f))
    if how == "mean":
        total = np.zeros((by, bx), np.float32)
        for part in parts:
            total += part
        return total / np.float32(f * f)
    combine = np.logical_and if how == "all" else np.logical_or
    out = next(parts).copy()
    for part in parts:
        combine(out, part, out=out)
    return out


def compact_source_mask(image: np.ndarray, background_rms: float, *, mask: np.ndarray | None = None, max_elongation: float = 2.5, min_fill: float = 0.3, thresh: float = 3.0, minarea: int = 3, bin_factor: int = 2) -> np.ndarray:
    """Pixels of stars and other compact sources; elongated ones (track pieces) are left out so a
    track survives. Connected pixels above ``thresh`` sigma on a ``bin_factor``-binned image, kept
    when their second moments are round enough (axis ratio <= ``max_elongation``) and they fill the
    ellipse those moments describe (``min_fill``: two crossing tracks, or a track through an
    aircraft's lights, make one round but hollow component that must not hide them). The mask only
    has to cover stars, so the binned image loses nothing, and this is far quicker than a full
    source extraction on a 60-Mpx frame."""
    ny, nx = image.shape
    f = bin_factor
    by, bx = ny // f, nx // f
    data = _bin(np.asarray(image, dtype=np.float32), f, "mean")
    above = data > thresh * background_rms / f
    if mask is not None:
        above &= ~_bin(mask, f, "all")
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    full = np.zeros((ny, nx), bool)
    if n == 0:
        return full
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols]
    count = np.bincount(lab, minlength=n + 1).astype(float)
    safe = np.maximum(count, 1)
    mx, my = np.bincount(lab, cols, n + 1) / safe, np.bincount(lab, rows, n + 1) / safe
    sxx = np.bincount(lab, cols * cols, n + 1) / safe - mx**2
    syy = np.bincount(lab, rows * rows, n + 1) / safe - my**2
    sxy = np.bincount(lab, cols * rows, n + 1) / safe - mx * my
    half_trace, root = (sxx + syy) / 2, np.sqrt(np.maximum(((sxx - syy) / 2) ** 2 + sxy**2, 0))
    major, minor = np.sqrt(np.maximum(half_trace + root, 0)), np.sqrt(np.maximum(half_trace - root, 0))
    # a uniformly filled ellipse with these second moments covers 4 pi major minor pixels
    fill = count / np.maximum(4 * np.pi * major * np.maximum(minor, 0.5), 1.0)
    compact = (count >= minarea) & (major <= max_elongation * np.maximum(minor, 0.5)) & (fill >= min_fill)
    compact[0] = False
    stars = ndimage.binary_dilation(compact[labels], iterations=2)
    full[: f * by, : f * bx] = np.broadcast_to(stars[:, None, :, None], (by, f, bx, f)).reshape(f * by, f * bx)
    return full


def binning_factor(shape: tuple[int, int], target_pixels: float = 4e6) -> int:
    return max(2, int(np.ceil(np.sqrt(shape[0] * shape[1] / target_pixels))))


def find_tracks(residual: np.ndarray, *, variance, exclude: np.ndarray, pixel_sigma: float = 2.0, min_significance: float = 10.0, max_tracks: int = 10, seed: int = 0) -> list[Track]:
    """Straight tracks in a calibrated image less its background (``residual``). ``variance``:
    each pixel's (the variance plane; a single number will do for uniform noise, but the sky noise
    of a vignetted field varies by ~10%, and lines through its noisier parts would then collect
    more noise pixels). ``exclude``: pixels to ignore (stars, bad pixels).

    The count a Hough cell would hold from noise alone is measured, not modelled: the transform of a
    fixed random quarter of the usable pixels reproduces the discreteness of the transform (at 45
    degrees integer distance bins alternately hold one and two pixel diagonals) and every masked
    region. One line at a time: take the most significant cell, refine the line on its pixels,
    remove them, repeat."""
    ny, nx = residual.shape
    # the paper bins by 2; a track narrower than a bin has the same S/N per binned pixel whatever the
    # bin, so larger frames are binned more (to ~4 Mpx) to keep the transform fast
    f = binning_factor(residual.shape)
    by, bx = ny // f, nx // f
    usable = ~_bin(exclude, f, "any")
    binned = np.where(usable, _bin(residual, f, "mean"), np.float32(0))
    binned_noise = np.sqrt(_bin(np.broadcast_to(np.asarray(variance, dtype=np.float32), residual.shape), f, "mean")) / f
    hot = (binned > pixel_sigma * binned_noise) & usable
    p = max(hot.sum() / max(usable.sum(), 1), 1e-6)
    sample_fraction = 0.25
    sample = usable & (np.random.default_rng(seed).random(usable.shape) < sample_fraction)
    reference, _, _ = hough_line(sample, theta=_ANGLES)
    expected = reference / sample_fraction
    rows, cols = np.ogrid[0:by, 0:bx]
    tracks: list[Track] = []
    for _ in range(max_tracks):
        accumulator, angles, distances = hough_line(hot, theta=_ANGLES)
        z = np.where(expected > 300 / f, (accumulator - p * expected) / np.sqrt(np.maximum(p * (1 - p) * expected, 1.0)), 0.0)
        i, j = np.unravel_index(np.argmax(z), z.shape)
        if z[i, j] < min_significance:
            break
        angle, distance = _refine(hot, angles[j], distances[i])
        # a binned pixel's centre is at f * i + (f - 1) / 2 in full-resolution pixels
        tracks.append(Track(angle=angle, distance=f * distance + (np.cos(angle) + np.sin(angle)) * (f - 1) / 2, significance=float(z[i, j]), length_px=f * float(expected[i, j])))
        hot &= np.abs(cols * np.cos(angle) + rows * np.sin(angle) - distance) > max(8 / f, 2)  # this track's pixels are used up
    return tracks


def _refine(hot: np.ndarray, angle: float, distance: float, *, iterations: int = 4) -> tuple[float, float]:
    """Least-squares line through the above-threshold pixels within 3 bins of the line,
    repeated: a Hough angle step of 0.25 deg puts the far end of a 5000-pixel track 20 pixels off,
    so each pass takes in more of the track."""
    rows, cols = np.nonzero(hot)
    for _ in range(iterations):
        d = cols * np.cos(angle) + rows * np.sin(angle) - distance
        on = np.abs(d) < 3
        if on.sum() < 10:
            break
        x, y = cols[on].astype(float), rows[on].astype(float)
        centre = np.array([x.mean(), y.mean()])
        cov = np.cov(np.vstack([x - centre[0], y - centre[1]]))
        normal = np.linalg.eigh(cov)[1][:, 0]
        new_angle = float(np.arctan2(normal[1], normal[0]))
        new_distance = float(centre @ normal)
        if np.cos(new_angle - angle) < 0:
            new_angle, new_distance = new_angle + np.pi, -new_distance
        if abs(new_angle - angle) > np.radians(3):
            break
        angle, distance = new_angle, new_distance
    return float(angle), float(distance)


def _band(shape: tuple[int, int], track: Track, half_width: float):
    """The pixels within ``half_width`` of a track as a grid (steps along the track x offsets
    across it): rows, cols, signed distance from the line, position along it, and validity."""
    ny, nx = shape
    c, s = np.cos(track.angle), np.sin(track.angle)
    if abs(s) >= abs(c):  # the line runs mostly along x: step in x, spread in y
        steps = np.arange(nx)
        centre = (track.distance - steps * c) / s
        spread = np.arange(-int(np.ceil(half_width / abs(s))) - 1, int(np.ceil(half_width / abs(s))) + 2)
        rows = np.rint(centre)[:, None].astype(np.int64) + spread[None, :]
        cols = np.broadcast_to(steps[:, None], rows.shape)
    else:
        steps = np.arange(ny)
        centre = (track.distance - steps * s) / c
        spread = np.arange(-int(np.ceil(half_width / abs(c))) - 1, int(np.ceil(half_width / abs(c))) + 2)
        cols = np.rint(centre)[:, None].astype(np.int64) + spread[None, :]
        rows = np.broadcast_to(steps[:, None], cols.shape)
    valid = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rows, cols = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    offset = cols * c + rows * s - track.distance
    along = -cols * s + rows * c
    return rows, cols, offset, along, valid & (np.abs(offset) <= half_width)


class _TrackLevel:
    """The track's own brightness as a function of position along it (``bin_px`` bins) and offset
    across it (1-px bins): the median over the band's pixels in each bin."""

    def __init__(self, values: np.ndarray, along: np.ndarray, offset: np.ndarray, valid: np.ndarray, *, bin_px: int):
        self.bin_px = bin_px
        keys = self._key(along[valid], offset[valid])
        order = np.argsort(keys, kind="stable")
        self.bins, starts = np.unique(keys[order], return_index=True)
        self.medians = np.array([np.median(c) for c in np.split(values[valid][order], starts[1:])], np.float32)

    def _key(self, along, offset):
        return np.floor(np.asarray(along) / self.bin_px).astype(np.int64) * 4096 + np.rint(offset).astype(np.int64) + 2048

    def at(self, along, offset) -> np.ndarray:
        key = self._key(along, offset)
        which = np.clip(np.searchsorted(self.bins, key), 0, max(self.bins.size - 1, 0))
        return np.where(self.bins[which] == key, self.medians[which], 0).astype(np.float32)


def _stars_in_band(residual: np.ndarray, variance, rows, cols, offset, along, valid, track: Track, *, bins_px: tuple[int, int] = (16, 64), sigma: float = 6.0, model_error: float = 0.15, shoulder: float = 0.75, radius: float = 3.0) -> np.ndarray:
    """Band cells to leave unmasked because they belong to a star: local maxima whose light above
    the track's own level, summed over 3x3 pixels, stands ``sigma`` above its noise (from each
    pixel's ``variance``, so a bright track's own photon noise counts; a star whose peak is 5 sigma gives
    ~10 sigma there, a noise peak does not), and which fall off along the track: 2 px away on
    either side the light is below ``shoulder`` of the peak (a star of 2-3.7 px FWHM: 0.3-0.45).
    An aircraft's strobe flash or a satellite's glint is a bright blob on the line too, but a flat
    one at least 8 px long, whose noise makes many local maxima. The track's level is a median per
    1-px offset, which misses a steep track profile by up to ``model_error`` of the level: that much
    is added to the noise."""
    values = residual[rows, cols]
    # the lower of two levels: short bins follow an aircraft's flashes (a star between two flashes is
    # judged against the dark gap), long ones are not pulled up by a crowd of stars
    levels = [_TrackLevel(values, along, offset, valid, bin_px=b) for b in bins_px]

    def level_at(a, o):
        return np.min([lv.at(a, o) for lv in levels], axis=0)

    track_level = level_at(along, offset)
    excess = np.where(valid, values - track_level, 0)
    ny, nx = residual.shape
    neighbours = np.max(np.stack([residual[np.clip(rows + dy, 0, ny - 1), np.clip(cols + dx, 0, nx - 1)] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]), axis=0)
    box = 9 * ndimage.uniform_filter(excess.astype(np.float32), size=3, mode="constant")
    pixel_variance = np.broadcast_to(np.asarray(variance, np.float32), residual.shape)[rows, cols]
    box_noise = 3 * np.sqrt(ndimage.uniform_filter(pixel_variance + np.square(model_error * track_level), size=3, mode="nearest"))
    peaks = valid & (values >= neighbours) & (box > sigma * box_noise)
    protect = np.zeros(values.shape, bool)
    if not peaks.any():
        return protect
    c, s = np.cos(track.angle), np.sin(track.angle)
    pi, pj = np.nonzero(peaks)
    r0, c0 = rows[pi, pj].astype(float), cols[pi, pj].astype(float)
    shoulders = []
    for step in (-2.0, 2.0):  # (row, col) moves along the line: (cos, -sin)
        pr, pc = r0 + step * c, c0 - step * s
        sampled = ndimage.map_coordinates(residual, [pr, pc], order=1, mode="nearest")
        shoulders.append(sampled - level_at(-pc * s + pr * c, pc * c + pr * s - track.distance))
    star = np.maximum(*shoulders) < shoulder * excess[pi, pj]
    n_steps, n_spread = values.shape
    for i, j in zip(pi[star], pj[star]):
        i0, i1, j0, j1 = max(i - 5, 0), min(i + 6, n_steps), max(j - 5, 0), min(j + 6, n_spread)
        protect[i0:i1, j0:j1] |= np.hypot(along[i0:i1, j0:j1] - along[i, j], offset[i0:i1, j0:j1] - offset[i, j]) <= radius
    return protect


def _track_present(values: np.ndarray, along: np.ndarray, core: np.ndarray, background_rms: float, *, bin_px: int = 16, sigma: float = 4.0, bridge_bins: int = 3, min_run_px: float = 112.0) -> np.ndarray:
    """Which core cells lie where the track is actually seen: the median of the core over each
    ``bin_px`` along the line stands ``sigma`` times its own noise above the background. A line
    found by the Hough transform crosses the whole frame, but a satellite can enter the Earth's
    shadow part-way, and the stars on the rest of the line must not be masked. Gaps of up to
    ``bridge_bins`` bins (an aircraft between two flashes) are bridged; stretches shorter than
    ``min_run_px`` are dropped (a chance alignment of star halos, not a track)."""
    position = np.floor(along / bin_px).astype(np.int64)
    present = np.zeros(values.shape, bool)
    if not core.any():
        return present
    keys = position[core]
    lo = keys.min()
    order = np.argsort(keys, kind="stable")
    bins, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    medians = np.array([np.median(c) for c in np.split(values[core][order], starts[1:])])
    seen = np.zeros(int(keys.max() - lo) + 1, bool)
    seen[bins - lo] = medians > sigma * 1.2533 * background_rms / np.sqrt(counts)
    seen = ndimage.binary_closing(seen, structure=np.ones(2 * bridge_bins + 1, bool), border_value=0) | seen
    runs, n = ndimage.label(seen)
    if n:
        lengths = ndimage.sum(seen, runs, np.arange(1, n + 1)) * bin_px
        seen &= np.isin(runs, 1 + np.flatnonzero(lengths >= min_run_px))
    present[core] = seen[np.clip(keys - lo, 0, seen.size - 1)]
    return present


def track_mask(residual: np.ndarray, tracks: list[Track], *, background_rms: float, variance=None, half_width: float = 10.0, sigma: float = 3.0, core_half_width: float = 2.5) -> np.ndarray:
    """The paper's rule: pixels within ``half_width`` of a track standing ``sigma`` above the
    background, kept where they connect to the track's core, plus the core itself where the track
    is seen. Stars in the band (round peaks standing above the track, see ``_stars_in_band``) are
    left unmasked. ``residual``: the calibrated image less its background; ``variance``: each
    pixel's (default: the background rms squared)."""
    ny, nx = residual.shape
    mask = np.zeros((ny, nx), bool)
    if not tracks:
        return mask
    margin = 5.0  # a star near the band's edge is judged on all of its light
    for track in tracks:
        rows, cols, offset, along, wide = _band((ny, nx), track, half_width + margin)
        valid = wide & (np.abs(offset) <= half_width)
        values = residual[rows, cols]
        core = valid & (np.abs(offset) <= core_half_width)
        core &= _track_present(values, along, core, background_rms)
        if not core.any():
            continue
        candidate = valid & ((values > sigma * background_rms) | core)
        labels, _ = ndimage.label(candidate)
        touching = np.unique(labels[core & candidate])
        keep = np.isin(labels, touching[touching > 0]) & candidate
        keep &= ~_stars_in_band(residual, background_rms**2 if variance is None else variance, rows, cols, offset, along, wide, track)
        mask[rows[keep], cols[keep]] = True
    return mask
