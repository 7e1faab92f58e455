import numpy as np

from mstlake import astro

LAT, LON = 40.3956, 117.575


def test_airmass_is_one_at_zenith_and_grows():
    assert abs(astro.airmass_from_altitude(90.0) - 1.0) < 1e-3
    assert abs(astro.airmass_from_altitude(30.0) - 1.995) < 0.01
    assert np.isnan(astro.airmass_from_altitude(-1.0))


def test_observing_night_uses_local_noon_boundary():
    # 2023-01-18 17:00 UTC = 01:00 local on the 19th -> night of the 18th
    mjd = 59962.0 + 17 / 24
    assert astro.observing_night(mjd, 8.0) == 20230118
    # 2023-01-19 05:00 UTC = 13:00 local on the 19th -> night of the 19th
    assert astro.observing_night(59963.0 + 5 / 24, 8.0) == 20230119
    assert abs(astro.night_to_mjd_local_noon(20230118, 8.0) - (59962.5 - 8 / 24)) < 1e-9


def test_sun_is_up_at_local_noon_and_down_at_midnight():
    noon = astro.night_to_mjd_local_noon(20230118, 8.0)
    assert astro.sun_altitude_deg(noon, LAT, LON)[0] > 20
    assert astro.sun_altitude_deg(noon + 0.5, LAT, LON)[0] < -50


def test_altaz_round_trip():
    az, alt = astro.altaz_deg(np.array([116.0, 30.0]), np.array([28.0, 60.0]), 59962.6, LAT, LON)
    ra, dec = astro.radec_from_altaz_deg(az, alt, 59962.6, LAT, LON)
    assert np.allclose(ra, [116.0, 30.0], atol=1e-8) and np.allclose(dec, [28.0, 60.0], atol=1e-8)


def test_refraction_is_about_an_arcminute_at_45_degrees():
    assert 0.8 < astro.refraction_deg(45.0) * 60 < 1.1
