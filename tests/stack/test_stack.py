"""Stacking kernels: the field grid, resampling (flux, masks) and the combination (noise, clipping)."""

import numpy as np
import pytest
from astropy.wcs import WCS

from mstlake.stack.combine import combine
from mstlake.stack.grid import field_grid
from mstlake.stack.resample import resample_frame

SCALE = 0.862 / 3600


def frame_wcs(ra=116.0, dec=28.0, rotation_deg=30.0, shape=(200, 300), sip=True) -> WCS:
    """A rotated TAN frame with a SIP distortion (the kind astrometry fits)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    wcs.wcs.cd = SCALE * np.array([[-c, s], [s, c]])
    if sip:
        from astropy.wcs import Sip

        a, b = np.zeros((4, 4)), np.zeros((4, 4))
        a[2, 0], a[0, 2], b[1, 1], a[3, 0] = 2e-5, -1e-5, 1.5e-5, 1e-8
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.pixel_shape = (shape[1], shape[0])
    return wcs


def gaussian_star(shape, x0, y0, flux, fwhm=2.6):
    y, x = np.mgrid[: shape[0], : shape[1]]
    sigma = fwhm / 2.3548
    return flux * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def test_the_grid_tiles_cover_the_field_and_share_its_wcs():
    grid = field_grid(116.0, 28.0, 0.2, 0.1, pixel_scale_arcsec=0.862, tile_px=256)
    assert grid.shape == (int(np.ceil(0.1 / SCALE)), int(np.ceil(0.2 / SCALE)))
    covered = np.zeros(grid.shape, int)
    for tile in grid.tiles():
        covered[tile.y, tile.x] += 1
        sky = grid.wcs.pixel_to_world(tile.x.start + 5, tile.y.start + 7)
        assert np.allclose(tile.wcs.world_to_pixel(sky), (5, 7), atol=1e-6)
    assert (covered == 1).all()
    assert np.allclose(grid.wcs.pixel_to_world_values((grid.shape[1] - 1) / 2, (grid.shape[0] - 1) / 2), (116.0, 28.0))


def test_resampling_conserves_a_star_flux_to_a_thousandth():
    shape = (200, 300)
    wcs_in = frame_wcs(shape=shape)
    flux = 1e5
    image = gaussian_star(shape, 151.3, 97.6, flux) + 0.0
    ra, dec = wcs_in.pixel_to_world_values(151.3, 97.6)
    grid = field_grid(float(ra), float(dec), 60 * SCALE, 60 * SCALE, pixel_scale_arcsec=0.862, tile_px=64)
    tile = grid.tiles()[0]
    out = resample_frame(image, np.ones(shape), np.zeros(shape, np.uint8), wcs_in, tile.wcs, tile.shape)
    x, y = tile.wcs.world_to_pixel_values(ra, dec)
    yy, xx = np.mgrid[: tile.shape[0], : tile.shape[1]]
    inside = (xx - x) ** 2 + (yy - y) ** 2 < 12**2
    assert not out.bad[inside].any()
    assert abs(np.nansum(out.image[inside]) / flux - 1) < 1e-3


def test_a_masked_pixel_never_reaches_a_good_output_pixel():
    shape = (120, 160)
    wcs_in = frame_wcs(shape=shape, rotation_deg=12.0)
    rng = np.random.default_rng(1)
    image = rng.normal(100, 3, shape)
    mask = np.zeros(shape, np.uint8)
    image[60, 80], mask[60, 80] = 1e9, 1  # a hot pixel, flagged bad
    ra, dec = wcs_in.pixel_to_world_values(80, 60)
    grid = field_grid(float(ra), float(dec), 50 * SCALE, 50 * SCALE, pixel_scale_arcsec=0.862, tile_px=64)
    tile = grid.tiles()[0]
    out = resample_frame(image, np.full(shape, 9.0), mask, wcs_in, tile.wcs, tile.shape)
    good = ~out.bad
    assert out.bad.sum() >= 1 and good.sum() > 0.9 * good.size
    assert np.nanmax(out.image[good]) < 200  # nothing of the 1e9 leaked
    assert np.allclose(np.nanmedian(out.image[good]), 100, atol=1)


def test_combining_n_frames_lowers_the_noise_by_sqrt_n_and_keeps_masked_values_out():
    rng = np.random.default_rng(2)
    n, shape, sigma = 16, (128, 128), 10.0
    images = rng.normal(50.0, sigma, (n, *shape))
    variances = np.full((n, *shape), sigma**2)
    bad = np.zeros((n, *shape), bool)
    images[3, 10, 10], bad[3, 10, 10] = 1e9, True  # masked: must not enter
    stack = combine(images, variances, bad)
    assert stack.count[10, 10] == n - 1 and abs(stack.image[10, 10] - np.mean(np.delete(images[:, 10, 10], 3))) < 1e-3
    assert abs(np.std(stack.image) / (sigma / np.sqrt(n)) - 1) < 0.05
    assert abs(np.mean(stack.variance) - sigma**2 / n) < 1e-6 * sigma**2
    assert abs(np.mean(stack.image) - 50.0) < 3 * sigma / np.sqrt(n * shape[0] * shape[1])


def test_clipping_drops_a_cosmic_ray_but_keeps_a_transient_seen_on_several_frames():
    rng = np.random.default_rng(3)
    n, shape = 8, (32, 32)
    images = rng.normal(0.0, 1.0, (n, *shape))
    images[5, 4, 4] += 500  # a cosmic ray the masks missed: one frame
    images[2:5, 20, 20] += 30  # a transient on three frames of the night
    stack = combine(images, np.ones((n, *shape)), np.zeros((n, *shape), bool))
    assert stack.count[4, 4] == n - 1 and abs(stack.image[4, 4]) < 2
    assert stack.image[20, 20] > 5  # diluted by the frames without it, not clipped away
    # a bright star's core changes with the seeing by far more than its photon noise: kept
    core = 1e5 * (1 + 0.2 * rng.uniform(-1, 1, n))
    bright = combine(core[:, None, None], core[:, None, None], np.zeros((n, 1, 1), bool))
    assert bright.count[0, 0] == n and np.isclose(bright.image[0, 0], np.sum(core / core) / np.sum(1 / core))
    # with two good values there is nothing to tell which is wrong: both stay
    two = combine(np.array([0.0, 500.0])[:, None, None], np.ones((2, 1, 1)), np.zeros((2, 1, 1), bool))
    assert two.count[0, 0] == 2
    median = combine(images, np.ones((n, *shape)), np.zeros((n, *shape), bool), method="median")
    assert abs(median.image[4, 4]) < 2 and np.isclose(np.nanmean(median.variance), np.pi / 2 / n)
    with pytest.raises(ValueError, match="mean"):
        combine(images, np.ones((n, *shape)), np.zeros((n, *shape), bool), method="sum")


def test_a_stack_reopens_from_zarr_and_fits_with_its_wcs(tmp_path):
    from astropy.io import fits

    from mstlake.stack.store import open_stack, write_stack

    grid = field_grid(116.0, 28.0, 100 * SCALE, 80 * SCALE, pixel_scale_arcsec=0.862, tile_px=64)
    rng = np.random.default_rng(4)
    n, shape = 4, grid.shape
    stack = combine(rng.normal(10, 1, (n, *shape)), np.ones((n, *shape)), np.zeros((n, *shape), bool))
    store, fits_path = tmp_path / "stacks" / "f02" / "g" / "20230118.zarr", tmp_path / "stacks" / "f02" / "g" / "20230118.fits"
    write_stack(store, fits_path, stack, grid.wcs, frame_ids=[11, 12, 13, 14], provenance={"method": "mean"})
    ds, wcs = open_stack(store)
    assert np.array_equal(ds.image.values, stack.image) and np.array_equal(ds["count"].values, stack.count)
    sky = grid.wcs.pixel_to_world_values(12.0, 34.0)
    assert np.allclose(wcs.world_to_pixel_values(*sky), (12.0, 34.0))
    with fits.open(fits_path) as hdus:
        assert np.array_equal(hdus[0].data, stack.image) and hdus["FRAMES"].data["frame_id"].tolist() == [11, 12, 13, 14]
        assert np.allclose(WCS(hdus["VARIANCE"].header).world_to_pixel_values(*sky), (12.0, 34.0))


def test_a_tile_stack_of_shifted_rotated_frames_keeps_a_star_and_beats_the_noise_by_sqrt_n():
    from mstlake.stack.combine import StackInput, stack_tile

    rng = np.random.default_rng(5)
    shape, sigma, flux = (220, 220), 5.0, 4e4
    grid = field_grid(116.0, 28.0, 160 * SCALE, 160 * SCALE, pixel_scale_arcsec=0.862, tile_px=160)
    tile = grid.tiles()[0]
    star_ra, star_dec = tile.wcs.pixel_to_world_values(80.3, 79.6)

    def frame(i):
        wcs = frame_wcs(ra=116.0 + rng.normal(0, 3) * SCALE, dec=28.0 + rng.normal(0, 3) * SCALE, rotation_deg=rng.uniform(0, 360), shape=shape)
        x, y = wcs.world_to_pixel_values(star_ra, star_dec)
        image = gaussian_star(shape, float(x), float(y), flux) + rng.normal(0, sigma, shape)
        return StackInput(image, np.full(shape, sigma**2), np.zeros(shape, np.uint8), wcs)

    frames = [frame(i) for i in range(8)]
    one, eight = stack_tile(frames[:1], tile.wcs, tile.shape), stack_tile(frames, tile.wcs, tile.shape)
    yy, xx = np.mgrid[: tile.shape[0], : tile.shape[1]]
    star = (xx - 80.3) ** 2 + (yy - 79.6) ** 2 < 10**2
    assert abs(np.nansum(eight.image[star]) / flux - 1) < 0.01
    # noise in apertures (resampling correlates neighbouring pixels; an aperture's sum keeps its noise)
    def aperture_noise(stack):
        sums = [np.nansum(stack.image[(xx - cx) ** 2 + (yy - cy) ** 2 < 4**2]) for cx in range(12, 150, 11) for cy in range(12, 150, 11) if (cx - 80) ** 2 + (cy - 80) ** 2 > 20**2]
        return np.std(sums)
    assert abs(aperture_noise(one) / aperture_noise(eight) / np.sqrt(8) - 1) < 0.15
    assert (eight.count[20:140, 20:140] == 8).all()


def test_spline_resampling_keeps_the_psf_width_and_a_cutout_resamples_like_its_frame():
    import sep

    shape = (160, 200)
    wcs_in = frame_wcs(shape=shape, rotation_deg=37.0)
    rng = np.random.default_rng(3)
    image = sum(gaussian_star(shape, x, y, 2e4, fwhm=3.0) for x, y in rng.uniform(30, 130, (12, 2)) * [1.2, 1.0]) + 0.0
    ra, dec = wcs_in.pixel_to_world_values(100, 80)
    grid = field_grid(float(ra), float(dec), 120 * SCALE, 120 * SCALE, pixel_scale_arcsec=0.862, tile_px=128)
    tile = grid.tiles()[0]
    out = resample_frame(image, np.ones(shape), np.zeros(shape, np.uint8), wcs_in, tile.wcs, tile.shape)

    def fwhm(im):
        im = np.ascontiguousarray(np.nan_to_num(im), dtype=np.float64)
        found = sep.extract(im, 50, err=np.ones_like(im))
        radius, _ = sep.flux_radius(im, found["x"], found["y"], np.full(len(found), 10.0), 0.5, normflux=found["flux"])
        return np.median(2 * radius), len(found)

    before, n_before = fwhm(image)
    after, n_after = fwhm(out.image)
    assert n_after >= 6 and abs(after / before - 1) < 0.01  # reproject's adaptive Gaussian kernel: +11%
    # the same region from a cutout with its WCS sliced to match
    ys, xs = slice(20, 150), slice(25, 190)
    cut = resample_frame(image[ys, xs], np.ones(shape)[ys, xs], np.zeros(shape, np.uint8)[ys, xs], wcs_in[ys, xs], tile.wcs, tile.shape)
    both = ~out.bad & ~cut.bad
    assert both.mean() > 0.5 and np.allclose(out.image[both], cut.image[both], atol=1e-3 * image.max())


def test_a_pepper_and_salt_pixel_is_used_with_a_lower_weight_not_masked():
    shape = (80, 80)
    wcs_in = frame_wcs(shape=shape, rotation_deg=0.0, sip=False)
    image, variance, mask = np.full(shape, 100.0), np.full(shape, 10.0), np.zeros(shape, np.uint8)
    variance[40, 40], mask[40, 40] = 1000.0, 4
    ra, dec = wcs_in.pixel_to_world_values(40, 40)
    grid = field_grid(float(ra), float(dec), 30 * SCALE, 30 * SCALE, pixel_scale_arcsec=0.862, tile_px=64)
    tile = grid.tiles()[0]
    out = resample_frame(image, variance, mask, wcs_in, tile.wcs, tile.shape)
    x, y = (int(round(float(v))) for v in tile.wcs.world_to_pixel_values(ra, dec))
    assert not out.bad[y - 3 : y + 4, x - 3 : x + 4].any()
    assert out.weight[y, x] < 0.2 * np.median(out.weight) and np.isclose(np.median(out.weight), 0.1, rtol=0.02)


def test_background_weights_leave_a_bright_stars_core_unbiased():
    """A star's core pixel changes with the seeing from frame to frame; per-pixel inverse
    variances (with the star's own photon noise) favour the frames where it came out faint,
    pulling the stacked core down; per-frame background weights do not."""
    rng = np.random.default_rng(9)
    n, core, sky_variance = 64, 2e4, 25.0
    values = core * rng.uniform(0.7, 1.3, n)  # seeing from 2.6" to 3.4"
    images, variances, bad = values.reshape(n, 1, 1), (sky_variance + values).reshape(n, 1, 1), np.zeros((n, 1, 1), bool)
    inverse_variance = combine(images, variances, bad, clip_sigma=None).image[0, 0]
    background = combine(images, variances, bad, weights=np.full(n, 1 / sky_variance), clip_sigma=None).image[0, 0]
    assert abs(background / values.mean() - 1) < 1e-6
    assert inverse_variance / values.mean() - 1 < -0.02


def test_the_noise_correlation_is_one_for_white_noise_and_measures_what_smoothing_hides():
    from scipy.ndimage import gaussian_filter

    from mstlake.pipeline.stack import noise_correlation

    rng = np.random.default_rng(4)
    white = rng.normal(0, 3.0, (600, 600))
    bad = np.zeros(white.shape, bool)
    no_sources = np.empty((0, 2))
    assert abs(noise_correlation(white, np.full(white.shape, 9.0), bad, radius_px=3.0, sources_xy=no_sources, avoid_px=0) - 1) < 0.05
    smooth = gaussian_filter(white, 1.0)  # per-pixel rms falls; sums over 3 px keep most of theirs
    per_pixel = np.full(white.shape, np.var(smooth))
    sums = np.array([smooth[y - 3 : y + 4, x - 3 : x + 4][np.hypot(*np.mgrid[-3:4, -3:4]) <= 3].sum() for y, x in rng.integers(10, 590, (3000, 2))])
    expected = np.std(sums) / np.sqrt(per_pixel[0, 0] * np.sum(np.hypot(*np.mgrid[-3:4, -3:4]) <= 3))
    measured = noise_correlation(smooth, per_pixel, bad, radius_px=3.0, sources_xy=no_sources, avoid_px=0)
    assert expected > 2 and abs(measured / expected - 1) < 0.1


def test_the_5_sigma_depth_is_the_skys_whatever_stars_measure_it():
    """Two catalogues of the same image, one of faint stars and one of S/N 10-20 ones: with the
    gain, both give the depth the sky's noise sets; without it, the brighter ones' own photon noise
    makes the depth shallower."""
    from mstlake.pipeline.stack import depth_5sigma

    rng = np.random.default_rng(4)
    zero_point, sky_noise, gain = 25.0, 40.0, 2.0
    truth = zero_point - 2.5 * np.log10(5 * sky_noise)
    depths = {}
    for name, (low, high) in {"faint": (1.0, 5.0), "brighter": (12.0, 18.0)}.items():
        true_flux = sky_noise * rng.uniform(low, high, 400)
        error = np.sqrt(sky_noise**2 + true_flux / gain)
        flux = true_flux + rng.normal(0, error)
        depths[name] = (depth_5sigma(flux, error, np.full(flux.size, zero_point), gain=gain), depth_5sigma(flux, error, np.full(flux.size, zero_point)))
    for name in depths:
        assert abs(depths[name][0] - truth) < 0.01, (name, depths[name], truth)
    assert depths["brighter"][1] < truth - 0.05
