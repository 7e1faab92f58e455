"""Frames resampled onto one tile combined into a stack (pure arrays in, arrays out; no I/O)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mstlake.stack.resample import resample_frame


@dataclass(frozen=True)
class StackInput:
    """One frame (or a cutout of it, its WCS sliced to match) to stack."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray  # non-zero: do not use (pepper-and-salt: use, with its variance)
    wcs: object  # astropy WCS
    typical_variance: float | None = None  # the whole frame's background variance (see resample_frame)
    weight: float = 1.0  # beyond the background weight (e.g. 1/FWHM^2 for point sources)


@dataclass(frozen=True)
class Stack:
    image: np.ndarray  # float32, the combined flux per pixel (NaN where no frame counts)
    variance: np.ndarray  # float32, its variance
    count: np.ndarray  # int16, frames that entered each pixel (after clipping)
    bad: np.ndarray  # bool: no frame entered


def combine(images: np.ndarray, variances: np.ndarray, bad: np.ndarray, *, weights: np.ndarray | None = None, method: str = "mean", clip_sigma: float | None = 4.0, clip_amplitude_fraction: float = 0.3) -> Stack:
    """Combine ``images`` (N, ny, nx) with their ``variances`` and ``bad`` planes.

    ``mean``: the weighted mean of the good values (``weights``: one per frame, or per pixel;
    default the inverse variances), after dropping isolated ones:
    a value is dropped when it lies more than ``clip_sigma`` times the noise of the difference
    from both of its neighbours in value (with ``clip_amplitude_fraction`` of the neighbour's value
    added to that noise, as SWarp's CLIP_AMPFRAC does, so that a bright star's core, which
    changes with the seeing, is not clipped), given at least 3 good values. A cosmic ray or a
    satellite track that the masks missed, on one frame, is dropped; a transient on several
    frames of a night agrees with itself and stays. ``clip_sigma=None``: no clipping. The
    variance is that of the weighted mean, sum(w^2 v) / (sum w)^2. Per-pixel inverse-variance
    weights favour the frames where a star is faint (its own photon noise is in the variance):
    give per-frame background weights to keep bright stars unbiased.
    ``median``: the median of the good values, with pi/2 times the mean's variance."""
    images = np.asarray(images, np.float64)
    variances = np.asarray(variances, np.float64)
    usable = ~np.asarray(bad, bool) & np.isfinite(images) & np.isfinite(variances) & (variances > 0)
    if method == "median":
        values = np.where(usable, images, np.nan)
        count = usable.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: no frame covers them
            image = np.nanmedian(values, axis=0)
            variance = np.pi / 2 / np.sum(np.where(usable, 1.0 / np.where(usable, variances, 1.0), 0.0), axis=0)
        return _stack(image, variance, count)
    if method != "mean":
        raise ValueError(f"combine method must be 'mean' or 'median', not {method!r}")
    if clip_sigma:
        usable &= ~isolated_values(images, variances, usable, clip_sigma, clip_amplitude_fraction)
    if weights is None:
        weights = 1.0 / np.where(usable, variances, 1.0)
    elif np.ndim(weights) == 1:  # one per frame
        weights = np.asarray(weights, np.float64).reshape(-1, *([1] * (images.ndim - 1)))
    weight = np.where(usable, weights, 0.0)
    total = weight.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = (weight * np.where(usable, images, 0.0)).sum(axis=0) / total
        variance = (weight**2 * np.where(usable, variances, 0.0)).sum(axis=0) / total**2
    return _stack(image, variance, usable.sum(axis=0))


def isolated_values(images: np.ndarray, variances: np.ndarray, usable: np.ndarray, clip_sigma: float, amplitude_fraction: float) -> np.ndarray:
    """(N, ny, nx) bool: the good values farther than ``clip_sigma`` noise units from both of
    their neighbours in value, at pixels with at least 3 good values."""
    n = images.shape[0]
    values = np.where(usable, images, np.inf)  # bad values sort last and are nobody's neighbour
    order = np.argsort(values, axis=0)
    ranked = np.take_along_axis(values, order, axis=0)
    ranked_variance = np.take_along_axis(np.where(usable, variances, np.inf), order, axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        step = np.diff(ranked, axis=0)
        noise_below = np.sqrt(ranked_variance[1:] + ranked_variance[:-1] + (amplitude_fraction * ranked[:-1]) ** 2)  # neighbour below
        noise_above = np.sqrt(ranked_variance[1:] + ranked_variance[:-1] + (amplitude_fraction * ranked[1:]) ** 2)  # neighbour above
        from_below = np.nan_to_num(step / noise_below, nan=np.inf)
        from_above = np.nan_to_num(step / noise_above, nan=np.inf)
    inf = np.full((1, *images.shape[1:]), np.inf)
    gap = np.minimum(np.concatenate([inf, from_below]), np.concatenate([from_above, inf]))
    rank = np.arange(n).reshape(-1, *([1] * (images.ndim - 1)))
    good_count = usable.sum(axis=0)
    isolated_ranked = (gap > clip_sigma) & (rank < good_count) & (good_count >= 3)
    isolated = np.zeros_like(isolated_ranked)
    np.put_along_axis(isolated, order, isolated_ranked, axis=0)
    return isolated


def _stack(image: np.ndarray, variance: np.ndarray, count: np.ndarray) -> Stack:
    empty = count == 0
    return Stack(np.where(empty, np.nan, image).astype(np.float32), np.where(empty, np.nan, variance).astype(np.float32), count.astype(np.int16), empty)


def stack_tile(frames, tile_wcs, tile_shape: tuple[int, int], *, method: str = "mean", clip_sigma: float | None = 4.0, clip_amplitude_fraction: float = 0.3, resampling: str = "spline", combine_bytes: int = 256 * 2**20) -> Stack:
    """The stack of one tile: ``frames`` an iterable of ``StackInput``, each resampled onto the
    tile (``mstlake.stack.resample``) and combined with the resampled background weights (SWarp's
    WEIGHT_TYPE BACKGROUND: a bright star's own photon noise does not pull its stacked flux down)
    times the frame's own ``weight``; frames that miss the tile add nothing. Held in memory: the
    resampled frames (``BYTES_PER_PIXEL`` per pixel and frame); the combination goes in row
    strips of about ``combine_bytes`` of temporaries."""
    images, variances, bad, weights = [], [], [], []
    for frame in frames:
        out = resample_frame(frame.image, frame.variance, frame.mask, frame.wcs, tile_wcs, tile_shape, method=resampling, typical_variance=frame.typical_variance)
        if out.bad.all():
            continue
        images.append(out.image), variances.append(out.variance), bad.append(out.bad), weights.append(out.weight * np.float32(frame.weight))
    if not images:
        nothing = np.full(tile_shape, np.nan)
        return _stack(nothing, nothing, np.zeros(tile_shape, int))
    rows = max(1, combine_bytes // (len(images) * tile_shape[1] * 8 * 10))  # ~10 float64 temporaries per value
    strips = []
    for y in range(0, tile_shape[0], rows):  # strip by strip: the frames are never copied whole into one array
        part = slice(y, y + rows)
        strips.append(combine(_strip(images, part), _strip(variances, part), _strip(bad, part), weights=_strip(weights, part), method=method, clip_sigma=clip_sigma or None, clip_amplitude_fraction=clip_amplitude_fraction))
    return Stack(*(np.concatenate([getattr(s, name) for s in strips]) for name in ("image", "variance", "count", "bad")))


def _strip(planes: list[np.ndarray], rows: slice) -> np.ndarray:
    return np.stack([plane[rows] for plane in planes])


BYTES_PER_PIXEL = 13  # a resampled frame held for combining: image, variance and weight (float32), bad (bool)
