"""A committed snapshot of the archive read straight from its DuckLake catalogue, without the extension.

DuckLake is an open format: the catalogue is a set of SQL tables (here in SQLite) saying which
Parquet data files, which rows of them and which delete files make up each table at each snapshot.
A reader only needs that list, and reading it with Python's ``sqlite3`` instead of attaching the
archive through the DuckLake and SQLite extensions saves what dominates a short query:

* loading the two extensions (~200 ms in a fresh process, mostly signature checks);
* DuckLake 0.3's per-scan reload of the catalogue's file statistics (every table a query touches
  reloads the whole statistics table through the SQLite scanner: 40-90 ms at 1e8 points).

The list is turned into ``read_parquet`` over the files with ``healpix_partition=`` directories as
hive partitions, so DuckDB skips every file outside a query's partitions before opening any.
Rows the snapshot does not hold are left out exactly as DuckLake does: a file merged by compaction
holds rows of several snapshots in commit order (``partial_file_info`` says how many rows each
snapshot sees), and a delete file lists positions of rows deleted. Anything in the catalogue
this reader does not know (another format version, inlined rows, encryption, renamed or added
columns, column mappings) raises :class:`UnsupportedCatalogue`, and callers fall back to DuckLake
itself; the suite checks this reader against DuckLake at every snapshot of an archive with
compactions, deletes and releases.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_VERSIONS = ("0.3",)
PARTITION_DIRECTORY = "healpix_partition="  # DuckLake's hive-style directory of a partitioned table's files
# read_parquet's options for a partitioned table's files: the directories' partition values let
# DuckDB skip every file outside a query's partitions before opening any
PARTITIONED_READ = "hive_partitioning = true, hive_types = {'healpix_partition': INTEGER}"
# DuckLake column types -> DuckDB types (only needed to give an empty table its columns)
DUCKLAKE_TYPES = {
    "boolean": "BOOLEAN", "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
    "uint8": "UTINYINT", "uint16": "USMALLINT", "uint32": "UINTEGER", "uint64": "UBIGINT",
    "float32": "FLOAT", "float64": "DOUBLE", "varchar": "VARCHAR", "blob": "BLOB", "date": "DATE",
    "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ", "json": "JSON",
}
_PARTIAL_ENTRY = re.compile(r"^(\d+):(\d+)$")


class ArchiveError(RuntimeError):
    """The archive cannot be opened or written (the message says which file and why)."""


class UnsupportedCatalogue(ArchiveError):
    """The catalogue uses a DuckLake feature this reader does not implement: read it through DuckLake."""


@dataclass(frozen=True)
class DataFile:
    path: str  # absolute
    visible_rows: int  # the snapshot holds the first visible_rows rows of the file ...
    record_count: int
    delete_path: str | None  # ... except the positions listed in this delete file

    @property
    def whole(self) -> bool:
        return self.visible_rows == self.record_count and self.delete_path is None

    @property
    def partition(self) -> int | None:
        """The HEALPix partition the file holds (its ``healpix_partition=<pixel>`` directory);
        None in a table that is not partitioned."""
        directory = self.path.rsplit("/", 2)[-2]
        return int(directory[len(PARTITION_DIRECTORY):]) if directory.startswith(PARTITION_DIRECTORY) else None


@dataclass(frozen=True)
class TableFiles:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type) in table order
    files: tuple[DataFile, ...]

    def scan_sql(self, files_variable: str | None = None) -> str:
        """A query returning exactly the table's rows at the snapshot. With ``files_variable``, the
        list of whole files is read from that DuckDB variable (set it to :attr:`whole_files`):
        a list literal in a view's text is parsed again by every query that uses the view, ~4 µs
        a file, a variable's value is not."""
        columns = ", ".join(_quote(name) for name, _ in self.columns)
        if not self.files:
            return "SELECT " + ", ".join(f"NULL::{kind} AS {_quote(name)}" for name, kind in self.columns) + " LIMIT 0"
        partitioned = self.files[0].partition is not None
        options = ", " + (PARTITIONED_READ if partitioned else "hive_partitioning = false")
        parts = []
        if self.whole_files:
            listed = f"getvariable({sql_literal(files_variable)})" if files_variable else sql_list(self.whole_files)
            parts.append(f"SELECT {columns} FROM read_parquet({listed}{options})")
        cut = [f for f in self.files if not f.whole]
        if cut:
            # files holding rows the snapshot does not see: keep rows by position
            limits = ", ".join(f"({sql_literal(f.path)}, {f.visible_rows})" for f in cut)
            query = (f"SELECT {columns} FROM read_parquet({sql_list(f.path for f in cut)}{options}, filename = true, file_row_number = true) p "
                     f"JOIN (VALUES {limits}) v(filename, visible_rows) USING (filename) WHERE p.file_row_number < v.visible_rows")
            deleted = [f for f in cut if f.delete_path is not None]
            if deleted:
                owners = ", ".join(f"({sql_literal(f.delete_path)}, {sql_literal(f.path)})" for f in deleted)
                query += (f" AND NOT EXISTS (SELECT 1 FROM read_parquet({sql_list(f.delete_path for f in deleted)}, filename = true) d "
                          f"JOIN (VALUES {owners}) o(delete_file, data_file) ON d.filename = o.delete_file "
                          "WHERE o.data_file = p.filename AND d.pos = p.file_row_number)")
            parts.append(query)
        return " UNION ALL ".join(parts)

    @property
    def whole_files(self) -> list[str]:
        """Paths of the files the snapshot holds every row of."""
        return [f.path for f in self.files if f.whole]

    def files_by_partition(self) -> dict[int | None, list[DataFile]]:
        """The table's files grouped by HEALPix partition (all under None when not partitioned)."""
        grouped: dict[int | None, list[DataFile]] = {}
        for data_file in self.files:
            grouped.setdefault(data_file.partition, []).append(data_file)
        return grouped


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: int
    tables: dict[str, TableFiles]


def read_snapshot(catalogue: Path, data_path: Path, snapshot_id: int | None = None) -> Snapshot:
    """Every table of the DuckLake catalogue (SQLite file ``catalogue``) at ``snapshot_id`` (the
    last committed one when None), with file paths under ``data_path`` (the archive's data
    directory now: the catalogue's stored one may be where the lake was written)."""
    try:
        con = sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise UnsupportedCatalogue(f"cannot read {catalogue} with sqlite3: {err}") from err
    try:
        con.execute("BEGIN")  # one consistent view of a catalogue a writer may be committing to
        return _read(con, str(data_path).rstrip("/") + "/", snapshot_id)
    except sqlite3.Error as err:
        raise UnsupportedCatalogue(f"cannot read the DuckLake catalogue {catalogue}: {err}") from err
    finally:
        con.close()


def _read(con: sqlite3.Connection, data_path: str, snapshot_id: int | None) -> Snapshot:
    metadata = {key: value for key, value, scope in con.execute("SELECT key, value, scope FROM ducklake_metadata") if scope is None}
    if metadata.get("version") not in SUPPORTED_VERSIONS:
        raise UnsupportedCatalogue(f"DuckLake catalogue version {metadata.get('version')!r} (this reader knows {SUPPORTED_VERSIONS})")
    if metadata.get("encrypted", "false") != "false":
        raise UnsupportedCatalogue("the archive's data files are encrypted")
    latest = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshot").fetchone()[0]
    snapshot = latest if snapshot_id is None else int(snapshot_id)
    if snapshot is None or snapshot > latest or not con.execute("SELECT 1 FROM ducklake_snapshot WHERE snapshot_id = ?", [snapshot]).fetchone():
        raise UnsupportedCatalogue(f"no snapshot {snapshot} in the catalogue")
    visible = "begin_snapshot <= :s AND (end_snapshot IS NULL OR end_snapshot > :s)"
    at = {"s": snapshot}
    schemas = {sid: _join(data_path, path, relative) for sid, path, relative in con.execute(f"SELECT schema_id, path, path_is_relative FROM ducklake_schema WHERE {visible}", at)}
    if con.execute("SELECT count(*) FROM ducklake_inlined_data_tables").fetchone()[0]:
        raise UnsupportedCatalogue("the catalogue holds inlined rows")
    tables = {}
    for table_id, name, schema_id, path, relative, begun in con.execute(
            f"SELECT table_id, table_name, schema_id, path, path_is_relative, begin_snapshot FROM ducklake_table WHERE {visible}", at).fetchall():
        table_path = _join(schemas[schema_id], path, relative)
        columns = _columns(con, table_id, name, snapshot, begun)
        deletes = {data_file_id: _join(table_path, path, rel) for data_file_id, path, rel, fmt in con.execute(
            f"SELECT data_file_id, path, path_is_relative, format FROM ducklake_delete_file WHERE table_id = :t AND {visible}", {"t": table_id, "s": snapshot})
            if _parquet(fmt)}
        files = []
        for data_file_id, path, rel, fmt, count, partial, mapping, key in con.execute(
                f"SELECT data_file_id, path, path_is_relative, file_format, record_count, partial_file_info, mapping_id, encryption_key "
                f"FROM ducklake_data_file WHERE table_id = :t AND {visible} ORDER BY file_order, data_file_id", {"t": table_id, "s": snapshot}):
            if not _parquet(fmt) or mapping is not None or key is not None:
                raise UnsupportedCatalogue(f"table {name} has a data file with a format, column mapping or key this reader does not handle")
            rows = _visible_rows(partial, snapshot, int(count))
            if rows:
                files.append(DataFile(_join(table_path, path, rel), rows, int(count), deletes.get(data_file_id)))
        tables[name] = TableFiles(name, columns, tuple(files))
    return Snapshot(snapshot, tables)


def _columns(con: sqlite3.Connection, table_id: int, name: str, snapshot: int, begun: int) -> tuple[tuple[str, str], ...]:
    """(name, DuckDB type) of the table's top-level columns; lists of a plain type are the only
    nested columns read (their element is a child column)."""
    rows = con.execute("SELECT column_id, column_name, column_type, parent_column, begin_snapshot, end_snapshot FROM ducklake_column "
                       "WHERE table_id = ? AND begin_snapshot <= ? ORDER BY column_order", [table_id, snapshot]).fetchall()
    if any(start != begun or end is not None for *_, start, end in rows):
        raise UnsupportedCatalogue(f"table {name}'s columns changed after it was made (columns added, dropped or renamed)")
    children = {parent: kind for _, _, kind, parent, *_ in rows if parent is not None}
    columns = []
    for column_id, column, kind, parent, *_ in rows:
        if parent is not None:
            continue
        if kind == "list" and children.get(column_id) in DUCKLAKE_TYPES:
            columns.append((column, DUCKLAKE_TYPES[children[column_id]] + "[]"))
        elif kind in DUCKLAKE_TYPES:
            columns.append((column, DUCKLAKE_TYPES[kind]))
        else:
            raise UnsupportedCatalogue(f"table {name}'s column {column} is a {kind}")
    return tuple(columns)


def _visible_rows(partial: str | None, snapshot: int, record_count: int) -> int:
    """Rows of a file a snapshot sees: all of them, or for a file compaction merged from several
    snapshots' files ("snapshot:rows|..." cumulative, in commit order) those of the last
    snapshot at or before this one."""
    if partial is None:
        return record_count
    entries = partial.split("|")
    last = _PARTIAL_ENTRY.match(entries[-1])  # the last snapshot's rows: all a later snapshot sees
    if last is not None and int(last.group(1)) <= snapshot:
        return int(last.group(2))
    rows = 0
    for entry in entries:
        match = _PARTIAL_ENTRY.match(entry)
        if match is None:
            raise UnsupportedCatalogue(f"unknown partial_file_info entry {entry!r}")
        if int(match.group(1)) <= snapshot:
            rows = max(rows, int(match.group(2)))
    return rows


def _parquet(file_format: str | None) -> bool:
    if file_format not in (None, "parquet"):
        raise UnsupportedCatalogue(f"a {file_format} file")
    return True


def _join(base: str, path: str, relative) -> str:
    return base.rstrip("/") + "/" + path if relative else path


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal, quotes and all."""
    return f"'{_escaped(text)}'"


def sql_path(path: str | Path) -> str:
    """An absolute path as the text of a SQL string literal (quotes doubled; put it in quotes)."""
    return _escaped(os.path.abspath(path))


def _escaped(text: str) -> str:
    return text.replace("'", "''")


def sql_list(paths) -> str:
    return "[" + ", ".join(sql_literal(p) for p in paths) + "]"
