"""Master bias and the pepper-and-salt (PS) pixel map (paper 3.1.1 and 3.1.3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstlake.calib.combine import FrameScreen, clipped_mean, robust_std, screen_frames


@dataclass(frozen=True)
class MasterBias:
    image: np.ndarray  # float32 ADU
    n_frames: int
    screen: FrameScreen


def frame_level_and_noise(frame: np.ndarray, stride: int = 4) -> tuple[float, float]:
    sample = np.asarray(frame[::stride, ::stride], dtype=np.float64)
    return float(np.median(sample)), float(robust_std(sample))


def master_bias(stack: np.ndarray, *, clip_sigma: float, reject_sigma: float, noise_ratio_max: float, pixel_std: np.ndarray | None = None) -> MasterBias:
    """Outlier-rejected combination of a night's bias frames: whole frames that stand out are
    dropped, then each pixel is sigma-clipped across the rest.

    Give ``pixel_std``, each pixel's std over a long bias series (the PS map's): the clip is then
    in units of the pixel's own scatter, so a pepper-and-salt pixel keeps its rarer levels and its
    master is its *mean* level, which is what a science frame's readout averages to. Clipping on a
    per-pixel MAD of ~10 frames instead pins such a pixel to its commonest level, off by up to tens
    of ADU in every frame it calibrates."""
    stats = [frame_level_and_noise(frame) for frame in stack]
    screen = screen_frames([s[0] for s in stats], [s[1] for s in stats], reject_sigma=reject_sigma, noise_ratio_max=noise_ratio_max)
    image, _ = clipped_mean(stack[screen.keep], sigma=clip_sigma, pixel_noise=pixel_std)
    return MasterBias(image=image, n_frames=int(screen.keep.sum()), screen=screen)


@dataclass(frozen=True)
class PepperSaltMap:
    mask: np.ndarray  # bool: PS pixel in every time group
    std: np.ndarray  # float32 per-pixel std over the whole series (ADU)
    group_fractions: tuple[float, ...]  # PS fraction found in each group
    agreement: float  # fraction of pixels flagged in any group that are flagged in all


def pepper_salt_map(series: np.ndarray, *, threshold_adu: float, groups: int) -> PepperSaltMap:
    """PS pixels: per-pixel std over a time-ordered bias series above the threshold in each of
    ``groups`` disjoint consecutive time groups (the intersection guards against a one-off jump)."""
    n = series.shape[0]
    bounds = np.linspace(0, n, groups + 1).astype(int)
    flags = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        flags.append(np.std(series[lo:hi], axis=0, ddof=1) > threshold_adu)
    every = np.logical_and.reduce(flags)
    anywhere = np.logical_or.reduce(flags)
    std = np.std(series, axis=0, ddof=1).astype(np.float32)
    agreement = float(every.sum() / max(anywhere.sum(), 1))
    return PepperSaltMap(mask=every, std=std, group_fractions=tuple(float(f.mean()) for f in flags), agreement=agreement)


def hot_pixels(darks: np.ndarray, master: np.ndarray, *, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Hot pixels: above ``sigma`` robust standard deviations in *every* dark (a single dark's
    3-sigma tail would flag 0.13% of healthy pixels). Returns the mask and the median excess (ADU)."""
    excess = np.asarray(darks, dtype=np.float32) - master
    hot = np.ones(master.shape, bool)
    for frame in excess:
        centre = float(np.median(frame[::4, ::4]))
        hot &= frame - centre > sigma * float(robust_std(frame[::4, ::4]))
    return hot, np.median(excess, axis=0).astype(np.float32)


def bad_pixel_map(hot: np.ndarray, pepper_salt: np.ndarray, small_flat: np.ndarray, *, dead_response_max: float) -> np.ndarray:
    """1 hot (outside pepper-and-salt pixels, which carry their own bit), 2 dead or low response."""
    bad = np.zeros(small_flat.shape, np.uint8)
    bad[hot & ~pepper_salt] = 1
    bad[small_flat < dead_response_max] = 2
    return bad
