"""Aperture photometry and the best/reference aperture and aperture-correction logic."""

from __future__ import annotations

import numpy as np
import pytest

from mstlake.phot import aperture as ap
from mstlake.phot.surface import Surface


def _gaussian_growth(total, sigma_px, background_var, diameters):
    r = np.asarray(diameters) / 2
    flux = total * (1 - np.exp(-(r**2) / (2 * sigma_px**2)))
    return flux, np.sqrt(flux + np.pi * r**2 * background_var)


def test_fluxes_recover_a_star_and_flag_masked_pixels():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:120, 0:120]
    sigma, total = 1.3, 5e4
    star = total / (2 * np.pi * sigma**2) * np.exp(-((xx - 60.3) ** 2 + (yy - 59.6) ** 2) / (2 * sigma**2))
    variance = np.full(star.shape, 100.0) + star
    image = star + rng.normal(0, 1, star.shape) * np.sqrt(variance)
    mask = np.zeros(star.shape, bool)
    mask[59, 75] = True  # 15 px from the star: inside apertures of diameter >= 32
    result = ap.aperture_fluxes(image, variance, [60.3], [59.6], mask=mask)
    k = list(result.diameters).index(20.0)
    assert result.flux[0, k] == pytest.approx(total, abs=4 * result.flux_err[0, k])
    assert not result.masked[0, : list(result.diameters).index(28.0) + 1].any() and result.masked[0, -1]


def test_best_and_reference_apertures_on_synthetic_growth_curves():
    diameters = np.array(ap.DIAMETERS_PX)
    sigma = 1.2
    flux, error = zip(*[_gaussian_growth(t, sigma, 400.0, diameters) for t in np.geomspace(5e3, 5e5, 30)])
    fluxes = ap.ApertureFluxes(diameters, np.array(flux), np.array(error), np.zeros((30, diameters.size), bool))
    best, chosen = ap.best_aperture(fluxes)
    snr = np.array(flux) / np.array(error)
    expected = np.argmax(snr, axis=1)
    best_error = 1.0857 / snr.max(axis=1)
    assert chosen.tolist() == ((best_error >= 0.002) & (best_error <= 0.008)).tolist()
    assert best == int(np.round(np.median(expected[chosen])))
    reference = ap.reference_aperture(fluxes, chosen)
    # a Gaussian's growth curve: the first n where mag(n) - mag(n-2) < 1e-4
    curve = -2.5 * np.log10(1 - np.exp(-((diameters / 2) ** 2) / (2 * sigma**2)))
    first = next(n for n in range(2, diameters.size) if abs(curve[n] - curve[n - 2]) < 1e-4)
    assert reference == first and reference > best


def test_aperture_correction_recovers_a_surface_despite_outliers():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 2000, 400), rng.uniform(0, 1300, 400)
    true = Surface(np.array([-0.05, 0.01, -0.02, 0.015, -0.005, 0.01]), (999.5, 649.5), 1000.0, 2, 0.0, 0, 0)
    mag_best = rng.uniform(12, 15, 400)
    mag_ref = mag_best + true(x, y) + rng.normal(0, 0.001, 400)
    mag_ref[:20] += 0.2  # blends
    fitted = ap.aperture_correction(x, y, mag_best, mag_ref, shape=(1300, 2000))
    assert fitted.rms == pytest.approx(0.001, rel=0.2) and fitted.n_used >= 375 and fitted.n_rejected >= 20
    grid_x, grid_y = np.meshgrid(np.linspace(0, 2000, 9), np.linspace(0, 1300, 7))
    assert np.max(np.abs(fitted(grid_x.ravel(), grid_y.ravel()) - true(grid_x.ravel(), grid_y.ravel()))) < 0.001


def test_one_pass_ring_sums_match_exact_apertures():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:200, 0:260]
    grid_x, grid_y = np.meshgrid(np.arange(4), np.arange(3))
    x = np.r_[40 + 60 * grid_x.ravel(), rng.uniform(30, 230, 12)] + rng.uniform(0, 1, 24)  # 12 alone, 12 anywhere
    y = np.r_[40 + 60 * grid_y.ravel(), rng.uniform(30, 170, 12)] + rng.uniform(0, 1, 24)
    image = rng.normal(0, 3, xx.shape)
    for xi, yi in zip(x, y, strict=True):
        image += 2e4 * 1.5 / (np.pi * 2.2**2) * (1 + ((xx - xi) ** 2 + (yy - yi) ** 2) / 2.2**2) ** -2.5
    variance = np.full(image.shape, 9.0)
    mask = np.zeros(image.shape, bool)
    mask[100, 100:104] = True
    fast = ap.aperture_fluxes(image, variance, x, y, mask=mask)
    exact = ap.aperture_fluxes(image, variance, x, y, mask=mask, exact_up_to_px=1000)
    ringed = fast.diameters > 20
    assert np.allclose(fast.flux[:, ~ringed], exact.flux[:, ~ringed])
    pull = np.abs(fast.flux[:, ringed] - exact.flux[:, ringed]) / exact.flux_err[:, ringed]
    alone = (np.sort(np.hypot(x[:, None] - x, y[:, None] - y), axis=1)[:, 1] > 30) & ~exact.masked.any(axis=1)
    assert alone.sum() >= 4 and np.max(pull[alone]) < 0.1  # a tenth of the noise
    assert np.median(pull) < 0.05  # a neighbour's core on the aperture edge is where the shares differ most
    assert np.allclose(fast.flux_err[:, ringed], exact.flux_err[:, ringed], rtol=0.01)
    assert np.mean(fast.masked == exact.masked) > 0.98


def test_model_aperture_correction_follows_the_psf_across_the_detector():
    rng = np.random.default_rng(8)
    shape = (1000, 1500)
    x, y = rng.uniform(0, 1500, 200), rng.uniform(0, 1000, 200)
    alpha = 2.5 * (1 + 0.1 * ((x - 750) ** 2 + (y - 500) ** 2) / 900**2)  # wider towards the corners
    beta = 3.0
    diameters = np.asarray(ap.DIAMETERS_PX)
    growth = 1 - (1 + (diameters[None, :] / 2 / alpha[:, None]) ** 2) ** (1 - beta)
    flux = 10 ** rng.uniform(4.5, 5.5, 200)
    model_half = 11
    own = flux[:, None] * np.where(diameters / 2 <= model_half, growth, growth[:, diameters / 2 <= model_half][:, -1:])
    error = np.sqrt(flux[:, None] * growth + np.pi * (diameters / 2) ** 2 * 100.0)
    total = flux[:, None] * growth + rng.normal(0, 1, growth.shape) * error
    best, reference = 5, 24  # 12 and 50 px
    as_fluxes = lambda f: ap.ApertureFluxes(diameters, f, error, np.zeros(f.shape, bool))  # noqa: E731
    fitted = ap.model_aperture_correction(x, y, as_fluxes(total), as_fluxes(own), best, reference, model_half_px=model_half, shape=shape)
    true = -2.5 * np.log10(growth[:, reference] / growth[:, best])
    assert np.sqrt(np.mean((fitted(x, y) - true) ** 2)) < 0.002
    direct = ap.aperture_correction(x, y, -2.5 * np.log10(total[:, best]), -2.5 * np.log10(total[:, reference]), shape=shape)
    assert np.sqrt(np.mean((fitted(x, y) - true) ** 2)) < np.sqrt(np.mean((direct(x, y) - true) ** 2))  # less noise than the direct fit
