"""Blind solve and TAN-SIP refinement on synthetic star fields with a known, non-SIP distortion."""

from __future__ import annotations

import numpy as np
import pytest

from mstlake.astrom import asterism, solve

SCALE = 0.862 / 3600


def _field(seed: int, *, rotation_deg: float, mirrored: bool, pointing_error_arcmin: float, shape=(1300, 2000), n=3000):
    """Catalogue stars around (116, +28) and where a camera with this rotation, parity and a radial
    (Brown-Conrady, about an off-centre axis: not a polynomial in pixel offsets) distortion of ~1 px
    at the corners sees them, with centroid noise growing towards faint stars."""
    rng = np.random.default_rng(seed)
    ra0, dec0 = 116.0, 28.0
    ra = ra0 + rng.uniform(-0.6, 0.6, n) / np.cos(np.radians(dec0))
    dec = dec0 + rng.uniform(-0.6, 0.6, n)
    mag = 12 + 7 * rng.power(3, n)
    xi, eta = solve.standard_coordinates(ra, dec, ra0, dec0)
    theta = np.radians(rotation_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    u, v = np.linalg.solve(rotation, np.vstack([xi, eta]) / SCALE)
    if mirrored:
        u = -u
    ny, nx = shape
    ax, ay = 0.3 * nx, 0.6 * ny
    r2 = (u + nx / 2 - ax) ** 2 + (v + ny / 2 - ay) ** 2
    x = ax + (u + nx / 2 - ax) * (1 + 3e-9 * r2)
    y = ay + (v + ny / 2 - ay) * (1 + 3e-9 * r2)
    on = (x > 0) & (x < nx - 1) & (y > 0) & (y < ny - 1)
    flux = 1e3 * 10 ** (-0.4 * (mag - 20))
    noise = 0.02 + 2 / np.sqrt(flux)
    xs = x[on] + rng.normal(0, 1, on.sum()) * noise[on]
    ys = y[on] + rng.normal(0, 1, on.sum()) * noise[on]
    angle = rng.uniform(0, 2 * np.pi)
    error = np.radians(pointing_error_arcmin / 60)
    pointing = (ra0 + np.degrees(error * np.cos(angle)) / np.cos(np.radians(dec0)), dec0 + np.degrees(error * np.sin(angle)))
    return {"x": xs, "y": ys, "flux": flux[on], "ra": ra, "dec": dec, "mag": mag, "pointing": pointing, "shape": shape, "true_x": x[on], "true_y": y[on], "on": np.flatnonzero(on)}


@pytest.mark.parametrize("seed", range(6))
def test_blind_solve_any_rotation_flip_and_pointing_error(seed):
    rng = np.random.default_rng(1000 + seed)
    mirrored = bool(seed % 2)
    f = _field(seed, rotation_deg=rng.uniform(0, 360), mirrored=mirrored, pointing_error_arcmin=rng.uniform(0, 10))
    wcs, matches, parity = solve.blind_solve(f["x"], f["y"], f["flux"], f["ra"], f["dec"], f["mag"], pointing=f["pointing"], pixel_scale_deg=SCALE, shape=f["shape"])
    assert parity == (-1 if mirrored else 1) and matches >= 6
    solution = solve.refine(wcs, f["x"], f["y"], f["ra"], f["dec"], shape=f["shape"], parity=parity)
    assert solution.n_matched > 0.9 * len(f["x"])
    # the fitted SIP follows the radial distortion to a small fraction of the centroid noise (>= 0.02 px)
    px, py = solution.wcs.all_world2pix(f["ra"][f["on"]], f["dec"][f["on"]], 0)
    assert np.sqrt(np.mean((px - f["true_x"]) ** 2 + (py - f["true_y"]) ** 2) / 2) < 0.03
    assert 0.02 < solution.rms_x_px < 0.08 and 0.02 < solution.rms_y_px < 0.08


def test_asterism_match_recovers_a_mirrored_rotation():
    rng = np.random.default_rng(7)
    source = rng.uniform(0, 1000, (40, 2))
    truth = asterism.Similarity(scale=1.03, angle=2.0, parity=-1, shift=np.array([120.0, -40.0]))
    target = np.vstack([truth(source[:30]) + rng.normal(0, 0.2, (30, 2)), rng.uniform(0, 1000, (25, 2))])  # 10 lost, 25 extra
    found = asterism.match(source, target, expected_scale=1.0, scale_tolerance=0.1)
    assert found is not None
    transform, src, tgt = found
    assert transform.parity == -1 and transform.scale == pytest.approx(1.03, abs=1e-3) and transform.angle == pytest.approx(2.0, abs=1e-3)
    assert set(src) == set(range(30)) and np.all(tgt == src)


def test_unrelated_points_do_not_solve():
    rng = np.random.default_rng(8)
    f = _field(3, rotation_deg=10, mirrored=False, pointing_error_arcmin=2)
    with pytest.raises(solve.SolveError):
        solve.blind_solve(rng.uniform(0, 2000, 200), rng.uniform(0, 1300, 200), rng.uniform(1, 2, 200), f["ra"], f["dec"], f["mag"], pointing=f["pointing"], pixel_scale_deg=SCALE, shape=f["shape"])


def test_fitted_wcs_round_trips_through_a_fits_header_and_its_inverse_polynomial():
    from astropy.wcs import WCS

    f = _field(11, rotation_deg=33, mirrored=False, pointing_error_arcmin=3)
    wcs, _, parity = solve.blind_solve(f["x"], f["y"], f["flux"], f["ra"], f["dec"], f["mag"], pointing=f["pointing"], pixel_scale_deg=SCALE, shape=f["shape"])
    solution = solve.refine(wcs, f["x"], f["y"], f["ra"], f["dec"], shape=f["shape"], parity=parity)
    header = solution.wcs.to_header(relax=True)
    assert header["CTYPE1"] == "RA---TAN-SIP" and "AP_ORDER" in header
    reread = WCS(header)
    px, py = np.meshgrid(np.linspace(0, 1999, 9), np.linspace(0, 1299, 7))
    ra, dec = solution.wcs.all_pix2world(px.ravel(), py.ravel(), 0)
    ra2, dec2 = reread.all_pix2world(px.ravel(), py.ravel(), 0)
    assert np.max(np.abs(ra - ra2)) * 3.6e6 < 0.1 and np.max(np.abs(dec - dec2)) * 3.6e6 < 0.1  # mas
    # the AP/BP polynomial (what DS9 uses) inverts the distortion to a hundredth of a pixel
    foc = reread.sip_pix2foc(np.column_stack([px.ravel(), py.ravel()]), 0)
    back = reread.sip_foc2pix(foc, 0)
    assert np.max(np.abs(back - np.column_stack([px.ravel(), py.ravel()]))) < 0.01
