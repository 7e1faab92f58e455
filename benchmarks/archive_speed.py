"""Speed of the light-curve archive (DuckLake, HEALPix-partitioned Parquet) at survey scale, with
lsdb on its HATS export and DuckDB on one unpartitioned Parquet file answering the same queries.

    python benchmarks/archive_speed.py                                   # 1e6 objects x 100 epochs: ~1e8 forced rows
    python benchmarks/archive_speed.py --reuse                           # queries only, on the archive already built
    python benchmarks/archive_speed.py --objects 20000 --epochs 10 --out-dir /tmp/archive-bench-small --out /tmp/archive_speed_small.json

The full run takes ~45 min on this machine (2 cores, 24 GB): ~22 min of commits, 2 min of
refresh, ~15 min of queries (``--query-budget-s`` caps each set of timed queries), 1-2 min each
for the Parquet copy and the HATS export, 2.5 min for the last commit. Peak memory is ~21 GB
(the refreshes of ``objects`` and the HATS export of 4e7 points each get there): do not run it
beside other heavy work, and lower ``--hats-max-points`` when memory is short.

Synthetic survey: ``--objects`` library stars in a 3 x 3 degree field around (116, +28) (uniform,
~31 per square arcminute), each measured by forced photometry on every one of ``--epochs`` frames
(one full-field frame per night, bands cycling g, r, i; 5 % of the stars vary). Their ids are
Gaia DR3-like (``--ids gaia``: the order-12 HEALPix pixel times 2^35 plus a random number), so
object ids correlate with position as real library ids do, and min/max statistics on
``object_id`` prune files and row groups; ``--ids random`` removes that. The archive
(``mstlake.lake.archive.Archive``, partition order 9 as ``ingest/pipeline.toml``) is built the
way a bulk load is: one ``commit`` per night with ``refresh_objects=False`` (the first passes the
library so that the objects are seeded), then one ``refresh_objects()``; the times of the commits
(ingest rate, rows/s), of the refresh, and, at the end, of one more night committed with
``refresh_objects=True`` on the full archive (the cost of keeping ``objects`` true nightly) are
reported. Disk size and number of data files per table.

Queries, on ``mstlake.query.lake.open_lake`` (the OS page cache is warm in every case; nothing
here drops it):

* ``lightcurve(id)``: 200 random objects, warm (one connection, after 10 warm-up queries):
  p50 / p99 of the query with its result fetched as Arrow; and the first query of a fresh
  process: 5 ``python`` subprocesses each timing import, ``open_lake`` and one query (medians);
* ``cone(ra, dec, 60)`` (1 arcmin) at 200 random centres, p50 / p99;
* ``lightcurve_at(ra, dec, 5)`` 1" from 200 random objects (the light curves of the objects within 5").

The same queries in the same run on

* **plain Parquet**: one file of every forced row (``COPY`` from the archive, sorted like the
  archive by ``_healpix_29, object_id, mjd``; DuckDB's default row groups of 122880 rows, snappy),
  one of the objects and one of the frames, queried by DuckDB with ``read_parquet``: the light
  curve by ``object_id = ?`` (and, as a second figure, pruned through the object's
  ``_healpix_29`` looked up first), the cone by a dec / ra box and the exact separation;
* **lsdb** on the HATS export (``mstlake.lake.hats_export``: one row per object with its light
  curve nested, margin cache, ``object_id`` index): ``id_search`` (then the nested light curve
  flattened), ``cone_search`` on the catalogue opened without the light-curve column, and
  ``cone_search`` with it for ``lightcurve_at``. lsdb builds a dask graph per query, so it gets
  20 queries (after one warm-up), the first 20 of the same lists. When the export of every point
  would not fit in memory (``--hats-max-points``), the export covers the objects within a disc
  around the field centre and every query of all three systems is drawn from inside that disc
  (cone centres 2' inside its edge).

Ratios (lsdb / archive, Parquet / archive) of the medians are printed and written with every
figure to ``benchmarks/results/archive_speed.json`` (with the load average at the start and the
end: other work on the machine inflates every figure). Big data lives in ``--out-dir``
(/tmp/archive-bench): the archive 4.7 GB in ~80,000 files at 1e8 rows, the Parquet copy 2.7 GB,
the HATS export of 4e7 points 0.65 GB.

``--compact`` adds, at the end, ``mstlake compact`` (``Archive.compact()``: each partition's
nightly files rewritten as one file sorted by ``_healpix_29, object_id, mjd`` in row groups of
8192 rows; snapshots and releases keep their rows), the snapshots no release names expired, the
replaced files deleted, and the archive's queries timed again. It rewrites the archive in
``--out-dir``. On an archive compacted already, ``--reuse`` times the compacted state.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mstlake.config import ArchiveConfig
from mstlake.lake import healpix
from mstlake.lake.archive import Archive, connect
from mstlake.lake.snapshot import sql_path
from mstlake.paths import LakePaths
from mstlake.query.lake import MACROS, open_lake
from mstlake.schemas import load_schema

FIELD_RA, FIELD_DEC = 116.0, 28.0
FIELD_SIDE_DEG = 3.0
BANDS = ("g", "r", "i")
PARTITION_ORDER = 9  # as ingest/pipeline.toml
FIRST_FRAME_ID = 7_000_000_000
TARGETS_MS = {"lightcurve_p50": 20.0, "lightcurve_p99": 100.0, "lightcurve_first_query_fresh_process": 500.0, "cone_1arcmin_p50": 50.0}
ANGULAR_SEPARATION_MACRO = MACROS[0]


# -- the synthetic survey --------------------------------------------------------------------------


class Field:
    """The stars of the synthetic field: ids, positions, magnitudes and variability, deterministic
    in the seed."""

    def __init__(self, n_objects: int, seed: int = 0, ids: str = "gaia"):
        rng = np.random.default_rng(seed)
        half = FIELD_SIDE_DEG / 2
        self.dec = FIELD_DEC + rng.uniform(-half, half, n_objects)
        self.ra = FIELD_RA + rng.uniform(-half, half, n_objects) / np.cos(np.radians(FIELD_DEC))
        self.index = healpix.spatial_index(self.ra, self.dec)
        self.partition = healpix.parent_pixel(self.index, PARTITION_ORDER).astype(np.int32)
        if ids == "gaia":
            # as Gaia DR3: the NESTED HEALPix pixel at order 12 times 2^35, plus a number inside it
            while True:
                self.object_id = (healpix.parent_pixel(self.index, 12) << 35) + rng.integers(0, 2**35, n_objects)
                if len(np.unique(self.object_id)) == n_objects:
                    break
        else:  # ids unrelated to position
            unique = np.unique(rng.integers(10**15, 7 * 10**18, int(n_objects * 1.01) + 100, dtype=np.int64))
            self.object_id = rng.permutation(unique)[:n_objects]
        self.mag_g = 13.0 + 7.0 * rng.random(n_objects) ** 0.5  # more faint stars than bright
        self.colour = {"g": 0.0, "r": -0.4 - 0.2 * rng.random(n_objects), "i": -0.6 - 0.3 * rng.random(n_objects)}
        self.variable = rng.random(n_objects) < 0.05
        self.amplitude = np.where(self.variable, rng.uniform(0.05, 0.5, n_objects), 0.0)
        self.period = rng.uniform(0.3, 30.0, n_objects)
        self.phase = rng.uniform(0, 2 * np.pi, n_objects)
        # detector position (plate scale ~1.2"/px, 9576 x 6288 px covers ~3.2 x 2.1 degrees; a star
        # off the frame is still given a position)
        self.x0 = 4788 + (self.ra - FIELD_RA) * np.cos(np.radians(FIELD_DEC)) * 3000
        self.y0 = 3144 + (self.dec - FIELD_DEC) * 3000

    def __len__(self) -> int:
        return len(self.object_id)

    def library(self) -> pa.Table:
        return pa.table({"source_id": self.object_id, "ra": self.ra, "dec": self.dec})


def frames_table(frame_ids: np.ndarray, mjd: np.ndarray, bands: list[str], nights: np.ndarray) -> pa.Table:
    """The archive's frames rows of full-field frames (calibrated, clear; the fit columns at
    plausible constants, the rest empty)."""
    schema = load_schema("archive_frames")
    n = len(frame_ids)
    index = healpix.spatial_index(np.full(n, FIELD_RA), np.full(n, FIELD_DEC))
    given = {
        "_healpix_29": index, "healpix_partition": healpix.parent_pixel(index, PARTITION_ORDER).astype(np.int32), "frame_id": frame_ids,
        "path": [f"/data/raw/{night}/MST1/MST1_{night}_{fid}.fits.fz" for night, fid in zip(nights, frame_ids, strict=True)],
        "sha256": [f"{fid:064x}" for fid in frame_ids], "telescope": np.full(n, "MST1"), "band": bands, "field": np.full(n, "f16"),
        "night": nights.astype(np.int32), "date_obs": np.full(n, "2024-01-01T00:00:00"), "mjd": mjd, "exptime": np.full(n, 60.0),
        "egain": np.full(n, 1.0), "naxis1": np.full(n, 9576), "naxis2": np.full(n, 6288), "status": np.full(n, "calibrated"),
        "ra_pointing": np.full(n, FIELD_RA), "dec_pointing": np.full(n, FIELD_DEC), "airmass": np.full(n, 1.1),
        "n_matched": np.full(n, 3000), "n_calibrators": np.full(n, 2000), "cloudy": np.zeros(n, bool), "magfit_stars": np.full(n, 2000),
        "seeing_arcsec": np.full(n, 2.5, np.float32), "zero_point_mag": np.full(n, 25.0, np.float32), "transparency": np.full(n, 1.0, np.float32),
    }
    columns = {}
    for column in schema.columns:
        if column.name in given:
            columns[column.name] = given[column.name]
        elif column.nullable:
            columns[column.name] = pa.nulls(n)
        elif column.type == "string":
            columns[column.name] = np.full(n, "")
        elif column.type == "bool":
            columns[column.name] = np.zeros(n, bool)
        elif column.type.startswith("timestamp"):
            columns[column.name] = np.zeros(n, "datetime64[us]")
        elif column.type.startswith("list"):
            columns[column.name] = [[] for _ in range(n)]
        else:
            columns[column.name] = np.zeros(n)
    return schema.from_columns(columns)


def night_tables(field: Field, epoch: int) -> dict[str, pa.Table]:
    """One night: one full-field frame in band g, r or i and the forced photometry of every star on it."""
    rng = np.random.default_rng(1_000_003 + epoch)
    n = len(field)
    band = BANDS[epoch % len(BANDS)]
    night = 20240101 + epoch
    frame_id = FIRST_FRAME_ID + epoch
    mjd = 60310.1 + epoch + 0.01 * rng.random()
    true_mag = field.mag_g + field.colour[band] + field.amplitude * np.sin(2 * np.pi * mjd / field.period + field.phase)
    flux = 10 ** (-0.4 * (true_mag - 25.0))
    flux_err = np.sqrt(flux + 400.0 * 12.0)  # sky + read noise in a PSF footprint, adu (gain 1)
    measured = flux + rng.normal(size=n) * flux_err
    positive = measured > 0
    mag = np.where(positive, 25.0 - 2.5 * np.log10(np.where(positive, measured, 1.0)), np.nan)
    mag_err = np.where(positive, 1.0857 * flux_err / np.where(positive, measured, 1.0), np.nan)
    dx, dy = rng.normal(0, 20, 2)  # the night's pointing offset
    flag = np.where(rng.random(n) < 0.01, 1, 0)
    forced = load_schema("forced").from_columns({
        "_healpix_29": field.index, "healpix_partition": field.partition, "object_id": field.object_id,
        "frame_id": np.full(n, frame_id, np.int64), "mjd": np.full(n, mjd), "band": pa.array(np.full(n, band)),
        "x": (field.x0 + dx).astype(np.float32), "y": (field.y0 + dy).astype(np.float32),
        "flux": measured.astype(np.float32), "flux_err": flux_err.astype(np.float32), "mag": mag.astype(np.float32), "mag_err": mag_err.astype(np.float32),
        "mag_magfit": (mag + rng.normal(0, 0.003, n)).astype(np.float32), "flag": flag.astype(np.int32),
    })
    frames = frames_table(np.array([frame_id], np.int64), np.array([mjd]), [band], np.array([night]))
    return {"frames": frames, "forced": forced}


# -- building the archive --------------------------------------------------------------------------


def disk_usage(path: Path) -> tuple[int, int]:
    """Bytes and number of files under ``path``."""
    total, count = 0, 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
            count += 1
    return total, count


def archive_layout(paths: LakePaths) -> dict:
    """Size on disk and data files (live in the current snapshot, and on disk) per table."""
    bytes_total, files_total = disk_usage(paths.archive_dir)
    con = connect(paths, read_only=True)
    try:
        live = {}
        for table in ("frames", "sources", "forced", "objects"):
            live[table] = con.execute(f"SELECT count(*), coalesce(sum(data_file_size_bytes), 0) FROM ducklake_list_files('lake', '{table}')").fetchone()
        rows = {table: con.execute(f"SELECT count(*) FROM lake.{table}").fetchone()[0] for table in ("frames", "forced", "objects")}
    finally:
        con.close()
    on_disk = {}
    for table in ("frames", "sources", "forced", "objects"):
        table_dir = next(paths.archive_data.glob(f"*/{table}"), None)
        on_disk[table] = disk_usage(table_dir) if table_dir else (0, 0)
    return {
        "archive_gb": round(bytes_total / 1e9, 3), "archive_files": files_total,
        "catalogue_mb": round(paths.archive_catalogue.stat().st_size / 1e6, 1),
        "rows": rows,
        "live_data_files": {t: int(v[0]) for t, v in live.items()},
        "live_data_gb": {t: round(v[1] / 1e9, 3) for t, v in live.items()},
        "files_on_disk": {t: v[1] for t, v in on_disk.items()},
        "gb_on_disk": {t: round(v[0] / 1e9, 3) for t, v in on_disk.items()},
        "bytes_per_forced_row": round(live["forced"][1] / max(rows["forced"], 1), 1),
    }


def build_archive(field: Field, archive: Archive, epochs: int, start: int = 0) -> dict:
    """Nights ``start``..``epochs - 1`` committed one by one with ``refresh_objects=False`` (the
    library with the first), then one ``refresh_objects()``."""
    seconds, rows = [], []
    began = time.perf_counter()
    for epoch in range(start, epochs):
        tables = night_tables(field, epoch)
        t0 = time.perf_counter()
        result = archive.commit(tables, message=f"night {epoch}", library=field.library() if epoch == 0 else None, refresh_objects=False)
        dt = time.perf_counter() - t0
        seconds.append(dt)
        rows.append(result.rows_added["forced"])
        elapsed = time.perf_counter() - began
        eta = elapsed / (epoch - start + 1) * (epochs - epoch - 1)
        print(f"  night {epoch + 1:4d}/{epochs}: {result.rows_added['forced']:,} forced rows in {dt:6.2f} s ({result.rows_added['forced'] / dt:,.0f} rows/s)"
              f"  elapsed {elapsed / 60:5.1f} min, ETA {eta / 60:5.1f} min", flush=True)
    print("  refresh_objects() ...", flush=True)
    t0 = time.perf_counter()
    archive.refresh_objects()
    refresh_s = time.perf_counter() - t0
    print(f"  refresh_objects(): {refresh_s:.1f} s", flush=True)
    seconds_a, rows_a = np.array(seconds), np.array(rows)
    return {
        "nights_committed": len(seconds), "forced_rows_committed": int(rows_a.sum()),
        "commit_seconds": [round(s, 3) for s in seconds],
        "commit_seconds_first_last": [round(seconds[0], 2), round(seconds[-1], 2)] if seconds else None,
        "ingest_rows_per_s_median": round(float(np.median(rows_a / seconds_a))) if seconds else None,
        "ingest_rows_per_s_first_10": round(float(np.median(rows_a[:10] / seconds_a[:10]))) if seconds else None,
        "ingest_rows_per_s_last_10": round(float(np.median(rows_a[-10:] / seconds_a[-10:]))) if seconds else None,
        "ingest_rows_per_s_total": round(float(rows_a.sum() / seconds_a.sum())) if seconds else None,
        "commits_total_s": round(float(seconds_a.sum()), 1),
        "refresh_objects_s": round(refresh_s, 1),
    }


# -- queries -----------------------------------------------------------------------------------------


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2), "max_ms": round(float(a.max()), 2)}


def timed(fn, args_list, budget_s: float = float("inf")) -> tuple[list[float], list[int]]:
    """Milliseconds of ``fn(*args)`` for each args (until ``budget_s`` has passed), and the rows each returned."""
    ms, rows = [], []
    began = time.perf_counter()
    for args in args_list:
        if time.perf_counter() - began > budget_s:
            break
        t0 = time.perf_counter()
        n = fn(*args)
        ms.append(1000 * (time.perf_counter() - t0))
        rows.append(n)
    return ms, rows


def query_archive(root: Path, ids: np.ndarray, centres: np.ndarray, near: np.ndarray, budget_s: float, warmup: int = 10) -> dict:
    con = open_lake(root)
    lightcurve = lambda i: con.execute("SELECT * FROM lightcurve(?)", [int(i)]).fetch_arrow_table().num_rows
    cone = lambda ra, dec: con.execute("SELECT * FROM cone(?, ?, 60.0)", [float(ra), float(dec)]).fetch_arrow_table().num_rows
    at = lambda ra, dec: con.execute("SELECT * FROM lightcurve_at(?, ?, 5.0)", [float(ra), float(dec)]).fetch_arrow_table().num_rows
    out = {}
    for name, fn, args in (("lightcurve", lightcurve, [(i,) for i in ids]), ("cone_1arcmin", cone, [tuple(c) for c in centres]), ("lightcurve_at_5arcsec", at, [tuple(c) for c in near])):
        timed(fn, args[:warmup])
        ms, rows = timed(fn, args, budget_s)
        out[name] = percentiles(ms) | {"rows_median": float(np.median(rows)), "ms": [round(m, 2) for m in ms]}
        print(f"  archive {name:22s} p50 {out[name]['p50_ms']:8.2f} ms  p99 {out[name]['p99_ms']:8.2f} ms  (median {out[name]['rows_median']:.0f} rows)", flush=True)
    con.close()
    return out


FRESH_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from mstlake.query.lake import open_lake
t1 = time.perf_counter()
con = open_lake(sys.argv[1])
t2 = time.perf_counter()
# the id as a literal: a ? parameter makes DuckDB's Python client import pandas first (~0.3 s)
n = con.execute(f"SELECT * FROM lightcurve({int(sys.argv[2])})").fetch_arrow_table().num_rows
t3 = time.perf_counter()
n2 = con.execute(f"SELECT * FROM lightcurve({int(sys.argv[3])})").fetch_arrow_table().num_rows
t4 = time.perf_counter()
print(json.dumps({"import_ms": 1000 * (t1 - t0), "open_ms": 1000 * (t2 - t1), "query_ms": 1000 * (t3 - t2), "second_query_ms": 1000 * (t4 - t3), "rows": n}))
"""


def fresh_process_queries(root: Path, ids: np.ndarray, runs: int = 5) -> dict:
    """The first light-curve query of a new Python process: import, open_lake, the query."""
    results = []
    for k in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(root), str(int(ids[k])), str(int(ids[k + runs]))], check=False, capture_output=True, text=True)
        wall = 1000 * (time.perf_counter() - t0)
        if proc.returncode != 0:
            print(f"  fresh process {k} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"process_wall_ms": wall})
    if not results:
        raise RuntimeError("every fresh-process query failed")
    med = {key: round(float(np.median([r[key] for r in results])), 1) for key in ("import_ms", "open_ms", "query_ms", "second_query_ms", "process_wall_ms")}
    med["open_plus_query_ms"] = round(float(np.median([r["open_ms"] + r["query_ms"] for r in results])), 1)
    med["runs"] = len(results)
    print(f"  archive fresh process (median of {runs}): import {med['import_ms']:.0f} ms, open_lake {med['open_ms']:.0f} ms, first lightcurve {med['query_ms']:.0f} ms,"
          f" open+query {med['open_plus_query_ms']:.0f} ms, second query {med['second_query_ms']:.0f} ms, whole process {med['process_wall_ms']:.0f} ms", flush=True)
    return med


def compact(archive: Archive) -> dict:
    """``Archive.compact()`` (each partition spread over several files rewritten as one sorted
    file), then the snapshots that no release names expired and their files deleted, under the
    writer lock."""
    import fcntl

    paths = archive.paths
    t0 = time.perf_counter()
    out = {"files_before_after": archive.compact()}
    out["compact_s"] = round(time.perf_counter() - t0, 1)
    with open(paths.archive_writer_lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        con = connect(paths)
        try:
            kept = {row[0] for row in con.execute("SELECT snapshot_id FROM lake.releases").fetchall()}
            kept.add(con.execute("SELECT id FROM lake.current_snapshot()").fetchone()[0])
            expire = [row[0] for row in con.execute("SELECT snapshot_id FROM ducklake_snapshots('lake')").fetchall() if row[0] not in kept]
            t0 = time.perf_counter()
            if expire:
                con.execute(f"CALL ducklake_expire_snapshots('lake', versions => {expire})")
            con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
            out["expire_and_cleanup_s"] = round(time.perf_counter() - t0, 1)
            out["snapshots_expired"] = len(expire)
        finally:
            con.close()
    print(f"  compaction: {out}", flush=True)
    return out


# -- plain Parquet -----------------------------------------------------------------------------------


def write_parquet_baseline(paths: LakePaths, out: Path, tmp: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    con = connect(paths, read_only=True)
    con.execute(f"SET temp_directory = '{sql_path(tmp)}'")
    con.execute("SET preserve_insertion_order = true")
    times = {}
    for name, sql in (
        ("forced", "SELECT * FROM lake.forced ORDER BY _healpix_29, object_id, mjd"),
        ("objects", "SELECT * FROM lake.objects ORDER BY _healpix_29, object_id"),
        ("frames", "SELECT * FROM lake.frames ORDER BY frame_id"),
    ):
        t0 = time.perf_counter()
        con.execute(f"COPY ({sql}) TO '{sql_path(out / f'{name}.parquet')}' (FORMAT parquet, ROW_GROUP_SIZE 122880)")
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"  wrote {name}.parquet in {times[name]} s ({(out / f'{name}.parquet').stat().st_size / 1e9:.2f} GB)", flush=True)
    con.close()
    return {"write_s": times, "gb": {n: round((out / f"{n}.parquet").stat().st_size / 1e9, 3) for n in ("forced", "objects", "frames")},
            "sorted_by": "_healpix_29, object_id, mjd (as the archive)", "row_group_rows": 122880, "compression": "snappy (DuckDB's default, as DuckLake's)"}


def query_parquet(out: Path, ids: np.ndarray, centres: np.ndarray, near: np.ndarray, budget_s: float, warmup: int = 10) -> dict:
    con = duckdb.connect()
    con.execute(ANGULAR_SEPARATION_MACRO)
    forced, objects, frames = (sql_path(out / f"{n}.parquet") for n in ("forced", "objects", "frames"))
    points = ("f.object_id, f.frame_id, f.mjd, f.band, f.flux, f.flux_err, f.mag, f.mag_err, f.mag_magfit, f.flag, "
              "fr.cloudy, fr.status = 'calibrated' AND NOT fr.cloudy AND f.flag = 0 AND f.mag IS NOT NULL AS good")
    plain_sql = f"SELECT {points} FROM read_parquet('{forced}') f LEFT JOIN read_parquet('{frames}') fr USING (frame_id) WHERE f.object_id = ? ORDER BY f.band, f.mjd"
    pruned_sql = f"SELECT {points} FROM read_parquet('{forced}') f LEFT JOIN read_parquet('{frames}') fr USING (frame_id) WHERE f._healpix_29 = ? AND f.object_id = ? ORDER BY f.band, f.mjd"
    cone_sql = (
        f"SELECT o.*, angular_separation_arcsec($ra, $dec, o.ra, o.dec) AS separation_arcsec FROM read_parquet('{objects}') o "
        "WHERE o.dec BETWEEN $dec - $r / 3600 AND $dec + $r / 3600 AND o.ra BETWEEN $ra - $r / 3600 / cos(radians($dec)) - 1e-6 AND $ra + $r / 3600 / cos(radians($dec)) + 1e-6 "
        "AND angular_separation_arcsec($ra, $dec, o.ra, o.dec) <= $r ORDER BY separation_arcsec"
    )
    at_sql = (
        f"WITH c AS ({cone_sql}) SELECT c.separation_arcsec, f.object_id, f.frame_id, f.mjd, f.band, f.flux, f.flux_err, f.mag, f.mag_err, f.mag_magfit, f.flag "
        f"FROM c JOIN read_parquet('{forced}') f USING (object_id) ORDER BY c.separation_arcsec, f.object_id, f.band, f.mjd"
    )

    def pruned(i):
        index = con.execute(f"SELECT _healpix_29 FROM read_parquet('{objects}') WHERE object_id = ?", [int(i)]).fetchone()[0]
        return con.execute(pruned_sql, [int(index), int(i)]).fetch_arrow_table().num_rows

    queries = (
        ("lightcurve", lambda i: con.execute(plain_sql, [int(i)]).fetch_arrow_table().num_rows, [(i,) for i in ids]),
        ("lightcurve_via_healpix", pruned, [(i,) for i in ids]),
        ("cone_1arcmin", lambda ra, dec: con.execute(cone_sql, {"ra": float(ra), "dec": float(dec), "r": 60.0}).fetch_arrow_table().num_rows, [tuple(c) for c in centres]),
        ("lightcurve_at_5arcsec", lambda ra, dec: con.execute(at_sql, {"ra": float(ra), "dec": float(dec), "r": 5.0}).fetch_arrow_table().num_rows, [tuple(c) for c in near]),
    )
    out = {}
    for name, fn, args in queries:
        timed(fn, args[:warmup])
        ms, rows = timed(fn, args, budget_s)
        out[name] = percentiles(ms) | {"rows_median": float(np.median(rows))}
        print(f"  parquet {name:22s} p50 {out[name]['p50_ms']:8.2f} ms  p99 {out[name]['p99_ms']:8.2f} ms  (median {out[name]['rows_median']:.0f} rows)", flush=True)
    t0 = time.perf_counter()
    code = (
        "import duckdb, sys, time; t = time.perf_counter(); con = duckdb.connect(); "
        f"n = con.execute(\"SELECT * FROM read_parquet('{forced}') WHERE object_id = ?\", [int(sys.argv[1])]).fetch_arrow_table().num_rows; "
        "print(1000 * (time.perf_counter() - t))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(int(ids[0]))], capture_output=True, text=True, check=True)
    out["lightcurve_fresh_process_query_ms"] = round(float(proc.stdout.strip()), 1)
    out["lightcurve_fresh_process_wall_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    con.close()
    return out


# -- HATS / lsdb -------------------------------------------------------------------------------------


HATS_EXPORT = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from mstlake.lake.archive import connect
from mstlake.lake.hats_export import export_from_connection
from mstlake.paths import LakePaths
root, out_dir, where_objects, where_points = sys.argv[1:5]
con = connect(LakePaths(__import__("pathlib").Path(root)), read_only=True)
t0 = time.perf_counter()
result = export_from_connection(con, out_dir, objects_sql=f"SELECT * FROM lake.objects WHERE {where_objects}",
                                points_sql=f"SELECT f.* FROM lake.forced f WHERE {where_points}", overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t0, "n_objects": result.n_objects, "n_points": result.n_points,
                  "n_partitions": result.n_partitions, "n_margin_rows": result.n_margin_rows,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def hats_region(paths: LakePaths, max_points: int) -> tuple[float | None, int, int]:
    """The radius (deg) of the disc around the field centre whose objects have at most
    ``max_points`` light-curve points (None: the whole field), objects and points in it."""
    con = connect(paths, read_only=True)
    try:
        con.execute(ANGULAR_SEPARATION_MACRO)
        n_points, n_objects = con.execute("SELECT count(*) FROM lake.forced").fetchone()[0], con.execute("SELECT count(*) FROM lake.objects").fetchone()[0]
        if n_points <= max_points:
            return None, n_objects, n_points
        per_object = n_points / n_objects
        distance = np.sort(con.execute(f"SELECT angular_separation_arcsec({FIELD_RA}, {FIELD_DEC}, ra, dec) / 3600 AS d FROM lake.objects").fetchnumpy()["d"])
        keep = int(max_points / per_object)
        radius = float(distance[keep - 1])
        return radius, keep, int(keep * per_object)
    finally:
        con.close()


def export_hats(paths: LakePaths, out: Path, radius_deg: float | None) -> dict:
    if radius_deg is None:
        where_objects = where_points = "true"
    else:
        where_objects = f"angular_separation_arcsec({FIELD_RA}, {FIELD_DEC}, ra, dec) <= {radius_deg * 3600!r}"
        pixels = healpix.cone_pixels(FIELD_RA, FIELD_DEC, radius_deg * 3600, PARTITION_ORDER).tolist()
        where_points = (f"f.healpix_partition IN ({', '.join(map(str, pixels))}) AND f.object_id IN "
                        f"(SELECT object_id FROM lake.objects WHERE healpix_partition IN ({', '.join(map(str, pixels))}) AND {where_objects})")
    macro = ANGULAR_SEPARATION_MACRO.replace("CREATE TEMP MACRO", "CREATE MACRO")
    script = HATS_EXPORT.replace("t0 = time.perf_counter()", f"con.execute({macro!r})\nt0 = time.perf_counter()")
    proc = subprocess.run([sys.executable, "-c", script, str(paths.root), str(out), where_objects, where_points], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"HATS export failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    size, files = disk_usage(out)
    return result | {"gb": round(size / 1e9, 3), "files": files, "region_radius_deg": radius_deg}


def query_lsdb(out: Path, ids: np.ndarray, centres: np.ndarray, near: np.ndarray, n: int, budget_s: float) -> dict:
    warnings.simplefilter("ignore")
    import lsdb

    t0 = time.perf_counter()
    full = lsdb.open_catalog(out)
    open_s = time.perf_counter() - t0
    object_columns = [c for c in full.columns if c != "lightcurve"]
    objects_only = lsdb.open_catalog(out, columns=object_columns)

    def lightcurve(i):
        with contextlib.redirect_stdout(io.StringIO()):  # id_search prints "Searching for ..."
            search = full.id_search(values={"object_id": int(i)})
        frame = search.compute(progress_bar=False)
        return len(frame["lightcurve"].nest.to_flat())

    def cone(ra, dec):
        return len(objects_only.cone_search(float(ra), float(dec), 60.0).compute(progress_bar=False))

    def at(ra, dec):
        frame = full.cone_search(float(ra), float(dec), 5.0).compute(progress_bar=False)
        return len(frame["lightcurve"].nest.to_flat()) if len(frame) else 0

    out_ = {"open_catalog_ms": round(1000 * open_s, 1), "queries_each": n}
    for name, fn, args in (("lightcurve", lightcurve, [(i,) for i in ids[: n + 1]]), ("cone_1arcmin", cone, [tuple(c) for c in centres[: n + 1]]),
                           ("lightcurve_at_5arcsec", at, [tuple(c) for c in near[: n + 1]])):
        ms, rows = timed(fn, args, budget_s)
        out_[name] = percentiles(ms[1:]) | {"rows_median": float(np.median(rows[1:])), "first_ms": round(ms[0], 1)}
        print(f"  lsdb    {name:22s} p50 {out_[name]['p50_ms']:8.2f} ms  p99 {out_[name]['p99_ms']:8.2f} ms  (median {out_[name]['rows_median']:.0f} rows)", flush=True)
    code = textwrap.dedent(f"""
        import time, warnings; warnings.simplefilter("ignore"); t0 = time.perf_counter()
        import lsdb; t1 = time.perf_counter()
        cat = lsdb.open_catalog({str(out)!r}); f = cat.id_search(values={{"object_id": {int(ids[0])}}}).compute(progress_bar=False); n = len(f["lightcurve"].nest.to_flat())
        print((t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import_ms, open_query_ms = map(float, proc.stdout.strip().splitlines()[-1].split())
    out_["lightcurve_fresh_process"] = {"import_ms": round(import_ms, 1), "open_plus_query_ms": round(open_query_ms, 1)}
    return out_


# -- the run -----------------------------------------------------------------------------------------


def sample_queries(paths: LakePaths, n: int, radius_deg: float | None, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``2 n`` random object ids (light curves, then fresh processes), ``n`` random cone centres
    (in the field, 2' inside the HATS region when it is a disc, 2' inside the field otherwise) and
    ``n`` positions 1" from other random objects (for ``lightcurve_at``)."""
    rng = np.random.default_rng(seed)
    con = connect(paths, read_only=True)
    con.execute(ANGULAR_SEPARATION_MACRO)
    where = "true" if radius_deg is None else f"angular_separation_arcsec({FIELD_RA}, {FIELD_DEC}, ra, dec) <= {radius_deg * 3600 - 120!r}"
    objects = con.execute(f"SELECT object_id, ra, dec FROM lake.objects WHERE {where} ORDER BY object_id").fetchnumpy()
    con.close()
    pick = rng.choice(len(objects["object_id"]), 3 * n, replace=False)
    ids = objects["object_id"][pick[: 2 * n]]
    angle = rng.uniform(0, 2 * np.pi, n)
    near = np.column_stack([objects["ra"][pick[2 * n:]] + np.cos(angle) / 3600 / np.cos(np.radians(objects["dec"][pick[2 * n:]])),
                            objects["dec"][pick[2 * n:]] + np.sin(angle) / 3600])
    if radius_deg is None:
        half = FIELD_SIDE_DEG / 2 - 2 / 60
        centres = np.column_stack([FIELD_RA + rng.uniform(-half, half, n) / np.cos(np.radians(FIELD_DEC)), FIELD_DEC + rng.uniform(-half, half, n)])
    else:
        r = (radius_deg - 2 / 60) * np.sqrt(rng.random(n))
        theta = rng.uniform(0, 2 * np.pi, n)
        centres = np.column_stack([FIELD_RA + r * np.cos(theta) / np.cos(np.radians(FIELD_DEC)), FIELD_DEC + r * np.sin(theta)])
    return ids, centres, near


def ratio_table(archive: dict, parquet: dict | None, lsdb_: dict | None) -> dict:
    rows = {}
    for name in ("lightcurve", "cone_1arcmin", "lightcurve_at_5arcsec"):
        a = archive[name]["p50_ms"]
        row = {"archive_p50_ms": a}
        if parquet:
            row |= {"parquet_p50_ms": parquet[name]["p50_ms"], "parquet_over_archive": round(parquet[name]["p50_ms"] / a, 2)}
            if name == "lightcurve":
                row |= {"parquet_via_healpix_p50_ms": parquet["lightcurve_via_healpix"]["p50_ms"], "parquet_via_healpix_over_archive": round(parquet["lightcurve_via_healpix"]["p50_ms"] / a, 2)}
        if lsdb_:
            row |= {"lsdb_p50_ms": lsdb_[name]["p50_ms"], "lsdb_over_archive": round(lsdb_[name]["p50_ms"] / a, 2)}
        rows[name] = row
    print("\n  median latency (ms) and ratios to the archive")
    print(f"  {'query':24s} {'archive':>9s} {'parquet':>9s} {'ratio':>7s} {'pq+hpx':>9s} {'ratio':>7s} {'lsdb':>9s} {'ratio':>7s}")
    for name, row in rows.items():
        cells = [f"{row['archive_p50_ms']:9.2f}"]
        cells += [f"{row.get('parquet_p50_ms', float('nan')):9.2f}", f"{row.get('parquet_over_archive', float('nan')):7.2f}"]
        cells += [f"{row.get('parquet_via_healpix_p50_ms', float('nan')):9.2f}", f"{row.get('parquet_via_healpix_over_archive', float('nan')):7.2f}"]
        cells += [f"{row.get('lsdb_p50_ms', float('nan')):9.2f}", f"{row.get('lsdb_over_archive', float('nan')):7.2f}"]
        print(f"  {name:24s} " + " ".join(cells))
    return rows


def targets(a: dict, fresh: dict, title: str) -> dict:
    measured = {"lightcurve_p50": a["lightcurve"]["p50_ms"], "lightcurve_p99": a["lightcurve"]["p99_ms"],
                "lightcurve_first_query_fresh_process": fresh["query_ms"], "cone_1arcmin_p50": a["cone_1arcmin"]["p50_ms"]}
    out = {k: {"target_ms": TARGETS_MS[k], "measured_ms": measured[k], "met": measured[k] <= TARGETS_MS[k]} for k in TARGETS_MS}
    out["lightcurve_first_query_fresh_process"]["open_plus_query_ms"] = fresh["open_plus_query_ms"]
    print(f"\n{title}")
    for k, v in out.items():
        print(f"  {k:40s} target <= {v['target_ms']:6.0f} ms   measured {v['measured_ms']:8.2f} ms   {'met' if v['met'] else 'NOT met'}")
    return out


def main() -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/archive-bench"))
    parser.add_argument("--reuse", action="store_true", help="keep the archive (and Parquet copy, HATS export) already in --out-dir; build only what is missing")
    parser.add_argument("--skip-hats", action="store_true", help="no HATS export, no lsdb queries")
    parser.add_argument("--skip-parquet", action="store_true", help="no plain Parquet copy, no queries on it")
    parser.add_argument("--skip-refresh-commit", action="store_true", help="do not time one more night committed with refresh_objects=True")
    parser.add_argument("--ids", choices=("gaia", "random"), default="gaia", help="object ids as Gaia DR3 source_ids (HEALPix order-12 pixel << 35: "
                        "position-correlated, so file and row-group min/max statistics on object_id prune) or random 63-bit numbers")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--query-budget-s", type=float, default=300, help="stop a set of timed queries after this many seconds (the number run is reported)")
    parser.add_argument("--lsdb-queries", type=int, default=20)
    parser.add_argument("--hats-max-points", type=float, default=4e7, help="export at most this many light-curve points to HATS (a disc around the field centre)")
    parser.add_argument("--compact", action="store_true", help="at the end, mstlake compact (each partition rewritten as one sorted file), unreleased snapshots expired and cleaned up, and the queries timed again "
                        "(this rewrites the archive in --out-dir)")
    parser.add_argument("--out", default="archive_speed.json")
    args = parser.parse_args()

    out_dir = args.out_dir.resolve()
    paths = LakePaths(out_dir / "lake")
    cfg = ArchiveConfig(partition_order=PARTITION_ORDER, lock_timeout_s=600, compact_after_files=0)  # appends alone: --compact times compaction
    archive = Archive(paths, cfg)
    report: dict = {"objects": args.objects, "epochs": args.epochs, "field": {"ra": FIELD_RA, "dec": FIELD_DEC, "side_deg": FIELD_SIDE_DEG},
                    "partition_order": PARTITION_ORDER, "ids": args.ids, "machine": {"cpus": os.cpu_count(), "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                    "duckdb": duckdb.__version__, "load_average_at_start": os.getloadavg(), "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    t_start = time.perf_counter()

    print(f"synthetic field: {args.objects:,} objects ...", flush=True)
    field = Field(args.objects, ids=args.ids)
    done = 0
    if paths.archive_catalogue.exists():
        if not args.reuse:
            raise SystemExit(f"{paths.archive_dir} exists: pass --reuse, or remove {out_dir}")
        con = connect(paths, read_only=True)
        done = con.execute("SELECT count(*) FROM lake.frames").fetchone()[0]
        con.close()
    if done < args.epochs:
        print(f"building the archive at {paths.archive_dir}: nights {done + 1}-{args.epochs} ...", flush=True)
        report["build"] = build_archive(field, archive, args.epochs, start=done)
    else:
        print(f"reusing the archive at {paths.archive_dir} ({done} nights)", flush=True)
        report["build"] = "reused"
        previous = Path(__file__).parent / "results" / args.out
        if previous.exists():
            report["build"] = json.loads(previous.read_text()).get("build", "reused")
    report["layout"] = archive_layout(paths)
    print(f"  archive: {report['layout']['archive_gb']} GB, {report['layout']['archive_files']} files, rows {report['layout']['rows']}", flush=True)

    radius = None
    hats_dir = out_dir / "hats"
    if not args.skip_hats:
        radius, n_obj, n_pts = hats_region(paths, int(args.hats_max_points))
        report["hats_region"] = {"radius_deg": radius, "objects": n_obj, "points": n_pts, "whole_field": radius is None}
        print(f"HATS export region: {'the whole field' if radius is None else f'disc of {radius:.3f} deg'} ({n_obj:,} objects, {n_pts:,} points)", flush=True)
    ids, centres, near = sample_queries(paths, args.queries, radius)

    print("archive queries ...", flush=True)
    report["archive_queries"] = query_archive(paths.root, ids[: args.queries], centres, near, args.query_budget_s)
    report["archive_fresh_process"] = fresh_process_queries(paths.root, ids[args.queries:])

    parquet = None
    if not args.skip_parquet:
        pq_dir = out_dir / "parquet"
        if not (args.reuse and (pq_dir / "frames.parquet").exists()):
            print("plain Parquet copy ...", flush=True)
            report["parquet_build"] = write_parquet_baseline(paths, pq_dir, out_dir / "duckdb_tmp")
        print("plain Parquet queries ...", flush=True)
        parquet = report["parquet_queries"] = query_parquet(pq_dir, ids[: args.queries], centres, near, args.query_budget_s)

    lsdb_ = None
    if not args.skip_hats:
        if not (args.reuse and (hats_dir / "collection.properties").exists()):
            print("HATS export ...", flush=True)
            report["hats_export"] = export_hats(paths, hats_dir, radius)
            print(f"  {report['hats_export']}", flush=True)
        print(f"lsdb queries ({args.lsdb_queries} each, after one warm-up) ...", flush=True)
        lsdb_ = report["lsdb_queries"] = query_lsdb(hats_dir, ids, centres, near, args.lsdb_queries, args.query_budget_s)

    report["ratios"] = ratio_table(report["archive_queries"], parquet, lsdb_)

    if not args.skip_refresh_commit:
        con = connect(paths, read_only=True)
        nights = con.execute("SELECT count(*) FROM lake.frames").fetchone()[0]
        con.close()
        print(f"one more night ({nights + 1}) committed with refresh_objects=True ...", flush=True)
        tables = night_tables(field, nights)
        t0 = time.perf_counter()
        result = archive.commit(tables, message=f"night {nights} (refreshing objects)", refresh_objects=True)
        report["commit_with_refresh"] = {"night": nights + 1, "forced_rows": result.rows_added["forced"], "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {report['commit_with_refresh']}", flush=True)

    if args.compact:
        print("compaction (mstlake compact, then unreleased snapshots expired and cleaned up) ...", flush=True)
        after = report["after_compaction"] = {"compaction": compact(archive)}
        after["layout"] = archive_layout(paths)
        print(f"  archive: {after['layout']['archive_gb']} GB, {after['layout']['archive_files']} files, live data files {after['layout']['live_data_files']}", flush=True)
        after["archive_queries"] = query_archive(paths.root, ids[: args.queries], centres, near, args.query_budget_s)
        after["archive_fresh_process"] = fresh_process_queries(paths.root, ids[args.queries:])
        for q in after["archive_queries"].values():
            q.pop("ms", None)
        after["ratios"] = ratio_table(after["archive_queries"], parquet, lsdb_)

    report["targets"] = targets(report["archive_queries"], report["archive_fresh_process"], "targets")
    if args.compact:
        report["after_compaction"]["targets"] = targets(report["after_compaction"]["archive_queries"], report["after_compaction"]["archive_fresh_process"], "targets after compaction")
    report["seconds_total"] = round(time.perf_counter() - t_start, 1)
    report["load_average_at_end"] = os.getloadavg()  # other work on the machine inflates every figure
    for section in ("archive_queries",):
        for q in report[section].values():
            q.pop("ms", None)
    results = Path(__file__).parent / "results" / args.out
    results.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {results}")


if __name__ == "__main__":
    main()
