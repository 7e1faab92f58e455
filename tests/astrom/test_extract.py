"""Source extraction on a simulated, truly calibrated frame."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from mstlake.astrom import extract
from mstlake.calib import apply
from mstlake.config import load_field
from mstlake.simulate.frames import build_survey, make_exposure
from mstlake.simulate.schedule import Exposure


def test_extraction_finds_the_stars_and_centroids_isolated_ones_to_the_photon_limit(instrument, sim_config):
    survey = build_survey(seed=5, instrument=instrument, sim=sim_config, field_cfg=load_field("f02"), telescopes=["MST2"], nights=[20230118], scale=0.15)
    detector = survey.telescopes["MST2"].detector
    result = make_exposure(survey, Exposure(20230118, 0, "MST2", "science", 59962.6, 60.0, 40))
    image, variance = apply.calibrate(result.data, master_bias=detector.bias_pattern, flat=detector.pixel_response(0), bias_std=np.hypot(detector.ps_std, 4.12).astype(np.float32), gain=0.25)
    mask = apply.static_mask(result.data, bad=detector.bad_pixels > 0, pepper_salt=detector.ps_std > 0, saturation_adu=50000)
    found = extract.extract_sources(image, variance, mask)
    sources = found.sources
    stars = result.frame_stars
    ny, nx = image.shape
    noise_e = np.sqrt(result.truth["sky_e_per_pix"])
    inside = (stars["x"] > 3) & (stars["x"] < nx - 4) & (stars["y"] > 3) & (stars["y"] < ny - 4)
    bright = inside & (stars["peak_e"] > 10 * noise_e)
    distance, nearest = cKDTree(np.column_stack([sources.x, sources.y])).query(np.column_stack([stars["x"][bright], stars["y"][bright]]), distance_upper_bound=1.5)
    assert np.isfinite(distance).mean() > 0.9
    # isolated (no true star within 8 px), unflagged, S/N 60-1000: photon-limited windowed centroids
    true_xy = np.column_stack([stars["x"][inside], stars["y"][inside]])
    gap, _ = cKDTree(true_xy).query(np.column_stack([stars["x"][bright], stars["y"][bright]]), k=2)
    ok = np.isfinite(distance) & (gap[:, 1] > 8)
    matched = sources.iloc[nearest[ok]]
    good = (matched.flag.values == 0) & (matched.snr.values > 60) & (matched.snr.values < 1000)
    dx = matched.x.values[good] - stars["x"][bright][ok][good]
    dy = matched.y.values[good] - stars["y"][bright][ok][good]
    assert good.sum() > 20
    assert np.sqrt(np.mean(dx**2)) < 0.03 and np.sqrt(np.mean(dy**2)) < 0.03
    assert abs(np.median(dx)) < 0.01 and abs(np.median(dy)) < 0.01
    assert found.background.shape == image.shape and found.background_rms > 0
