"""Turning examined files into ``frames`` and ``quarantine`` rows.

``examine_bytes`` looks at one file (its bytes are handed in; reading them is the caller's job).
``build_inventory`` then judges every file against the others and against what the lake already
holds: duplicates by content hash, the image shape each telescope produces, science frames that saw
no light. Nothing here touches the file system.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mstlake.astro import airmass as compute_airmass
from mstlake.astro import observing_night
from mstlake.config import FieldConfig, InstrumentConfig, InventoryConfig
from mstlake.raw import header as hdr
from mstlake.raw.fitsfile import FitsContent, read_fits_bytes


@dataclass(frozen=True)
class FileFacts:
    """Everything the inventory learns from one file: where it is, its hash and its content, or the
    problem that stopped it from being read."""

    path: str
    size_bytes: int
    mtime_ns: int
    sha256: str | None
    content: FitsContent | None
    problem_code: str | None = None
    problem: str | None = None


def examine_bytes(path: str, data: bytes, *, size_bytes: int, mtime_ns: int, config: InventoryConfig, saturation_adu: float) -> FileFacts:
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        content = read_fits_bytes(data, stride=config.stats_stride, saturation_adu=saturation_adu)
    except hdr.HeaderProblem as problem:
        return FileFacts(path, size_bytes, mtime_ns, sha256, None, problem.code, str(problem))
    return FileFacts(path, size_bytes, mtime_ns, sha256, content)


def unreadable(path: str, *, size_bytes: int, mtime_ns: int, error: OSError) -> FileFacts:
    return FileFacts(path, size_bytes, mtime_ns, None, None, "unreadable", f"the file cannot be read: {error.strerror or error}")


def frame_id_from_sha256(sha256: str) -> int:
    return int(sha256[:16], 16) >> 1


@dataclass
class InventoryUpdate:
    frames: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Candidate:
    facts: FileFacts
    row: dict[str, Any]


def _squash(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


def match_field(object_name: str | None, pointing: hdr.Pointing | None, fields: Mapping[str, FieldConfig]) -> str | None:
    """The survey field a frame belongs to: by OBJECT name first, else by the pointing lying within a
    field's footprint (with half a degree to spare for pointing errors)."""
    if object_name:
        wanted = _squash(object_name)
        for name, fld in fields.items():
            if wanted in {_squash(name), *(_squash(a) for a in fld.aliases)}:
                return name
    if pointing is not None:
        for name, fld in fields.items():
            d_ra = ((pointing.ra_deg - fld.centre_ra_deg + 180.0) % 360.0 - 180.0) * np.cos(np.radians(fld.centre_dec_deg))
            d_dec = pointing.dec_deg - fld.centre_dec_deg
            if abs(d_ra) <= fld.width_deg / 2 + 0.5 and abs(d_dec) <= fld.height_deg / 2 + 0.5:
                return name
    return None


def _quarantine_row(facts: FileFacts, code: str, reason: str, *, now: dt.datetime, version: str, duplicate_of: str | None = None) -> dict[str, Any]:
    header = facts.content.header if facts.content else {}
    return {
        "path": facts.path,
        "sha256": facts.sha256,
        "size_bytes": facts.size_bytes,
        "mtime_ns": facts.mtime_ns,
        "reason_code": code,
        "reason": reason,
        "duplicate_of": duplicate_of,
        "imagetyp_header": hdr.optional_text(header, "IMAGETYP"),
        "telescope_header": hdr.optional_text(header, "TELESCOP"),
        "date_obs": hdr.optional_text(header, "DATE-OBS"),
        "quarantined_at": now,
        "mstlake_version": version,
    }


def interpret(facts: FileFacts, *, instrument: InstrumentConfig, fields: Mapping[str, FieldConfig], config: InventoryConfig, now: dt.datetime, version: str) -> dict[str, Any]:
    """A ``frames`` row from one readable file's header. Raises ``HeaderProblem``."""
    content = facts.content
    assert content is not None
    header = content.header
    stats = content.stats
    if stats.max_adu == 0 and stats.min_adu == 0:
        raise hdr.HeaderProblem("all_zero", "every pixel is zero: the camera read out nothing (failed download or readout)")
    if stats.max_adu == stats.min_adu:
        raise hdr.HeaderProblem("constant_image", f"every pixel has the same value ({stats.max_adu:g} ADU): not a real exposure")

    kind = hdr.frame_type(header)
    telescope = hdr.telescope_name(header, instrument.telescopes)
    band = instrument.telescopes[telescope].band
    exptime = hdr.exposure_time(header)
    start = hdr.exposure_start(header)
    mjd = float(start.mjd) + exptime / 2.0 / 86400.0
    warnings: list[str] = []

    filter_value = hdr.optional_text(header, "FILTER")
    if kind in ("flat", "science"):
        filter_band = hdr.band_from_filter(filter_value, instrument.bands)
        if filter_value and filter_band is None:
            warnings.append(f"FILTER={filter_value!r} names no known band; band {band} taken from {telescope}'s configuration")
        elif filter_band is not None and filter_band != band:
            raise hdr.HeaderProblem("band_mismatch", f"FILTER={filter_value!r} is band {filter_band}, but ingest/telescopes.toml says {telescope} observes in {band}: fix the header or the configuration")

    pointing = hdr.pointing(header)
    if kind == "science" and pointing is None:
        warnings.append("no pointing in the header (RA/DEC or OBJCTRA/OBJCTDEC): astrometry must solve blind")

    airmass, airmass_source = None, None
    header_airmass = hdr.optional_float(header, "AIRMASS")
    low, high = config.airmass_range
    if header_airmass is not None and low <= header_airmass <= high:
        airmass, airmass_source = header_airmass, "header"
    elif pointing is not None and kind in ("science", "flat"):
        site = instrument.site
        value = float(compute_airmass(pointing.ra_deg, pointing.dec_deg, mjd, site.latitude_deg, site.longitude_deg))
        if np.isfinite(value):
            airmass, airmass_source = value, "computed"
        elif kind == "science":
            warnings.append("the pointing was below the horizon at the time in DATE-OBS: check the clock or the pointing")

    egain = hdr.optional_float(header, "EGAIN")
    egain_source = "header"
    configured = instrument.detector.gain_e_per_adu
    if egain is None or not 0 < egain < 100:
        egain, egain_source = configured, "config"
    elif abs(egain / configured - 1) > 0.1:
        warnings.append(f"EGAIN={egain:g} e-/ADU differs from the configured {configured:g}")

    object_name = hdr.optional_text(header, "OBJECT")
    return {
        "frame_id": frame_id_from_sha256(facts.sha256),
        "path": facts.path,
        "sha256": facts.sha256,
        "size_bytes": facts.size_bytes,
        "mtime_ns": facts.mtime_ns,
        "compression": content.compression,
        "type": kind,
        "telescope": telescope,
        "band": band,
        "field": match_field(object_name, pointing, fields) if kind in ("science", "flat") or object_name else None,
        "night": observing_night(mjd, instrument.site.utc_offset_hours),
        "date_obs": start.isot,
        "mjd": mjd,
        "exptime": exptime,
        "airmass": airmass,
        "airmass_source": airmass_source,
        "ra_pointing": pointing.ra_deg if pointing else None,
        "dec_pointing": pointing.dec_deg if pointing else None,
        "pointing_source": pointing.source if pointing else None,
        "object": object_name,
        "filter_header": filter_value,
        "imagetyp_header": hdr.optional_text(header, "IMAGETYP", "FRAMETYP", "OBSTYPE"),
        "egain": egain,
        "egain_source": egain_source,
        "gain_setting": hdr.optional_float(header, "GAIN"),
        "ccd_temp": hdr.optional_float(header, "CCD-TEMP", "CCD_TEMP", "CCDTEMP"),
        "naxis1": content.shape[1],
        "naxis2": content.shape[0],
        "bitpix": content.bitpix,
        "instrument": hdr.optional_text(header, "INSTRUME"),
        "software": hdr.optional_text(header, "SWCREATE", "PROGRAM", "CREATOR"),
        "median_adu": stats.median_adu,
        "robust_std_adu": stats.robust_std_adu,
        "min_adu": stats.min_adu,
        "max_adu": stats.max_adu,
        "saturated_fraction": stats.saturated_fraction,
        "header_json": json.dumps(header, default=str),
        "status": "ok",
        "warnings": "; ".join(warnings) or None,
        "inventoried_at": now,
        "mstlake_version": version,
        "wcs_header": None,
    }


def _expected_shapes(rows: Iterable[Mapping[str, Any]], detector_shape: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Per telescope, the image shape most of its frames have (the configured detector shape wins a
    tie). Simulated data may use a smaller detector, so the data decide, not the configuration."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        counts[row["telescope"]][(row["naxis2"], row["naxis1"])] += 1
    expected = {}
    for telescope, counter in counts.items():
        expected[telescope] = max(counter, key=lambda shape: (counter[shape], shape == tuple(detector_shape)))
    return expected


def build_inventory(
    facts: Iterable[FileFacts],
    existing_frames: pa.Table,
    *,
    instrument: InstrumentConfig,
    fields: Mapping[str, FieldConfig],
    config: InventoryConfig,
    now: dt.datetime,
    version: str,
) -> InventoryUpdate:
    """New ``frames`` and ``quarantine`` rows for files not yet in the lake."""
    update = InventoryUpdate()
    quarantine = update.quarantine

    def reject(f: FileFacts, code: str, reason: str, duplicate_of: str | None = None) -> None:
        quarantine.append(_quarantine_row(f, code, reason, now=now, version=version, duplicate_of=duplicate_of))

    known = existing_frames.select(["path", "sha256", "telescope", "naxis1", "naxis2", "type", "night", "median_adu"]).to_pylist()
    path_by_sha = {row["sha256"]: row["path"] for row in known}

    candidates: list[_Candidate] = []
    for f in sorted(facts, key=lambda item: item.path):
        if f.problem_code:
            reject(f, f.problem_code, f.problem)
            continue
        if f.sha256 in path_by_sha:
            if path_by_sha[f.sha256] != f.path:
                reject(f, "duplicate", f"exact copy (same SHA-256) of {path_by_sha[f.sha256]}, which is kept", duplicate_of=path_by_sha[f.sha256])
            continue
        try:
            row = interpret(f, instrument=instrument, fields=fields, config=config, now=now, version=version)
        except hdr.HeaderProblem as problem:
            reject(f, problem.code, str(problem))
            continue
        path_by_sha[f.sha256] = f.path
        candidates.append(_Candidate(f, row))

    expected = _expected_shapes(known + [c.row for c in candidates], instrument.detector.shape)
    shaped = []
    for c in candidates:
        shape = (c.row["naxis2"], c.row["naxis1"])
        want = expected[c.row["telescope"]]
        if shape != want:
            reject(c.facts, "wrong_shape", f"image is {shape[1]}x{shape[0]} pixels but {c.row['telescope']}'s other frames are {want[1]}x{want[0]}: cropped, binned or from another camera")
        else:
            shaped.append(c)

    bias_levels: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in known + [c.row for c in shaped]:
        if row["type"] == "bias":
            bias_levels[(row["telescope"], row["night"])].append(row["median_adu"])
            bias_levels[(row["telescope"], -1)].append(row["median_adu"])

    for c in shaped:
        row = c.row
        if row["type"] == "science" and row["exptime"] >= config.min_exptime_for_light_check_s:
            sky_e = _sky_electrons(row, bias_levels, instrument.detector.read_noise_e)
            if sky_e < config.no_light_max_sky_e:
                reject(c.facts, "no_light", f"science frame with no light: sky {sky_e:.1f} e-/pixel in {row['exptime']:g} s, at the bias level (dome closed or shutter failed)")
                continue
        update.frames.append(row)
    return update


def _sky_electrons(row: Mapping[str, Any], bias_levels: Mapping[tuple[str, int], list[float]], read_noise_e: float) -> float:
    """Sky electrons per pixel: the median above the night's bias level when bias frames exist, else
    from the noise (Poisson variance beyond the read noise)."""
    levels = bias_levels.get((row["telescope"], row["night"])) or bias_levels.get((row["telescope"], -1))
    if levels:
        return (row["median_adu"] - float(np.median(levels))) * row["egain"]
    return (row["robust_std_adu"] * row["egain"]) ** 2 - read_noise_e**2
