"""Flat fields (paper 3.1.2 and the flowchart's master-flat branch).

Each bias-subtracted twilight flat is screened (too faint, saturated, patchy from clouds, crowded
with stars), split into a large-scale part (a 51-pixel running mean with outliers rejected, see
``large_scale_binned``) and a small-scale part
(flat / large-scale), and the small-scale parts are combined with outlier rejection. Nightly
small-scale masters are then combined over +-5 nights, never beyond a two-month span, excluding per
pixel nights that changed (a new dust speck) relative to the target night.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mstlake.calib.combine import clipped_mean, robust_std
from mstlake.config import CalibrationConfig


def _binning(size: int) -> tuple[int, int]:
    factor = max(1, size // 7)
    return factor, max(3, int(round(size / factor)) | 1)


def _blocks(image: np.ndarray, factor: int) -> np.ndarray:
    """View of ``image`` (padded by reflection) as (by, bx, factor * factor) blocks."""
    ny, nx = image.shape
    padded = np.pad(image, ((0, (-ny) % factor), (0, (-nx) % factor)), mode="reflect")
    by, bx = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(by, factor, bx, factor).transpose(0, 2, 1, 3).reshape(by, bx, -1)


def large_scale_binned(image: np.ndarray, size: int, clip_sigma: float = 4.0) -> tuple[np.ndarray, int]:
    """The large-scale flat: a ``size``-pixel running mean of the pixels that are not outliers,
    on a grid binned by ``factor`` (returns the binned result and the factor).

    The paper uses a 51-pixel running median. A median is not linear: the median of (pixel response
    + photon noise) over a window is not the median of the response, and since the response is the
    same every night that error does not average away over nights (it held the +-5-night flat at
    0.11% against a 0.10% photon limit). So a median only finds the outliers (stars, cosmic rays,
    dead and hot pixels, beyond ``clip_sigma`` robust sigma), and the large scale is the mean of the
    rest (a normalised box filter over blocks: seconds, not minutes, on a 60-Mpx frame)."""
    image = np.asarray(image, dtype=np.float32)
    factor, window = _binning(size)
    if factor == 1:
        reference = ndimage.median_filter(image, size=size, mode="reflect")
        blocks, window = image[..., None], size
    else:
        blocks = _blocks(image, factor)
        reference = ndimage.median_filter(np.median(blocks, axis=2), size=window, mode="reflect")
    # outliers against the block's reference value (it varies by < 0.1% across a block)
    ratio = blocks / np.maximum(reference, np.float32(1e-12))[..., None]
    scatter = float(robust_std(ratio[::3, ::3].ravel()))
    keep = np.abs(ratio - 1) <= clip_sigma * max(scatter, 1e-6)
    sums = ndimage.uniform_filter(np.where(keep, blocks, 0).sum(axis=2, dtype=np.float64), window, mode="reflect")
    counts = ndimage.uniform_filter(keep.sum(axis=2).astype(np.float64), window, mode="reflect")
    smooth = np.where(counts > 0, sums / np.maximum(counts, 1e-12), reference)
    return smooth.astype(np.float32), factor


def _upsample(binned: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    if factor == 1:
        return binned.astype(np.float32)
    return ndimage.zoom(binned, factor, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]].astype(np.float32)


def large_scale(image: np.ndarray, size: int) -> np.ndarray:
    smooth, factor = large_scale_binned(image, size)
    return _upsample(smooth, factor, np.shape(image))


def small_scale(image: np.ndarray, size: int) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    smooth = large_scale(image, size)
    return (image / np.where(smooth > 0, smooth, 1)).astype(np.float32)


@dataclass(frozen=True)
class PreparedFlat:
    small: np.ndarray  # float32 small-scale part
    shape: np.ndarray  # binned large-scale shape, normalised to its median
    level_adu: float
    saturated_fraction: float
    star_fraction: float


def prepare_flat(raw: np.ndarray, master_bias: np.ndarray, *, size: int, saturation_adu: float, gain: float) -> PreparedFlat:
    """Bias-subtract one twilight flat and split it into small- and large-scale parts, with the
    numbers that decide whether to keep it."""
    flat = np.asarray(raw, dtype=np.float32) - master_bias
    level = float(np.median(flat[::4, ::4]))
    saturated = float(np.mean(raw[::4, ::4] >= saturation_adu))
    binned, factor = large_scale_binned(flat, size)
    full = _upsample(binned, factor, flat.shape)
    small = flat / np.where(full > 0, full, 1)
    noise = 1.0 / np.sqrt(max(level * gain, 1.0))
    star_fraction = float(np.mean(small[::2, ::2] - 1 > max(5 * noise, 0.05)))
    return PreparedFlat(small.astype(np.float32), (binned / np.median(binned)).astype(np.float32), level, saturated, star_fraction)


def patchiness(shape: np.ndarray, reference: np.ndarray) -> float:
    """Rms of a flat's large-scale shape relative to the night's, after removing a plane (twilight
    skies have linear gradients; clouds do not)."""
    ratio = shape / reference
    ny, nx = ratio.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    design = np.column_stack([np.ones(ratio.size), xx.ravel(), yy.ravel()])
    coef = np.linalg.lstsq(design, ratio.ravel(), rcond=None)[0]
    return float(robust_std(ratio.ravel() - design @ coef))


def judge_flat(flat: PreparedFlat, patchy: float, night_level: float, *, min_level_fraction: float, max_saturated_fraction: float, max_patchiness: float, max_star_fraction: float) -> str | None:
    """The reason to reject a flat, or None to keep it."""
    if flat.saturated_fraction > max_saturated_fraction:
        return f"saturated: {100 * flat.saturated_fraction:.1f}% of pixels at or above the saturation level"
    if flat.level_adu < min_level_fraction * night_level:
        return f"too faint: median {flat.level_adu:.0f} ADU is {100 * flat.level_adu / night_level:.0f}% of the night's {night_level:.0f} ADU"
    if patchy > max_patchiness:
        return f"patchy (clouds): large-scale shape differs from the night's by {100 * patchy:.2f}% rms"
    if flat.star_fraction > max_star_fraction:
        return f"too many stars: {100 * flat.star_fraction:.2f}% of pixels in compact sources"
    return None


def decide_flats(prepared: list[PreparedFlat], cfg: CalibrationConfig) -> list[str | None]:
    """For each flat of a night, the reason to reject it (None: keep). The night's level and
    large-scale shape are the medians over its flats."""
    night_level = float(np.median([p.level_adu for p in prepared]))
    reference = np.median(np.stack([p.shape for p in prepared]), axis=0)
    return [
        judge_flat(
            p, patchiness(p.shape, reference), night_level, min_level_fraction=cfg.flat_min_level_fraction,
            max_saturated_fraction=cfg.flat_max_saturated_fraction, max_patchiness=cfg.flat_max_patchiness, max_star_fraction=cfg.flat_max_star_fraction,
        )
        for p in prepared
    ]


def combine_small_scale(small: np.ndarray, levels, *, gain: float, clip_sigma: float) -> np.ndarray:
    """Clipped, level-weighted mean of small-scale flats (any spatial block). Clipping uses each
    flat's photon noise: a per-pixel MAD of ~20 values is too noisy a scale and throws away good
    data. Dithered stars and cosmic rays are clipped. Normalise the full result afterwards."""
    levels = np.asarray(levels, float)
    noise = 1.0 / np.sqrt(np.maximum(levels * gain, 1.0))
    master, _ = clipped_mean(small, sigma=clip_sigma, weights=levels, noise=noise)
    return master


@dataclass(frozen=True)
class NightlyFlat:
    night_mjd: float  # any time label in days (e.g. MJD of the night's noon)
    small_scale: np.ndarray
    n_flats: int
    electrons_per_pixel: float  # summed over the flats used: sets its noise


def nightly_flat_from_prepared(prepared: list[PreparedFlat], *, night_mjd: float, cfg: CalibrationConfig, gain: float) -> tuple[NightlyFlat | None, list[str | None]]:
    """One night's master small-scale flat from its prepared flats (None if every flat was
    rejected), and the reason each rejected flat was rejected. Combined in blocks of rows: a stack
    of 20 full-size frames at once would need ~20 GB."""
    reasons = decide_flats(prepared, cfg)
    kept = [p for p, why in zip(prepared, reasons) if why is None]
    if not kept:
        return None, reasons
    levels = [p.level_adu for p in kept]
    ny = kept[0].small.shape[0]
    master = np.empty(kept[0].small.shape, np.float32)
    for y0 in range(0, ny, cfg.row_block):
        y1 = min(y0 + cfg.row_block, ny)
        master[y0:y1] = combine_small_scale(np.stack([p.small[y0:y1] for p in kept]), levels, gain=gain, clip_sigma=cfg.flat_clip_sigma)
    master /= np.float32(np.median(master[::4, ::4]))
    return NightlyFlat(night_mjd, master, len(kept), float(np.sum(levels) * gain)), reasons


def nightly_flat(raws, master_bias: np.ndarray, *, night_mjd: float, cfg: CalibrationConfig, saturation_adu: float, gain: float) -> tuple[NightlyFlat, list[str | None]]:
    """One night's master small-scale flat from its raw twilight flats (in memory)."""
    prepared = [prepare_flat(raw, master_bias, size=cfg.flat_smoothing_px, saturation_adu=saturation_adu, gain=gain) for raw in raws]
    result, reasons = nightly_flat_from_prepared(prepared, night_mjd=night_mjd, cfg=cfg, gain=gain)
    if result is None:
        raise ValueError("every flat of the night was rejected")
    return result, reasons


def choose_nights(target_mjd: float, night_mjds: list[float], *, window_nights: int, max_span_days: float) -> list[float]:
    """Times of the nights whose flats make the target night's master: its own and those of up to
    ``window_nights`` nights with flats before and after it, dropping any beyond half the allowed
    span on either side (the paper: +-5 nights, never over two months)."""
    ordered = sorted(night_mjds)
    before = [t for t in ordered if t < target_mjd - 0.5][-window_nights:] if window_nights else []
    after = [t for t in ordered if t > target_mjd + 0.5][:window_nights]
    same = [t for t in ordered if abs(t - target_mjd) <= 0.5]
    return [t for t in before + same + after if abs(t - target_mjd) <= max_span_days / 2]


def combine_nights(target_mjd: float, nightly: list[NightlyFlat], *, window_nights: int, max_span_days: float, change_sigma: float = 4.0, change_box: int = 5) -> tuple[np.ndarray, list[float]]:
    """Master small-scale flat for a night from the chosen nightly masters, weighted by electrons.

    Where a night differs from the nearest night by more than ``change_sigma`` times the noise of
    the difference averaged over ``change_box`` x ``change_box`` pixels (a dust shadow arrived or
    left: shadows are extended, so averaging finds even their faint wings), that night is left out
    for those pixels. Returns the master and the nights used."""
    times = set(choose_nights(target_mjd, [n.night_mjd for n in nightly], window_nights=window_nights, max_span_days=max_span_days))
    chosen = [n for n in nightly if n.night_mjd in times]
    if not chosen:
        raise ValueError("no nightly flat within the allowed span")
    own = min(chosen, key=lambda n: abs(n.night_mjd - target_mjd))
    weights = np.array([n.electrons_per_pixel for n in chosen])
    stack = np.stack([n.small_scale for n in chosen]).astype(np.float32)
    sigma_own = 1.0 / np.sqrt(own.electrons_per_pixel)
    sigma = 1.0 / np.sqrt(weights)
    tolerance = (change_sigma * np.sqrt(sigma_own**2 + sigma**2) / change_box).reshape(-1, 1, 1)
    difference = ndimage.uniform_filter(stack - own.small_scale, size=(1, change_box, change_box), mode="nearest")
    agree = ndimage.binary_erosion(np.abs(difference) <= tolerance, structure=np.ones((1, 3, 3), bool), border_value=1)
    agree |= np.array([n is own for n in chosen]).reshape(-1, 1, 1)
    w = weights.reshape(-1, 1, 1) * agree
    master = (w * stack).sum(axis=0) / w.sum(axis=0)
    return (master / np.median(master)).astype(np.float32), [n.night_mjd for n in chosen]
