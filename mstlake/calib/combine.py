"""Combining a stack of frames with outlier rejection, per pixel and per frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import sigma_clip


@dataclass(frozen=True)
class FrameScreen:
    """Which frames of a stack to keep, and why the others were dropped."""

    keep: np.ndarray  # bool per frame
    reasons: dict[int, str]


def robust_std(values, axis=None):
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values, axis=axis, keepdims=axis is not None)
    return 1.4826 * np.median(np.abs(values - median), axis=axis)


def screen_frames(levels, noises, *, reject_sigma: float, noise_ratio_max: float) -> FrameScreen:
    """Drop whole frames whose median level stands out from the others (light leak, wrong type,
    electronics glitch) or whose noise is much higher than typical."""
    levels = np.asarray(levels, dtype=np.float64)
    noises = np.asarray(noises, dtype=np.float64)
    keep = np.ones(levels.size, bool)
    reasons: dict[int, str] = {}
    if levels.size >= 3:
        centre = np.median(levels)
        # the spread of frame levels, floored at a tenth of the pixel noise so identical frames pass
        spread = max(robust_std(levels), 0.1 * float(np.median(noises)), 1e-6)
        typical_noise = float(np.median(noises))
        for i, (level, noise) in enumerate(zip(levels, noises)):
            if abs(level - centre) > reject_sigma * spread:
                keep[i] = False
                reasons[i] = f"median level {level:.1f} ADU differs from the others' {centre:.1f} by {abs(level - centre) / spread:.1f} sigma"
            elif noise > noise_ratio_max * typical_noise:
                keep[i] = False
                reasons[i] = f"noise {noise:.2f} ADU is {noise / typical_noise:.2f} times the typical {typical_noise:.2f}"
    return FrameScreen(keep=keep, reasons=reasons)


def clipped_mean(stack: np.ndarray, *, sigma: float, weights=None, noise=None, pixel_noise=None, maxiters: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel sigma-clipped (weighted) mean over axis 0 about the per-pixel median. The scale is
    each frame's known ``noise`` (one value per frame) or each pixel's known ``pixel_noise`` (an
    image) when given, else the per-pixel MAD. Returns the mean (float32) and the number of frames
    kept per pixel."""
    data = np.asarray(stack, dtype=np.float32)
    if noise is not None and pixel_noise is not None:
        raise ValueError("give the noise per frame or per pixel, not both")
    if noise is None and pixel_noise is None:
        clipped = sigma_clip(data, axis=0, sigma=sigma, maxiters=maxiters, cenfunc="median", stdfunc="mad_std", masked=True)
        good = ~np.ma.getmaskarray(clipped)
    else:
        if noise is not None:
            scale = np.asarray(noise, np.float32).reshape((-1,) + (1,) * (data.ndim - 1))
        else:
            scale = np.asarray(pixel_noise, np.float32)[None]
        good = np.abs(data - np.median(data, axis=0)) <= sigma * scale
    if weights is None:
        w = good.astype(np.float32)
    else:
        w = np.asarray(weights, np.float32).reshape((-1,) + (1,) * (stack.ndim - 1)) * good
    total = w.sum(axis=0)
    mean = np.where(total > 0, (w * data).sum(axis=0) / np.where(total > 0, total, 1), np.median(data, axis=0))
    return mean.astype(np.float32), good.sum(axis=0).astype(np.int16)
