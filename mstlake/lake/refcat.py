"""The field's reference catalogue: read from what the field config names (a Parquet, FITS-table
or CSV file, or a HATS catalogue such as Gaia DR3 read with lsdb, only the partitions around the
field), its columns mapped onto the ``standard_library`` schema, cut to the field with a margin,
and cached in the lake so later stages (and re-runs) do not read the big catalogue again."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from astropy.table import Table
from pandas.errors import Pandas4Warning

from mstlake.astro import separation_deg
from mstlake.config import FieldConfig, ReferenceCatalogueConfig
from mstlake.lake.tables import read_table, write_table_atomic
from mstlake.paths import LakePaths, resolve_against
from mstlake.schemas import load_schema


class ReferenceCatalogueError(RuntimeError):
    """The reference catalogue cannot be read or lacks columns."""


HATS_MARKERS = ("properties", "hats.properties", "collection.properties")


def _read(path: Path, fmt: str, *, columns: list[str], cone: tuple[float, float, float]) -> pa.Table:
    if not path.exists():
        raise ReferenceCatalogueError(f"reference catalogue {path} does not exist (set [reference] path in the field config)")
    if fmt == "auto":
        name = path.name.lower()
        hats = path.is_dir() and any((path / marker).exists() for marker in HATS_MARKERS)
        fmt = "hats" if hats else "parquet" if name.endswith((".parquet", ".pq")) else "csv" if name.endswith((".csv", ".csv.gz")) else "fits" if name.endswith((".fits", ".fit", ".fits.gz")) else ""
    try:
        if fmt == "hats":
            return _read_hats(path, columns, cone)
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "csv":
            return pacsv.read_csv(path)
        if fmt == "fits":
            return pa.Table.from_pandas(Table.read(path, format="fits").to_pandas(), preserve_index=False)
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        raise ReferenceCatalogueError(f"reference catalogue {path}: cannot read it as {fmt}: {err}") from None
    raise ReferenceCatalogueError(f"reference catalogue {path}: unknown format {fmt!r} (parquet, fits, csv or hats)")


def _read_hats(path: Path, columns: list[str], cone: tuple[float, float, float]) -> pa.Table:
    """The columns of a HATS catalogue within a cone (ra, dec, radius in degrees), with lsdb:
    only the HEALPix partitions that touch the cone are read."""
    with warnings.catch_warnings():
        # nested-pandas (under lsdb) still uses what pandas 3.1 deprecates: not ours to fix
        warnings.filterwarnings("ignore", category=Pandas4Warning)
        import lsdb

        ra, dec, radius_deg = cone
        catalog = lsdb.read_hats(path, search_filter=lsdb.ConeSearch(ra, dec, radius_deg * 3600), columns=columns, error_empty_filter=False)
        return pa.Table.from_pandas(catalog.compute().reset_index(drop=True), preserve_index=False)


def load_reference(field: FieldConfig, lake: LakePaths, *, base: Path, refresh: bool = False) -> pa.Table:
    """The field's reference stars (``standard_library`` schema) within the footprint plus margin,
    from the lake's cache when it is there. ``base``: the directory a relative path is taken from."""
    schema = load_schema("standard_library")
    cache = lake.reference_catalogue(field.name)
    if cache.exists() and not refresh:
        return read_table(cache, schema)
    ref: ReferenceCatalogueConfig | None = field.reference
    if ref is None:
        raise ReferenceCatalogueError(f"field {field.name} names no reference catalogue ([reference] in its config)")
    path = resolve_against(base, ref.path)
    # a rotated footprint reaches its diagonal: cut on a circle through the margin-widened corners
    radius = np.hypot(field.width_deg / 2 + ref.margin_deg, field.height_deg / 2 + ref.margin_deg)
    renamed = {ours: ref.columns.get(ours, ours) for ours in schema.names}
    table = _read(path, ref.format, columns=list(renamed.values()), cone=(field.centre_ra_deg, field.centre_dec_deg, radius))
    missing = [f"{ours} (as {theirs!r})" for ours, theirs in renamed.items() if theirs not in table.column_names]
    if missing:
        raise ReferenceCatalogueError(f"reference catalogue {path} lacks columns {missing}; map them with [reference] columns in the field config")
    table = pa.table({ours: table.column(theirs) for ours, theirs in renamed.items()})
    near = separation_deg(table.column("ra").to_numpy(), table.column("dec").to_numpy(), field.centre_ra_deg, field.centre_dec_deg) <= radius
    table = schema.conform(table.filter(pa.array(near)))
    write_table_atomic(table, cache, schema)
    return table
