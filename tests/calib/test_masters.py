"""Master products against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from mstlake.astro import night_to_mjd_local_noon
from mstlake.calib import bias as cb
from mstlake.calib import flat as cf
from mstlake.calib.combine import clipped_mean, screen_frames
from tests.conftest import raw_image, read_truth_frames


def _stack(paths, files):
    return np.stack([raw_image(paths, f)[0].astype(np.float32) for f in files])


def _static(paths, telescope, name):
    return fits.getdata(paths.static_map(telescope, name)).astype(np.float32)


@pytest.fixture(scope="module")
def night_frames(small_simulation):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    mst2 = truth[truth.telescope == "MST2"]
    bias = mst2[mst2.kind == "bias"].sort_values("mjd")
    return paths, mst2, _stack(paths, bias.file)


def test_screen_frames_drops_a_light_leak_and_a_noisy_frame():
    levels = [500.1, 499.8, 500.3, 640.0, 500.0, 500.2]
    noises = [4.2, 4.3, 4.2, 4.2, 9.0, 4.1]
    screen = screen_frames(levels, noises, reject_sigma=5, noise_ratio_max=1.5)
    assert screen.keep.tolist() == [True, True, True, False, False, True]
    assert "differs" in screen.reasons[3] and "noise" in screen.reasons[4]


def test_clipped_mean_ignores_cosmic_rays():
    rng = np.random.default_rng(1)
    stack = rng.normal(100, 2, (10, 50, 50)).astype(np.float32)
    stack[3, 10, 10] += 5000
    mean, kept = clipped_mean(stack, sigma=3)
    assert abs(mean[10, 10] - 100) < 3 and kept[10, 10] <= 9
    noise_mode, _ = clipped_mean(stack, sigma=3, noise=np.full(10, 2.0))
    assert abs(noise_mode[10, 10] - 100) < 3


def test_master_bias_matches_truth_to_read_noise(night_frames, instrument):
    paths, _, series = night_frames
    nightly = series[:10]
    master = cb.master_bias(nightly, clip_sigma=3, reject_sigma=5, noise_ratio_max=1.5)
    truth = _static(paths, "MST2", "bias_pattern")
    normal = (_static(paths, "MST2", "ps_std") == 0) & (_static(paths, "MST2", "bad_pixels") == 0)
    residual = (master.image - truth)[normal]
    # per-frame offsets (0.5 ADU) and row noise (0.8 ADU) average down with read noise (4.1 ADU)
    expected = np.hypot(instrument.detector.read_noise_e / instrument.detector.gain_e_per_adu, 0.8) / np.sqrt(10)
    assert abs(np.median(residual)) < 0.5
    assert np.std(residual) < 1.25 * expected
    leaky = nightly.copy()
    leaky[4] += 150.0  # light leak
    assert cb.master_bias(leaky, clip_sigma=3, reject_sigma=5, noise_ratio_max=1.5).screen.keep.tolist().count(False) == 1


def test_master_bias_gives_pepper_and_salt_pixels_their_mean_level(night_frames, pipeline_config):
    paths, _, series = night_frames
    cfg = pipeline_config.calibration
    series_std = cb.pepper_salt_map(series[10:], threshold_adu=cfg.ps_std_threshold_adu, groups=cfg.ps_groups).std
    truth = _static(paths, "MST2", "bias_pattern")  # a PS pixel's mean level
    ps_std = _static(paths, "MST2", "ps_std")
    strong = (ps_std > 30) & (_static(paths, "MST2", "bad_pixels") == 0)
    assert strong.sum() > 100
    own_scale = cb.master_bias(series[:10], clip_sigma=cfg.bias_clip_sigma, reject_sigma=5, noise_ratio_max=1.5, pixel_std=series_std).image
    mad_scale = cb.master_bias(series[:10], clip_sigma=3, reject_sigma=5, noise_ratio_max=1.5).image
    # each pixel's master scatters by its own std / sqrt(10) about its mean level; the MAD clip pins a
    # two-level pixel to its commoner level
    pull = ((own_scale - truth) / (np.hypot(ps_std, 4.2) / np.sqrt(10)))[strong]
    assert abs(np.mean(pull)) < 0.1 and np.std(pull) < 1.3, (np.mean(pull), np.std(pull))
    assert np.std(((mad_scale - truth) / (np.hypot(ps_std, 4.2) / np.sqrt(10)))[strong]) > 1.5 * np.std(pull)


def test_pepper_salt_map_precision_and_recall(night_frames, pipeline_config):
    paths, _, series = night_frames
    cfg = pipeline_config.calibration
    ps_series = series[10:]
    assert len(ps_series) >= cfg.ps_min_frames
    result = cb.pepper_salt_map(ps_series, threshold_adu=cfg.ps_std_threshold_adu, groups=cfg.ps_groups)
    truth_std = _static(paths, "MST2", "ps_std")
    true_ps = np.hypot(truth_std, 4.2) > cfg.ps_std_threshold_adu  # the pixels whose std exceeds the cut
    hits = (result.mask & true_ps).sum()
    assert hits / result.mask.sum() >= 0.95  # precision
    assert hits / true_ps.sum() >= 0.95  # recall
    assert len(result.group_fractions) == 3 and result.agreement > 0.9


def test_hot_pixels_outside_ps_pixels(night_frames):
    paths, mst2, series = night_frames
    master = cb.master_bias(series[:10], clip_sigma=3, reject_sigma=5, noise_ratio_max=1.5).image
    darks = _stack(paths, mst2[mst2.kind == "dark"].file)
    hot, _ = cb.hot_pixels(darks, master, sigma=3.0)
    ps = _static(paths, "MST2", "ps_std") > 0
    truth_hot = (_static(paths, "MST2", "bad_pixels") == 1) & ~ps
    found = hot & ~ps
    assert truth_hot.sum() > 10
    assert (found & truth_hot).sum() / found.sum() >= 0.95
    assert (found & truth_hot).sum() / truth_hot.sum() >= 0.9


def test_large_scale_agrees_with_an_exact_51px_median():
    from scipy import ndimage

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:300, 0:400]
    image = (1 - 0.2 * ((xx - 210) ** 2 + (yy - 140) ** 2) / 300**2) * (1 + 0.007 * rng.normal(0, 1, yy.shape))
    approx = cf.large_scale(image, 51)
    exact = ndimage.median_filter(image.astype(np.float32), 51)
    assert np.std(approx / exact - 1) < 0.001


def test_large_scale_is_unbiased_by_pixel_noise():
    """Averaged over many noisy flats, the large-scale estimate converges to the noise-free one: a
    running median would not (the median of response + noise is not the median of the response),
    and that error would be the same every night."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:200, 0:300]
    response = ((1 - 0.2 * ((xx - 140) ** 2 + (yy - 90) ** 2) / 250**2) * (1 + 0.007 * rng.normal(0, 1, yy.shape))).astype(np.float32)
    truth = cf.large_scale(response, 51)
    trials = 40
    mean = np.mean([cf.large_scale(response * (1 + 0.014 * rng.normal(0, 1, yy.shape)).astype(np.float32), 51) for _ in range(trials)], axis=0)
    # one estimate's noise: 1.4% over ~51x51 pixels; the mean of 40 is sqrt(40) lower
    expected = 0.014 / 51 / np.sqrt(trials)
    assert np.std(mean / truth - 1) < 3 * expected, (np.std(mean / truth - 1), expected)


def test_flats_are_screened_and_combined_near_the_photon_limit(night_frames, pipeline_config, instrument):
    paths, mst2, series = night_frames
    cfg = pipeline_config.calibration
    master_bias = cb.master_bias(series[:10], clip_sigma=3, reject_sigma=5, noise_ratio_max=1.5).image
    flats = mst2[mst2.kind == "flat"]
    night = int(flats.night.iloc[0])
    nightly, reasons = cf.nightly_flat(_stack(paths, flats.file), master_bias, night_mjd=night_to_mjd_local_noon(night, 8), cfg=cfg, saturation_adu=50000, gain=instrument.detector.gain_e_per_adu)
    expected_bad = flats.bad_flat.notna().tolist()
    assert [r is not None for r in reasons] == expected_bad
    true_flat = fits.getdata(paths.nightly_flat("MST2", night)).astype(np.float32)
    truth_small = cf.small_scale(true_flat, cfg.flat_smoothing_px)
    inner = (slice(30, -30), slice(30, -30))
    good = _static(paths, "MST2", "bad_pixels")[inner] == 0
    rms = np.std((nightly.small_scale / truth_small - 1)[inner][good])
    photon_limit = np.sqrt(np.mean(np.mean(true_flat) / (nightly.electrons_per_pixel * true_flat)))
    assert rms < 1.1 * photon_limit, (rms, photon_limit)


def test_choose_nights_window_and_span():
    chosen = cf.choose_nights(5, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 40, 41], window_nights=5, max_span_days=60)
    assert chosen == list(range(11))
    assert cf.choose_nights(50, [0, 20, 50, 70, 100], window_nights=5, max_span_days=60) == [20, 50, 70]


def test_combine_nights_follows_a_dust_speck_that_arrives():
    rng = np.random.default_rng(4)
    response = 1 + 0.007 * rng.normal(0, 1, (80, 80))
    yy, xx = np.mgrid[0:80, 0:80]
    dust = 1 - 0.02 * np.exp(-0.5 * ((np.hypot(xx - 40, yy - 40) - 12) / 3) ** 2)
    electrons = 9e4
    nights = []
    for day in range(11):
        truth = response * (dust if day >= 6 else 1.0)
        nights.append(cf.NightlyFlat(float(day), (truth * (1 + rng.normal(0, 1 / np.sqrt(electrons), truth.shape))).astype(np.float32), 18, electrons))
    after, _ = cf.combine_nights(8.0, nights, window_nights=5, max_span_days=60)
    before, _ = cf.combine_nights(2.0, nights, window_nights=5, max_span_days=60)
    ring = np.abs(np.hypot(xx - 40, yy - 40) - 12) < 2
    assert np.std((after / (response * dust) - 1)[ring]) < 0.003
    assert np.std((before / response - 1)[ring]) < 0.003
