"""Tracks, cosmic rays and the static mask on simulated frames, against truth. Frames are
calibrated with the true bias and flat so these tests judge the detectors alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sep

from mstlake.calib import apply, artefacts, cosmics, tracks
from mstlake.config import load_field
from mstlake.simulate.frames import build_survey, make_exposure
from mstlake.simulate.schedule import Exposure


def _frames(instrument, sim_config, *, satellites: float, cosmic_rate: float, seed: int, count: int, aircraft: float = 0.0):
    observing = dataclasses.replace(sim_config.observing, cosmic_rays_per_cm2_per_min=cosmic_rate, satellite_frame_fraction=satellites, cloudy_frame_fraction=0.0, aircraft_frame_fraction=aircraft)
    survey = build_survey(seed=seed, instrument=instrument, sim=dataclasses.replace(sim_config, observing=observing), field_cfg=load_field("f02"), telescopes=["MST2"], nights=[20230118], scale=0.08)
    detector = survey.telescopes["MST2"].detector
    flat = detector.pixel_response(0)
    out = []
    for seq in range(40, 40 + count):
        result = make_exposure(survey, Exposure(20230118, 0, "MST2", "science", 59962.55 + seq * 0.004, 60.0, seq))
        bias_std = np.maximum(detector.ps_std, 4.2).astype(np.float32)
        image, variance = apply.calibrate(result.data, master_bias=detector.bias_pattern, flat=flat, bias_std=bias_std, gain=0.25)
        bad = (detector.ps_std > 0) | (detector.bad_pixels > 0) | (result.data > 50000)
        background = sep.Background(image, mask=bad)
        out.append((result, image, variance, bad, background.back(), background.globalrms))
    return out


def _truth_maps(result, shape):
    art = result.artefacts
    noise_e = np.sqrt(result.truth["sky_e_per_pix"] + 1.03**2)
    track = np.zeros(shape, bool)
    track[art["y"], art["x"]] = art["track_e"] > 3 * noise_e
    fs = result.frame_stars
    ny, nx = shape
    on = (fs["x"] >= 0) & (fs["x"] < nx - 0.5) & (fs["y"] >= 0) & (fs["y"] < ny - 0.5) & (fs["peak_e"] > 5 * noise_e)
    cores = np.zeros(shape, bool)
    cores[np.rint(fs["y"][on]).astype(int), np.rint(fs["x"][on]).astype(int)] = True
    return track, cores, noise_e


def test_calibrate_recovers_electrons_and_variance():
    rng = np.random.default_rng(0)
    bias = np.full((50, 60), 500.0, np.float32)
    flat = (1 + 0.01 * rng.normal(0, 1, bias.shape)).astype(np.float32)
    sky_e = 400.0
    raw = np.rint(bias + rng.poisson(sky_e * flat) / 0.25 + rng.normal(0, 4.12, bias.shape)).astype(np.uint16)
    image, variance = apply.calibrate(raw, master_bias=bias, flat=flat, bias_std=np.full(bias.shape, 4.12, np.float32), gain=0.25)
    assert np.mean(image) == pytest.approx(sky_e / 0.25, rel=0.01)
    pull = (image - sky_e / 0.25) / np.sqrt(variance)
    assert np.std(pull) == pytest.approx(1.0, abs=0.05)


def test_static_mask_bits_are_exact():
    raw = np.array([[100, 50001], [50000, 65535]], np.uint16)
    bad = np.array([[True, False], [False, False]])
    ps = np.array([[False, False], [True, True]])
    mask = apply.static_mask(raw, bad=bad, pepper_salt=ps, saturation_adu=50000)
    assert mask.tolist() == [[apply.BAD, apply.SATURATED], [apply.PEPPER_SALT, apply.SATURATED | apply.PEPPER_SALT]]


@pytest.fixture(scope="module")
def track_frames(instrument, sim_config):
    return _frames(instrument, sim_config, satellites=1.0, aircraft=0.4, cosmic_rate=1.5, seed=21, count=12)


def test_satellite_and_aircraft_tracks_are_found_and_star_cores_spared(track_frames, pipeline_config):
    true_pixels = flagged_true = star_cores = cores_flagged = 0
    aircraft = 0
    for result, image, variance, bad, _, _ in track_frames:
        found = artefacts.artefact_masks(image, variance, bad, cfg=pipeline_config.calibration, gain=0.25, read_noise_e=1.03, saturation_adu=50000)
        truth, cores, _ = _truth_maps(result, image.shape)
        true_pixels += (truth & ~bad).sum()
        flagged_true += (truth & found.tracks & ~bad).sum()
        star_cores += (cores & ~bad & ~truth).sum()
        cores_flagged += (cores & found.tracks & ~bad & ~truth).sum()
        # an aircraft's two strobe lines may be found as two tracks
        assert len(found.found_tracks) <= result.truth["n_satellites"] + 2 * result.truth["n_aircraft"] + 1
        aircraft += result.truth["n_aircraft"]
    assert aircraft >= 3
    assert flagged_true / true_pixels >= 0.9
    # stars a pixel or two from a bright track are the ones still flagged (0.1-0.4% over seeds)
    assert cores_flagged / star_cores < 0.005


def test_no_false_tracks_without_satellites(instrument, sim_config, pipeline_config):
    frames = _frames(instrument, sim_config, satellites=0.0, cosmic_rate=1.5, seed=22, count=20)
    false_tracks = 0
    for _, image, variance, bad, _, _ in frames:
        found = artefacts.artefact_masks(image, variance, bad, cfg=pipeline_config.calibration, gain=0.25, read_noise_e=1.03, saturation_adu=50000)
        false_tracks += found.tracks.sum() > 100
    assert false_tracks <= 1  # <= 1 false track per 20 frames


def test_crossing_tracks_are_not_taken_for_a_star():
    rng = np.random.default_rng(3)
    image = rng.normal(0, 1, (200, 200)).astype(np.float32)
    yy, xx = np.mgrid[0:200, 0:200]
    for angle in (0.3, 1.9):  # two tracks crossing near the centre
        distance = np.abs((xx - 100) * np.sin(angle) - (yy - 100) * np.cos(angle))
        image += 6 * np.exp(-0.5 * (distance / 1.2) ** 2)
    image += 200 * np.exp(-0.5 * ((xx - 40) ** 2 + (yy - 160) ** 2) / 1.3**2)  # a star
    stars = tracks.compact_source_mask(image, 1.0)
    assert stars[160, 40] and not stars[100, 100] and stars.mean() < 0.01


def test_cosmic_rays_found_and_star_cores_spared(instrument, sim_config, pipeline_config):
    from scipy import ndimage

    # ~200 times the real rate, for numbers; the real rate makes hits beside stars 200 times rarer
    frames = _frames(instrument, sim_config, satellites=0.0, cosmic_rate=300.0, seed=23, count=8)
    events = found = star_cores = cores_flagged = 0
    for result, image, variance, bad, _, _ in frames:
        masks = artefacts.artefact_masks(image, variance, bad, cfg=pipeline_config.calibration, gain=0.25, read_noise_e=1.03, saturation_adu=50000)
        art = result.artefacts
        charge = np.zeros(image.shape, np.float32)
        charge[art["y"], art["x"]] = art["cosmic_e"]
        labels, n = ndimage.label(charge > 0, structure=np.ones((3, 3)))
        _, cores, noise_e = _truth_maps(result, image.shape)
        peaks = ndimage.maximum(charge, labels, np.arange(1, n + 1))
        strong = np.flatnonzero(peaks > 5 * noise_e) + 1
        events += strong.size
        found += np.isin(strong, np.unique(labels[masks.cosmic_rays & (labels > 0)])).sum()
        # a star with a hit inside its photometric aperture (4 px) is rightly flagged
        clean_cores = cores & ~bad & ~ndimage.binary_dilation(charge > 0, iterations=4)
        star_cores += clean_cores.sum()
        cores_flagged += (clean_cores & masks.cosmic_rays).sum()
    assert events > 100
    assert found / events >= 0.9
    assert cores_flagged / star_cores < 0.001


def test_star_peak_fraction_is_measured_on_the_frames_stars():
    rng = np.random.default_rng(4)
    ny, nx = 300, 300
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = np.zeros((ny, nx), np.float32)
    fwhm, beta = 2.6, 3.0
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))

    def star(x0, y0, flux):
        return flux * (beta - 1) / (np.pi * alpha**2) * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha**2) ** (-beta)

    centred = star(150, 150, 1.0)
    largest_share = centred[150, 150] / centred[148:153, 148:153].sum()
    for _ in range(80):
        image += star(rng.uniform(10, nx - 10), rng.uniform(10, ny - 10), rng.uniform(2e4, 1e5))
    dark = np.argwhere(image[20:-20:40, 20:-20:40] < 20)[:3] * 40 + 20  # three hits away from stars
    for y, x in dark:
        image[y, x] += 3000
    variance = np.full(image.shape, 25.0, np.float32) + np.maximum(image, 0)
    image += rng.normal(0, 1, image.shape).astype(np.float32) * np.sqrt(variance)
    bad = np.zeros(image.shape, bool)
    peaks = cosmics.peak_fractions(image, variance, bad, 5.0)
    measured = cosmics.star_peak_fraction(peaks)
    # stars fall anywhere on their pixels: the largest share is that of a centred star (plus margin)
    assert measured == pytest.approx(1.1 * largest_share, rel=0.05)
    hits = cosmics.sharp_peaks(peaks, image.shape, max_fraction=measured, significance=3)
    assert len(dark) == 3 and all(hits[y, x] for y, x in dark) and hits.sum() == 3


def test_a_bad_pixel_beside_a_star_does_not_make_it_a_hit():
    yy, xx = np.mgrid[0:40, 0:40]
    star = 5000 * np.exp(-0.5 * ((xx - 20) ** 2 + (yy - 20) ** 2) / 1.1**2).astype(np.float32)
    variance = np.full(star.shape, 25.0, np.float32) + star
    bad = np.zeros(star.shape, bool)
    bad[20, 21] = bad[19, 20] = True
    broken = star.copy()
    broken[bad] = -800.0  # a pepper-and-salt pixel in its low state
    fraction = 1.1 * float(star[20, 20] / star[18:23, 18:23].sum())  # this star's own share, with margin
    assert not cosmics.sharp_peaks(cosmics.peak_fractions(broken, variance, bad, 5.0), broken.shape, max_fraction=fraction, significance=3).any()
