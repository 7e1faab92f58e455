"""Table schemas, loaded from ``schemas/*.toml``: the single source of truth for column names, types,
units and descriptions. Arrow schemas carry the unit and description as field metadata so Parquet
files describe themselves."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mstlake.config import read_toml
from mstlake.paths import schema_file, schema_names

_ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
    "list<float32>": pa.list_(pa.float32()),
    "list<float64>": pa.list_(pa.float64()),
    "list<int64>": pa.list_(pa.int64()),
}


# the same types as DuckDB column types (the archive's tables are created from these schemas)
_SQL_TYPES: dict[str, str] = {
    "bool": "BOOLEAN", "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
    "uint8": "UTINYINT", "uint16": "USMALLINT", "float32": "FLOAT", "float64": "DOUBLE", "string": "VARCHAR",
    "timestamp[us, UTC]": "TIMESTAMPTZ", "list<float32>": "FLOAT[]", "list<float64>": "DOUBLE[]", "list<int64>": "BIGINT[]",
}


class SchemaError(ValueError):
    """Data does not match its table schema."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    unit: str = ""
    nullable: bool = False

    def arrow_field(self) -> pa.Field:
        metadata = {"description": self.description}
        if self.unit:
            metadata["unit"] = self.unit
        return pa.field(self.name, _ARROW_TYPES[self.type], nullable=self.nullable, metadata=metadata)

    @property
    def sql_type(self) -> str:
        """Its DuckDB type."""
        return _SQL_TYPES[self.type]


@dataclass(frozen=True)
class TableSchema:
    name: str
    description: str
    columns: tuple[Column, ...]
    sort_by: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow(self) -> pa.Schema:
        return pa.schema([c.arrow_field() for c in self.columns], metadata={"table": self.name, "description": self.description})

    def sql_columns(self) -> str:
        """The column list of a SQL ``CREATE TABLE`` for this table (DuckDB types, NOT NULL where
        the schema says so)."""
        return ", ".join(f'"{c.name}" {c.sql_type}{"" if c.nullable else " NOT NULL"}' for c in self.columns)

    def empty(self) -> pa.Table:
        return self.arrow().empty_table()

    def from_columns(self, data: Mapping[str, Any]) -> pa.Table:
        """A table from a mapping of column name -> array-like; the columns must be exactly these."""
        self._check_names(data.keys())
        schema = self.arrow()
        arrays = []
        for field in schema:
            value = data[field.name]
            if isinstance(value, np.ndarray) and value.ndim == 2:  # one list per row
                value = pa.ListArray.from_arrays(np.arange(0, value.size + 1, value.shape[1], dtype=np.int32), value.ravel())
            array = value.cast(field.type) if isinstance(value, pa.Array) else pa.array(value, type=field.type, from_pandas=True)
            if not field.nullable and array.null_count:
                raise SchemaError(f"{self.name}.{field.name} may not hold nulls ({array.null_count} found)")
            arrays.append(array)
        return pa.Table.from_arrays(arrays, schema=schema)

    def from_rows(self, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        rows = list(rows)
        if not rows:
            return self.empty()
        for row in rows:
            self._check_names(row.keys())
        return self.from_columns({name: [row[name] for row in rows] for name in self.names})

    def conform(self, table: pa.Table) -> pa.Table:
        """Check a table read back from disk against the schema and return it in schema order.
        A nullable column the schema gained since the file was written reads as nulls."""
        for column in self.columns:
            if column.nullable and column.name not in table.column_names:
                table = table.append_column(column.name, pa.nulls(table.num_rows, type=_ARROW_TYPES[column.type]))
        self._check_names(table.column_names)
        return table.select(self.names).cast(self.arrow())

    def _check_names(self, names: Iterable[str]) -> None:
        names = set(names)
        expected = set(self.names)
        if names != expected:
            missing, extra = sorted(expected - names), sorted(names - expected)
            raise SchemaError(f"table {self.name}: missing columns {missing}, unexpected columns {extra}")


@dataclass(frozen=True)
class CubeVariable:
    name: str
    dtype: str
    unit: str
    description: str


@dataclass(frozen=True)
class CubeSchema:
    name: str
    description: str
    dims: tuple[str, ...]
    chunk_px: int
    variables: tuple[CubeVariable, ...]
    coords: tuple[CubeVariable, ...] = ()

    def variable(self, name: str) -> CubeVariable:
        for v in self.variables + self.coords:
            if v.name == name:
                return v
        raise SchemaError(f"cube {self.name} has no variable {name!r}")


@functools.cache
def load_cube_schema(name: str) -> CubeSchema:
    path = schema_file(name)
    data = read_toml(path)
    if data.get("kind") != "cube":
        raise SchemaError(f"{path} does not describe a cube")
    return CubeSchema(
        name=data["name"], description=data["description"], dims=tuple(data["dims"]), chunk_px=int(data["chunk_px"]),
        variables=tuple(CubeVariable(**v) for v in data["variables"]), coords=tuple(CubeVariable(**v) for v in data.get("coords", [])),
    )


@functools.cache
def load_schema(name: str) -> TableSchema:
    path = schema_file(name)
    if not path.is_file():
        raise SchemaError(f"no schema {name!r} ({path} does not exist; known: {schema_names()})")
    data = read_toml(path)
    if data.get("kind") == "cube":
        raise SchemaError(f"{name} is a cube schema: use load_cube_schema")
    columns = []
    for i, col in enumerate(data.get("columns", [])):
        if col.get("type") not in _ARROW_TYPES:
            raise SchemaError(f"{path}: column {i} ({col.get('name')}) has unknown type {col.get('type')!r}")
        columns.append(Column(**col))
    return TableSchema(
        name=data["name"], description=data["description"], columns=tuple(columns), sort_by=tuple(data.get("sort_by", ()))
    )
