"""An image stack on disk: a Zarr v3 store (for xarray and Dask) and a FITS file (for DS9 and
astropy), both carrying the grid's WCS and the list of frames that went in. Written beside and
renamed into place, so a reader sees the previous stack or the complete new one."""

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

NO_DATA = 1  # mask bit


def write_stack(store: Path, fits_path: Path | None, stack: Stack, wcs: WCS, *, frame_ids, provenance: dict) -> None:
    """Write ``stack`` (on the grid ``wcs``) to the Zarr ``store`` and, when given, ``fits_path``.
    ``frame_ids``: the frames combined; ``provenance``: how (method, clipping, versions)."""
    schema = load_cube_schema("cube_stack")
    planes = {"image": stack.image, "variance": stack.variance, "count": stack.count, "mask": np.where(stack.bad, NO_DATA, 0)}
    shape = stack.image.shape
    ds = xr.Dataset({v.name: (schema.dims, np.asarray(planes[v.name], dtype=v.dtype)) for v in schema.variables},
                    attrs=store_attrs(schema, provenance) | {"wcs": wcs.to_header(relax=True).tostring(), "frame_ids": json.dumps([int(f) for f in frame_ids])})
    for v in schema.variables:
        ds[v.name].attrs.update(units=v.unit, description=v.description)
    staging = LakePaths.staging(store)
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False, encoding=store_encoding(schema, shape))
    commit(staging, store)
    if fits_path is not None:
        _write_fits(fits_path, planes, wcs, frame_ids, provenance)


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

    ds = xr.open_zarr(store, consolidated=False)
    return ds, WCS(fits.Header.fromstring(ds.attrs["wcs"]))
