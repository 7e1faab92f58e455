"""Astrometry of the calibrated frames (the paper's STATIC, first step) as one lazy Dask graph.

Each frame of a field's cubes is read lazily from Zarr and solved (``mstlake.astrom.frame``); a frame that cannot be solved is recorded with the reason and the rest go on.
The solutions go into the ``astrometry`` table (a re-run replaces the rows of the frames it solved).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import dask
import pyarrow as pa

from mstlake.astrom import frame as frame_kernel
from mstlake.astrom import solve
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


_UNSOLVED = {"n_sources": 0, "status": "failed", "reason": None, "wcs_header": None, "rms_x_mas": None, "rms_y_mas": None, "n_matched": 0, "mirrored": None, "pointing_offset_arcmin": None}


def _solve_cube_frame(store, index, keys, pointing, reference, band, pixel_scale_deg, cfg):
    """One frame's row of the astrometry table; a frame that fails is recorded, the night goes on."""
    frame = cubes.open_store(store).isel(frame=index)
    try:
        found = frame_kernel.solve_image(frame.image.values, frame.variance.values, frame.mask.values, pointing=pointing, ref_ra=reference["ra"], ref_dec=reference["dec"], ref_mag=reference[f"mag_{band}"], pixel_scale_deg=pixel_scale_deg, cfg=cfg)
    except solve.SolveError as err:
        return {**keys, **_UNSOLVED, "reason": str(err)}
    except Exception as err:  # anything else in one frame must not stop the night either
        return {**keys, **_UNSOLVED, "reason": f"{type(err).__name__}: {err}"}
    solution, mas = found.solution, pixel_scale_deg * 3.6e6
    return {
        **keys, "n_sources": len(found.extraction.sources), "status": "solved", "reason": None, "wcs_header": solution.wcs.to_header(relax=True).tostring(),
        "rms_x_mas": solution.rms_x_px * mas, "rms_y_mas": solution.rms_y_px * mas, "n_matched": solution.n_matched, "mirrored": found.mirrored,
        "pointing_offset_arcmin": found.pointing_offset_arcmin,
    }


def solve_field(lake: LakePaths, field: str, reference, *, instrument: InstrumentConfig, cfg: AstrometryConfig, progress: bool = True) -> AstrometryResult:
    """Solve every frame in the field's cubes and record the solutions in the astrometry table."""
    schema = load_schema("astrometry")
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    columns = {name: reference.column(name).to_numpy(zero_copy_only=False).astype(float) for name in ("ra", "dec", "mag_g", "mag_r", "mag_i")}
    pixel_scale_deg = instrument.detector.pixel_scale_arcsec / 3600
    tasks = []
    for _, band, night, store in lake.field_cubes(field):
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
