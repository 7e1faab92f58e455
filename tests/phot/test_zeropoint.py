import numpy as np
import pytest

from mstlake.phot.zeropoint import ZeroPointError, fit_zero_point


def test_zero_point_surface_recovered_despite_variables_and_blends():
    rng = np.random.default_rng(5)
    shape = (629, 958)
    n = 300
    x, y = rng.uniform(0, 958, n), rng.uniform(0, 629, n)
    u, v = (x - 478.5) / 479, (y - 314) / 479
    true_zp = 24.3 + 0.02 * u - 0.01 * v - 0.03 * (u * u + v * v)  # vignetting-like residual
    mag_std = rng.uniform(12, 17, n)
    err_inst = 0.001 * 10 ** (0.2 * (mag_std - 12))
    mag_inst = mag_std - true_zp + rng.normal(0, 1, n) * err_inst
    mag_inst[:15] -= 0.3  # blends and variables: brighter than the library says
    zp = fit_zero_point(x, y, mag_inst, err_inst, mag_std, np.full(n, 0.003), shape=shape)
    grid_x, grid_y = np.meshgrid(np.linspace(0, 957, 7), np.linspace(0, 628, 5))
    gu, gv = (grid_x - 478.5) / 479, (grid_y - 314) / 479
    expected = 24.3 + 0.02 * gu - 0.01 * gv - 0.03 * (gu * gu + gv * gv)
    assert np.max(np.abs(zp(grid_x.ravel(), grid_y.ravel()) - expected.ravel())) < 0.002
    assert zp.n_rejected >= 15 and zp.at_centre == pytest.approx(24.3, abs=0.001)


def test_a_frame_without_enough_standards_is_refused():
    with pytest.raises(ZeroPointError, match="only 3 standard stars"):
        fit_zero_point([1, 2, 3], [1, 2, 3], [10, 11, 12], [0.01] * 3, [20, 21, 22], [0.01] * 3, shape=(10, 10))


def test_few_noisy_standards_on_a_flat_zero_point_buy_no_surface():
    # 35 standards with 15 mmag errors and no real variation: a six-term surface would carry
    # ~7 mmag of noise to the frame's corners; the data choose the constant
    rng = np.random.default_rng(8)
    shape = (629, 958)
    errors = []
    for _ in range(20):
        x, y = rng.uniform(0, 958, 35), rng.uniform(0, 629, 35)
        mag_std = rng.uniform(14, 17, 35)
        mag_inst = mag_std - 24.3 + rng.normal(0, 0.015, 35)
        zp = fit_zero_point(x, y, mag_inst, np.full(35, 0.01), mag_std, np.full(35, 0.011), shape=shape)
        errors.append(zp([0.0, 957.0], [0.0, 628.0]) - 24.3)
    corner_rms = float(np.sqrt(np.mean(np.square(errors))))
    assert corner_rms < 0.010  # always six terms: 17 mmag; a constant: 15 / sqrt(35) = 2.5 mmag


def test_a_real_surface_keeps_its_terms_with_few_standards():
    rng = np.random.default_rng(9)
    shape = (629, 958)
    x, y = rng.uniform(0, 958, 35), rng.uniform(0, 629, 35)
    u, v = (x - 478.5) / 479, (y - 314) / 479
    mag_std = rng.uniform(14, 17, 35)
    mag_inst = mag_std - (24.3 - 0.2 * (u * u + v * v)) + rng.normal(0, 0.01, 35)  # a PSF-model deficit at the edges
    zp = fit_zero_point(x, y, mag_inst, np.full(35, 0.007), mag_std, np.full(35, 0.007), shape=shape)
    assert zp.surface.degree == 2
    assert zp([957.0], [628.0])[0] == pytest.approx(24.3 - 0.2 * ((478.5 / 479) ** 2 + (314 / 479) ** 2), abs=0.02)
