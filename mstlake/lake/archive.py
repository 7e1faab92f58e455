"""The light-curve archive: catalogue tables in DuckLake, HEALPix-partitioned Parquet with snapshots.

DuckLake (a DuckDB extension) keeps the tables as plain Parquet data files and records in a
catalogue (SQLite here, PostgreSQL on a cluster) which files make up each committed snapshot. That
gives what the archive needs without writing a storage engine:

* a night is committed in one transaction: readers see all of it or none of it; a writer killed
  before its COMMIT leaves the previous snapshot as it was (its half-written files are invisible,
  and the next writer deletes them);
* appending only adds files (existing data files are never rewritten);
* readers in other processes see the last committed snapshot while a writer works, and a named
  release is a snapshot id that stays queryable, unchanged, after later appends;
* rows whose ``frame_id`` is already in a table are skipped, so committing a night again adds nothing.

Writers take an exclusive file lock first: SQLite lets only one of two overlapping DuckLake
transactions commit, and on a PostgreSQL catalogue two appends would not even conflict, so the
anti-join alone could let duplicates through. Data files are partitioned by ``healpix_partition``
(a coarse NESTED pixel) and sorted by ``_healpix_29`` inside, so that DuckDB and pyarrow prune by
position. The tables' columns come from ``schemas/`` like every other table.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from mstlake.config import ArchiveConfig
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema

ARCHIVE_TABLES = ("forced",)  # partitioned by healpix_partition, keyed by frame_id
RELEASES = "releases"
CATALOG = "lake"  # the name the archive is attached under in a DuckDB connection

class ArchiveError(RuntimeError):
    """The archive cannot be opened or written (the message says which file and why)."""


@dataclass(frozen=True)
class CommitResult:
    snapshot_id: int | None  # None when there was nothing new to add (no snapshot is made)
    rows_added: dict[str, int]
    frames_skipped: int  # frames already in the archive


def connect(paths: LakePaths, *, snapshot_id: int | None = None, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the archive attached as ``lake`` (at ``snapshot_id`` when given,
    read-only then). The DuckLake and SQLite extensions load from their Python wheels: no network."""
    import duckdb_ext  # namespace package of the duckdb-ext-* wheels

    if not paths.archive_catalogue.exists() and (read_only or snapshot_id is not None):
        raise ArchiveError(f"no archive at {paths.archive_dir}: nothing has been committed yet")
    con = duckdb.connect()
    con.execute("SET extension_directory = ?", [str(Path(next(iter(duckdb_ext.__path__))) / "extensions")])
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("LOAD ducklake")
    con.execute("LOAD sqlite")
    # absolute paths: DuckLake stores them as given, and other processes start elsewhere; WAL and a
    # busy timeout: without them two overlapping writers can leave the catalogue locked for everyone
    options = [f"DATA_PATH '{sql_path(paths.archive_data)}/'", "META_JOURNAL_MODE 'WAL'", "META_BUSY_TIMEOUT 10000"]
    if snapshot_id is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot_id)}")
    if read_only or snapshot_id is not None:
        options.append("READ_ONLY")
    try:
        con.execute(f"ATTACH 'ducklake:sqlite:{sql_path(paths.archive_catalogue)}' AS {CATALOG} ({', '.join(options)})")
    except duckdb.Error as err:
        con.close()
        raise ArchiveError(f"cannot open the archive catalogue {paths.archive_catalogue}: {err}") from err
    return con


def releases(paths: LakePaths) -> list[tuple[str, int]]:
    """(name, snapshot id) of every release of the lake's archive, oldest first."""
    con = connect(paths, read_only=True)
    try:
        return [tuple(row) for row in con.execute(f"SELECT name, snapshot_id FROM {CATALOG}.{RELEASES} ORDER BY snapshot_id").fetchall()]
    finally:
        con.close()


def open_reader(paths: LakePaths, release: str | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection with the lake's archive attached as ``lake``: the last committed
    snapshot, or the snapshot of ``release``. Readers need no lock and no configuration."""
    if release is None:
        return connect(paths, read_only=True)
    named = dict(releases(paths))
    if release not in named:
        raise ArchiveError(f"no release {release!r} in {paths.archive_dir} (known: {sorted(named) or 'none'})")
    return connect(paths, snapshot_id=named[release])


class Archive:
    """The archive of one lake: ``commit`` a night's tables, name a ``release``, open ``reader``s."""

    def __init__(self, paths: LakePaths, cfg: ArchiveConfig):
        self.paths, self.cfg = paths, cfg
        self.schemas = {name: load_schema(name) for name in (*ARCHIVE_TABLES, RELEASES)}

    # -- writing ---------------------------------------------------------------------------------

    def commit(self, tables: Mapping[str, pa.Table], *, message: str) -> CommitResult:
        """Add one night's rows (table name -> Arrow table in that table's schema) in a single
        snapshot. Rows of frames already in a table are skipped; nothing new makes no snapshot."""
        unknown = set(tables) - set(ARCHIVE_TABLES)
        if unknown:
            raise ArchiveError(f"not archive tables: {sorted(unknown)} (known: {list(ARCHIVE_TABLES)})")
        incoming = {name: self.schemas[name].conform(table) for name, table in tables.items()}
        with self._writer() as con:
            con.execute("BEGIN")
            try:
                added, skipped = {}, 0
                for name, table in incoming.items():
                    rows, already = self._append(con, name, table)
                    added[name], skipped = rows, max(skipped, already)
                if any(added.values()):
                    con.execute(f"CALL {CATALOG}.set_commit_message('mstlake', ?)", [message])
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            snapshot = self._current_snapshot(con) if any(added.values()) else None
        return CommitResult(snapshot, added, skipped)

    def release(self, name: str, *, note: str = "") -> int:
        """Name the current snapshot (a data release such as DR1); returns its snapshot id. A name
        is given once: releases are immutable."""
        with self._writer() as con:
            if con.execute(f"SELECT count(*) FROM {CATALOG}.{RELEASES} WHERE name = ?", [name]).fetchone()[0]:
                raise ArchiveError(f"release {name!r} already exists in {self.paths.archive_dir}: releases are immutable")
            snapshot = self._current_snapshot(con)
            con.execute(f"INSERT INTO {CATALOG}.{RELEASES} VALUES (?, ?, now(), ?)", [name, snapshot, note])
        return snapshot

    # -- reading ---------------------------------------------------------------------------------

    def releases(self) -> list[tuple[str, int]]:
        """(name, snapshot id) of every release, oldest first."""
        return releases(self.paths)

    def reader(self, release: str | None = None) -> duckdb.DuckDBPyConnection:
        """A read-only connection with the archive attached as ``lake``: the last committed
        snapshot, or the snapshot of ``release``."""
        return open_reader(self.paths, release)

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An exclusive writer: the file lock (released by the kernel if the process dies), the
        tables created if new, and the files of writers that died before their COMMIT removed
        (safe under the lock: no other transaction can be in flight)."""
        try:
            self.paths.archive_data.mkdir(parents=True, exist_ok=True)
            handle = open(self.paths.archive_writer_lock, "a")
        except OSError as err:
            raise ArchiveError(f"cannot write to the archive at {self.paths.archive_dir}: {err}") from err
        with handle:
            deadline = time.monotonic() + self.cfg.lock_timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ArchiveError(f"another writer has held {self.paths.archive_writer_lock} for over {self.cfg.lock_timeout_s:.0f} s") from None
                    time.sleep(0.2)
            con = connect(self.paths)
            try:
                self._create_tables(con)
                con.execute(f"CALL ducklake_delete_orphaned_files('{CATALOG}', cleanup_all => true)")
                yield con
            finally:
                con.close()

    def _create_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        existing = {row[0] for row in con.execute(f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{CATALOG}'").fetchall()}
        for name, schema in self.schemas.items():
            if name in existing:
                continue
            con.execute(f"CREATE TABLE {CATALOG}.{name} ({schema.sql_columns()})")
            if name in ARCHIVE_TABLES:
                con.execute(f"ALTER TABLE {CATALOG}.{name} SET PARTITIONED BY (healpix_partition)")

    def _append(self, con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> tuple[int, int]:
        """Insert ``table``'s rows of frames ``name`` does not hold yet, sorted as its schema says.
        Returns (rows added, frames skipped)."""
        con.register("incoming", table)
        try:
            already = con.execute(f"SELECT count(DISTINCT frame_id) FROM incoming SEMI JOIN {CATALOG}.{name} USING (frame_id)").fetchone()[0]
            order = ", ".join(self.schemas[name].sort_by)
            columns = ", ".join(self.schemas[name].names)
            added = con.execute(
                f"INSERT INTO {CATALOG}.{name} ({columns}) SELECT {columns} FROM incoming ANTI JOIN {CATALOG}.{name} USING (frame_id) ORDER BY {order}"
            ).fetchone()[0]
        finally:
            con.unregister("incoming")
        return int(added), int(already)

    @staticmethod
    def _current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
        return int(con.execute(f"SELECT id FROM {CATALOG}.current_snapshot()").fetchone()[0])


def sql_path(path: str | Path) -> str:
    """An absolute path as the text of a SQL string literal (quotes doubled)."""
    return os.path.abspath(path).replace("'", "''")
