"""``open_lake``: one read-only DuckDB connection with every table of a lake under a plain name, and
the light-curve macros.

Views: ``frames``, ``sources``, ``forced`` and ``objects`` come from the archive when the lake has
one (the last committed snapshot, or a release); ``inventory`` (every raw file), ``quarantine``,
``calibration_log``, ``astrometry``, ``photometry`` and ``night_sources`` (the per-night detection
files) from the lake's own files. A lake measured before it had an archive gets ``frames`` and
``sources`` from those files instead.

Macros (the cone and light-curve ones read only the HEALPix partitions they need: the partition
list is computed first, and DuckLake skips every data file outside it):

* ``lightcurve(object_id)``: every measurement of an object, forced photometry (or, for objects
  without it, detections), with the frame's quality;
* ``cone(ra, dec, radius_arcsec)``: objects within the radius, with ``separation_arcsec``;
* ``lightcurve_at(ra, dec, radius_arcsec)``: the light curves of the objects in a cone;
* ``variables(band, min_epochs, min_chi2, min_stetson_j)``: variable-star candidates;
* ``catalog_stack(object_id, n)``: the light curve binned by ``n`` consecutive epochs per band;
* ``angular_separation_arcsec(ra1, dec1, ra2, dec2)``, ``healpix_nest(order, ra, dec)`` (healpy's
  NESTED ang2pix), ``healpix_cone(ra, dec, radius_arcsec)`` (the archive partitions a cone may
  touch) and ``healpix_disc(order, ra, dec, radius_arcsec)`` (the same at any order).
"""

from __future__ import annotations

import glob
from pathlib import Path

import duckdb

from mstlake.lake import healpix, snapshot
from mstlake.lake.snapshot import ArchiveError
from mstlake.paths import LakePaths

# the lake's single-file tables, each a view when the file exists (frames.parquet is "inventory")
PARQUET_TABLES = {"inventory": "frames", "quarantine": "quarantine", "calibration_log": "calibration_log", "astrometry": "astrometry", "photometry": "photometry"}
ARCHIVE_VIEWS = ("frames", "sources", "forced", "objects", "object_index", "releases", "stacks", "stack_sources")


def open_lake(path: str | Path, *, release: str | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection on the lake at ``path`` with the views and macros described in
    this module (the archive at its last committed snapshot, or at ``release``: a named snapshot,
    or a release ``mstlake reprocess`` made). The variable
    ``lake`` holds the lake's path, so the files in ``queries/`` run as they are.

    The archive's views read the snapshot's Parquet files directly (the file list comes from the
    DuckLake catalogue, see :mod:`mstlake.lake.snapshot`): nothing can write through them. Only
    when the catalogue uses a DuckLake feature that reader does not know is the archive attached
    through DuckLake (read-only, as ``lake``) and the views made on it."""
    paths = LakePaths(Path(path).resolve())
    if not paths.root.is_dir():
        raise FileNotFoundError(f"no lake at {paths.root}")
    if release and paths.release_lake(release).release_manifest.exists():  # a reprocessed release: a lake of its own
        return open_lake(paths.release_lake(release).root)
    if paths.archive_catalogue.exists():
        con = _archive_views(paths, release)
    elif release:
        raise ArchiveError(f"no archive at {paths.archive_dir}, so no release {release!r}")
    else:
        con = duckdb.connect()
    # a literal: a parameter would make DuckDB's Python client import pandas (~0.3 s) to check its type
    con.execute(f"SET VARIABLE lake = {snapshot.sql_literal(str(paths.root))}")
    files = {view: paths.table(table) for view, table in PARQUET_TABLES.items() if paths.table(table).exists()}
    if glob.glob(paths.sources_pattern):
        files["night_sources"] = paths.sources_pattern
    for view, pattern in files.items():
        con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM read_parquet({snapshot.sql_literal(str(pattern))})")
    if not paths.archive_catalogue.exists():  # a lake measured before it had an archive
        for view, source in (("frames", "inventory"), ("sources", "night_sources")):
            if source in files:
                con.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM {source}")
    return con


def _archive_views(paths: LakePaths, release: str | None) -> duckdb.DuckDBPyConnection:
    """A connection with a view per archive table at the last snapshot or at ``release``, and the macros."""
    try:
        found = snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data)
        con = duckdb.connect()
        if release is not None:
            named = dict(con.execute(f"SELECT name, snapshot_id FROM ({found.tables['releases'].scan_sql()})").fetchall()) if "releases" in found.tables else {}
            if release not in named:
                con.close()
                raise ArchiveError(f"no release {release!r} in {paths.archive_dir} (known: {sorted(named) or 'none'})")
            found = snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data, named[release])
        for name in ARCHIVE_VIEWS:
            if name in found.tables:
                table, variable = found.tables[name], f"mstlake_{name}_files"
                if table.whole_files:  # a literal, parsed once (a parameter would make DuckDB's client import pandas)
                    con.execute(f"SET VARIABLE {variable} = {snapshot.sql_list(table.whole_files)}::VARCHAR[]")
                con.execute(f"CREATE TEMP VIEW {name} AS {table.scan_sql(files_variable=variable)}")
    except snapshot.UnsupportedCatalogue:
        from mstlake.lake.archive import open_reader

        con = open_reader(paths, release)
        for name in ARCHIVE_VIEWS:
            con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM lake.{name}")
        found = None
    order = _partition_order(con)
    _create_macros(con, order, _file_lookups(con, found, order) if found is not None else {})
    return con


def _partition_order(con: duckdb.DuckDBPyConnection) -> int:
    """The archive's partition order, read off its data (``healpix_partition`` is ``_healpix_29``
    shifted right by 2 (29 - order)); readers need no configuration."""
    try:
        row = con.execute("SELECT _healpix_29, healpix_partition FROM objects LIMIT 1").fetchone()
    except duckdb.CatalogException:  # nothing committed yet
        row = None
    if row is None:
        return 0
    for order in range(healpix.SPATIAL_ORDER + 1):
        if row[0] >> 2 * (healpix.SPATIAL_ORDER - order) == row[1]:
            return order
    raise ArchiveError(f"the archive's healpix_partition {row[1]} is no parent of _healpix_29 {row[0]}")


class ObjectFiles:
    """The data files of a snapshot that may hold an object's (or a cone's) rows, for ``read_parquet``: a view of
    a whole table lists every file of it, and DuckDB spends ~10 µs per listed file planning each
    query (a survey archive has one or more files per partition and table), where the few files
    of one object's partitions take well under a millisecond. Registered as the SQL function
    ``mstlake_object_files(table, object_id)`` and ``mstlake_cone_files(table, ra, dec,
    radius_arcsec)``; DuckDB evaluates them once, while planning, for constant arguments. An
    object's partition comes from ``object_index`` (its detections may lie in the partitions
    within 2" of it)."""

    def __init__(self, found: snapshot.Snapshot, order: int):
        # (the caller uses this only when every file is whole)
        self.files = {name: {partition: [f.path for f in files] for partition, files in table.files_by_partition().items()} for name, table in found.tables.items()}
        self.first = {name: table.whole_files[0] for name, table in found.tables.items() if table.whole_files}
        # a connection of its own: a function may not query the connection that calls it
        self.lookup = duckdb.connect()
        for statement in healpix.SQL_MACROS:
            self.lookup.execute(statement)
        self.lookup.execute(f"CREATE TEMP VIEW object_index AS {found.tables['object_index'].scan_sql()}")
        self.order = order

    def __call__(self, table: str, object_id: int) -> list[str]:
        row = self.lookup.execute(f"SELECT healpix_partition, ra, dec FROM object_index WHERE object_id = {int(object_id)}").fetchone()
        if row is None:  # no such object: any one file, which holds none of its rows
            return [self.first[table]]
        partitions = [row[0]] if table == "forced" else self.lookup.execute(f"SELECT healpix_near({self.order}, {row[1]!r}, {row[2]!r}, 2)").fetchone()[0]
        return self._files(table, partitions)

    def cone(self, table: str, ra: float, dec: float, radius_arcsec: float) -> list[str]:
        """The files of the partitions a cone may touch (``healpix_disc``)."""
        return self._files(table, self.lookup.execute(f"SELECT healpix_disc({self.order}, {float(ra)!r}, {float(dec)!r}, {float(radius_arcsec)!r})").fetchone()[0])

    def _files(self, table: str, partitions) -> list[str]:
        found = [path for partition in partitions for path in self.files[table].get(partition, [])]
        return found or [self.first[table]]  # none: any one file (the query's filters keep none of its rows)


def _file_lookups(con: duckdb.DuckDBPyConnection, found: snapshot.Snapshot, order: int) -> dict[str, str]:
    """Register ``ObjectFiles`` and return where the light-curve and cone macros read instead of
    the views (see VIEW_READS), when the snapshot's tables are whole files (no rows hidden by
    compaction or deletes); nothing otherwise (the macros read the views then)."""
    tables = found.tables
    if not all(name in tables and all(f.whole for f in tables[name].files) for name in ("forced", "sources", "objects", "object_index")):
        return {}
    from duckdb.sqltypes import BIGINT, DOUBLE, VARCHAR

    files = ObjectFiles(found, order)
    con.create_function("mstlake_object_files", files, [VARCHAR, BIGINT], duckdb.list_type(VARCHAR), side_effects=False)
    con.create_function("mstlake_cone_files", files.cone, [VARCHAR, DOUBLE, DOUBLE, DOUBLE], duckdb.list_type(VARCHAR), side_effects=False)
    options = snapshot.PARTITIONED_READ
    reads = {
        # no object_index lookup in SQL: ObjectFiles gives the files of the object's partitions
        "object_target": ("", "forced"),
        "object_sources_near": ("true", "forced"),
        "object_forced": (f"read_parquet(mstlake_object_files('forced', id), {options}) f WHERE f.object_id = id", "forced"),
        "object_sources": (f"read_parquet(mstlake_object_files('sources', id), {options}) s", "sources"),
        "cone_objects": (f"read_parquet(mstlake_cone_files('objects', ra_deg, dec_deg, radius_arcsec + 2), {options}) o", "objects"),
        "cone_partitions": ("true", "objects"),
        "cone_forced": (f"read_parquet(mstlake_cone_files('forced', ra_deg, dec_deg, radius_arcsec + 2), {options}) f", "forced"),
    }
    return {key: read for key, (read, table) in reads.items() if tables[table].files}  # a table without files stays its (empty) view


def _create_macros(con: duckdb.DuckDBPyConnection, order: int, reads: dict[str, str]) -> None:
    """The macros, reading where ``reads`` says (VIEW_READS for what it leaves out)."""
    for statement in healpix.SQL_MACROS:
        con.execute(statement)
    con.execute(f"CREATE TEMP MACRO healpix_cone(ra_deg, dec_deg, radius_arcsec) AS healpix_disc({int(order)}, ra_deg, dec_deg, radius_arcsec)")
    con.execute(f"CREATE TEMP MACRO _partitions_near(ra_deg, dec_deg, radius_arcsec) AS healpix_near({int(order)}, ra_deg, dec_deg, radius_arcsec)")
    for statement in MACROS:
        con.execute(statement.format(**(VIEW_READS | reads)))


# Where the light-curve and cone macros read: the views, pruned by partition in SQL (any
# snapshot), unless _file_lookups gives the few files of the partitions concerned instead. An
# object's light-curve points all carry its partition and _healpix_29 (from its position when it
# was created: the join on both lets DuckDB skip the other row groups of a sorted file); its
# detections carry their own, within the association radius (1") of it: the partitions within 2"
# of it hold them.
VIEW_READS = {
    "object_target": "target AS (SELECT object_id, _healpix_29, healpix_partition, ra, dec FROM object_index WHERE object_id = id),\n        ",
    "object_forced": "forced f SEMI JOIN target t ON f.healpix_partition = t.healpix_partition AND f._healpix_29 = t._healpix_29 AND f.object_id = t.object_id",
    "object_sources": "sources s",
    "object_sources_near": "s.healpix_partition IN (SELECT unnest(_partitions_near(t.ra, t.dec, 2)) FROM target t)",
    "cone_objects": "objects o",
    "cone_partitions": "list_contains(healpix_cone(ra_deg, dec_deg, radius_arcsec + 2), o.healpix_partition)",
    "cone_forced": "forced f",
}

MACROS = (
    """CREATE TEMP MACRO angular_separation_arcsec(ra1, dec1, ra2, dec2) AS
        7200 * degrees(asin(least(1, sqrt(sin(radians(dec2 - dec1) / 2) ^ 2 + cos(radians(dec1)) * cos(radians(dec2)) * sin(radians(ra2 - ra1) / 2) ^ 2))))""",
    """CREATE TEMP MACRO cone(ra_deg, dec_deg, radius_arcsec) AS TABLE
        SELECT o.*, angular_separation_arcsec(ra_deg, dec_deg, o.ra, o.dec) AS separation_arcsec
        FROM {cone_objects}
        WHERE {cone_partitions}
          AND o.dec BETWEEN dec_deg - (radius_arcsec + 2) / 3600 AND dec_deg + (radius_arcsec + 2) / 3600
          AND angular_separation_arcsec(ra_deg, dec_deg, o.ra, o.dec) <= radius_arcsec
        ORDER BY separation_arcsec""",
    """CREATE TEMP MACRO lightcurve(id) AS TABLE
        WITH {object_target}forced_points AS (
            SELECT f.object_id, f.frame_id, f.mjd, f.band, f.flux, f.flux_err, f.mag, f.mag_err, f.mag_magfit, f.flag, 'forced' AS kind
            FROM {object_forced}
        ),
        detections AS (
            SELECT s.object_id, s.frame_id, s.mjd, s.band, s.flux_psf, s.flux_psf_err, s.mag_psf, s.mag_psf_err, NULL::FLOAT, s.flag_psf, 'detection'
            FROM {object_sources}
            WHERE s.object_id = id AND NOT EXISTS (SELECT 1 FROM forced_points) AND {object_sources_near}
        ),
        points AS (SELECT * FROM forced_points UNION ALL SELECT * FROM detections)
        SELECT p.*, fr.cloudy, coalesce(fr.status = 'calibrated' AND NOT fr.cloudy, true) AND p.flag = 0 AND p.mag IS NOT NULL AS good
        FROM points p LEFT JOIN frames fr USING (frame_id)
        ORDER BY p.band, p.mjd""",
    """CREATE TEMP MACRO lightcurve_at(ra_deg, dec_deg, radius_arcsec) AS TABLE
        SELECT c.separation_arcsec, f.object_id, f.frame_id, f.mjd, f.band, f.flux, f.flux_err, f.mag, f.mag_err, f.mag_magfit, f.flag
        FROM cone(ra_deg, dec_deg, radius_arcsec) c JOIN {cone_forced} ON f.healpix_partition = c.healpix_partition AND f.object_id = c.object_id
        ORDER BY c.separation_arcsec, f.object_id, f.band, f.mjd""",
    """CREATE TEMP MACRO variables(band := 'g', min_epochs := 10, min_chi2 := 5.0, min_stetson_j := 0.5) AS TABLE
        WITH per_band AS (
            SELECT object_id, library_id, ra, dec,
                   CASE band WHEN 'g' THEN n_g WHEN 'r' THEN n_r ELSE n_i END AS epochs,
                   CASE band WHEN 'g' THEN median_g WHEN 'r' THEN median_r ELSE median_i END AS median_mag,
                   CASE band WHEN 'g' THEN chi2_g WHEN 'r' THEN chi2_r ELSE chi2_i END AS chi2,
                   CASE band WHEN 'g' THEN stetson_j_g WHEN 'r' THEN stetson_j_r ELSE stetson_j_i END AS stetson_j,
                   CASE band WHEN 'g' THEN stetson_k_g WHEN 'r' THEN stetson_k_r ELSE stetson_k_i END AS stetson_k,
                   CASE band WHEN 'g' THEN amplitude_g WHEN 'r' THEN amplitude_r ELSE amplitude_i END AS amplitude
            FROM objects
        )
        SELECT * FROM per_band
        WHERE epochs >= min_epochs AND chi2 >= min_chi2 AND stetson_j >= min_stetson_j
        ORDER BY stetson_j DESC""",
    """CREATE TEMP MACRO catalog_stack(id, n) AS TABLE
        WITH points AS (
            SELECT band, mjd, coalesce(mag_magfit, mag) AS m, mag_err AS e,
                   (row_number() OVER (PARTITION BY band ORDER BY mjd) - 1) // n AS bin
            FROM lightcurve(id) WHERE good AND mag_err > 0
        )
        SELECT id AS object_id, band, bin, count(*) AS epochs, avg(mjd) AS mjd,
               sum(m / (e * e)) / sum(1 / (e * e)) AS mag, 1 / sqrt(sum(1 / (e * e))) AS mag_err
        FROM points GROUP BY band, bin HAVING count(*) = n
        ORDER BY band, bin""",
)
