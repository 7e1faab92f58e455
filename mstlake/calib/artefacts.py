"""The artefact masks of one calibrated science frame: satellite/aircraft tracks and cosmic rays.

One function runs the whole chain so the pipeline, the tests and the benchmarks judge the same
thing: background and compact sources (sep), tracks (``tracks``), then cosmic rays (``cosmics``)
outside the tracks, with the frame's sharpest PSF setting what a star can look like.
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
    fwhm_px: float
    background: np.ndarray
    background_rms: float


def artefact_masks(image: np.ndarray, variance: np.ndarray, known_bad: np.ndarray, *, cfg: CalibrationConfig, gain: float, read_noise_e: float, saturation_adu: float) -> ArtefactMasks:
    """Track and cosmic-ray pixels of a calibrated ``image`` (ADU) with its ``variance``;
    ``known_bad``: pixels already masked (bad, saturated, pepper-and-salt)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    background = sep.Background(image, mask=known_bad)
    back, rms = background.back(), float(background.globalrms)
    stars = tracks.compact_source_mask(image - back, rms, mask=known_bad)
    noise = np.sqrt(variance)
    found = tracks.find_tracks(image, background=back, noise=noise, exclude=stars | known_bad, pixel_sigma=cfg.track_pixel_sigma, min_significance=cfg.track_min_significance)
    track_pixels = tracks.track_mask(image, found, background=back, background_rms=rms, noise=noise, known_bad=known_bad, half_width=cfg.track_half_width_px, sigma=cfg.track_mask_sigma, core_half_width=cfg.track_core_half_width_px)
    fwhm = cosmics.sharpest_fwhm(image - back, rms, known_bad | track_pixels)
    hits = cosmics.cosmic_ray_mask(
        image, variance, back, known_bad=known_bad | track_pixels, fwhm_px=fwhm, gain=gain, read_noise_e=read_noise_e,
        saturation_adu=saturation_adu, min_snr=cfg.cosmic_min_snr, significance=cfg.cosmic_significance, grow_sigma=cfg.cosmic_grow_sigma,
        lacosmic_objlim=cfg.cosmic_lacosmic_objlim,
    )
    return ArtefactMasks(track_pixels, hits, found, fwhm, back, rms)
