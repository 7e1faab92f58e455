"""Small positional-astronomy helpers built on ERFA (no network, no IERS downloads).

UT1 is taken as UTC (|UT1-UTC| < 0.9 s moves the sky by < 14 arcsec, far below what airmass or
twilight times care about) and coordinates of date are taken as ICRS (precession since J2000 shifts
altitudes by < 0.3 deg). Both are fine for airmass, refraction and scheduling, and neither is used for
astrometry.
"""

from __future__ import annotations

import erfa
import numpy as np

_TT_MINUS_UTC_S = 69.184  # TAI-UTC (37 s since 2017) + 32.184 s
_DJM0 = 2400000.5


def local_sidereal_time_rad(mjd_utc, longitude_deg: float):
    mjd = np.asarray(mjd_utc, dtype=float)
    gmst = erfa.gmst06(_DJM0, mjd, _DJM0, mjd + _TT_MINUS_UTC_S / 86400.0)
    return np.mod(gmst + np.radians(longitude_deg), 2 * np.pi)


def altaz_deg(ra_deg, dec_deg, mjd_utc, latitude_deg: float, longitude_deg: float):
    """Azimuth (N through E) and geometric altitude in degrees."""
    lst = local_sidereal_time_rad(mjd_utc, longitude_deg)
    hour_angle = lst - np.radians(ra_deg)
    az, alt = erfa.hd2ae(hour_angle, np.radians(dec_deg), np.radians(latitude_deg))
    return np.degrees(az), np.degrees(alt)


def radec_from_altaz_deg(az_deg, alt_deg, mjd_utc, latitude_deg: float, longitude_deg: float):
    hour_angle, dec = erfa.ae2hd(np.radians(az_deg), np.radians(alt_deg), np.radians(latitude_deg))
    lst = local_sidereal_time_rad(mjd_utc, longitude_deg)
    return np.degrees(np.mod(lst - hour_angle, 2 * np.pi)), np.degrees(dec)


def airmass_from_altitude(alt_deg):
    """Pickering (2002): good to the horizon; NaN below it."""
    alt = np.asarray(alt_deg, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = 1.0 / np.sin(np.radians(alt + 244.0 / (165.0 + 47.0 * np.abs(alt) ** 1.1)))
    return np.where(alt > 0, x, np.nan)


def airmass(ra_deg, dec_deg, mjd_utc, latitude_deg: float, longitude_deg: float):
    _, alt = altaz_deg(ra_deg, dec_deg, mjd_utc, latitude_deg, longitude_deg)
    return airmass_from_altitude(alt)


def refraction_deg(alt_deg, pressure_hpa: float = 910.0, temperature_c: float = -5.0):
    """Saemundsson (1986) refraction for a true (geometric) altitude, scaled to pressure and
    temperature (Xinglong at 900 m: ~910 hPa)."""
    alt = np.asarray(alt_deg, dtype=float)
    r_arcmin = 1.02 / np.tan(np.radians(alt + 10.3 / (alt + 5.11)))
    return r_arcmin / 60.0 * (pressure_hpa / 1010.0) * (283.0 / (273.0 + temperature_c))


def sun_radec_deg(mjd_utc):
    """Geocentric direction of the Sun (ICRS axes) from ERFA's Earth ephemeris."""
    mjd = np.atleast_1d(np.asarray(mjd_utc, dtype=float))
    heliocentric, _ = erfa.epv00(_DJM0, mjd + _TT_MINUS_UTC_S / 86400.0)
    position = -heliocentric["p"]
    ra, dec = erfa.c2s(position)
    return np.degrees(np.mod(ra, 2 * np.pi)), np.degrees(dec)


def sun_altitude_deg(mjd_utc, latitude_deg: float, longitude_deg: float):
    ra, dec = sun_radec_deg(mjd_utc)
    _, alt = altaz_deg(ra, dec, np.atleast_1d(mjd_utc), latitude_deg, longitude_deg)
    return alt


def observing_night(mjd_utc, utc_offset_hours: float) -> int:
    """The night YYYYMMDD a time belongs to: the local calendar date of the evening it began.

    Local noon is the boundary, so 01:00 local on the 19th belongs to night 18 (the 18th's evening).
    """
    import datetime as dt

    local_minus_noon = float(mjd_utc) + utc_offset_hours / 24.0 - 0.5
    day = dt.date(1858, 11, 17) + dt.timedelta(days=int(np.floor(local_minus_noon)))
    return day.year * 10000 + day.month * 100 + day.day


def night_to_mjd_local_noon(night: int, utc_offset_hours: float) -> float:
    """MJD (UTC) of local noon on the night's evening date."""
    import datetime as dt

    day = dt.date(night // 10000, (night // 100) % 100, night % 100)
    return (day - dt.date(1858, 11, 17)).days + 0.5 - utc_offset_hours / 24.0


def separation_deg(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float):
    """Angular distance (degrees) of positions from (ra0, dec0), exact on the sphere (haversine)."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    h = np.sin((dec - dec0) / 2) ** 2 + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def parse_nights(text: str | None, available: list[int]) -> tuple[int, ...]:
    """``--nights``: comma-separated nights YYYYMMDD and ranges FIRST-LAST (the ``available``
    nights in between); empty or None: every night. ValueError names what does not parse or
    matches no night."""
    if not text:
        return ()
    chosen = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"--nights: {part!r} is not a night YYYYMMDD or a range FIRST-LAST") from None
        inside = [n for n in available if low <= n <= high]
        if not inside:
            raise ValueError(f"--nights: no night {part} in the lake (nights: {', '.join(map(str, available)) or 'none'})")
        chosen.update(inside)
    return tuple(sorted(chosen))
