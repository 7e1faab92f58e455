"""Reading and atomically writing whole tables.

A write goes to a temporary file in the destination directory, is flushed to disk, and is then
renamed over the old file: a reader (or a crash) sees either the old table or the new one, never a
part of either.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mstlake.schemas import TableSchema


class LakeWriteError(OSError):
    """A table could not be written; the previous version is intact."""


def without_frames(table: pa.Table, frame_ids, *, key: str = "frame_id") -> pa.Table:
    """``table`` without the rows whose ``key`` is one of ``frame_ids`` (rows about to be replaced)."""
    ids = pa.array(sorted({int(f) for f in frame_ids}), table.schema.field(key).type)
    return table.filter(pc.invert(pc.is_in(table.column(key), ids)))


def read_table(path: Path, schema: TableSchema) -> pa.Table:
    """The table at ``path`` in schema order, or an empty table when it does not exist yet."""
    if not path.exists():
        return schema.empty()
    return schema.conform(pq.read_table(path))


def sort_table(table: pa.Table, schema: TableSchema) -> pa.Table:
    if not schema.sort_by or table.num_rows == 0:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in schema.sort_by]))


def write_table_atomic(table: pa.Table, path: Path, schema: TableSchema) -> None:
    table = sort_table(schema.conform(table), schema)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LakeWriteError(f"could not write table {schema.name} to {path}: {err.strerror or err}") from err


def update_column(path: Path, schema: TableSchema, column: str, values: dict, *, key: str = "frame_id") -> None:
    """Rewrite one column of the table at ``path`` for the rows whose ``key`` is in ``values``
    (key -> new value), atomically; the other rows keep theirs."""
    table = read_table(path, schema)
    keys, current = table.column(key).to_pylist(), table.column(column).to_pylist()
    index = table.schema.get_field_index(column)
    updated = pa.array([values.get(k, old) for k, old in zip(keys, current, strict=True)], table.schema.field(index).type)
    write_table_atomic(table.set_column(index, table.schema.field(index), updated), path, schema)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
