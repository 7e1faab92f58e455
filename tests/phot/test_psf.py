"""ePSF and PSF photometry on synthetic frames (Moffat stars integrated over the pixels)."""

import numpy as np
import pytest

from mstlake.phot import psf as psf_kernels


def moffat_stars(shape, x, y, flux, *, fwhm, beta=3.0, half=15, sub=5):
    """Stars integrated over each pixel by sub-sampling (the model builder never sees this form)."""
    image = np.zeros(shape)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    for xi, yi, fi in zip(x, y, flux, strict=True):
        ix, iy = round(xi), round(yi)
        yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
        value = sum((1 + ((xx + a - xi) ** 2 + (yy + b - yi) ** 2) / alpha**2) ** -beta for a in offsets for b in offsets)
        value = value * (beta - 1) / (np.pi * alpha**2) / sub**2
        inside = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        np.add.at(image, (yy[inside], xx[inside]), fi * value[inside])
    return image


SHAPE = (300, 420)
SKY_VARIANCE = 125.0  # sky + read noise, in the units of the image (gain 1)


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(7)
    gx, gy = np.meshgrid(np.arange(10), np.arange(7))
    n = gx.size
    x = 25 + gx.ravel() * 41 + rng.uniform(0, 1, n)
    y = 25 + gy.ravel() * 41 + rng.uniform(0, 1, n)
    flux = 10 ** rng.uniform(4.0, 5.5, n)
    truth = moffat_stars(SHAPE, x, y, flux, fwhm=2.6)
    image = truth + rng.normal(0, np.sqrt(SKY_VARIANCE + truth))
    model = psf_kernels.build_psf(image, np.full(SHAPE, SKY_VARIANCE), np.zeros(SHAPE, bool), x + rng.normal(0, 0.05, n), y + rng.normal(0, 0.05, n), flux * 1.05, fwhm=2.6, gain=1.0, degree=0)
    return rng, x, y, flux, truth, model


def test_epsf_matches_the_pixel_integrated_profile(field):
    _, _, _, _, _, model = field
    assert model.oversampling == 1  # FWHM 2.6 px: a grid at the pixel pitch suffices
    rows, cols, built = model.phase_stamps(4).evaluate([150.3], [100.0])
    true = moffat_stars(SHAPE, [150.3], [100.0], [1.0], fwhm=2.6)[rows[0][:, None], cols[0][None, :]]
    assert np.abs(built[0] - true).max() < 0.03 * true.max()
    assert built.sum() == pytest.approx(true.sum(), rel=0.005)
    assert model.fwhm == pytest.approx(2.6, rel=0.15)


def test_undersampled_psf_gets_a_finer_grid_and_still_matches():
    """Below WELL_SAMPLED_FWHM the model is oversampled 2x; the well-sampled one is at the pixel pitch."""
    rng = np.random.default_rng(8)
    gx, gy = np.meshgrid(np.arange(10), np.arange(7))
    x, y = 25 + gx.ravel() * 41 + rng.uniform(0, 1, gx.size), 25 + gy.ravel() * 41 + rng.uniform(0, 1, gx.size)
    flux = 10 ** rng.uniform(4.5, 5.5, x.size)
    truth = moffat_stars(SHAPE, x, y, flux, fwhm=1.4)
    image = truth + rng.normal(0, np.sqrt(SKY_VARIANCE + truth))
    model = psf_kernels.build_psf(image, np.full(SHAPE, SKY_VARIANCE), np.zeros(SHAPE, bool), x, y, flux, fwhm=1.4, gain=1.0, degree=0)
    assert model.oversampling == 2
    for phase in (0.0, 0.3, 0.5):
        rows, cols, built = model.phase_stamps(4).evaluate([150.0 + phase], [100.0 + phase])
        true = moffat_stars(SHAPE, [150.0 + phase], [100.0 + phase], [1.0], fwhm=1.4)[rows[0][:, None], cols[0][None, :]]
        assert np.abs(built[0] - true).max() < 0.03 * true.max()
        assert built.sum() == pytest.approx(true.sum(), rel=0.005)


def test_psf_fit_recovers_fluxes_and_positions_at_the_noise(field):
    rng, x, y, flux, truth, model = field
    pulls, offsets = [], []
    for _ in range(4):  # fresh noise: the model was built on another realisation
        image = truth + rng.normal(0, np.sqrt(SKY_VARIANCE + truth))
        fit = psf_kernels.psf_photometry(image, np.full(SHAPE, SKY_VARIANCE), np.zeros(SHAPE, bool), model, x + rng.normal(0, 0.3, x.size), y + rng.normal(0, 0.3, x.size), flux * 0.8, fit_position=True, gain=1.0)
        pulls.append((fit.flux - flux) / fit.flux_err)
        offsets.append(np.hypot(fit.x - x, fit.y - y))
    pulls, offsets = np.concatenate(pulls), np.concatenate(offsets)
    assert abs(np.median(pulls)) < 0.5
    # photon noise plus the model's own noise: 70 stars, the brightest as bright as the model's
    # best (the true profile as the model gives 0.94; see CHANGELOG)
    assert np.std(pulls) < 2.0
    assert np.percentile(offsets, 90) < 0.05  # started 0.3 px off


def test_forced_photometry_of_a_known_flux_and_of_nothing(field):
    rng, x, y, flux, truth, model = field
    faint_x, faint_y, faint_flux = 200.4, 140.6, 400.0  # S/N ~ 6, between the grid stars
    scene = truth + moffat_stars(SHAPE, [faint_x], [faint_y], [faint_flux], fwhm=2.6)
    fluxes, empties = [], []
    for _ in range(30):
        image = scene + rng.normal(0, np.sqrt(SKY_VARIANCE + scene))
        fit = psf_kernels.psf_photometry(image, np.full(SHAPE, SKY_VARIANCE), np.zeros(SHAPE, bool), model, np.r_[x, faint_x, 60.5], np.r_[y, faint_y, 250.2], np.r_[flux, 0.0, 0.0], fit_position=False, gain=1.0)
        fluxes.append(fit.flux[-2])
        empties.append(fit.flux[-1] / fit.flux_err[-1])
    assert np.mean(fluxes) == pytest.approx(faint_flux, abs=3 * np.std(fluxes) / np.sqrt(30) + 0.01 * faint_flux)
    assert np.min(empties) < 0 < np.max(empties)  # blank sky: negative fluxes are kept
    assert np.std(empties) == pytest.approx(1.0, abs=0.35)


def test_neighbours_are_subtracted_before_fitting():
    rng = np.random.default_rng(11)
    x = np.array([60.0, 64.2, 140.3, 100.0, 30.5, 170.2, 120.6])
    y = np.array([50.0, 51.1, 60.7, 30.2, 80.4, 90.9, 95.3])
    flux = np.array([2e5, 2e4, 1e5, 8e4, 6e4, 9e4, 7e4])
    shape = (120, 200)
    truth = moffat_stars(shape, x, y, flux, fwhm=2.8)
    image = truth + rng.normal(0, np.sqrt(SKY_VARIANCE + truth))
    isolated = np.array([False, False, True, True, True, True, True])
    model = psf_kernels.build_psf(image, np.full(shape, SKY_VARIANCE), np.zeros(shape, bool), x[isolated], y[isolated], flux[isolated], fwhm=2.8, gain=1.0, degree=0)
    together = psf_kernels.psf_photometry(image, np.full(shape, SKY_VARIANCE), np.zeros(shape, bool), model, x, y, flux, fit_position=True, gain=1.0)
    alone = psf_kernels.psf_photometry(image, np.full(shape, SKY_VARIANCE), np.zeros(shape, bool), model, x[1:2], y[1:2], flux[1:2], fit_position=False, gain=1.0)
    # the faint star 4.3 px from a 10x brighter one: fitted alone it takes most of its neighbour's
    # light; fitted together it is within the error of a model from five stars, at 10x its flux
    assert alone.flux[0] / flux[1] > 3
    assert abs(together.flux[1] / flux[1] - 1) < 0.12
    assert abs(together.flux[0] / flux[0] - 1) < 0.02


def test_unresolved_catalogue_pair_is_fitted_as_one_and_shared():
    from mstlake.phot.frame import unresolved_blends

    # a 16th-mag star with a 20th-mag one 0.2 px away, and an isolated star: fitted apart, the
    # pair's fluxes trade light without limit; as one blend they share it by catalogue brightness
    x, y = np.array([100.0, 100.2, 140.0]), np.array([60.0, 60.1, 60.0])
    brightness = 10 ** (-0.4 * np.array([16.0, 20.0, 16.5]))
    group, gx, gy = unresolved_blends(x, y, brightness, separation_px=1.3)
    assert group[0] == group[1] != group[2] and gx.size == 2
    assert gx[group[0]] == pytest.approx((100.0 * brightness[0] + 100.2 * brightness[1]) / brightness[:2].sum())
    assert gx[group[2]] == 140.0 and gy[group[2]] == 60.0


def test_detections_find_their_place_among_the_forced_photometrys_stars():
    from mstlake.phot.frame import scene_index_of_detections

    # detections 0..4; catalogue stars: 0 -> detection 1 (alone), 1 and 2 -> detection 3 (one
    # detection holding two stars), 3 and 4 an unresolved blend (group 3) held by detection 4,
    # 5 unmatched; detections 0 and 2 are not in the catalogue
    matched_detection = np.array([1, 3, 3, 4, 4, -1])
    blend = np.array([0, 1, 2, 3, 3, 4])
    others = np.array([0, 2])
    index = scene_index_of_detections(5, matched_detection, blend, others)
    assert list(index) == [5, 0, 6, -1, -1]


def test_neighbour_free_growth_uses_each_stars_own_psf_where_it_is():
    from mstlake.phot import aperture as ap
    from mstlake.phot.frame import neighbour_free_apertures

    # the PSF widens from left to right; a star at the right edge must keep its own (wide) model
    rng = np.random.default_rng(12)
    shape = (260, 900)
    gx, gy = np.meshgrid(np.arange(20), np.arange(5))
    x = 30 + gx.ravel() * 42 + rng.uniform(0, 1, gx.size)
    y = 40 + gy.ravel() * 45 + rng.uniform(0, 1, gx.size)
    flux = np.full(x.size, 2e5)
    image = np.zeros(shape)
    for column in np.unique(gx):
        chosen = gx.ravel() == column
        image += moffat_stars(shape, x[chosen], y[chosen], flux[chosen], fwhm=2.2 + 1.4 * column / 19)
    noise = np.full(shape, SKY_VARIANCE)
    image = image + rng.normal(0, np.sqrt(SKY_VARIANCE + image))
    model = psf_kernels.build_psf(image, noise, np.zeros(shape, bool), x, y, flux, fwhm=2.8, gain=1.0, degree=1)
    sample = np.array([np.argmax(x)])  # the right-most star
    _, own = neighbour_free_apertures(image, noise, np.zeros(shape, bool), model, x, y, flux, sample)
    there = psf_kernels.model_image(shape, model, x[sample], y[sample], flux[sample])
    expected = ap.aperture_fluxes(there, np.zeros(shape), x[sample], y[sample])
    assert np.allclose(own.flux, expected.flux, rtol=1e-4)


def test_psf_stars_leave_out_track_pieces_galaxies_and_merged_pairs():
    """The brightest clean detections on a frame are often not stars: sep's own shapes must tell."""
    from mstlake.astrom.extract import extract_sources
    from mstlake.phot.frame import point_like

    rng = np.random.default_rng(11)
    gx, gy = np.meshgrid(np.arange(9), np.arange(6))
    x, y = 30 + gx.ravel() * 42 + rng.uniform(0, 1, gx.size), 30 + gy.ravel() * 42 + rng.uniform(0, 1, gx.size)
    image = moffat_stars(SHAPE, x, y, np.full(x.size, 3e4), fwhm=2.6)
    intruders = {"track piece": (61.0, 51.0), "galaxy": (230.0, 135.0), "merged pair": (355.0, 220.0)}
    image[51, 48:75] += 8e3  # a short, bright satellite-track segment
    image += moffat_stars(SHAPE, [230.0], [135.0], [2e5], fwhm=8.0)
    image += moffat_stars(SHAPE, [353.2, 356.8], [220.0, 220.0], [6e4, 6e4], fwhm=2.6)  # 1.4 FWHM apart: sep sees one source
    image += rng.normal(0, np.sqrt(SKY_VARIANCE), SHAPE)
    found = extract_sources(image, np.full(SHAPE, SKY_VARIANCE, np.float32), np.zeros(SHAPE, np.uint16))
    sources = found.sources
    stellar = point_like(sources)
    for name, (ix, iy) in intruders.items():
        nearest = np.argmin(np.hypot(sources.x - ix, sources.y - iy))
        assert np.hypot(sources.x.iloc[nearest] - ix, sources.y.iloc[nearest] - iy) < 4, name
        assert not stellar[nearest], name
    star_rows = [np.argmin(np.hypot(sources.x - xi, sources.y - yi)) for xi, yi in zip(x, y, strict=True)]
    assert stellar[star_rows].mean() > 0.95


def _widening_psf(shape, *, fwhm_left=2.4, fwhm_right=3.0):
    """An ePSF (degree 1) whose FWHM grows linearly from the left edge of the detector to the
    right, made by hand from Moffat grids (the model a varying field would give)."""
    ny, nx = shape
    half = 10
    grids = [moffat_stars((2 * half + 1, 2 * half + 1), [half], [half], [1.0], fwhm=w, half=half) for w in (fwhm_left, fwhm_right)]
    centre, scale = ((nx - 1) / 2, (ny - 1) / 2), max(nx, ny) / 2
    u_left, u_right = (0 - centre[0]) / scale, (nx - 1 - centre[0]) / scale
    slope = (grids[1] - grids[0]) / (u_right - u_left)
    constant = grids[0] - slope * u_left
    basis = np.stack([constant, slope, np.zeros_like(constant)])
    return psf_kernels.EffectivePSF(basis, 1, half, centre, scale, 1, 0.5 * (fwhm_left + fwhm_right))


def test_a_varying_psf_changes_smoothly_across_the_detector_cells():
    """Stars move by hundreds of pixels between frames: a model held constant over each detector
    cell would give a star a different flux error on each frame. The tabulated stamps are blended
    between cell centres, so the model follows the polynomial within a cell and has no step at
    its edges."""
    shape = (800, 1600)
    model = _widening_psf(shape)
    stamps = model.phase_stamps(5, derivatives=False)
    columns = stamps.cells[1]
    boundary = shape[1] / columns * 3 - 0.5  # between the 3rd and 4th cell columns
    peaks = {}
    left, right, far_left, far_right = (float(np.rint(boundary + d)) for d in (-0.5, 0.5, -0.5 * shape[1] / columns, 0.5 * shape[1] / columns))
    for x in (left, right, far_left, far_right):  # whole pixels: the stamps' centre is a grid node
        _, _, value = stamps.evaluate([x], [400.0])
        peaks[x] = float(value[0, 5, 5])
    exact = {x: float(model.grid_at(x, 400.0)[10, 10]) for x in peaks}
    across_cell = abs(exact[far_right] - exact[far_left])
    step = abs(peaks[right] - peaks[left])
    assert step < 0.05 * across_cell  # held per cell, the step would be the whole cell's change
    for x in peaks:
        assert peaks[x] == pytest.approx(exact[x], rel=2e-3)

