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

A commit also keeps ``objects`` true: library stars the night measured are seeded from the
reference library, each new detection is associated with the nearest object within
``association_radius_arcsec`` (objects read from the detections' partitions and their
neighbours, so pixel edges do not split an object), detections that match nothing become new
objects (friends-of-friends within the radius, so a transient seen on several frames is one
object), and the rows of the touched objects' partitions are replaced by rows with refreshed
statistics (the old files leave the snapshot whole: no data file is rewritten, none gets a delete
file).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from mstlake.astro import separation_deg
from mstlake.config import ArchiveConfig
from mstlake.lake import healpix
from mstlake.lake.snapshot import ArchiveError, read_snapshot, sql_path
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema

# archive table -> its schema; every one partitioned by healpix_partition
TABLE_SCHEMAS = {
    "frames": "archive_frames", "sources": "archive_sources", "forced": "forced", "objects": "objects", "object_index": "object_index",
    "stacks": "stacks", "stack_sources": "stack_sources",
}
NIGHT_TABLES = ("frames", "sources", "forced")  # appended per night, keyed by frame_id
ARCHIVE_TABLES = tuple(TABLE_SCHEMAS)
PARTITIONED_TABLES = ("frames", "sources", "forced", "objects", "stacks", "stack_sources")  # object_index is sorted by id instead
RELEASES = "releases"
CATALOG = "lake"  # the name the archive is attached under in a DuckDB connection
BANDS = ("g", "r", "i")
# objects' per-band statistics, as OBJECT_STATISTICS_SQL names them (objects.<stat>_<band>)
BAND_STATISTICS = ("mean", "median", "std", "chi2", "stetson_j", "stetson_k", "iqr", "amplitude", "first_mjd", "last_mjd")
COMPACT_ROW_GROUP_ROWS = 8192  # a compacted, sorted file: a light curve reads one row group of it
NEW_OBJECT_BASE = 9_000_000_000_000_000_000  # new objects' ids count up from here: above any Gaia DR3 source_id

@dataclass(frozen=True)
class CommitResult:
    snapshot_id: int | None  # None when there was nothing new to add (no snapshot is made)
    rows_added: dict[str, int]
    frames_skipped: int  # frames already in the archive
    new_objects: int = 0  # objects created from detections that matched nothing


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
    # absolute paths: DuckLake stores them as given, and other processes start elsewhere; the data
    # path always where the lake is now (the catalogue keeps files relative to it), so a lake can be
    # moved or mounted elsewhere; WAL and a busy timeout: without them two overlapping writers can
    # leave the catalogue locked for everyone
    options = [f"DATA_PATH '{sql_path(paths.archive_data)}/'", "OVERRIDE_DATA_PATH true", "META_JOURNAL_MODE 'WAL'", "META_BUSY_TIMEOUT 10000"]
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
    snapshot, or the snapshot of ``release`` (or the archive of a release ``mstlake reprocess``
    made). Readers need no lock and no configuration."""
    if release is None:
        return connect(paths, read_only=True)
    if paths.release_lake(release).release_manifest.exists():  # reprocessed: a lake of its own
        return connect(paths.release_lake(release), read_only=True)
    named = dict(releases(paths))
    if release not in named:
        raise ArchiveError(f"no release {release!r} in {paths.archive_dir} (known: {sorted(named) or 'none'})")
    return connect(paths, snapshot_id=named[release])


def new_objects(paths: LakePaths) -> pa.Table:
    """The archive's objects that are not library stars (object_id, ra, dec, and the _healpix_29
    they were created with: their light-curve points go to that partition); none before the
    first commit."""
    found = _latest(paths, "SELECT object_id, ra, dec, _healpix_29 FROM lake.objects WHERE library_id IS NULL ORDER BY object_id")
    return found if found is not None else pa.table({"object_id": pa.array([], pa.int64()), "ra": pa.array([], pa.float64()), "dec": pa.array([], pa.float64()), "_healpix_29": pa.array([], pa.int64())})


def committed_frames(paths: LakePaths, frame_ids) -> set[int]:
    """Those of ``frame_ids`` whose night the archive holds (rows in its ``frames`` table); none
    before the first commit."""
    if not paths.archive_catalogue.exists():
        return set()
    con = open_reader(paths)
    try:
        return _frames_in(con, "frames", frame_ids)
    finally:
        con.close()


def _frames_in(con: duckdb.DuckDBPyConnection, name: str, frame_ids) -> set[int]:
    """Those of ``frame_ids`` the archive's table ``name`` holds rows of. The ids go in as
    literals, so DuckLake prunes by its per-file frame_id statistics; a join against the table
    would read every frame_id it holds (5 s per night at 1e8 points)."""
    wanted = sorted({int(f) for f in frame_ids})
    if not wanted:
        return set()
    return {row[0] for row in con.execute(f"SELECT DISTINCT frame_id FROM {CATALOG}.{name} WHERE frame_id IN ({', '.join(map(str, wanted))})").fetchall()}


def master_magnitudes(paths: LakePaths, object_ids, band: str) -> pd.Series | None:
    """The magfit master magnitudes in ``band`` the archive holds for these objects (None when it
    holds none)."""
    if band not in BANDS:
        raise ArchiveError(f"no band {band!r} in the archive (bands: {BANDS})")
    wanted = pa.table({"object_id": pa.array(np.asarray(object_ids), pa.int64())})
    found = _latest(paths, f"SELECT object_id, master_{band} AS master FROM lake.objects SEMI JOIN wanted USING (object_id) WHERE master_{band} IS NOT NULL", wanted=wanted)
    if found is None or not found.num_rows:
        return None
    return pd.Series(found.column("master").to_numpy().astype(float), index=found.column("object_id").to_numpy())


def _latest(paths: LakePaths, query: str, **tables: pa.Table) -> pa.Table | None:
    """``query`` on the last committed snapshot, with ``tables`` registered under their names;
    None when nothing has been committed."""
    if not paths.archive_catalogue.exists():
        return None
    con = open_reader(paths)
    try:
        for name, table in tables.items():
            con.register(name, table)
        return con.execute(query).fetch_arrow_table()
    finally:
        con.close()


class Archive:
    """The archive of one lake: ``commit`` a night's tables, name a ``release``, open ``reader``s."""

    def __init__(self, paths: LakePaths, cfg: ArchiveConfig):
        self.paths, self.cfg = paths, cfg
        self.schemas = {name: load_schema(schema) for name, schema in (*TABLE_SCHEMAS.items(), (RELEASES, RELEASES))}

    # -- writing ---------------------------------------------------------------------------------

    def commit(self, tables: Mapping[str, pa.Table], *, message: str, library: pa.Table | None = None, masters: pa.Table | None = None, refresh_objects: bool = True, replace_frames: Collection[int] = ()) -> CommitResult:
        """Add one night's rows (``frames``, ``sources``, ``forced``: name -> Arrow table in that
        table's schema) in a single snapshot, and bring ``objects`` up to date with them. Rows of
        frames already in a table are skipped; nothing new makes no snapshot.

        ``sources`` rows are associated here: their ``object_id`` and ``separation_arcsec`` are
        assigned, whatever they hold. ``library`` (``source_id``, ``ra``, ``dec``) seeds the objects
        of library stars in ``forced``; ``masters`` (``object_id``, ``band``, ``master``) gives
        magfit master magnitudes to objects that have none yet (a master, once set, stays). With
        ``refresh_objects=False`` new objects are added without statistics and existing ones are
        left as they are (bulk loads: call ``refresh_objects`` once at the end).

        ``replace_frames``: frames measured again (a frame that failed, retried): their rows in
        every night table are deleted in the same snapshot before the new ones go in (earlier
        snapshots and releases keep the old rows)."""
        unknown = set(tables) - set(NIGHT_TABLES)
        if unknown:
            raise ArchiveError(f"not night tables of the archive: {sorted(unknown)} (known: {list(NIGHT_TABLES)})")
        incoming = {name: self.schemas[name].conform(table) for name, table in tables.items()}
        with self._writer() as con:
            with _transaction(con):
                if replace_frames:
                    listed = ", ".join(str(int(f)) for f in sorted(set(replace_frames)))
                    for name in NIGHT_TABLES:
                        con.execute(f"DELETE FROM {CATALOG}.{name} WHERE frame_id IN ({listed})")
                added, skipped = {}, 0
                for name, table in incoming.items():
                    held = _frames_in(con, name, table.column("frame_id").to_pylist())
                    skipped = max(skipped, len(held))
                    con.register(f"incoming_{name}", table)
                    con.register("held", pa.table({"frame_id": pa.array(sorted(held), pa.int64())}))
                    con.execute(f"CREATE OR REPLACE TEMP TABLE new_{name} AS SELECT * FROM incoming_{name} ANTI JOIN held USING (frame_id)")
                    con.unregister(f"incoming_{name}")
                    con.unregister("held")
                for name in set(NIGHT_TABLES) - set(incoming):  # absent tables add no rows
                    con.execute(f"CREATE OR REPLACE TEMP TABLE new_{name} AS SELECT * FROM {CATALOG}.{name} LIMIT 0")
                new_objects = self._stage_objects(con, library, has_sources="sources" in incoming)
                for name in incoming:
                    added[name] = self._insert_sorted(con, name, f"new_{name}")
                if any(added.values()):
                    con.execute(f"INSERT INTO {CATALOG}.object_index SELECT object_id, _healpix_29, healpix_partition, ra, dec FROM staged_objects ORDER BY object_id")
                    if refresh_objects:
                        self._refresh_objects(con, masters, "SELECT object_id FROM new_forced UNION SELECT object_id FROM new_sources UNION SELECT object_id FROM staged_objects")
                    else:
                        self._insert_sorted(con, "objects", "staged_objects")
                    con.execute(f"CALL {CATALOG}.set_commit_message('mstlake', ?)", [message])
            snapshot = self._current_snapshot(con) if any(added.values()) else None
        if snapshot is not None and self.cfg.compact_after_files and self._most_files_per_partition() > self.cfg.compact_after_files:
            self.compact()
        return CommitResult(snapshot, added, int(skipped), new_objects if any(added.values()) else 0)

    def commit_stack(self, stack: pa.Table, sources: pa.Table, *, message: str, replace: bool = False) -> int | None:
        """Add one measured image stack (its ``stacks`` row) and its deep catalogue
        (``stack_sources``) in one snapshot. Each detection is associated with the nearest known
        object within the association radius (a stack makes no objects: its detections are not
        light-curve points). A stack already held (same ``stack_id``) adds nothing and returns
        None, unless ``replace``: then its rows are replaced in the same snapshot (a stack measured
        again by a newer pipeline; earlier snapshots and releases keep the old measurement).
        Returns the snapshot id."""
        stack, sources = self.schemas["stacks"].conform(stack), self.schemas["stack_sources"].conform(sources)
        if stack.num_rows != 1:
            raise ArchiveError(f"commit_stack takes one stacks row, not {stack.num_rows}")
        stack_id = int(stack.column("stack_id")[0].as_py())
        with self._writer() as con:
            held = con.execute(f"SELECT count(*) FROM {CATALOG}.stacks WHERE stack_id = {stack_id}").fetchone()[0]
            if held and not replace:
                return None
            if sources.num_rows:
                object_id, separation = self._nearest_objects(con, sources.column("ra").to_numpy(), sources.column("dec").to_numpy(), f"SELECT object_id, ra, dec, healpix_partition FROM {CATALOG}.objects")
                sources = sources.set_column(sources.column_names.index("object_id"), "object_id", pa.array(object_id, pa.int64()))
                sources = sources.set_column(sources.column_names.index("separation_arcsec"), "separation_arcsec", pa.array(separation, pa.float32()))
            with _transaction(con):
                if held:
                    for name in ("stacks", "stack_sources"):
                        con.execute(f"DELETE FROM {CATALOG}.{name} WHERE stack_id = {stack_id}")
                con.register("new_stack_row", stack)
                con.register("new_stack_sources", sources)
                self._insert_sorted(con, "stacks", "new_stack_row")
                self._insert_sorted(con, "stack_sources", "new_stack_sources")
                con.unregister("new_stack_row")
                con.unregister("new_stack_sources")
                con.execute(f"CALL {CATALOG}.set_commit_message('mstlake', ?)", [message])
            return self._current_snapshot(con)

    def _most_files_per_partition(self) -> int:
        """The most data files any partition of any table is held in at the last snapshot."""
        tables = read_snapshot(self.paths.archive_catalogue, self.paths.archive_data).tables.values()
        return max((len(files) for table in tables for files in table.files_by_partition().values()), default=0)

    def refresh_objects(self, *, message: str = "objects refreshed") -> int:
        """Recompute every object's position and statistics from all its measurements, in one
        snapshot (after bulk loads made with ``refresh_objects=False``). Returns the snapshot id."""
        with self._writer() as con:
            with _transaction(con):
                con.execute(f"CREATE OR REPLACE TEMP TABLE staged_objects AS SELECT * FROM {CATALOG}.objects LIMIT 0")
                self._refresh_objects(con, None, f"SELECT object_id FROM {CATALOG}.objects")
                con.execute(f"CALL {CATALOG}.set_commit_message('mstlake', ?)", [message])
            return self._current_snapshot(con)

    def compact(self, *, rows_per_commit: int = 20_000_000) -> dict[str, tuple[int, int]]:
        """Rewrite every partition that nightly commits have spread over several data files as one
        file, sorted as the table's schema says, in row groups of ``COMPACT_ROW_GROUP_ROWS``:
        every query plans over the list of live files (its cost grows with their number), and
        inside a sorted file a light curve or a cone reads one row group, where a concatenation of
        nights (what DuckLake's merge_adjacent_files makes) must be read whole. Partitions are
        rewritten a batch at a time (delete and insert, one snapshot per batch of about
        ``rows_per_commit`` rows): readers see each partition whole, before or after. Older
        snapshots and releases keep their rows: the replaced files stay for them (until
        snapshots are expired). Returns table -> (live files before, after)."""
        counts = {}
        with self._writer() as con:
            con.execute(f"CALL {CATALOG}.set_option('parquet_row_group_size', {COMPACT_ROW_GROUP_ROWS})")
            for name in ARCHIVE_TABLES:
                grouped = self._live_files(name)
                spread = sorted(key for key, files in grouped.items() if len(files) > 1)
                if spread and name in PARTITIONED_TABLES:
                    rows = dict(con.execute(f"SELECT healpix_partition, count(*) FROM {CATALOG}.{name} GROUP BY 1").fetchall())
                    batch, batch_rows = [], 0
                    for key in spread:
                        batch.append(key)
                        batch_rows += rows.get(key, 0)
                        if batch_rows >= rows_per_commit or key == spread[-1]:
                            self._rewrite_sorted(con, name, batch)
                            batch, batch_rows = [], 0
                elif spread:
                    self._rewrite_sorted(con, name, None)
                counts[name] = (sum(map(len, grouped.values())), sum(map(len, self._live_files(name).values())))
        return counts

    def _rewrite_sorted(self, con: duckdb.DuckDBPyConnection, name: str, partitions: list[int] | None) -> None:
        """Replace the rows of these partitions (all rows when None) by the same rows, sorted."""
        where = "true" if partitions is None else f"healpix_partition IN ({', '.join(map(str, partitions))})"
        with _transaction(con):
            con.execute(f"CREATE OR REPLACE TEMP TABLE rewritten AS SELECT * FROM {CATALOG}.{name} WHERE {where}")
            con.execute(f"DELETE FROM {CATALOG}.{name} WHERE {where}")
            self._insert_sorted(con, name, "rewritten")
            con.execute(f"CALL {CATALOG}.set_commit_message('mstlake', 'compaction of {name}')")
        con.execute("DROP TABLE rewritten")

    def _live_files(self, name: str) -> dict[int | None, list]:
        """Table ``name``'s data files at the last snapshot, by partition."""
        table = read_snapshot(self.paths.archive_catalogue, self.paths.archive_data).tables.get(name)
        return table.files_by_partition() if table is not None else {}

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
        tables created if new, and, when the last writer did not finish (its marker is still
        there), the files it wrote before dying removed (safe under the lock: no other transaction
        can be in flight; not done every time: it lists every file of the archive)."""
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
                if self.paths.archive_writer_active.exists():
                    con.execute(f"CALL ducklake_delete_orphaned_files('{CATALOG}', cleanup_all => true)")
                self.paths.archive_writer_active.touch()
                try:
                    yield con
                except (duckdb.IOException, duckdb.PermissionException, OSError) as err:  # disk full, permissions: the transaction rolled back
                    raise ArchiveError(f"could not write to the archive at {self.paths.archive_dir}: {err} (nothing of this commit is in it; the last committed snapshot is intact)") from err
                self.paths.archive_writer_active.unlink()  # only after a clean finish
            finally:
                con.close()

    def _create_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        existing = {row[0] for row in con.execute(f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{CATALOG}'").fetchall()}
        for name, schema in self.schemas.items():
            if name in existing:
                self._add_new_columns(con, name, schema)
                continue
            con.execute(f"CREATE TABLE {CATALOG}.{name} ({schema.sql_columns()})")
            if name in PARTITIONED_TABLES:
                con.execute(f"ALTER TABLE {CATALOG}.{name} SET PARTITIONED BY (healpix_partition)")
            if name == "object_index" and "objects" in existing:  # an archive from before the index
                con.execute(f"INSERT INTO {CATALOG}.object_index SELECT object_id, _healpix_29, healpix_partition, ra, dec FROM {CATALOG}.objects ORDER BY object_id")

    @staticmethod
    def _add_new_columns(con: duckdb.DuckDBPyConnection, name: str, schema) -> None:
        """Columns a newer schema adds to a table an older mstlake created (null in its old rows)."""
        held = {row[0] for row in con.execute(f"SELECT column_name FROM duckdb_columns() WHERE database_name = '{CATALOG}' AND table_name = '{name}'").fetchall()}
        for column in schema.columns:
            if column.name not in held:
                con.execute(f'ALTER TABLE {CATALOG}.{name} ADD COLUMN "{column.name}" {column.sql_type}')

    def _insert_sorted(self, con: duckdb.DuckDBPyConnection, name: str, source: str) -> int:
        """Insert ``source``'s rows into table ``name`` sorted as its schema says (the order
        inside the data files is what lets readers prune row groups by position): one INSERT per
        partition, on one thread, because a partitioned write reorders rows (across threads, and
        even on one thread a partition's first rows can land at the end of its file)."""
        order = ", ".join(self.schemas[name].sort_by)
        columns = ", ".join(self.schemas[name].names)
        partitioned = name in PARTITIONED_TABLES
        con.execute(f"CREATE OR REPLACE TEMP TABLE sorted_rows AS SELECT {columns} FROM {source} ORDER BY {'healpix_partition, ' if partitioned else ''}{order}")
        parts = [row[0] for row in con.execute("SELECT DISTINCT healpix_partition FROM sorted_rows ORDER BY 1").fetchall()] if partitioned else [None]
        threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
        con.execute("SET threads = 1")
        try:
            for part in parts:
                where = "" if part is None else f" WHERE healpix_partition = {int(part)}"
                con.execute(f"INSERT INTO {CATALOG}.{name} ({columns}) SELECT {columns} FROM sorted_rows{where}")
        finally:
            con.execute(f"SET threads = {int(threads)}")
        inserted = int(con.execute("SELECT count(*) FROM sorted_rows").fetchone()[0])
        con.execute("DROP TABLE sorted_rows")
        return inserted

    def _nearest_objects(self, con: duckdb.DuckDBPyConnection, ra: np.ndarray, dec: np.ndarray, objects_sql: str) -> tuple[np.ndarray, np.ndarray]:
        """(object_id, separation in arcsec) of the nearest object within the association radius
        of each position, -1 and NaN when none; objects read from the positions' partitions and
        their neighbours, so that a pixel edge does not hide the nearest."""
        from mstlake.lake import associate  # scipy: writers only

        order = self.cfg.partition_order
        around = healpix.pixels_with_neighbours(healpix.parent_pixel(healpix.spatial_index(ra, dec), order), order)
        known = con.execute(f"SELECT object_id, ra, dec FROM ({objects_sql}) WHERE list_contains(?, healpix_partition)", [around.tolist()]).fetch_arrow_table()
        nearest, separation = associate.nearest_within(ra, dec, known.column("ra").to_numpy(), known.column("dec").to_numpy(), self.cfg.association_radius_arcsec)
        return np.where(nearest >= 0, known.column("object_id").to_numpy()[np.maximum(nearest, 0)], -1), separation

    def _stage_objects(self, con: duckdb.DuckDBPyConnection, library: pa.Table | None, *, has_sources: bool) -> int:
        """Fill the temporary table ``staged_objects`` with the objects this night creates (library
        stars of its forced photometry not yet known; new objects from detections that match
        nothing) and associate ``new_sources`` with objects. Returns the number of new objects."""
        from mstlake.lake import associate  # scipy: writers only

        schema = self.schemas["objects"]
        con.execute(f"CREATE OR REPLACE TEMP TABLE staged_objects AS SELECT * FROM {CATALOG}.objects LIMIT 0")
        if library is not None:
            con.register("library", library.select(["source_id", "ra", "dec"]))
            seeds = con.execute(
                f"SELECT l.source_id, l.ra, l.dec FROM library l SEMI JOIN (SELECT DISTINCT object_id FROM new_forced) f ON f.object_id = l.source_id "
                f"ANTI JOIN {CATALOG}.objects o ON o.object_id = l.source_id"
            ).fetch_arrow_table()
            con.unregister("library")
            if seeds.num_rows:
                self._stage(con, schema, seeds.column("source_id").to_numpy(), seeds.column("ra").to_numpy(), seeds.column("dec").to_numpy(), library_id=True)
        if not has_sources:
            return 0
        detections = con.execute("SELECT * FROM new_sources").fetch_arrow_table()
        ra, dec = detections.column("ra").to_numpy(), detections.column("dec").to_numpy()
        object_id, separation = self._nearest_objects(con, ra, dec, f"SELECT object_id, ra, dec, healpix_partition FROM {CATALOG}.objects UNION ALL SELECT object_id, ra, dec, healpix_partition FROM staged_objects")
        unmatched = np.flatnonzero(object_id < 0)
        n_new = 0
        if unmatched.size:
            groups = associate.group_positions(ra[unmatched], dec[unmatched], self.cfg.association_radius_arcsec)
            group_ra, group_dec = associate.mean_positions(ra[unmatched], dec[unmatched], groups)
            last = con.execute(f"SELECT max(object_id) FROM {CATALOG}.objects WHERE object_id >= {NEW_OBJECT_BASE}").fetchone()[0]
            ids = (NEW_OBJECT_BASE if last is None else last + 1) + np.arange(len(group_ra), dtype=np.int64)
            self._stage(con, schema, ids, group_ra, group_dec, library_id=False)
            object_id[unmatched] = ids[groups]
            separation[unmatched] = 3600 * separation_deg(ra[unmatched], dec[unmatched], group_ra[groups], group_dec[groups])
            n_new = len(ids)
        detections = detections.set_column(detections.column_names.index("object_id"), "object_id", pa.array(object_id, pa.int64()))
        detections = detections.set_column(detections.column_names.index("separation_arcsec"), "separation_arcsec", pa.array(separation, pa.float32()))
        con.register("associated", detections)
        con.execute("CREATE OR REPLACE TEMP TABLE new_sources AS SELECT * FROM associated")
        con.unregister("associated")
        return n_new

    def _stage(self, con: duckdb.DuckDBPyConnection, schema, object_id, ra, dec, *, library_id: bool) -> None:
        """Add objects with no measurements yet to ``staged_objects`` (statistics come in the refresh)."""
        index = healpix.spatial_index(ra, dec)
        n = len(index)
        columns = {name: np.full(n, np.nan) for name in schema.names}
        columns.update({
            "_healpix_29": index, "healpix_partition": healpix.parent_pixel(index, self.cfg.partition_order).astype(np.int32), "object_id": object_id,
            "library_id": object_id if library_id else pa.nulls(n, pa.int64()), "ra": ra, "dec": dec, "n_detections": np.zeros(n, np.int32),
        })
        for band in BANDS:
            columns[f"n_{band}"] = np.zeros(n, np.int32)
        con.register("staging", schema.from_columns(columns))
        con.execute("INSERT INTO staged_objects SELECT * FROM staging")
        con.unregister("staging")

    def _refresh_objects(self, con: duckdb.DuckDBPyConnection, masters: pa.Table | None, touched: str) -> None:
        """Replace the rows of the objects ``touched`` (a query of object ids), and of every other
        object in their partitions, and add the staged ones, with rows whose position and per-band
        statistics include every measurement so far. Whole partitions, because DuckLake drops a
        file whose rows are all deleted but keeps a delete file beside one partly deleted, and
        readers of the snapshot's files (mstlake.lake.snapshot) go fastest without them."""
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE touched AS
            WITH known AS (SELECT * FROM {CATALOG}.objects UNION ALL SELECT * FROM staged_objects),
            partitions AS (SELECT DISTINCT healpix_partition FROM known SEMI JOIN ({touched}) t USING (object_id))
            SELECT * FROM known SEMI JOIN partitions USING (healpix_partition)
        """)
        con.register("given_masters", masters if masters is not None else pa.table({"object_id": pa.array([], pa.int64()), "band": pa.array([], pa.string()), "master": pa.array([], pa.float32())}))
        con.execute(OBJECT_POINTS_SQL.format(catalog=CATALOG))
        con.execute(OBJECT_STATISTICS_SQL)
        per_band = ",\n".join(
            f"coalesce(max(CASE WHEN band = '{b}' THEN n END), 0) AS n_{b}, "
            + ", ".join(f"max(CASE WHEN band = '{b}' THEN {stat} END) AS {stat}_{b}" for stat in BAND_STATISTICS)
            for b in BANDS
        )
        given = ", ".join(f"max(CASE WHEN band = '{b}' THEN master END) AS given_{b}" for b in BANDS)
        masters_sql = ", ".join(f"coalesce(o.master_{b}, g.given_{b}) AS master_{b}" for b in BANDS)
        stats_columns = ", ".join(f"coalesce(s.n_{b}, 0) AS n_{b}, " + ", ".join(f"s.{stat}_{b}" for stat in BAND_STATISTICS) + f", master_{b}" for b in BANDS)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE refreshed AS
            WITH wide AS (SELECT object_id, {per_band} FROM object_statistics GROUP BY object_id),
            detected AS (
                SELECT object_id, count(*) AS n,
                       avg(cos(radians(dec)) * cos(radians(ra))) AS vx, avg(cos(radians(dec)) * sin(radians(ra))) AS vy, avg(sin(radians(dec))) AS vz
                FROM {CATALOG}.sources SEMI JOIN touched USING (object_id) GROUP BY object_id
            ),
            span AS (SELECT object_id, min(mjd) AS first_mjd, max(mjd) AS last_mjd FROM object_points GROUP BY object_id),
            given AS (SELECT object_id, {given} FROM given_masters GROUP BY object_id),
            base AS (SELECT o.* EXCLUDE ({", ".join(f"master_{b}" for b in BANDS)}), {masters_sql} FROM touched o LEFT JOIN given g USING (object_id))
            SELECT o._healpix_29, o.healpix_partition, o.object_id, o.library_id,
                   CASE WHEN o.library_id IS NULL AND d.n > 0 THEN (degrees(atan2(d.vy, d.vx)) + 360) % 360 ELSE o.ra END AS ra,
                   CASE WHEN o.library_id IS NULL AND d.n > 0 THEN degrees(atan2(d.vz, sqrt(d.vx * d.vx + d.vy * d.vy))) ELSE o.dec END AS dec,
                   coalesce(d.n, 0) AS n_detections, p.first_mjd, p.last_mjd, {stats_columns}
            FROM base o LEFT JOIN wide s USING (object_id) LEFT JOIN detected d USING (object_id) LEFT JOIN span p USING (object_id)
        """)
        con.unregister("given_masters")
        con.execute(f"DELETE FROM {CATALOG}.objects WHERE healpix_partition IN (SELECT DISTINCT healpix_partition FROM touched)")
        self._insert_sorted(con, "objects", "refreshed")

    @staticmethod
    def _current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
        return int(con.execute(f"SELECT id FROM {CATALOG}.current_snapshot()").fetchone()[0])


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back if anything in between raises (one snapshot or none)."""
    con.execute("BEGIN")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise




# Every measurement of the touched objects: forced photometry (magfit magnitudes where present),
# and detections for objects with no forced photometry (new objects). "good" points enter the
# statistics: unflagged, with a magnitude and an error, on frames that are calibrated and clear
# (frames the archive does not hold count as good). The objects' partitions let DuckLake prune.
OBJECT_POINTS_SQL = """
CREATE OR REPLACE TEMP TABLE object_points AS
WITH bad_frames AS (SELECT frame_id FROM {catalog}.frames WHERE cloudy OR status <> 'calibrated'),
forced_points AS (
    SELECT f.object_id, f.band, f.mjd, coalesce(f.mag_magfit, f.mag) AS m, f.mag_err AS e,
           f.flag = 0 AND coalesce(f.mag_magfit, f.mag) IS NOT NULL AND f.mag_err > 0 AND f.frame_id NOT IN (SELECT frame_id FROM bad_frames) AS good
    FROM {catalog}.forced f JOIN touched t ON f.healpix_partition = t.healpix_partition AND f.object_id = t.object_id
),
source_points AS (
    SELECT s.object_id, s.band, s.mjd, s.mag_psf AS m, s.mag_psf_err AS e,
           s.flag_psf = 0 AND s.mag_psf IS NOT NULL AND s.mag_psf_err > 0 AND s.frame_id NOT IN (SELECT frame_id FROM bad_frames) AS good
    FROM {catalog}.sources s SEMI JOIN touched t USING (object_id)
    WHERE s.object_id NOT IN (SELECT DISTINCT object_id FROM forced_points)
)
SELECT * FROM forced_points UNION ALL SELECT * FROM source_points
"""

# Per object and band: weighted mean, median, std, reduced chi^2 about the weighted mean, Stetson
# J and K (single-band form: delta_i = sqrt(n / (n - 1)) (m_i - mean) / e_i, P_i = delta_i^2 - 1),
# interquartile range, robust amplitude (95th - 5th percentile), first and last good epoch.
OBJECT_STATISTICS_SQL = """
CREATE OR REPLACE TEMP TABLE object_statistics AS
WITH good AS (SELECT * FROM object_points WHERE good),
weighted AS (SELECT object_id, band, sum(m / (e * e)) / sum(1 / (e * e)) AS wmean, count(*) AS n FROM good GROUP BY object_id, band),
scaled AS (
    SELECT g.*, w.wmean, w.n, CASE WHEN w.n > 1 THEN sqrt(w.n / (w.n - 1.0)) * (g.m - w.wmean) / g.e END AS delta
    FROM good g JOIN weighted w USING (object_id, band)
)
SELECT object_id, band, count(*) AS n, any_value(wmean) AS mean, median(m) AS median, stddev_samp(m) AS std,
       CASE WHEN count(*) > 1 THEN sum(((m - wmean) / e) ^ 2) / (count(*) - 1) END AS chi2,
       CASE WHEN count(*) > 1 THEN sum(sign(delta * delta - 1) * sqrt(abs(delta * delta - 1))) / count(*) END AS stetson_j,
       CASE WHEN count(*) > 1 THEN avg(abs(delta)) / sqrt(avg(delta * delta)) END AS stetson_k,
       quantile_cont(m, 0.75) - quantile_cont(m, 0.25) AS iqr, quantile_cont(m, 0.95) - quantile_cont(m, 0.05) AS amplitude,
       min(mjd) AS first_mjd, max(mjd) AS last_mjd
FROM scaled GROUP BY object_id, band
"""
