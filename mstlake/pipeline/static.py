"""Astrometry, photometry and flux calibration of the calibrated frames (the paper's STATIC) as
one lazy Dask graph.

Each frame of a field's cubes is read lazily from Zarr, solved (``mstlake.astrom.frame``) and
measured (``mstlake.phot.frame``); a frame that cannot be solved or calibrated is recorded with
the reason and the rest go on. Outputs:

* the ``astrometry`` and ``photometry`` tables, one row per frame (a re-run replaces the rows of
  the frames it measured);
* per field, band and night, the ``sources`` (every detection) and ``forced_photometry`` (every
  reference star at its catalogue position) files, each written whole and atomically, and each
  frame's WCS in the cube's attributes (``mstlake.lake.cubes.frame_wcs``);
* each night's forced photometry as light-curve points in the archive (``mstlake.lake.archive``),
  one snapshot per night; a night already there adds nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
from astropy.io import fits
from astropy.wcs import WCS

import mstlake
from mstlake.astrom import frame as frame_kernel
from mstlake.astrom import solve
from mstlake.config import (
    ArchiveConfig,
    AstrometryConfig,
    InstrumentConfig,
    MagfitConfig,
    PhotometryConfig,
)
from mstlake.lake import cubes, healpix
from mstlake.lake.archive import Archive, master_magnitudes, new_objects
from mstlake.lake.tables import read_table, update_column, without_frames, write_table_atomic
from mstlake.paths import LakePaths
from mstlake.phot import aperture as ap
from mstlake.phot.frame import FramePhotometry, photometer_frame
from mstlake.phot.magfit import magfit
from mstlake.pipeline.execute import compute
from mstlake.schemas import load_schema


@dataclass(frozen=True)
class StaticResult:
    solved: int
    calibrated: int
    cloudy: list[int]
    failed: list[tuple[int, str]]  # frames without a WCS
    uncalibrated: list[tuple[int, str]]  # solved frames without a zero point
    nights: list[dict] = dataclass_field(default_factory=list)  # per band and night: frames, solved, calibrated, cloudy, points (light-curve points committed)
    skipped: int = 0  # cubes (a band's night) whose frames were all measured and committed before


_UNSOLVED = {
    "n_sources": 0, "status": "failed", "reason": None, "wcs_header": None, "rms_x_mas": None, "rms_y_mas": None, "n_matched": 0, "mirrored": None, "pointing_offset_arcmin": None,
    "residual_map_x_mas": None, "residual_map_y_mas": None,
}
_NO_PHOTOMETRY = {
    "status": "failed", "reason": None, "n_sources": 0, "n_forced": 0, "psf_fwhm_px": None, "psf_stars": 0, "psf_degree": 0, "best_aperture_px": None, "reference_aperture_px": None,
    "aperture_correction_rms_mag": None, "aperture_correction": None, "zero_point_mag": None, "zero_point_rms_mag": None, "zero_point": None, "n_calibrators": 0, "transparency": None, "cloudy": False,
}


def _measure_cube_frame(store, index, keys, pointing, reference, extra, band, pixel_scale_deg, gain, astrometry_cfg, photometry_cfg):
    """One frame: its astrometry row, photometry row, sources and forced-photometry tables (None
    when it could not be measured). A frame that fails is recorded; the night goes on."""
    frame = cubes.open_store(store).isel(frame=index)
    image, variance, mask = frame.image.values, frame.variance.values, frame.mask.values
    try:
        found = frame_kernel.solve_image(image, variance, mask, pointing=pointing, ref_ra=reference["ra"], ref_dec=reference["dec"], ref_mag=reference[f"mag_{band}"], pixel_scale_deg=pixel_scale_deg, cfg=astrometry_cfg)
    except Exception as err:  # SolveError, or anything else in one frame: the night goes on
        reason = str(err) if isinstance(err, solve.SolveError) else f"{type(err).__name__}: {err}"
        return {**keys, **_UNSOLVED, "reason": reason}, {**keys, **_NO_PHOTOMETRY, "reason": f"not solved: {reason}"}, None, None
    try:
        measured = photometer_frame(image, variance, mask, found.extraction, found.solution.wcs, reference, band=band, gain=gain, cfg=photometry_cfg, forced_extra=extra)
        solution = measured.solution
    except Exception as err:  # keep the blind solution; say why there is no photometry
        measured, solution = None, found.solution
        photometry_row = {**keys, **_NO_PHOTOMETRY, "reason": f"{type(err).__name__}: {err}"}
    mas = pixel_scale_deg * 3.6e6
    residuals = solution.residual_map()
    astrometry_row = {
        **keys, "n_sources": len(found.extraction.sources), "status": "solved", "reason": None, "wcs_header": solution.wcs.to_header(relax=True).tostring(),
        "rms_x_mas": solution.rms_x_px * mas, "rms_y_mas": solution.rms_y_px * mas, "n_matched": solution.n_matched, "mirrored": found.mirrored,
        "pointing_offset_arcmin": found.pointing_offset_arcmin,
        "residual_map_x_mas": (residuals[0] * mas).tolist(), "residual_map_y_mas": (residuals[1] * mas).tolist(),
    }
    if measured is None:
        return astrometry_row, photometry_row, None, None
    target_ids = np.concatenate([np.asarray(reference["source_id"]), extra.source_id.values])
    return astrometry_row, _photometry_row(keys, measured), _sources_table(keys["frame_id"], measured), _forced_table(keys["frame_id"], measured, target_ids)


def _photometry_row(keys: dict, measured: FramePhotometry) -> dict:
    zp, correction = measured.zero_point, measured.aperture_correction

    def diameter(index):
        return None if index is None else float(ap.DIAMETERS_PX[index])

    return {
        **keys, "status": "calibrated" if zp is not None else "uncalibrated", "reason": measured.zero_point_problem,
        "n_sources": len(measured.sources), "n_forced": len(measured.forced), "psf_fwhm_px": measured.psf.fwhm, "psf_stars": measured.psf_stars, "psf_degree": measured.psf.degree,
        "best_aperture_px": diameter(measured.best_aperture), "reference_aperture_px": diameter(measured.reference_aperture),
        "aperture_correction_rms_mag": None if measured.measured_correction is None else measured.measured_correction.rms, "aperture_correction": None if correction is None else correction.coefficients.tolist(),
        "zero_point_mag": None if zp is None else zp.at_centre, "zero_point_rms_mag": None if zp is None else zp.rms, "zero_point": None if zp is None else zp.surface.coefficients.tolist(),
        "n_calibrators": 0 if zp is None else zp.n_calibrators, "transparency": None, "cloudy": measured.cloudy,
    }


def _sources_table(frame_id: int, measured: FramePhotometry) -> pa.Table:
    s = measured.sources
    columns = {
        "frame_id": np.full(len(s), frame_id), "x": s.x_best, "y": s.y_best, "ra": s.ra, "dec": s.dec,
        "flux_psf": s.flux_psf, "flux_psf_err": s.flux_psf_err, "chi2_psf": s.chi2_psf, "flag_psf": s.flag_psf, "mag_psf": s.mag_psf, "mag_psf_err": s.mag_psf_inst_err,
        "flux_ap": measured.aperture_fluxes.flux.astype(np.float32), "flux_ap_err": measured.aperture_fluxes.flux_err.astype(np.float32),
        "mag_ap": s.mag_ap if "mag_ap" in s else np.full(len(s), np.nan), "mag_ap_err": s.mag_ap_best_err if "mag_ap_best_err" in s else np.full(len(s), np.nan),
        "snr": s.snr, "fwhm": s.fwhm, "a": s.a, "b": s.b, "theta": s.theta, "flag": s.flag,
    }
    return load_schema("sources").from_columns(columns)


def _forced_table(frame_id: int, measured: FramePhotometry, target_ids: np.ndarray) -> pa.Table:
    f = measured.forced
    zero_point = measured.zero_point(f.x.values, f.y.values) if measured.zero_point is not None else np.full(len(f), np.nan)
    columns = {
        "frame_id": np.full(len(f), frame_id), "source_id": target_ids[f.reference_index.values], "x": f.x, "y": f.y,
        "flux": f.flux, "flux_err": f.flux_err, "chi2": f.chi2, "flag": f.flag, "detected": f.detection.values >= 0, "zero_point": zero_point,
        "mag": f.mag_inst.values + zero_point, "mag_err": f.mag_inst_err,
    }
    return load_schema("forced_photometry").from_columns(columns)


def measure_field(lake: LakePaths, field: str, reference, *, instrument: InstrumentConfig, astrometry_cfg: AstrometryConfig, photometry_cfg: PhotometryConfig, archive_cfg: ArchiveConfig, magfit_cfg: MagfitConfig | None = None, nights: Sequence[int] | None = None, force: bool = False, retry_failed: bool = False, release: str | None = None, progress: bool = True) -> StaticResult:
    """Solve and measure the frames in the field's cubes (of ``nights`` only, when given), one
    Dask graph per night and band, in time order: each night's files, archive commit (one
    snapshot) and table rows are written before the next night starts, so a run stopped anywhere
    resumes at the night it was in.

    A frame already measured and committed is not measured again unless ``force``;
    ``retry_failed`` measures again the frames whose astrometry or photometry failed. Frames
    measured again have their archive rows replaced in the night's snapshot. Objects the library lacks that the archive knows when a night
    starts (transients found on earlier nights) are measured on that night's frames too.
    ``release``: the data release the frames are processed for (on the archive's frames rows)."""
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    table = reference.to_pandas() if isinstance(reference, pa.Table) else pd.DataFrame(reference)
    pixel_scale_deg = instrument.detector.pixel_scale_arcsec / 3600
    gain = instrument.detector.gain_e_per_adu
    magfit_cfg = magfit_cfg or MagfitConfig()
    library = table[["source_id", "ra", "dec"]].assign(colour=table.mag_g - table.mag_r if {"mag_g", "mag_r"} <= set(table.columns) else np.nan)
    library["_healpix_29"] = healpix.spatial_index(library.ra.values, library.dec.values)
    # one copy of the catalogue in each graph, shipped once to each worker rather than with every frame
    shared_table = dask.delayed(table, name=f"static-reference-{field}")
    planned = plan_nights(lake, field, nights=nights, force=force, retry_failed=retry_failed)
    astrometry_rows, photometry_rows, per_night = [], [], []
    for number, night_plan in enumerate(planned, start=1):
        band, night, store, chosen, retried = night_plan
        # the objects the archive knows now, so that a run resumed after a stop sees what an unbroken one did
        extra = new_objects(lake).to_pandas().rename(columns={"object_id": "source_id"})
        positions = pd.concat([library, extra.assign(colour=np.nan)], ignore_index=True)
        shared_extra = dask.delayed(extra, name=f"static-extra-objects-{field}-{night}")
        tasks = []
        frame_ids = cubes.open_store(store).frame_id.values
        for index, frame_id in enumerate(frame_ids):
            if int(frame_id) not in chosen:
                continue
            row = frames.loc[int(frame_id)]
            keys = {"frame_id": int(frame_id), "field": field, "band": band, "night": night}
            pointing = (float(row.ra_pointing), float(row.dec_pointing))
            tasks.append(dask.delayed(_measure_cube_frame)(store, index, keys, pointing, shared_table, shared_extra, band, pixel_scale_deg, gain, astrometry_cfg, photometry_cfg, dask_key_name=f"static-frame-{field}-{frame_id}"))
        inventory = frames.loc[sorted(chosen)]
        written = dask.delayed(_write_night)(lake, field, band, night, store, tasks, reference=positions, inventory=inventory, archive_cfg=archive_cfg, magfit_cfg=magfit_cfg, replace_frames=sorted(retried), release=release, dask_key_name=f"static-night-{field}-{band}-{night}")
        description = f"measuring {band} {night} ({number}/{len(planned)})"
        (night_astrometry, night_photometry, points), = compute([written], tracked=tasks, description=description, scheduler=astrometry_cfg.scheduler, workers=astrometry_cfg.workers, progress=progress)
        _record_night(lake, store, night_astrometry, night_photometry, frames)
        astrometry_rows += night_astrometry
        photometry_rows += night_photometry
        per_night.append({
            "band": band, "night": night, "frames": len(night_photometry), "solved": sum(r["status"] == "solved" for r in night_astrometry),
            "calibrated": sum(r["status"] == "calibrated" for r in night_photometry), "cloudy": sum(bool(r["cloudy"]) and r["status"] == "calibrated" for r in night_photometry), "points": points,
        })
    return StaticResult(
        solved=sum(r["status"] == "solved" for r in astrometry_rows), calibrated=sum(r["status"] == "calibrated" for r in photometry_rows),
        cloudy=[r["frame_id"] for r in photometry_rows if r["cloudy"] and r["status"] == "calibrated"],
        failed=[(r["frame_id"], r["reason"]) for r in astrometry_rows if r["status"] != "solved"],
        uncalibrated=[(r["frame_id"], r["reason"]) for r in photometry_rows if r["status"] != "calibrated" and not r["reason"].startswith("not solved")],
        nights=per_night, skipped=sum(1 for *_, night, _ in lake.field_cubes(field) if not nights or night in nights) - len(planned),
    )


def plan_nights(lake: LakePaths, field: str, *, nights: Sequence[int] | None = None, force: bool = False, retry_failed: bool = False) -> list[tuple[str, int, Path, set[int], set[int]]]:
    """The field's cubes to measure, in time order: (band, night, cube, frames to measure, frames
    of those to replace in the archive). A frame is done when the photometry table has its row
    (written last) and the archive holds its night; ``force`` measures every frame again,
    ``retry_failed`` those whose astrometry or photometry failed."""
    from mstlake.lake.archive import committed_frames

    cubes_by_night = sorted((night, band, store) for _, band, night, store in lake.field_cubes(field) if not nights or night in nights)
    in_cubes = {(night, band): cubes.frame_ids(store) for night, band, store in cubes_by_night}
    measured = read_table(lake.photometry_table, load_schema("photometry")).select(["frame_id", "status"]).to_pandas()
    solved = read_table(lake.astrometry_table, load_schema("astrometry")).select(["frame_id", "status"]).to_pandas()
    failed = set(measured.frame_id[measured.status == "failed"]) | set(solved.frame_id[solved.status != "solved"])
    everything = set().union(*in_cubes.values()) if in_cubes else set()
    done = committed_frames(lake, everything) & set(measured.frame_id)
    plan = []
    for night, band, store in cubes_by_night:
        held = in_cubes[(night, band)]
        chosen = set(held) if force else (held - done) | ((held & failed) if retry_failed else set())
        if chosen:
            plan.append((band, night, store, chosen, chosen & done))
    return plan


def _record_night(lake: LakePaths, store, astrometry_rows: list[dict], photometry_rows: list[dict], frames: pd.DataFrame) -> None:
    """A measured night's rows into the astrometry table, the frames table's WCS and, last (it is
    what says a frame is done), the photometry table."""
    now = dt.datetime.now(dt.UTC)
    for row in astrometry_rows:
        row["solved_at"] = now
    for row in photometry_rows:
        row["measured_at"] = now
    _replace_rows(lake.astrometry_table, load_schema("astrometry"), astrometry_rows)
    update_column(lake.frames_table, load_schema("frames"), "wcs_header", {r["frame_id"]: r["wcs_header"] for r in astrometry_rows})  # null where unsolved
    held = cubes.frame_ids(store)
    # transparency against the clearest frame of the whole night, those measured before included
    schema = load_schema("photometry")
    redone = {r["frame_id"] for r in photometry_rows}
    existing = read_table(lake.photometry_table, schema)
    existing = without_frames(existing, redone)
    earlier = existing.select(["frame_id", "band", "zero_point_mag"]).to_pylist()
    in_night = [row for row in earlier if row["frame_id"] in held]
    _transparency(in_night + photometry_rows, frames)
    updated = {row["frame_id"]: row.get("transparency") for row in in_night}
    transparency = [updated[f] if f in updated else old for f, old in zip(existing.column("frame_id").to_pylist(), existing.column("transparency").to_pylist(), strict=True)]
    existing = existing.set_column(existing.schema.get_field_index("transparency"), existing.schema.field("transparency"), pa.array(transparency, existing.schema.field("transparency").type))
    write_table_atomic(pa.concat_tables([existing, schema.from_rows(photometry_rows)]), lake.photometry_table, schema)


def _write_night(lake: LakePaths, field: str, band: str, night: int, store, results, *, reference: pd.DataFrame, inventory: pd.DataFrame, archive_cfg: ArchiveConfig, magfit_cfg: MagfitConfig, replace_frames: Sequence[int] = (), release: str | None = None) -> tuple[list[dict], list[dict], int]:
    """Write one night's sources and forced photometry (whole files, atomically; rows of the
    night's frames not measured this time kept) and the frames' WCS into the cube's attributes,
    commit the measured frames, detections and light-curve points to the archive (one snapshot;
    ``replace_frames``' earlier rows replaced); pass the rows on, with the number of light-curve
    points the archive added."""
    cubes.set_frame_wcs(store, {r[0]["frame_id"]: r[0]["wcs_header"] for r in results if r[0]["wcs_header"]})
    measured_now = [r[0]["frame_id"] for r in results]
    sources = [r[2] for r in results if r[2] is not None]
    forced = [r[3] for r in results if r[3] is not None]
    for tables, path, name in ((sources, lake.sources_file(field, band, night), "sources"), (forced, lake.forced_file(field, band, night), "forced_photometry")):
        schema = load_schema(name)
        kept = read_table(path, schema)
        kept = without_frames(kept, measured_now)
        write_table_atomic(pa.concat_tables([kept, *tables]).sort_by("frame_id") if kept.num_rows or tables else schema.empty(), path, schema)
    astrometry_rows, photometry_rows = [r[0] for r in results], [r[1] for r in results]
    if results:
        mjd = inventory.mjd.to_dict()
        night_tables = {"frames": archive_frames(astrometry_rows, photometry_rows, inventory, partition_order=archive_cfg.partition_order, release=release)}
        if sources:
            night_tables["sources"] = archive_sources(pa.concat_tables(sources), mjd, band, partition_order=archive_cfg.partition_order)
        if forced:
            night_tables["forced"] = light_curve_points(pa.concat_tables(forced), reference, mjd, band, partition_order=archive_cfg.partition_order)
        masters = None
        if "forced" in night_tables and magfit_cfg.enabled:
            night_tables["forced"], night_tables["frames"], masters = magfit_night(lake, night_tables["forced"], night_tables["frames"], reference, band, magfit_cfg)
        library = pa.table({"source_id": reference.source_id.values, "ra": reference.ra.values, "dec": reference.dec.values})
        committed = Archive(lake, archive_cfg).commit(night_tables, message=f"{field} {band} night {night}", library=library, masters=masters, replace_frames=replace_frames)
    return astrometry_rows, photometry_rows, committed.rows_added.get("forced", 0) if results else 0


def archive_frames(astrometry_rows: list[dict], photometry_rows: list[dict], inventory: pd.DataFrame, *, partition_order: int, release: str | None = None) -> pa.Table:
    """A night's frames as the archive's ``frames`` rows: the inventory with the frame's
    astrometry and photometry, placed on the sky by the centre of its WCS (its pointing if unsolved).
    Transparency is relative to the night's clearest frame."""
    photometry_rows = [dict(row) for row in photometry_rows]
    _transparency(photometry_rows, inventory)
    rows = []
    for astrometry, photometry in zip(astrometry_rows, photometry_rows, strict=True):
        frame = inventory.loc[astrometry["frame_id"]]
        ra, dec, scale_arcsec = _frame_centre_and_scale(astrometry["wcs_header"], frame)
        index = int(healpix.spatial_index([ra], [dec])[0])
        status = photometry["status"] if astrometry["status"] == "solved" else "failed"
        reason = astrometry["reason"] if status == "failed" else photometry["reason"]
        fwhm = photometry["psf_fwhm_px"]
        rows.append({
            "_healpix_29": index, "healpix_partition": int(healpix.parent_pixel(index, partition_order)), "frame_id": astrometry["frame_id"], **{name: frame[name] for name in _INVENTORY_COLUMNS},
            "status": status, "reason": reason, "wcs_header": astrometry["wcs_header"],
            "rms_x_mas": astrometry["rms_x_mas"], "rms_y_mas": astrometry["rms_y_mas"], "n_matched": astrometry["n_matched"],
            "seeing_arcsec": None if fwhm is None else fwhm * scale_arcsec,
            **{name: photometry[name] for name in _PHOTOMETRY_COLUMNS}, "magfit_rms_mag": None, "magfit_stars": 0, "release": release, "mstlake_version": mstlake.__version__,
        })
    return load_schema("archive_frames").from_rows(rows)


_INVENTORY_COLUMNS = ("path", "sha256", "telescope", "band", "field", "night", "date_obs", "mjd", "exptime", "airmass", "ra_pointing", "dec_pointing", "egain", "ccd_temp", "naxis1", "naxis2")
_PHOTOMETRY_COLUMNS = (
    "psf_fwhm_px", "best_aperture_px", "reference_aperture_px", "aperture_correction_rms_mag", "zero_point_mag", "zero_point", "zero_point_rms_mag", "n_calibrators", "transparency", "cloudy",
)


def _frame_centre_and_scale(wcs_header: str | None, frame) -> tuple[float, float, float]:
    """(ra, dec) of the frame's centre and its pixel scale in arcsec, through its WCS; the
    pointing (and no scale) when it was not solved."""
    if not wcs_header:
        return float(frame.ra_pointing), float(frame.dec_pointing), np.nan
    wcs = WCS(fits.Header.fromstring(wcs_header))
    ra, dec = wcs.pixel_to_world_values((frame.naxis1 - 1) / 2, (frame.naxis2 - 1) / 2)
    return float(ra), float(dec), float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600)


def archive_sources(sources: pa.Table, mjd: dict[int, float], band: str, *, partition_order: int) -> pa.Table:
    """A night's detections (``sources`` schema) as the archive's ``sources`` rows, placed by their
    own position; the archive associates them with objects when it commits them."""
    s = sources.to_pandas()
    index = healpix.spatial_index(s.ra.values, s.dec.values)
    columns = {name: sources.column(name).combine_chunks() for name in sources.column_names}
    columns.update({
        "_healpix_29": index, "healpix_partition": healpix.parent_pixel(index, partition_order).astype(np.int32), "object_id": np.full(len(s), -1),
        "mjd": s.frame_id.map(mjd).values, "band": np.full(len(s), band), "separation_arcsec": np.zeros(len(s)),  # both set by the association
    })
    return load_schema("archive_sources").from_columns(columns)


def light_curve_points(forced: pa.Table, reference: pd.DataFrame, mjd: dict[int, float], band: str, *, partition_order: int) -> pa.Table:
    """A night's forced photometry (``forced_photometry`` schema) as the archive's light-curve
    points (``forced``): the object's HEALPix index (``reference._healpix_29``), the frame's mjd."""
    f = forced.to_pandas()
    where = pd.Series(np.arange(len(reference)), index=reference.source_id.values)
    row = where.reindex(f.source_id.values).values
    if np.isnan(row).any():
        raise ValueError(f"{int(np.isnan(row).sum())} forced-photometry rows name sources that are not in the reference catalogue")
    row = row.astype(int)
    index = reference._healpix_29.values[row]  # the object's own (fixed at creation for new objects)
    return load_schema("forced").from_columns({
        "_healpix_29": index, "healpix_partition": healpix.parent_pixel(index, partition_order).astype(np.int32),
        "object_id": f.source_id.values, "frame_id": f.frame_id.values, "mjd": f.frame_id.map(mjd).values, "band": np.full(len(f), band),
        "x": f.x.values, "y": f.y.values, "flux": f.flux.values, "flux_err": f.flux_err.values, "mag": f.mag.values, "mag_err": f.mag_err.values,
        "mag_magfit": np.full(len(f), np.nan, np.float32), "flag": f.flag.values,
    })


def magfit_night(lake: LakePaths, points: pa.Table, frames: pa.Table, reference: pd.DataFrame, band: str, cfg: MagfitConfig) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Fit a night's light-curve points to the archive's master reference (built from these
    frames when the archive has none yet): ``mag_magfit`` filled in, each frame's magfit rms and
    star count, and the master magnitudes of the night's stars (the archive keeps the ones it has)."""
    f = points.select(["object_id", "frame_id", "x", "y", "mag", "mag_err", "flag"]).to_pandas()
    quality = frames.select(["frame_id", "status", "cloudy", "naxis1", "naxis2"]).to_pandas().set_index("frame_id")
    clear = quality.status.eq("calibrated") & ~quality.cloudy
    good = (f.flag.values == 0) & np.isfinite(f.mag.values) & (f.mag_err.values > 0) & f.frame_id.map(clear).fillna(False).values.astype(bool)
    colour = f.object_id.map(pd.Series(reference.colour.values, index=reference.source_id.values)).values
    shape = (int(quality.naxis2.max()), int(quality.naxis1.max()))
    result = magfit(f.frame_id.values, f.object_id.values, f.x.values, f.y.values, f.mag.values, f.mag_err.values, good=good, colour=colour, shape=shape, master=master_magnitudes(lake, f.object_id.unique(), band), cfg=cfg)
    points = points.set_column(points.column_names.index("mag_magfit"), "mag_magfit", pa.array(result.mag, pa.float32(), from_pandas=True))
    frame_ids = frames.column("frame_id").to_pandas()
    frames = frames.set_column(frames.column_names.index("magfit_rms_mag"), "magfit_rms_mag", pa.array(frame_ids.map(result.frame_rms).values, pa.float32(), from_pandas=True))
    frames = frames.set_column(frames.column_names.index("magfit_stars"), "magfit_stars", pa.array(frame_ids.map(result.frame_stars).fillna(0).astype(int).values, pa.int32()))
    masters = pa.table({"object_id": pa.array(result.master.index.values, pa.int64()), "band": pa.array(np.full(len(result.master), band)), "master": pa.array(result.master.values, pa.float32())})
    return points, frames, masters


def _transparency(rows: list[dict], frames: pd.DataFrame) -> None:
    """Flux relative to the clearest calibrated frame of the same telescope and band among ``rows``
    (a night's; extinction included: a frame at high airmass counts as less transparent)."""
    table = pd.DataFrame([{"i": i, "zp": r["zero_point_mag"], "band": r["band"], "telescope": frames.loc[r["frame_id"], "telescope"]} for i, r in enumerate(rows) if r["zero_point_mag"] is not None])
    if table.empty:
        return
    for _, group in table.groupby(["telescope", "band"]):
        best = group.zp.max()
        for item in group.itertuples():
            rows[item.i]["transparency"] = float(10 ** (-0.4 * (best - item.zp)))


def _replace_rows(path, schema, rows: list[dict]) -> None:
    existing = without_frames(read_table(path, schema), [row["frame_id"] for row in rows])
    write_table_atomic(pa.concat_tables([existing, schema.from_rows(rows)]), path, schema)
