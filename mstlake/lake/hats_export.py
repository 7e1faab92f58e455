"""Export of the archive's objects and their light curves as a HATS collection.

HATS (Hierarchical Adaptive Tiling Scheme) is the partitioned-Parquet layout that lsdb, and the
survey archives built on it (Gaia DR3, ZTF, Rubin), read partition by partition: a user can cone-search
the MST objects, cross-match them against another HATS catalogue, or pull one object's light curve by
its ``object_id``, without a DuckDB connection to the lake or the whole table in memory.

One row per object, with all of the object's columns and its light curve as one nested column
(nested-pandas: a struct of equal-length lists, the points in ``mjd`` order; an object without
points has an empty light curve). Written at ``out_dir``::

    out_dir/
      collection.properties      names the catalogue, its margin cache and its index
      <name>/                    the catalogue: properties, partition_info.csv, skymap, and
        dataset/Norder=k/Dir=d/Npix=p.parquet    one file per adaptive HEALPix pixel
      <name>_<m>arcs/            margin cache: the objects within ``margin_arcsec`` outside each
                                 pixel, so that a cross-match at a pixel edge finds its partners
      <name>_object_id/          index catalogue: object_id -> pixel, so that an id_search reads
                                 one partition instead of all of them

``lsdb.open_catalog(out_dir)`` opens the catalogue with its margin, and
``catalog.id_search(values={"object_id": ...})`` uses the index.

The export is atomic: the collection is written beside ``out_dir`` and renamed into place, so a
reader sees the previous export or the complete new one.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import healpy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN
from pandas.errors import Pandas4Warning

import mstlake
from mstlake.lake import healpix
from mstlake.lake.archive import open_reader
from mstlake.paths import LakePaths

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

# the lake's own partitioning columns: lsdb computes its own _healpix_29 and partitions by it
LAKE_PARTITION_COLUMNS = ("_healpix_29", "healpix_partition")
INDEXING_COLUMN = "object_id"
# lsdb reads a partition whole into one task: this bounds a worker's memory (in Arrow) per partition,
# some 3-5 times the size of its compressed file
DEFAULT_PARTITION_BYTES = 256 * 2**20
# hats builds dense histograms of all 12 * 4**order pixels and walks them in Python: at order 10
# (3.4 arcmin pixels) that takes ~6 s, and 4 times longer for each order above
MAX_PARTITION_ORDER = 10


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path  # the collection
    catalog_path: Path  # the catalogue inside it
    n_objects: int
    n_points: int  # light-curve points exported: points of objects not in ``objects`` are left out
    n_partitions: int
    n_margin_rows: int


def export_hats(
    objects: pa.Table,
    points: pa.Table,
    out_dir: str | Path,
    *,
    catalog_name: str = "objects",
    margin_arcsec: float = 2.0,
    lightcurve_column: str = "lightcurve",
    partition_bytes: int = DEFAULT_PARTITION_BYTES,
    overwrite: bool = False,
    progress: bool = False,
) -> ExportResult:
    """Write ``objects`` (one row per object: ``object_id``, ``ra``, ``dec`` in degrees, and any
    other columns) with the ``points`` of each (``object_id``, ``mjd`` and any other columns) nested
    as ``lightcurve_column``, as a HATS collection at ``out_dir`` (see the module docstring).

    ``partition_bytes``: the most one partition holds in memory; the HEALPix order adapts to the
    density of the field. An existing non-empty ``out_dir`` is replaced only with ``overwrite``."""
    out_dir = Path(out_dir)
    _check_destination(out_dir, overwrite=overwrite)
    objects = _without_lake_partitioning(objects)
    points = _without_lake_partitioning(points)
    _validate(objects, points, lightcurve_column)
    light_curves, n_points = _light_curves(objects, points)
    table = objects.append_column(lightcurve_column, light_curves)
    spatial_index = healpix.spatial_index(table["ra"].to_numpy(), table["dec"].to_numpy())

    staging = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.tmp")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        partitions = _write_catalog(table, staging, catalog_name=catalog_name, partition_bytes=partition_bytes, progress=progress)
        margin_name, n_margin_rows = _write_margin(table, spatial_index, partitions, staging, catalog_name=catalog_name, margin_arcsec=margin_arcsec)
        index_name = _write_index(staging, catalog_name)
        _complete_collection(staging, margin_name=margin_name, index_name=index_name)
        _check_destination(out_dir, overwrite=overwrite)  # again: something may have appeared meanwhile
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir=out_dir, catalog_path=out_dir / catalog_name, n_objects=table.num_rows, n_points=n_points, n_partitions=len(partitions), n_margin_rows=n_margin_rows)


def export_from_connection(
    con: duckdb.DuckDBPyConnection,
    out_dir: str | Path,
    *,
    objects_sql: str = "SELECT * FROM lake.objects",
    points_sql: str = "SELECT * FROM lake.forced",
    **kwargs,
) -> ExportResult:
    """``export_hats`` of the objects and points two queries return on ``con`` (e.g. a reader of an
    archive release); ``kwargs`` go to ``export_hats``."""
    objects = con.sql(objects_sql).fetch_arrow_table()
    points = con.sql(points_sql).fetch_arrow_table()
    return export_hats(objects, points, out_dir, **kwargs)


def export_release(paths: LakePaths, out_dir: str | Path, *, release: str | None = None, overwrite: bool = False, **kwargs) -> ExportResult:
    """The archive's ``objects`` with their ``forced`` light curves at ``release`` (default: the last
    committed snapshot) as a HATS collection at ``out_dir``; ``kwargs`` go to ``export_hats``."""
    con = open_reader(paths, release)
    try:
        return export_from_connection(con, out_dir, catalog_name=kwargs.pop("catalog_name", "mst_objects"), overwrite=overwrite, **kwargs)
    finally:
        con.close()


def _check_destination(out_dir: Path, *, overwrite: bool) -> None:
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite):
        raise ValueError(f"HATS export: {out_dir} exists and is not empty; pass overwrite=True to replace it")


def _without_lake_partitioning(table: pa.Table) -> pa.Table:
    return table.drop_columns([name for name in LAKE_PARTITION_COLUMNS if name in table.column_names])


def _validate(objects: pa.Table, points: pa.Table, lightcurve_column: str) -> None:
    missing = [f"objects.{name}" for name in ("object_id", "ra", "dec") if name not in objects.column_names]
    missing += [f"points.{name}" for name in ("object_id", "mjd") if name not in points.column_names]
    if missing:
        raise ValueError(f"HATS export: missing columns {missing}")
    if objects.num_rows == 0:
        raise ValueError("HATS export: no objects to export")
    if lightcurve_column in objects.column_names:
        raise ValueError(f"HATS export: the objects already have a column {lightcurve_column!r}, the light-curve column's name")
    for name in ("object_id", "ra", "dec"):
        if objects[name].null_count:
            raise ValueError(f"HATS export: {objects[name].null_count} objects have no {name}")
    if pc.count_distinct(objects["object_id"]).as_py() != objects.num_rows:
        raise ValueError("HATS export: objects.object_id is not unique")


def _light_curves(objects: pa.Table, points: pa.Table) -> tuple[pa.StructArray, int]:
    """The points of each object as a struct of equal-length lists (nested-pandas' layout), aligned
    with the rows of ``objects`` and in ``mjd`` order, and the number of points in them."""
    row = pc.index_in(points["object_id"].cast(pa.int64()), value_set=objects["object_id"].cast(pa.int64()))
    exported = pc.is_valid(row)
    points, row = points.filter(exported), row.filter(exported)
    order = pc.sort_indices(pa.table({"row": row, "mjd": points["mjd"]}), sort_keys=[("row", "ascending"), ("mjd", "ascending")])
    values = points.drop_columns(["object_id"]).take(order)
    counts = np.bincount(row.to_numpy(), minlength=objects.num_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
    lists = [pa.LargeListArray.from_arrays(offsets, column.combine_chunks()) for column in values.columns]
    return pa.StructArray.from_arrays(lists, names=values.column_names), values.num_rows


def _write_catalog(table: pa.Table, collection: Path, *, catalog_name: str, partition_bytes: int, progress: bool) -> list[HealpixPixel]:
    """The catalogue, written by lsdb as a collection of it alone; its partitions."""
    import pandas as pd

    # Arrow dtypes throughout: with a NestedDtype column dask tokenizes every row (~100x slower)
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    with warnings.catch_warnings():
        # nested-pandas and lsdb still use what pandas 3.1 deprecates: not ours to fix
        warnings.filterwarnings("ignore", category=Pandas4Warning)
        # lsdb points to hats-import above 1e6 rows or 1 GiB, whose pipeline needs an older dask
        warnings.filterwarnings("ignore", message="from_dataframe is not intended for large datasets", category=RuntimeWarning)
        import lsdb

        catalog = lsdb.from_dataframe(
            frame,
            catalog_name=catalog_name,
            ra_column="ra",
            dec_column="dec",
            highest_order=_partition_order(frame, partition_bytes),
            partition_bytes=partition_bytes,
            # lsdb builds a margin from every border pixel of the whole sky (~5 s for any catalogue):
            # _write_margin builds it from the objects' own neighbours
            margin_threshold=None,
        )
        catalog.write_catalog(collection, as_collection=True, progress_bar=progress)
    return catalog.get_healpix_pixels()


def _partition_order(frame: pd.DataFrame, partition_bytes: int) -> int:
    """The lowest HEALPix order at which no pixel holds more than ``partition_bytes``: at lsdb's
    default (7) a dense field fails ("single pixel ... exceeds threshold"), and a higher order than
    needed costs hats seconds to minutes of walking its histograms."""
    import hats.pixel_math.healpix_shim as hp
    from hats.io.size_estimates import get_mem_size_per_row

    # the same per-row estimate and pixels as lsdb checks the threshold with
    row_bytes = get_mem_size_per_row(frame)
    ra, dec = frame["ra"].to_numpy(float), frame["dec"].to_numpy(float)
    for order in range(MAX_PARTITION_ORDER + 1):
        _, pixel_of_row = np.unique(hp.radec2pix(order, ra, dec), return_inverse=True)
        densest = np.bincount(pixel_of_row, weights=row_bytes).max()
        if densest <= partition_bytes:
            return order
    raise ValueError(f"HATS export: {densest:.3g} bytes of objects in one HEALPix pixel of order {MAX_PARTITION_ORDER}; raise partition_bytes above {partition_bytes}")


def _write_margin(table: pa.Table, spatial_index: np.ndarray, partitions: list[HealpixPixel], collection: Path, *, catalog_name: str, margin_arcsec: float) -> tuple[str, int]:
    """The margin cache, as hats-import and lsdb build it: the objects in the pixels (at the margin
    order, the highest whose pixels are wider than ``margin_arcsec``) that touch a partition from
    outside, for each partition and each pixel of the negative tree (so that a catalogue with data
    where this one has none also finds its partners here). Its name and number of rows."""
    import hats.pixel_math.healpix_shim as hp
    from hats.catalog import HatsProperties, PartitionInfo, TableProperties
    from hats.io import paths
    from hats.io.parquet_metadata import write_parquet_metadata

    margin_name = f"{catalog_name}_{margin_arcsec:g}arcs"
    margin_dir = collection / margin_name
    margin_order = int(hp.margin2order(margin_thr_arcmin=margin_arcsec / 60.0))
    if margin_order <= max(pixel.order for pixel in partitions):
        raise ValueError(f"HATS export: a margin of {margin_arcsec} arcsec is wider than the smallest partition; lower margin_arcsec or raise partition_bytes")

    margin_pixel = healpix.parent_pixel(spatial_index, margin_order)
    home_order, home_pixel = _tree_pixels(margin_pixel, margin_order, partitions)
    # neighbours[k, i]: the k-th of the (up to) 8 pixels around object i's, -1 where there is none
    neighbours = healpy.get_all_neighbours(2**margin_order, margin_pixel, nest=True).ravel()
    row = np.tile(np.arange(table.num_rows), 8)
    row, neighbours = row[neighbours >= 0], neighbours[neighbours >= 0]
    order, pixel = _tree_pixels(neighbours, margin_order, partitions)
    elsewhere = (order != home_order[row]) | (pixel != home_pixel[row])
    row, order, pixel = row[elsewhere], order[elsewhere], pixel[elsewhere]
    # by tree pixel, then in _healpix_29 order inside it (as HATS files are), each object once
    by_pixel = np.lexsort((row, spatial_index[row], pixel, order))
    row, order, pixel = row[by_pixel], order[by_pixel], pixel[by_pixel]
    first = np.ones(len(row), bool)
    first[1:] = (row[1:] != row[:-1]) | (pixel[1:] != pixel[:-1]) | (order[1:] != order[:-1])
    row, order, pixel = row[first], order[first], pixel[first]

    schema = pq.read_schema(collection / catalog_name / "dataset" / "_common_metadata")
    rows = table.append_column(SPATIAL_INDEX_COLUMN, pa.array(spatial_index)).select(schema.names).cast(schema)
    new_pixel = np.ones(len(row), bool)
    new_pixel[1:] = (pixel[1:] != pixel[:-1]) | (order[1:] != order[:-1])
    bounds = np.r_[np.flatnonzero(new_pixel), len(row)]
    margin_pixels = [HealpixPixel(int(order[start]), int(pixel[start])) for start in bounds[:-1]]
    for margin_pixel_, start, stop in zip(margin_pixels, bounds[:-1], bounds[1:], strict=True):
        file = Path(paths.pixel_catalog_file(margin_dir, margin_pixel_).path)
        file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows.take(row[start:stop]), file)
    if margin_pixels:
        write_parquet_metadata(margin_dir)
    else:
        (margin_dir / "dataset").mkdir(parents=True)
        pq.write_metadata(schema, margin_dir / "dataset" / "_common_metadata")
        pq.write_metadata(schema, margin_dir / "dataset" / "_metadata")
    partition_info = PartitionInfo.from_healpix(margin_pixels)
    partition_info.write_to_file(margin_dir / "partition_info.csv")
    TableProperties(
        catalog_name=margin_name,
        catalog_type="margin",
        total_rows=len(row),
        ra_column="ra",
        dec_column="dec",
        primary_catalog=catalog_name,
        margin_threshold=margin_arcsec,
        npix_suffix=".parquet",
        hats_max_rows=int(np.diff(bounds).max(initial=0)),
        moc_sky_fraction=partition_info.calculate_fractional_coverage() if margin_pixels else 0.0,
        hats_order=partition_info.get_highest_order() if margin_pixels else None,
        **HatsProperties.new_provenance_dict(margin_dir, builder=f"mstlake v{mstlake.__version__}"),
    ).to_properties_file(margin_dir)
    return margin_name, len(row)


def _tree_pixels(pixels: np.ndarray, pixel_order: int, partitions: list[HealpixPixel]) -> tuple[np.ndarray, np.ndarray]:
    """The (order, pixel) holding each of ``pixels`` (NESTED, at ``pixel_order``): its partition, or
    where it is in none, its pixel of the negative tree (the largest pixels that overlap no partition)."""
    partition_orders = np.array([p.order for p in partitions], np.int64)
    partition_pixels = np.array([p.pixel for p in partitions], np.int64)
    order_of = np.full(len(pixels), -1, np.int64)
    pixel_of = np.full(len(pixels), -1, np.int64)
    # coarse to fine: the first ancestor that is a partition, or that no partition lies in
    for order in range(int(partition_orders.max()) + 1):
        ancestor = pixels >> 2 * (pixel_order - order)
        finer = partition_orders >= order
        overlapped = np.unique(partition_pixels[finer] >> 2 * (partition_orders[finer] - order))
        found = (order_of < 0) & (np.isin(ancestor, partition_pixels[partition_orders == order]) | ~np.isin(ancestor, overlapped))
        order_of[found], pixel_of[found] = order, ancestor[found]
    return order_of, pixel_of


def _write_index(collection: Path, catalog_name: str) -> str:
    """An index catalogue of ``object_id`` -> partition (lsdb cannot write one, and hats-import's
    index pipeline needs an older dask); its name."""
    import hats
    from hats.catalog import TableProperties
    from hats.io import paths
    from hats.io.parquet_metadata import write_parquet_metadata

    catalog = hats.read_hats(collection / catalog_name)
    pieces = []
    for pixel in catalog.get_healpix_pixels():
        rows = pq.read_table(paths.pixel_catalog_file(catalog.catalog_base_dir, pixel).path, columns=[INDEXING_COLUMN, SPATIAL_INDEX_COLUMN])
        norder = pa.array(np.full(rows.num_rows, pixel.order, np.uint8))
        npix = pa.array(np.full(rows.num_rows, pixel.pixel, np.uint64))
        pieces.append(rows.append_column("Norder", norder).append_column("Npix", npix))
    index_schema = pa.schema([(INDEXING_COLUMN, pa.int64()), (SPATIAL_INDEX_COLUMN, pa.int64()), ("Norder", pa.uint8()), ("Npix", pa.uint64())])
    index = pa.concat_tables(pieces).cast(index_schema).sort_by(INDEXING_COLUMN)

    index_name = f"{catalog_name}_{INDEXING_COLUMN}"
    index_dir = collection / index_name
    (index_dir / "dataset" / "index").mkdir(parents=True)
    pq.write_table(index, index_dir / "dataset" / "index" / "part.0.parquet")
    write_parquet_metadata(index_dir)
    TableProperties(catalog_name=index_name, catalog_type="index", total_rows=index.num_rows, primary_catalog=catalog_name, indexing_column=INDEXING_COLUMN, npix_suffix=".parquet").to_properties_file(index_dir)
    return index_name


def _complete_collection(collection: Path, *, margin_name: str, index_name: str) -> None:
    """Name the margin and the index in the collection's properties, which lsdb wrote for the
    catalogue alone."""
    from hats.catalog.dataset.collection_properties import CollectionProperties

    properties = CollectionProperties.read_from_dir(collection).model_dump()
    properties |= {"all_margins": [margin_name], "default_margin": margin_name, "all_indexes": {INDEXING_COLUMN: index_name}, "default_index": INDEXING_COLUMN}
    CollectionProperties.model_validate(properties).to_properties_file(collection)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished collection to ``out_dir``; a previous export there (``overwrite``) is
    renamed aside first and removed only once the new one is in place."""
    previous = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.old")
    if out_dir.exists():
        os.replace(out_dir, previous)
    try:
        os.replace(staging, out_dir)
    except OSError:
        if previous.exists():
            os.replace(previous, out_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)
