"""Astrometry of the calibrated frames (the paper's STATIC, first step) as one lazy Dask graph.

Each frame of a field's cubes is read lazily from Zarr, its sources extracted and its WCS solved
(``mstlake.astrom``); a frame that cannot be solved is recorded with the reason and the rest go on.
The solutions go into the ``astrometry`` table (a re-run replaces the rows of the frames it solved).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import dask
import numpy as np
import pyarrow as pa

from mstlake.astrom import extract, solve
from mstlake.config import AstrometryConfig, InstrumentConfig
from mstlake.lake import cubes
from mstlake.lake.tables import read_table, write_table_atomic
from mstlake.paths import LakePaths
from mstlake.pipeline.progress import dask_progress
from mstlake.schemas import load_schema


@dataclass(frozen=True)
class AstrometryResult:
    solved: int
    failed: list[tuple[int, str]]


def solve_frame(image, variance, mask, *, pointing: tuple[float, float], reference: dict[str, np.ndarray], band: str, pixel_scale_deg: float, cfg: AstrometryConfig) -> dict:
    """Extraction and solution of one frame: a row of the astrometry table (without its keys)."""
    found = extract.extract_sources(image, variance, mask, thresh=cfg.detect_sigma, minarea=cfg.min_area_px)
    sources = found.sources
    row = {"n_sources": len(sources), "status": "failed", "reason": None, "wcs_header": None, "rms_x_mas": None, "rms_y_mas": None, "n_matched": 0, "mirrored": None, "pointing_offset_arcmin": None}
    if not np.all(np.isfinite(pointing)):
        row["reason"] = "the header gives no pointing (RA/DEC): the blind solve starts from one"
        return row
    clean = sources[sources.flag == 0]
    ra, dec, mag = reference["ra"], reference["dec"], reference[f"mag_{band}"]
    reach = np.hypot(*np.shape(image)) * pixel_scale_deg / 2 + cfg.max_pointing_error_arcmin / 60
    dra = (ra - pointing[0] + 180) % 360 - 180
    near = np.hypot(dra * np.cos(np.radians(pointing[1])), dec - pointing[1]) < reach
    near &= np.isfinite(mag)
    try:
        # every source for the asterisms: the brightest stars are saturated (flagged), and they are
        # the ones the catalogue's brightest are; the fit then uses the clean ones
        wcs, _, parity = solve.blind_solve(sources.x, sources.y, sources.flux, ra[near], dec[near], mag[near], pointing=pointing, pixel_scale_deg=pixel_scale_deg, shape=np.shape(image), n_bright=cfg.bright_sources, scale_tolerance=cfg.scale_tolerance)
        solution = solve.refine(wcs, clean.x, clean.y, ra[near], dec[near], shape=np.shape(image), sip_degree=cfg.sip_degree, match_radius_px=cfg.match_radius_px, clip_sigma=cfg.clip_sigma, parity=parity)
    except solve.SolveError as err:
        row["reason"] = str(err)
        return row
    if solution.n_matched < cfg.min_matches:
        row["reason"] = f"only {solution.n_matched} reference stars matched (at least {cfg.min_matches} needed)"
        return row
    ny, nx = np.shape(image)
    centre = solution.wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    offset = np.hypot(((centre[0] - pointing[0] + 180) % 360 - 180) * np.cos(np.radians(pointing[1])), centre[1] - pointing[1]) * 60
    mas = pixel_scale_deg * 3.6e6
    row.update(status="solved", wcs_header=solution.wcs.to_header(relax=True).tostring(), rms_x_mas=solution.rms_x_px * mas, rms_y_mas=solution.rms_y_px * mas, n_matched=solution.n_matched, mirrored=bool(np.linalg.det(solution.wcs.wcs.cd) > 0), pointing_offset_arcmin=float(offset))
    return row


def _solve_cube_frame(store, index, keys, pointing, reference, band, pixel_scale_deg, cfg):
    ds = cubes.open_store(store)
    frame = ds.isel(frame=index)
    try:
        row = solve_frame(frame.image.values, frame.variance.values, frame.mask.values, pointing=pointing, reference=reference, band=band, pixel_scale_deg=pixel_scale_deg, cfg=cfg)
    except Exception as err:  # a frame's failure is recorded, the night goes on
        row = {"n_sources": 0, "status": "failed", "reason": f"{type(err).__name__}: {err}", "wcs_header": None, "rms_x_mas": None, "rms_y_mas": None, "n_matched": 0, "mirrored": None, "pointing_offset_arcmin": None}
    return {**keys, **row}


def solve_field(lake: LakePaths, field: str, reference, *, instrument: InstrumentConfig, cfg: AstrometryConfig, progress: bool = True) -> AstrometryResult:
    """Solve every frame in the field's cubes and record the solutions in the astrometry table."""
    schema = load_schema("astrometry")
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    columns = {name: reference.column(name).to_numpy(zero_copy_only=False).astype(float) for name in ("ra", "dec", "mag_g", "mag_r", "mag_i")}
    pixel_scale_deg = instrument.detector.pixel_scale_arcsec / 3600
    tasks = []
    for store in sorted((lake.root / "cubes" / field).glob("*/*.zarr")):
        band, night = store.parent.name, int(store.stem)
        for index, frame_id in enumerate(cubes.open_store(store).frame_id.values):
            row = frames.loc[int(frame_id)]
            keys = {"frame_id": int(frame_id), "field": field, "band": band, "night": night}
            pointing = (float(row.ra_pointing), float(row.dec_pointing))
            tasks.append(dask.delayed(_solve_cube_frame)(store, index, keys, pointing, columns, band, pixel_scale_deg, cfg, dask_key_name=f"astrometry-{field}-{frame_id}"))
    with dask_progress("solving astrometry", len(tasks), key_prefix="astrometry", enabled=progress):
        rows = list(dask.compute(*tasks, scheduler=cfg.scheduler, num_workers=cfg.workers))
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        row["solved_at"] = now
    new = schema.from_rows(rows)
    existing = read_table(lake.astrometry_table, schema)
    redone = {row["frame_id"] for row in rows}
    if existing.num_rows:
        existing = existing.filter(pa.array([fid not in redone for fid in existing.column("frame_id").to_pylist()]))
    write_table_atomic(pa.concat_tables([existing, new]), lake.astrometry_table, schema)
    return AstrometryResult(solved=sum(r["status"] == "solved" for r in rows), failed=[(r["frame_id"], r["reason"]) for r in rows if r["status"] != "solved"])
