"""``open_lake``: one read-only DuckDB connection with every table of a lake under a plain name."""

from __future__ import annotations

from pathlib import Path

import duckdb

from mstlake.lake.archive import ArchiveError, connect
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
        con = connect(paths, snapshot_id=_release_snapshot(paths, release) if release else None, read_only=True)
        con.execute("CREATE TEMP VIEW forced AS SELECT * FROM lake.forced")
    elif release:
        raise ArchiveError(f"no archive at {paths.archive_dir}, so no release {release!r}")
    else:
        con = duckdb.connect()
    con.execute("SET VARIABLE lake = ?", [str(paths.root)])
    for name in PARQUET_TABLES:
        if paths.table(name).exists():
            con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet('{_quoted(paths.table(name))}')")
    if any(paths.sources_dir.glob("*/*/*.parquet")):
        con.execute(f"CREATE TEMP VIEW sources AS SELECT * FROM read_parquet('{_quoted(paths.sources_dir)}/*/*/*.parquet')")
    return con


def _release_snapshot(paths: LakePaths, release: str) -> int:
    con = connect(paths, read_only=True)
    try:
        found = con.execute("SELECT snapshot_id FROM lake.releases WHERE name = ?", [release]).fetchone()
    finally:
        con.close()
    if found is None:
        raise ArchiveError(f"no release {release!r} in {paths.archive_dir}")
    return int(found[0])


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
