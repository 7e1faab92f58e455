"""``open_lake``: one read-only DuckDB connection with every table of a lake under a plain name."""

from __future__ import annotations

import glob
from pathlib import Path

import duckdb

from mstlake.lake.archive import ArchiveError, open_reader, sql_path
from mstlake.paths import LakePaths

# the lake's single-file tables, each a view of the same name when the file exists
PARQUET_TABLES = ("frames", "quarantine", "calibration_log", "astrometry", "photometry")


def open_lake(path: str | Path, *, release: str | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection on the lake at ``path``: views ``frames``, ``quarantine``,
    ``calibration_log``, ``astrometry``, ``photometry`` and ``sources`` (the per-night detection
    files), and ``forced``, the archive's light-curve points (the last committed snapshot, or
    ``release``'s). The archive itself is attached as ``lake``; the variable ``lake`` holds the
    lake's path, so the files in ``queries/`` run as they are."""
    paths = LakePaths(Path(path).resolve())
    if not paths.root.is_dir():
        raise FileNotFoundError(f"no lake at {paths.root}")
    if paths.archive_catalogue.exists():
        con = open_reader(paths, release)
        con.execute("CREATE TEMP VIEW forced AS SELECT * FROM lake.forced")
    elif release:
        raise ArchiveError(f"no archive at {paths.archive_dir}, so no release {release!r}")
    else:
        con = duckdb.connect()
    con.execute("SET VARIABLE lake = ?", [str(paths.root)])
    for name in PARQUET_TABLES:
        if paths.table(name).exists():
            con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet('{sql_path(paths.table(name))}')")
    if glob.glob(paths.sources_pattern):
        con.execute(f"CREATE TEMP VIEW sources AS SELECT * FROM read_parquet('{sql_path(paths.sources_pattern)}')")
    return con
