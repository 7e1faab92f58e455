"""Stars no first detection found, looked for on the image with the modelled ones subtracted."""

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from mstlake.astrom import extract
from mstlake.phot import psf as psf_kernels
from mstlake.phot.frame import artificial_star_scatter, find_unmodelled
from tests.phot.test_psf import moffat_stars

SHAPE = (300, 420)
SKY_VARIANCE = 125.0
FWHM = 2.6


@pytest.fixture(scope="module")
def crowded():
    """Bright stars and faint reference stars, all modelled; beside each reference star an equal
    neighbour 1.2 FWHM away, and faint isolated stars at S/N ~ 8, neither modelled."""
    rng = np.random.default_rng(11)
    gx, gy = np.meshgrid(np.arange(8), np.arange(5))
    bright_x, bright_y = 30 + gx.ravel() * 50 + rng.uniform(0, 1, gx.size), 30 + gy.ravel() * 55 + rng.uniform(0, 1, gx.size)
    bright_flux = np.full(bright_x.size, 2e5)
    ref_x, ref_y = bright_x[:20] + 20.3, bright_y[:20] + 25.7
    angle = rng.uniform(0, 2 * np.pi, 20)
    pair_x, pair_y = ref_x + 1.2 * FWHM * np.cos(angle), ref_y + 1.2 * FWHM * np.sin(angle)
    lone_x, lone_y = bright_x[20:] + 25.4, bright_y[20:] - 24.6
    faint = 1500.0
    x = np.concatenate([bright_x, ref_x, pair_x, lone_x])
    y = np.concatenate([bright_y, ref_y, pair_y, lone_y])
    flux = np.concatenate([bright_flux, np.full(20, faint), np.full(20, faint), np.full(lone_x.size, 400.0)])
    truth = moffat_stars(SHAPE, x, y, flux, fwhm=FWHM)
    image = (truth + rng.normal(0, np.sqrt(SKY_VARIANCE + truth))).astype(np.float32)
    model = psf_kernels.build_psf(image, np.full(SHAPE, SKY_VARIANCE), np.zeros(SHAPE, bool), bright_x, bright_y, bright_flux, fwhm=FWHM, gain=1.0, degree=0)
    modelled = pd.DataFrame({"x": np.concatenate([bright_x, ref_x]), "y": np.concatenate([bright_y, ref_y]), "flux": np.concatenate([bright_flux, np.full(20, faint)])})
    return image, model, modelled, (ref_x, ref_y), (pair_x, pair_y), (lone_x, lone_y), faint


def forced_fluxes(image, model, x, y, start):
    noise = np.full(SHAPE, SKY_VARIANCE, np.float32)
    return psf_kernels.psf_photometry(image, noise, np.zeros(SHAPE, bool), model, x, y, start, fit_position=False, gain=1.0).flux


def test_stars_hidden_beside_modelled_ones_are_found_on_the_residual(crowded):
    image, model, modelled, _, (pair_x, pair_y), (lone_x, lone_y), _ = crowded
    variance = np.full(SHAPE, SKY_VARIANCE, np.float32) + np.maximum(image, 0)
    found = find_unmodelled(image, variance, np.zeros(SHAPE, np.uint8), model, modelled, thresh=1.5, minarea=5)
    assert (found.flag.values & extract.FOUND_ON_RESIDUAL).all()
    tree = cKDTree(found[["x", "y"]].to_numpy())
    assert np.all(tree.query(np.column_stack([pair_x, pair_y]))[0] < 1.0)  # every hidden neighbour
    assert np.mean(tree.query(np.column_stack([lone_x, lone_y]))[0] < 1.0) >= 0.7  # most S/N ~ 8 stars
    assert cKDTree(modelled[["x", "y"]].to_numpy()).query(found[["x", "y"]].to_numpy())[0].min() > 1.0
    # a bright star's subtracted model leaves no false stars: the noise peaks a 1.5-sigma threshold
    # finds fall near bright stars no more often than their share of the area
    real = np.concatenate([np.column_stack([pair_x, pair_y]), np.column_stack([lone_x, lone_y])])
    spurious = found[cKDTree(real).query(found[["x", "y"]].to_numpy())[0] > 2.0]
    near_bright = cKDTree(modelled[["x", "y"]].to_numpy()[:40]).query(spurious[["x", "y"]].to_numpy())[0] < 6.0
    share = 40 * np.pi * 6.0**2 / (SHAPE[0] * SHAPE[1])
    assert near_bright.sum() <= 2 * share * len(spurious) + 2


def test_fitting_the_found_stars_takes_their_light_off_their_neighbours(crowded):
    image, model, modelled, (ref_x, ref_y), _, _, faint = crowded
    variance = np.full(SHAPE, SKY_VARIANCE, np.float32) + np.maximum(image, 0)
    found = find_unmodelled(image, variance, np.zeros(SHAPE, np.uint8), model, modelled, thresh=1.5, minarea=5)
    before = forced_fluxes(image, model, modelled.x, modelled.y, modelled.flux)[-20:]
    scene_x, scene_y = np.concatenate([modelled.x, found.x]), np.concatenate([modelled.y, found.y])
    after = forced_fluxes(image, model, scene_x, scene_y, np.concatenate([modelled.flux, found.flux]))[len(modelled) - 20 : len(modelled)]
    assert ref_x.size == 20
    bias_before, bias_after = np.mean(before) - faint, np.mean(after) - faint
    assert bias_before > 10 * np.std(after) / np.sqrt(20)  # an unmodelled neighbour's light taken
    assert abs(bias_after) < bias_before / 8


def test_artificial_stars_read_the_sky_noise_and_the_unmodelled_stars(crowded):
    _, model, _, _, _, _, _ = crowded
    rng = np.random.default_rng(12)
    noise = np.full(SHAPE, SKY_VARIANCE, np.float32)
    hidden = np.zeros(SHAPE, bool)
    probe = {"hidden": hidden, "psf": model, "gain": 1.0, "iterations": 3, "spacing_fwhm": 6.0}
    # on white noise alone, the scatter is the error the fit claims
    sky = rng.normal(0, np.sqrt(SKY_VARIANCE), SHAPE).astype(np.float32)
    claimed = psf_kernels.psf_photometry(sky, noise, hidden, model, [200.0], [150.0], [0.0], fit_position=False).flux_err[0]
    empty = pd.DataFrame({"x": [], "y": [], "flux": []})
    assert artificial_star_scatter(sky, noise, scene=empty, flux=10 * claimed, **probe) == pytest.approx(claimed, rel=0.12)
    # faint stars nobody modelled add to it; found on the residual and fitted, much less
    x, y = rng.uniform(10, SHAPE[1] - 10, 700), rng.uniform(10, SHAPE[0] - 10, 700)
    faint = moffat_stars(SHAPE, x, y, rng.uniform(8, 14, 700) * claimed, fwhm=FWHM)
    image = (sky + rng.normal(0, np.sqrt(faint)) + faint).astype(np.float32)
    found = find_unmodelled(image, noise + faint, np.zeros(SHAPE, np.uint8), model, empty, thresh=1.5, minarea=5)
    fitted = found[["x", "y", "flux"]]
    before = artificial_star_scatter(image, noise, scene=empty, flux=10 * claimed, **probe)
    after = artificial_star_scatter(image, noise, scene=fitted, flux=10 * claimed, **probe)
    assert before > 1.3 * claimed
    assert after < claimed + 0.5 * (before - claimed)


def test_the_background_mapped_without_the_fitted_stars_is_the_sky():
    """A sky crowded with faint stars: sep's map made with them in sits high by a share of their
    light; made again on the image with the fitted stars subtracted, it is the sky."""
    from types import SimpleNamespace

    from mstlake.pipeline.stack import background_remapped

    rng = np.random.default_rng(5)
    sky, n_faint = 200.0, 1200
    gx, gy = np.meshgrid(np.arange(8), np.arange(5))
    bright_x, bright_y = 30 + gx.ravel() * 50 + rng.uniform(0, 1, gx.size), 30 + gy.ravel() * 55 + rng.uniform(0, 1, gx.size)
    x = np.concatenate([bright_x, rng.uniform(5, SHAPE[1] - 5, n_faint)])
    y = np.concatenate([bright_y, rng.uniform(5, SHAPE[0] - 5, n_faint)])
    flux = np.concatenate([np.full(bright_x.size, 2e5), rng.uniform(300, 1500, n_faint)])
    truth = moffat_stars(SHAPE, x, y, flux, fwhm=FWHM)
    image = (sky + truth + rng.normal(0, np.sqrt(SKY_VARIANCE), SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    extraction = extract.extract_sources(image, np.full(SHAPE, SKY_VARIANCE, np.float32), mask, thresh=3.0, minarea=5)
    first_excess = float(np.median(extraction.background)) - sky
    model = psf_kernels.build_psf(image - sky, np.full(SHAPE, SKY_VARIANCE), np.zeros(SHAPE, bool), bright_x, bright_y, flux[: bright_x.size], fwhm=FWHM, gain=1.0, degree=0)
    measured = SimpleNamespace(psf=model, scene=pd.DataFrame({"x": x, "y": y, "flux": flux}))
    again, residual = background_remapped(image, mask, extraction, measured)
    assert first_excess > 2.0  # of the ~9 ADU a pixel the faint stars add on average
    assert abs(float(np.median(again.background)) - sky) < 0.25 * first_excess
    np.testing.assert_allclose(residual, image - again.background)
    assert again.background_noise is extraction.background_noise
