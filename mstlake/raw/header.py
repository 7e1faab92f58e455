"""Interpreting raw FITS headers as camera software writes them.

Pure functions on a plain ``dict`` of header cards. Different acquisition programs spell the same
thing differently (N.I.N.A., MaxIm DL, SharpCap, ASCOM drivers, observatory scripts); each function
accepts the spellings seen in the wild and raises ``HeaderProblem`` with a reason a person can act on
when it cannot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from astropy.coordinates import Angle
from astropy.time import Time

from mstlake.config import BandConfig, TelescopeConfig

FRAME_TYPES = ("bias", "dark", "flat", "science")

# IMAGETYP spellings, compared after lower-casing and folding '_', '-' and runs of spaces to one space.
_IMAGETYP_SPELLINGS: dict[str, str] = {
    "bias": "bias", "bias frame": "bias", "zero": "bias", "zero frame": "bias", "offset": "bias",
    "dark": "dark", "dark frame": "dark", "darkframe": "dark",
    "flat": "flat", "flat field": "flat", "flat frame": "flat", "flatfield": "flat", "skyflat": "flat",
    "sky flat": "flat", "twilight flat": "flat", "twiflat": "flat", "dome flat": "flat", "domeflat": "flat",
    "light": "science", "light frame": "science", "object": "science", "science": "science",
    "sci": "science", "lightframe": "science",
}


class HeaderProblem(ValueError):
    """A header cannot be used. ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Pointing:
    ra_deg: float
    dec_deg: float
    source: str


def _fold(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def frame_type(header: Mapping[str, Any]) -> str:
    """bias, dark, flat or science, from IMAGETYP (or FRAMETYP / OBSTYPE when IMAGETYP is absent)."""
    for key in ("IMAGETYP", "FRAMETYP", "OBSTYPE"):
        value = header.get(key)
        if not _is_blank(value):
            kind = _IMAGETYP_SPELLINGS.get(_fold(str(value)))
            if kind is None:
                raise HeaderProblem("unknown_type", f"{key}={value!r} is not a frame type mstlake knows (bias, dark, flat, light/object)")
            return kind
    raise HeaderProblem("missing_keyword", "no IMAGETYP keyword: cannot tell bias, dark, flat or science frame apart")


def exposure_time(header: Mapping[str, Any]) -> float:
    for key in ("EXPTIME", "EXPOSURE", "EXP_TIME", "EXPOSURE_TIME"):
        value = header.get(key)
        if not _is_blank(value):
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                raise HeaderProblem("bad_keyword", f"{key}={value!r} is not a number of seconds") from None
            if not math.isfinite(seconds) or seconds < 0:
                raise HeaderProblem("bad_keyword", f"{key}={value!r} is not a valid exposure time")
            return seconds
    raise HeaderProblem("missing_keyword", "no EXPTIME (or EXPOSURE) keyword")


def exposure_start(header: Mapping[str, Any]) -> Time:
    """Exposure start in UTC, from DATE-OBS (ISO, or a date completed by TIME-OBS/UT/UTSTART)."""
    value = header.get("DATE-OBS")
    if _is_blank(value):
        raise HeaderProblem("missing_keyword", "no DATE-OBS keyword: the exposure time is unknown")
    text = str(value).strip().rstrip("Z")
    if "T" not in text:
        clock = next((str(header[k]).strip() for k in ("TIME-OBS", "UT", "UTSTART", "TIME") if not _is_blank(header.get(k))), None)
        old_style = re.fullmatch(r"(\d{2})/(\d{2})/(\d{2,4})", text)
        if old_style:  # FITS pre-2000 dd/mm/yy
            day, month, year = old_style.groups()
            year = int(year) + (1900 if len(year) == 2 else 0)
            text = f"{year:04d}-{int(month):02d}-{int(day):02d}"
        if clock:
            text = f"{text}T{clock}"
    try:
        return Time(text, format="isot", scale="utc")
    except ValueError:
        try:
            return Time(text.replace(" ", "T"), format="isot", scale="utc")
        except ValueError:
            raise HeaderProblem("bad_keyword", f"DATE-OBS={value!r} is not a date and time astropy can read") from None


_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


def _angle_deg(value: Any, *, sexagesimal_unit: str, plain_unit: str) -> float:
    """Degrees from a header angle: a number, a plain numeric string, or a sexagesimal string
    ('07 44 00.0', '07:44:00', '7h44m00s', '+28 00 00', "+28d00m00s")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(Angle(float(value), unit=plain_unit).deg)
    text = str(value).strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return float(Angle(float(text), unit=plain_unit).deg)
    parts = [p for p in re.split(r"[\s:hdms\u00b0'\"]+", text) if p]
    if not 1 <= len(parts) <= 3:
        raise ValueError(text)
    return float(Angle(":".join(parts), unit=sexagesimal_unit).deg)


# (RA key, Dec key, unit of a bare number in the RA key). RA/DEC and TELRA/TELDEC hold degrees when
# numeric (N.I.N.A., ASCOM); OBJCTRA is hours by convention (MaxIm DL, SBIG) even when bare.
_POINTING_KEYS = (("RA", "DEC", "deg"), ("OBJCTRA", "OBJCTDEC", "hourangle"), ("TELRA", "TELDEC", "deg"))


def pointing(header: Mapping[str, Any]) -> Pointing | None:
    """Telescope pointing in degrees, or None when the header gives none at all."""
    for ra_key, dec_key, bare_ra_unit in _POINTING_KEYS:
        ra_value, dec_value = header.get(ra_key), header.get(dec_key)
        if _is_blank(ra_value) or _is_blank(dec_value):
            continue
        try:
            ra = _angle_deg(ra_value, sexagesimal_unit="hourangle", plain_unit=bare_ra_unit)
            dec = _angle_deg(dec_value, sexagesimal_unit="deg", plain_unit="deg")
        except (ValueError, TypeError):
            raise HeaderProblem("bad_keyword", f"{ra_key}={ra_value!r} / {dec_key}={dec_value!r} is not a sky position") from None
        if not (0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
            raise HeaderProblem("bad_keyword", f"{ra_key}={ra_value!r} / {dec_key}={dec_value!r} is outside the sky")
        return Pointing(ra % 360.0, dec, f"{ra_key}/{dec_key}")
    return None


def _squash(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def telescope_name(header: Mapping[str, Any], telescopes: Mapping[str, TelescopeConfig]) -> str:
    value = header.get("TELESCOP")
    if _is_blank(value):
        raise HeaderProblem("missing_keyword", "no TELESCOP keyword: cannot tell which MST telescope took the frame")
    wanted = _squash(str(value))
    for name, telescope in telescopes.items():
        if wanted in {_squash(name), *(_squash(a) for a in telescope.aliases)}:
            return name
    raise HeaderProblem("unknown_telescope", f"TELESCOP={value!r} is not one of the telescopes in ingest/telescopes.toml ({', '.join(telescopes)})")


def band_from_filter(value: Any, bands: Mapping[str, BandConfig]) -> str | None:
    """The band a FILTER value names, or None when it names none. Exact spellings first, then
    case-insensitively."""
    if _is_blank(value):
        return None
    text = str(value).strip()
    for name, band in bands.items():
        if text in band.filter_names:
            return name
    folded = text.lower()
    for name, band in bands.items():
        if folded in {n.lower() for n in band.filter_names}:
            return name
    return None


def optional_float(header: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = header.get(key)
        if _is_blank(value) or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None


def optional_text(header: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = header.get(key)
        if not _is_blank(value):
            return str(value).strip()
    return None
