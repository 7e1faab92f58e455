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


def test_a_vertical_one_pixel_line_and_strip_seams_do_not_break_extraction(monkeypatch):
    # sep returns theta = float32(pi/2) for a vertical line, which its own aperture sums refuse
    image = np.zeros((300, 200), np.float32)  # noiseless: the line is exactly vertical
    image[40:52, 120] += 60.0
    yy, xx = np.mgrid[0:300, 0:200]
    stars = [(50.3, 149.6), (150.2, 70.4), (90.7, 230.1)]  # (x, y); the first sits on the strip seam set below
    for x, y in stars:
        image += 400.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))
    monkeypatch.setattr(extract, "STRIP_ROWS", 150)
    found = extract.extract_sources(image, np.ones_like(image), np.zeros(image.shape, np.uint8)).sources
    distance, _ = cKDTree(found[["x", "y"]].to_numpy()).query(stars)
    assert np.all(distance < 0.2)  # each star once, whole, wherever the seam falls
    assert (found.snr > 20).sum() == len(stars) + 1  # and the line, once
