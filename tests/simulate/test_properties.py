"""Physical properties of the simulator, measured from the pixels it writes, against its truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import sep
from astropy.io import fits

from mstlake.simulate import diagnostics
from mstlake.simulate.frames import make_exposure, photon_rate_mag0
from mstlake.simulate.schedule import Exposure
from mstlake.simulate.sky import expected_star_count
from tests.conftest import raw_image, read_truth_frames

FULL_FRAME_DEG2 = 2.29 * 1.53


def _static(paths, telescope, name):
    return fits.getdata(paths.static_map(telescope, name)).astype(float)


def _science(paths, telescope="MST2", cloudy=False):
    truth = read_truth_frames(paths)
    rows = truth[(truth.kind == "science") & (truth.telescope == telescope) & (truth.cloudy == cloudy)]
    return rows.iloc[0]


def test_star_counts_per_magnitude_follow_the_model(small_simulation, sim_config):
    paths, _ = small_simulation
    stars = pq.read_table(paths.stars).to_pandas()
    stars = stars[stars.variable_type != "transient"]
    ra, dec = stars.ra.to_numpy(), stars.dec.to_numpy()
    area = (np.ptp(ra) * np.cos(np.radians(dec.mean()))) * np.ptp(dec)
    sky = sim_config.sky
    edges = np.arange(sky.bright_limit_mag + 2, sky.faint_limit_mag, 1.0)
    counts, _ = np.histogram(stars.mag_r, bins=edges)
    expected = np.array([expected_star_count(area, dataclasses.replace(sky, bright_limit_mag=lo, faint_limit_mag=lo + 1)) for lo in edges[:-1]])
    pulls = (counts - expected) / np.sqrt(expected)
    assert np.all(np.abs(pulls) < 4), pulls
    per_full_frame = (stars.mag_r < 19).sum() / area * FULL_FRAME_DEG2
    assert 50000 < per_full_frame < 62000  # the paper: ~56000 on f02


def test_stars_are_where_the_truth_says(small_simulation):
    """sep finds the truth's bright unsaturated stars within 0.3 px of their true positions."""
    paths, _ = small_simulation
    row = _science(paths)
    image, _ = raw_image(paths, row.file)
    image -= _static(paths, "MST2", "bias_pattern")
    image = image / fits.getdata(paths.nightly_flat("MST2", row.night)).astype(float)
    bkg = sep.Background(np.ascontiguousarray(image))
    found = sep.extract(image - bkg, 5.0, err=bkg.globalrms)
    stars = pq.read_table(paths.frame_stars(row.stem)).to_pandas()
    ny, nx = image.shape
    bright = stars[(stars.peak_e < 8000) & (stars.flux_e > 20000) & stars.x.between(10, nx - 11) & stars.y.between(10, ny - 11)]
    assert len(bright) >= 5
    d = np.hypot(found["x"][None, :] - bright.x.to_numpy()[:, None], found["y"][None, :] - bright.y.to_numpy()[:, None])
    nearest = d.min(axis=1)
    isolated = np.array([np.sum(np.hypot(stars.x - x, stars.y - y) < 8) == 1 for x, y in zip(bright.x, bright.y)])
    assert np.median(nearest[isolated]) < 0.15
    assert np.mean(nearest[isolated] < 0.5) > 0.9


def test_peaks_match_truth_and_saturate_at_the_adc_limit(small_simulation, instrument):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    g = instrument.detector.gain_e_per_adu
    expected_all, measured_all, bias_all, mags = [], [], [], []
    for row in truth[(truth.kind == "science") & ~truth.cloudy].itertuples():
        image, _ = raw_image(paths, row.file)
        bias = _static(paths, row.telescope, "bias_pattern")
        flat = fits.getdata(paths.nightly_flat(row.telescope, row.night)).astype(float)
        stars = pq.read_table(paths.frame_stars(row.stem)).to_pandas()
        ny, nx = image.shape
        stars = stars[stars.x.between(3, nx - 4) & stars.y.between(3, ny - 4)]
        ix, iy = np.rint(stars.x).astype(int).to_numpy(), np.rint(stars.y).astype(int).to_numpy()
        sky = row.sky_e_per_pix * flat[iy, ix] / g
        expected_all.append(stars.peak_e.to_numpy() * stars.scintillation_factor.to_numpy() * flat[iy, ix] / g + bias[iy, ix] + sky)
        window_max = np.stack([image[iy + dy, ix + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).max(axis=0)
        # the profile's brightest pixel is the one holding the centre; saturated stars: anywhere near it
        measured_all.append(np.where(window_max == 65535, window_max, image[iy, ix]))
        bias_all.append(bias[iy, ix] + sky)
        mags.append(stars.mag.to_numpy())
        assert image.max() <= 65535
    expected, measured, bias, mags = (np.concatenate(a) for a in (expected_all, measured_all, bias_all, mags))
    saturated = expected > 67000
    assert saturated.sum() >= 3
    assert np.all(measured[saturated] == 65535)
    mid = (expected > 3000) & (expected < 40000)
    assert mid.sum() >= 20
    ratio = (measured[mid] - bias[mid]) / (expected[mid] - bias[mid])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert 12.0 < diagnostics.saturation_magnitude(mags, expected - bias, 50000 - 500) < 14.5


def test_background_noise_is_photon_plus_read_noise(small_simulation, instrument):
    paths, _ = small_simulation
    row = _science(paths)
    image, _ = raw_image(paths, row.file)
    g, rn = instrument.detector.gain_e_per_adu, instrument.detector.read_noise_e
    bias = _static(paths, "MST2", "bias_pattern")
    flat = fits.getdata(paths.nightly_flat("MST2", row.night)).astype(float)
    clean = (_static(paths, "MST2", "ps_std") == 0) & (_static(paths, "MST2", "bad_pixels") == 0)
    stars = pq.read_table(paths.frame_stars(row.stem)).to_pandas()
    clean &= diagnostics.star_free_mask(image.shape, stars.x, stars.y, stars.flux_e, stars.fwhm_px)  # star light widens it
    assert clean.mean() > 0.2
    robust_std, median = diagnostics.background_pull(image, bias=bias, flat=flat, sky_e=row.sky_e_per_pix, gain=g, read_noise_e=rn, row_noise_adu=0.8, clean=clean)
    assert robust_std == pytest.approx(1.0, abs=0.05)
    assert abs(median) < 0.2


@pytest.fixture(scope="module")
def bias_series(small_simulation):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    rows = truth[(truth.kind == "bias") & (truth.telescope == "MST2")]
    assert len(rows) >= 100
    return np.stack([raw_image(paths, f)[0] for f in rows.file])


def test_pepper_and_salt_fraction_and_per_pixel_std(small_simulation, bias_series):
    paths, _ = small_simulation
    std = bias_series.std(axis=0, ddof=1)
    truth_std = _static(paths, "MST2", "ps_std")
    hot = _static(paths, "MST2", "bad_pixels") > 0
    normal = (truth_std == 0) & ~hot
    # normal pixels: read noise (4.1 ADU) and row noise (0.8 ADU) only, well below the 8 ADU cut
    assert np.median(std[normal]) == pytest.approx(np.hypot(1.03 / 0.25, 0.8), rel=0.03)
    assert np.mean(std[normal] > 8) < 1e-3
    ps_fraction = np.mean(std > 8)
    assert 0.05 < ps_fraction < 0.08  # the paper: "less than 8%"
    assert np.mean(truth_std > 0) == pytest.approx(0.07, abs=0.002)
    ps = truth_std > 12
    measured = np.sqrt(np.maximum(std[ps] ** 2 - 4.2**2, 0))
    assert np.median(measured / truth_std[ps]) == pytest.approx(1.0, abs=0.05)
    # telegraph noise: a strong PS pixel's values sit on a few discrete levels
    pixel = np.unravel_index(np.argmax(np.where(ps, truth_std, 0)), truth_std.shape)
    values = np.sort(bias_series[:, pixel[0], pixel[1]])
    gaps = np.diff(values)
    assert gaps.max() > 5 * 4.2


def test_flats_reach_their_levels_with_vignetting_and_prnu(small_simulation, instrument):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    flats = truth[(truth.kind == "flat") & (truth.telescope == "MST2")]
    bias = _static(paths, "MST2", "bias_pattern")
    good = flats[flats.bad_flat.isna()]
    levels = []
    stack = []
    for row in good.itertuples():
        image = raw_image(paths, row.file)[0] - bias
        levels.append(np.mean(image) / row.flat_level_adu)
        stack.append(image / np.median(image))
    assert np.median(levels) == pytest.approx(1.0, abs=0.02)
    assert 15000 < good.flat_level_adu.median() < 25000  # the paper: ~20000 ADU twilight flats
    for row in flats[flats.bad_flat.notna()].itertuples():
        image = raw_image(paths, row.file)[0]
        if row.bad_flat == "saturated":
            assert np.mean(image == 65535) > 0.5
        elif row.bad_flat == "faint":
            assert np.median(image - bias) < 3000
    vignetting = _static(paths, "MST2", "vignetting")
    ny, nx = vignetting.shape
    corners = [vignetting[0, 0], vignetting[0, nx - 1], vignetting[ny - 1, 0], vignetting[ny - 1, nx - 1]]
    assert min(corners) == pytest.approx(0.80, abs=0.01)
    mean_flat = np.mean(stack, axis=0)
    true_flat = fits.getdata(paths.nightly_flat("MST2", int(good.night.iloc[0]))).astype(float)
    small_measured, small_true = diagnostics.small_scale(mean_flat), diagnostics.small_scale(true_flat)
    inner = (slice(20, -20), slice(20, -20))
    good_pixels = _static(paths, "MST2", "bad_pixels")[inner] == 0
    prnu = np.std(small_true[inner][good_pixels])
    assert prnu == pytest.approx(0.0073, abs=0.001)  # 0.7% per pixel with 0.2% per column
    assert np.corrcoef(small_measured[inner][good_pixels], small_true[inner][good_pixels])[0, 1] > 0.8


def test_distortion_reaches_about_a_pixel_at_the_corners(small_simulation):
    """Fit an affine map from true tangent-plane coordinates to the truth pixel positions: what is
    left is the optical distortion (plus differential refraction)."""
    paths, _ = small_simulation
    row = _science(paths)
    from mstlake.simulate.optics import FrameGeometry

    geometry = FrameGeometry.from_truth(row, latitude_deg=40.3956, longitude_deg=117.575)
    assert 0.8 < geometry.corner_distortion_px(int(row.nx), int(row.ny)) < 1.6
    stars = pq.read_table(paths.frame_stars(row.stem)).to_pandas()
    catalogue = pq.read_table(paths.stars).to_pandas().set_index("star_id").loc[stars.star_id]
    flat = dataclasses.replace(geometry, k1=0.0, k2=0.0, p1=0.0, p2=0.0, refraction=False)
    u, v = flat.sky_to_pixel(catalogue.ra.to_numpy(), catalogue.dec.to_numpy())
    residual = diagnostics.affine_residuals(u, v, stars.x.to_numpy(), stars.y.to_numpy())
    assert 0.2 < residual.max() < 3.0
    # and the truth mapping inverts exactly
    ra, dec = geometry.pixel_to_sky(stars.x.to_numpy(), stars.y.to_numpy())
    back_x, back_y = geometry.sky_to_pixel(ra, dec)
    assert np.max(np.hypot(back_x - stars.x, back_y - stars.y)) < 1e-6
    assert np.max(np.hypot((ra - catalogue.ra.to_numpy()) * np.cos(np.radians(dec)), dec - catalogue.dec.to_numpy())) * 3.6e6 < 1.0  # mas


def test_raw_headers_look_like_the_cameras(small_simulation):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    for telescope, imagetyp, pointing_keys in (("MST2", "LIGHT", {"RA", "DEC", "OBJCTRA", "OBJCTDEC"}), ("MST1", "Light Frame", {"OBJCTRA", "OBJCTDEC"})):
        row = truth[(truth.kind == "science") & (truth.telescope == telescope)].iloc[0]
        header = fits.getheader(paths.raw / row.file)
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768
        assert header["IMAGETYP"] == imagetyp
        assert pointing_keys <= set(header) and not {"CTYPE1", "CRVAL1", "CD1_1"} & set(header)
        assert header["EGAIN"] == 0.25 and header["GAIN"] == 100
        offset = np.hypot((row.commanded_ra - row.axis_ra) * np.cos(np.radians(row.axis_dec)), row.commanded_dec - row.axis_dec) * 60
        assert 0.1 < offset < 15  # a few arcmin of pointing error


def test_photon_rate_follows_the_paper():
    """Eq. (4) of the paper, checked against the same physics done with astropy units for its
    G-band example (lambda 5400 A, d_lambda 900 A, eta 0.32, D 30 cm)."""
    import astropy.constants as const
    import astropy.units as u

    from mstlake.config import BandConfig, load_instrument

    inst = load_instrument()
    g_example = dataclasses.replace(inst, bands={"G": BandConfig(5400.0, 900.0, ("G",))}, telescopes={})
    rate = photon_rate_mag0(g_example, "G")
    wavelength, width = 5400 * u.AA, 900 * u.AA
    f_nu = (0 * u.ABmag).to(u.erg / u.s / u.cm**2 / u.Hz)
    bandwidth = (const.c * width / wavelength**2).to(u.Hz)
    photons = (0.32 * np.pi * (15 * u.cm) ** 2 * f_nu * bandwidth / (const.h * const.c / wavelength)).to(1 / u.s)
    assert rate == pytest.approx(photons.value, rel=1e-3)


def test_exposures_are_deterministic_per_seed(small_simulation, instrument, sim_config):
    from mstlake.config import load_field
    from mstlake.simulate.frames import build_survey

    def one(seed):
        survey = build_survey(seed=seed, instrument=instrument, sim=sim_config, field_cfg=load_field("f02"), telescopes=["MST2"], nights=[20230118], scale=0.03)
        exposure = Exposure(20230118, 0, "MST2", "science", 59962.6, 60.0, 40)
        return make_exposure(survey, exposure).data

    a, b, c = one(5), one(5), one(6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.fixture(scope="module")
def busy_exposure(instrument, sim_config):
    """A frame with many cosmic rays and a satellite for sure."""
    from mstlake.config import load_field
    from mstlake.simulate.frames import build_survey

    observing = dataclasses.replace(sim_config.observing, cosmic_rays_per_cm2_per_min=3000.0, satellite_frame_fraction=1.0, cloudy_frame_fraction=0.0)
    sim = dataclasses.replace(sim_config, observing=observing)
    survey = build_survey(seed=3, instrument=instrument, sim=sim, field_cfg=load_field("f02"), telescopes=["MST2"], nights=[20230118], scale=0.05)
    result = make_exposure(survey, Exposure(20230118, 0, "MST2", "science", 59962.6, 60.0, 41))
    return survey, result


def test_cosmic_rays_and_tracks_are_in_the_pixels(busy_exposure, instrument):
    survey, result = busy_exposure
    tel = survey.telescopes["MST2"]
    g = instrument.detector.gain_e_per_adu
    assert result.truth["n_cosmic_rays"] > 20 and result.truth["n_satellites"] >= 1
    art = result.artefacts
    raw = result.data.astype(float)
    flat = tel.detector.pixel_response(0)
    excess_e = (raw - tel.detector.bias_pattern) * g - result.truth["sky_e_per_pix"] * flat
    strong_cr = art["cosmic_e"] > 150
    assert strong_cr.sum() > 20
    measured = excess_e[art["y"][strong_cr], art["x"][strong_cr]]
    # CR charge is not flat-fielded; stars may add light, so compare medians
    assert np.median(measured / art["cosmic_e"][strong_cr]) == pytest.approx(1.0, abs=0.1)
    strong_track = (art["track_e"] > 100) & (art["cosmic_e"] == 0)
    if strong_track.any():
        measured = excess_e[art["y"][strong_track], art["x"][strong_track]]
        expected = art["track_e"][strong_track] * flat[art["y"][strong_track], art["x"][strong_track]]
        assert np.median(measured / expected) == pytest.approx(1.0, abs=0.1)
