"""An image stack on disk: a Zarr v3 store (for xarray and Dask) and a FITS file (for DS9 and
astropy), both carrying the grid's WCS and the list of frames that went in.

A stack is laid out empty in a staging store, its tiles are written into it (in parallel: one
shard per tile, so no two writers share a file), and it is renamed into place; the FITS file is
then written beside and renamed too. A reader sees the previous stack or the complete new one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.wcs import WCS

from mstlake.lake.cubes import commit, store_attrs, store_encoding
from mstlake.paths import LakePaths
from mstlake.schemas import load_cube_schema
from mstlake.stack.combine import Stack

NO_DATA = 1  # mask bit: no frame entered the pixel


def create_stack(staging: Path, shape: tuple[int, int], *, tile_px: int, wcs: WCS, frame_ids, provenance: dict) -> Path:
    """Lay out an empty stack of ``shape`` on the grid ``wcs`` in ``staging``, in shards of
    ``tile_px`` (a multiple of the schema's chunk); returns it."""
    import dask.array as da

    schema = load_cube_schema("cube_stack")
    if tile_px % schema.chunk_px:
        raise ValueError(f"stack tiles ({tile_px} px) must be a multiple of the chunk ({schema.chunk_px} px)")
    variables = {v.name: (schema.dims, da.zeros(shape, dtype=v.dtype, chunks=tile_px)) for v in schema.variables}
    ds = xr.Dataset(variables, attrs=store_attrs(schema, provenance) | {"wcs": wcs.to_header(relax=True).tostring(), "frame_ids": json.dumps([int(f) for f in frame_ids])})
    for v in schema.variables:
        ds[v.name].attrs.update(units=v.unit, description=v.description)
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False, encoding=store_encoding(schema, shape, shard_px=tile_px), compute=False)
    return staging


def write_stack_tile(staging: Path, y: slice, x: slice, stack: Stack) -> None:
    """Write one tile's planes into the staged stack at rows ``y``, columns ``x``."""
    dims = load_cube_schema("cube_stack").dims
    planes = {"image": stack.image, "variance": stack.variance, "count": stack.count, "mask": np.where(stack.bad, NO_DATA, 0).astype(np.uint8)}
    xr.Dataset({name: (dims, plane) for name, plane in planes.items()}).to_zarr(staging, region={"y": y, "x": x}, consolidated=False)


def finish_stack(staging: Path, store: Path, fits_path: Path | None) -> None:
    """Rename the staged stack into place and write its FITS file (when ``fits_path`` is given)."""
    commit(staging, store)
    if fits_path is not None:
        ds, wcs = open_stack(store)
        _write_fits(fits_path, {name: ds[name].values for name in ("image", "variance", "count", "mask")}, wcs, json.loads(ds.attrs["frame_ids"]), json.loads(ds.attrs["provenance"]))


def write_stack(store: Path, fits_path: Path | None, stack: Stack, wcs: WCS, *, frame_ids, provenance: dict) -> None:
    """Write ``stack`` (on the grid ``wcs``) whole to the Zarr ``store`` and, when given, ``fits_path``.
    ``frame_ids``: the frames combined; ``provenance``: how (method, clipping, versions)."""
    chunk = load_cube_schema("cube_stack").chunk_px
    tile_px = -(-max(stack.image.shape) // chunk) * chunk
    staging = create_stack(LakePaths.staging(store), stack.image.shape, tile_px=tile_px, wcs=wcs, frame_ids=frame_ids, provenance=provenance)
    write_stack_tile(staging, slice(None), slice(None), stack)
    finish_stack(staging, store, fits_path)


def _write_fits(path: Path, planes: dict, wcs: WCS, frame_ids, provenance: dict) -> None:
    from astropy.io import fits

    header = wcs.to_header(relax=True)
    header["NCOMBINE"] = (len(frame_ids), "frames combined")
    header["BUNIT"] = "adu"
    primary = fits.PrimaryHDU(np.asarray(planes["image"], np.float32), header=header)
    hdus = [primary] + [fits.ImageHDU(np.asarray(planes[name]), header=header, name=name.upper()) for name in ("variance", "count", "mask")]
    hdus.append(fits.BinTableHDU.from_columns([fits.Column(name="frame_id", format="K", array=np.asarray(frame_ids, np.int64))], name="FRAMES"))
    hdus[0].header["PROVENAN"] = json.dumps(provenance, default=str)  # long strings go on CONTINUE cards
    staging = LakePaths.staging(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(staging, overwrite=True)
    os.replace(staging, path)


def open_stack(store: Path) -> tuple[xr.Dataset, WCS]:
    """A stack's planes and its WCS."""
    from astropy.io import fits

    ds = xr.open_zarr(store, consolidated=False, chunks=None)  # no Dask: see mstlake.lake.cubes.open_store
    return ds, WCS(fits.Header.fromstring(ds.attrs["wcs"]))
