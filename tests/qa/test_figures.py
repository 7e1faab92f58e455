"""The QA figures' pure helpers, on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mstlake.qa import figures


def test_a_lomb_scargle_period_is_found_in_irregular_noisy_sampling():
    rng = np.random.default_rng(5)
    mjd = np.sort(rng.uniform(60000, 60030, 120))
    period = 0.6137
    mag = 15 + 0.3 * np.sin(2 * np.pi * mjd / period) + rng.normal(0, 0.03, mjd.size)
    found, false_alarm = figures.best_period(mjd, mag, np.full(mjd.size, 0.03))
    assert abs(found - period) / period < 1e-3 and false_alarm < 1e-6
    assert figures.best_period(mjd[:5], mag[:5], np.full(5, 0.03)) == (None, 1.0)


def test_binning_keeps_a_single_flagged_pixel_with_the_block_maximum():
    mask = np.zeros((2000, 3000), np.uint8)
    mask[1234, 2345] = 1
    shrunk = figures.binned(mask, 900, how="max")
    assert max(shrunk.shape) <= 900 and shrunk.sum() == 1
    assert figures.binned(mask.astype(float), 900).max() < 0.2  # the mean dilutes it


def test_the_noise_model_has_the_slopes_of_sky_and_photon_noise():
    faint = figures.noise_model([20.0, 21.0], zero_point=25.0, gain=1.0, sky_error_adu=100.0)
    bright = figures.noise_model([10.0, 11.0], zero_point=25.0, gain=1.0, sky_error_adu=100.0)
    assert np.isclose(faint["total"][1] / faint["total"][0], 10**0.4, rtol=0.02)  # sky: sigma ~ 1 / flux
    assert np.isclose(bright["total"][1] / bright["total"][0], 10**0.2, rtol=0.02)  # photons: sigma ~ 1 / sqrt(flux)
    assert np.isclose(bright["photon"][0], 2.5 / np.log(10) / np.sqrt(10 ** (0.4 * 15)), rtol=1e-9)


def test_cell_medians_recover_a_distortion_pattern():
    rng = np.random.default_rng(1)
    shape = (600, 900)
    x, y = rng.uniform(0, 900, 5000), rng.uniform(0, 600, 5000)
    dx, dy = 0.1 * (x - 450), -0.2 * (y - 300)
    cx, cy, mx, my = figures.cell_medians(x, y, dx + rng.normal(0, 1, x.size), dy, shape, cells=(4, 6))
    assert np.allclose(mx, 0.1 * (cx - 450), atol=3) and np.allclose(my, -0.2 * (cy - 300), atol=3)


def test_a_folded_light_curve_draws_two_cycles_and_flagged_points_apart():
    mjd = np.linspace(60000, 60010, 40)
    points = pd.DataFrame({"mjd": mjd, "band": "g", "mag": 15 + 0.2 * np.sin(mjd), "mag_err": 0.02, "good": np.arange(40) % 10 != 0})
    fig = figures.light_curve_panels([("a star", points, 2 * np.pi)])
    ax = fig.axes[0]
    xs = np.concatenate([line.get_xdata() for line in ax.lines])
    assert xs.min() >= 0 and xs.max() < 2 and xs.max() > 1.5  # phase over two cycles
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["g", "flagged"]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # bright up
