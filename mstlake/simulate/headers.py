"""FITS headers as the MST acquisition software writes them (no WCS in raw frames).

Two dialects, so the pipeline meets both spellings in one data set:

* ``nina`` — N.I.N.A. through ASCOM: IMAGETYP 'LIGHT'/'BIAS'/'DARK'/'FLAT', DATE-OBS in UTC with
  milliseconds, DATE-LOC, RA/DEC in degrees *and* OBJCTRA/OBJCTDEC strings, AIRMASS, CENTALT, EGAIN,
  GAIN (the camera's gain setting), OFFSET, ROWORDER, SWCREATE.
* ``maxim`` — MaxIm DL style: IMAGETYP 'Light Frame'/'Bias Frame'/'Dark Frame'/'Flat Field', the
  telescope spelt 'MST-1', filter written "i'", pointing only as OBJCTRA/OBJCTDEC, site as
  sexagesimal strings, no AIRMASS.

The pointing written is where the mount *thinks* it points (the field centre); the true pointing is
arcminutes away.
"""

from __future__ import annotations

import datetime as dt

from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time

from mstlake.config import DetectorConfig, SiteConfig

_NINA_TYPES = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT", "science": "LIGHT"}
_MAXIM_TYPES = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "science": "Light Frame"}


def raw_header(
    dialect: str,
    *,
    kind: str,
    telescope: str,
    band: str,
    mjd_start: float,
    exptime: float,
    ra: float | None,
    dec: float | None,
    airmass: float | None,
    altitude: float | None,
    object_name: str | None,
    ccd_temp: float,
    site: SiteConfig,
    detector: DetectorConfig,
) -> fits.Header:
    start = Time(mjd_start, format="mjd", scale="utc")
    local = start.to_datetime() + dt.timedelta(hours=site.utc_offset_hours)
    h = fits.Header()
    ra_str = Angle(ra, unit="deg").to_string(unit="hourangle", sep=" ", precision=2, pad=True) if ra is not None else None
    dec_str = Angle(dec, unit="deg").to_string(unit="deg", sep=" ", precision=1, alwayssign=True, pad=True) if dec is not None else None
    if dialect == "nina":
        h["IMAGETYP"] = (_NINA_TYPES[kind], "Type of exposure")
        h["EXPOSURE"] = (exptime, "[s] Exposure duration")
        h["EXPTIME"] = (exptime, "[s] Exposure duration")
        h["DATE-LOC"] = (local.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "Time of observation (local)")
        h["DATE-OBS"] = (start.isot, "Time of observation (UTC)")
        h["XBINNING"] = (1, "X axis binning factor")
        h["YBINNING"] = (1, "Y axis binning factor")
        h["GAIN"] = (100, "Sensor gain")
        h["OFFSET"] = (50, "Sensor gain offset")
        h["EGAIN"] = (detector.gain_e_per_adu, "[e-/ADU] Electrons per A/D unit")
        h["XPIXSZ"] = (detector.pixel_size_um, "[um] Pixel X axis size")
        h["YPIXSZ"] = (detector.pixel_size_um, "[um] Pixel Y axis size")
        h["INSTRUME"] = (detector.model, "Imaging instrument name")
        h["SET-TEMP"] = (-10.0, "[degC] CCD temperature setpoint")
        h["CCD-TEMP"] = (round(ccd_temp, 1), "[degC] CCD temperature")
        h["READOUTM"] = ("High Speed", "Sensor readout mode")
        h["TELESCOP"] = (telescope, "Name of telescope")
        h["FOCALLEN"] = (900.0, "[mm] Focal length")
        h["FOCRATIO"] = (3.0, "Focal ratio")
        if ra is not None:
            h["RA"] = (round(ra, 6), "[deg] RA of telescope")
            h["DEC"] = (round(dec, 6), "[deg] Declination of telescope")
        if altitude is not None:
            h["CENTALT"] = (round(altitude, 3), "[deg] Altitude of telescope")
        if airmass is not None:
            h["AIRMASS"] = (round(airmass, 4), "Airmass at frame center (Gueymard 1993)")
        h["SITEELEV"] = (site.height_m, "[m] Observation site elevation")
        h["SITELAT"] = (site.latitude_deg, "[deg] Observation site latitude")
        h["SITELONG"] = (site.longitude_deg, "[deg] Observation site longitude")
        if object_name is not None:
            h["OBJECT"] = (object_name, "Name of the object of interest")
        if ra_str is not None:
            h["OBJCTRA"] = (ra_str, "[H M S] RA of imaged object")
            h["OBJCTDEC"] = (dec_str, "[D M S] Declination of imaged object")
        if kind in ("flat", "science"):
            h["FILTER"] = (band, "Active filter name")
        h["ROWORDER"] = ("TOP-DOWN", "FITS Image Orientation")
        h["EQUINOX"] = (2000.0, "Equinox of celestial coordinate system")
        h["SWCREATE"] = ("N.I.N.A. 3.1.2.9001 (x64)", "Software that created this file")
    elif dialect == "maxim":
        h["IMAGETYP"] = (_MAXIM_TYPES[kind], "Type of image")
        h["EXPTIME"] = (exptime, "Exposure time in seconds")
        h["EXPOSURE"] = (exptime, "Exposure time in seconds")
        h["DATE-OBS"] = (start.strftime("%Y-%m-%dT%H:%M:%S"), "UTC start date of observation")
        h["SET-TEMP"] = (-10.0, "CCD temperature setpoint in C")
        h["CCD-TEMP"] = (round(ccd_temp, 2), "CCD temperature at start of exposure in C")
        h["XPIXSZ"] = (detector.pixel_size_um, "Pixel Width in microns (after binning)")
        h["YPIXSZ"] = (detector.pixel_size_um, "Pixel Height in microns (after binning)")
        h["XBINNING"] = (1, "Binning factor in width")
        h["YBINNING"] = (1, "Binning factor in height")
        h["EGAIN"] = (detector.gain_e_per_adu, "Electronic gain in e-/ADU")
        h["GAIN"] = (100, "Camera gain setting")
        h["TELESCOP"] = (telescope.replace("MST", "MST-"), "telescope used to acquire this image")
        h["INSTRUME"] = (detector.model, "instrument or camera used")
        if kind in ("flat", "science"):
            h["FILTER"] = (f"{band}'", "Filter used when taking image")
        if ra_str is not None:
            h["OBJCTRA"] = (ra_str, "Nominal RA of center of image")
            h["OBJCTDEC"] = (dec_str, "Nominal Dec of center of image")
        if object_name is not None:
            h["OBJECT"] = (object_name.upper(), "")
        h["SITELAT"] = (Angle(site.latitude_deg, unit="deg").to_string(sep=" ", precision=0, alwayssign=True), "Latitude of the imaging location")
        h["SITELONG"] = (Angle(site.longitude_deg, unit="deg").to_string(sep=" ", precision=0, alwayssign=True), "Longitude of the imaging location")
        h["SWCREATE"] = ("MaxIm DL Version 6.40 240627 2CKM1", "Software that created the image")
    else:
        raise ValueError(f"unknown header dialect {dialect!r}")
    return h


def raw_filename(dialect: str, *, kind: str, telescope: str, band: str, mjd_start: float, exptime: float, sequence: int, utc_offset_hours: float) -> str:
    local = Time(mjd_start, format="mjd", scale="utc").to_datetime() + dt.timedelta(hours=utc_offset_hours)
    if dialect == "nina":
        return f"{local:%Y-%m-%d_%H-%M-%S}_{telescope}_{_NINA_TYPES[kind]}_{band if kind in ('flat', 'science') else 'NoFilter'}_{exptime:.2f}s_{sequence:04d}.fits"
    prefix = {"bias": "Bias", "dark": "Dark", "flat": "Flat", "science": "f02"}[kind]
    suffix = band if kind in ("flat", "science") else ""
    return f"{prefix}-{sequence:04d}{suffix}.fit"
