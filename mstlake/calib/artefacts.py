"""The artefact masks of one calibrated science frame: satellite/aircraft tracks and cosmic rays.

One function runs the whole chain so the pipeline, the tests and the benchmarks judge the same
thing: background and compact sources (sep), tracks (``tracks``), then cosmic rays (``cosmics``)
outside the tracks, with the frame's own stars setting how concentrated a star can be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

from mstlake.calib import cosmics, tracks
from mstlake.config import CalibrationConfig


@dataclass(frozen=True)
class ArtefactMasks:
    tracks: np.ndarray  # bool
    cosmic_rays: np.ndarray  # bool
    found_tracks: list[tracks.Track]
    star_peak_fraction: float  # the most of its 5x5 light a star here puts in one pixel
    background: np.ndarray
    background_rms: float


def artefact_masks(image: np.ndarray, variance: np.ndarray, known_bad: np.ndarray, *, cfg: CalibrationConfig, gain: float, read_noise_e: float, saturation_adu: float) -> ArtefactMasks:
    """Track and cosmic-ray pixels of a calibrated ``image`` (ADU) with its ``variance``;
    ``known_bad``: pixels already masked (bad, saturated, pepper-and-salt)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    background = sep.Background(image, mask=known_bad)
    back, rms = background.back(), float(background.globalrms)
    residual = np.subtract(image, back, dtype=np.float32)
    stars = tracks.compact_source_mask(residual, rms, mask=known_bad)
    found = tracks.find_tracks(residual, variance=variance, exclude=stars | known_bad, pixel_sigma=cfg.track_pixel_sigma, min_significance=cfg.track_min_significance)
    track_pixels = tracks.track_mask(residual, found, background_rms=rms, variance=variance, half_width=cfg.track_half_width_px, sigma=cfg.track_mask_sigma, core_half_width=cfg.track_core_half_width_px)
    hits, fraction = cosmics.cosmic_ray_mask(
        residual, variance, known_bad=known_bad | track_pixels, gain=gain, read_noise_e=read_noise_e, saturation_adu=saturation_adu,
        min_snr=cfg.cosmic_min_snr, significance=cfg.cosmic_significance, grow_sigma=cfg.cosmic_grow_sigma, lacosmic_objlim=cfg.cosmic_lacosmic_objlim, background=back,
    )
    return ArtefactMasks(track_pixels, hits, found, fraction, back, rms)
