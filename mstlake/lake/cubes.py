"""Zarr v3 stores: calibrated image cubes and master calibration products.

A cube holds the calibrated frames of one (field, band, night) with dims (frame, y, x). Each frame is
one shard per variable (inner chunks of ``chunk_px``), so writing a frame touches only its own files
and Dask chunks of one frame align with shards. A store is built in a staging directory and swapped
into place when complete, so readers never see a half-written night and a re-run replaces it whole.

Compression: the mask and the variance are lossless (zstd with bit-shuffle); the image is quantised
to 1/16 of each frame's sky noise before compression (as fpack does), which adds noise of
noise/16/sqrt(12) = 1.8% of the noise, i.e. 0.016% more variance.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from mstlake.paths import LakePaths
from mstlake.schemas import CubeSchema, load_cube_schema

QUANTISATION_FRACTION = 1.0 / 16.0


def quantise(image: np.ndarray, noise: float, fraction: float = QUANTISATION_FRACTION) -> tuple[np.ndarray, float]:
    """Round to steps of ``fraction`` of the noise (deterministically, so re-runs give identical
    bytes); returns the image and the step."""
    step = np.float32(max(noise * fraction, 1e-6))
    out = np.divide(image, step, dtype=np.float32)
    np.rint(out, out=out)
    out *= step
    return out, float(step)


def store_encoding(schema: CubeSchema, shape: tuple[int, ...], *, shard_px: int | None = None) -> dict:
    """Chunks of ``schema.chunk_px``; one shard per plane, or per ``shard_px`` square (a multiple
    of the chunk) when tiles of the plane are written in parallel."""
    c = schema.chunk_px
    spatial = tuple(-(-n // c) * c for n in shape[-2:]) if shard_px is None else (shard_px, shard_px)
    chunks = (1,) * (len(shape) - 2) + (c, c)
    shards = (1,) * (len(shape) - 2) + spatial
    codec = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
    return {v.name: {"chunks": chunks, "shards": shards, "compressors": codec} for v in schema.variables}


def store_attrs(schema: CubeSchema, provenance: dict) -> dict:
    return {"schema": schema.name, "description": schema.description, "provenance": json.dumps(provenance, default=str)}


def _swap_into_place(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging``; a crash leaves either the old or the new store, plus at
    worst a stale ``.old`` directory that the next swap removes."""
    old = LakePaths.retired(final)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def create_cube(staging: Path, *, shape: tuple[int, int], coords: dict[str, np.ndarray], provenance: dict) -> Path:
    """Lay out an empty calibrated cube (metadata and coordinates) in ``staging``; returns it."""
    import dask.array as da

    schema = load_cube_schema("cube_calibrated")
    n = len(coords["frame_id"])
    variables = {v.name: (schema.dims, da.zeros((n, *shape), dtype=v.dtype, chunks=(1, *shape))) for v in schema.variables}
    coord_vars = {c.name: ("frame", np.asarray(coords[c.name], dtype=c.dtype)) for c in schema.coords}
    ds = xr.Dataset(variables, coords=coord_vars, attrs=store_attrs(schema, provenance))
    for v in schema.variables:
        ds[v.name].attrs.update(units=v.unit, description=v.description)
    if staging.exists():
        shutil.rmtree(staging)
    ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False, encoding=store_encoding(schema, (n, *shape)), compute=False)
    return staging


def write_frame(staging: Path, index: int, *, image: np.ndarray, variance: np.ndarray, mask: np.ndarray) -> None:
    dims = load_cube_schema("cube_calibrated").dims
    ds = xr.Dataset({"image": (dims, image[None]), "variance": (dims, variance[None]), "mask": (dims, mask[None])})
    ds.to_zarr(staging, region={"frame": slice(index, index + 1), "y": slice(None), "x": slice(None)}, consolidated=False)


def commit(staging: Path, final: Path) -> None:
    """Swap a store (cube, masters, stack) built in ``staging`` into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _swap_into_place(staging, final)


def commit_cube(staging: Path, final: Path) -> None:
    """Swap a calibrated cube built in ``staging`` into place. A cube built again (a night
    calibrated again) keeps the astrometric solutions of the frames it still holds: calibration
    does not move pixels, and a night whose frames are committed is not solved again."""
    solved = frame_wcs_headers(final) if final.exists() else {}
    kept = {f: solved[f] for f in frame_ids(staging) if f in solved}
    if kept:
        set_frame_wcs(staging, kept)
    commit(staging, final)


def frame_ids(path: Path) -> set[int]:
    """The frames a cube holds."""
    return {int(f) for f in open_store(path).frame_id.values}


def open_store(path: Path) -> xr.Dataset:
    """A cube (or masters) opened lazily without Dask: indexing reads only the chunks it needs.
    Not Dask arrays, because the stages read frames inside their own Dask tasks, and on a
    ``distributed`` worker a Dask array's ``.values`` would send a graph of chunk reads back to
    the scheduler from within the task (tasks then wait on each other and overlap on one core:
    2-3x slower per frame)."""
    return xr.open_zarr(path, consolidated=False, chunks=None)


def provenance(ds: xr.Dataset) -> dict:
    return json.loads(ds.attrs["provenance"])


def set_frame_wcs(path: Path, headers: dict[int, str]) -> None:
    """Record the frames' astrometric solutions (FITS header strings by frame_id) in the cube's
    attributes, replacing those of the same frames; only the metadata file is rewritten."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    known = json.loads(group.attrs.get("wcs", "{}"))
    known.update({str(frame_id): header for frame_id, header in headers.items()})
    group.attrs["wcs"] = json.dumps(known)


def frame_wcs_headers(path: Path) -> dict[int, str]:
    """The astrometric solutions a cube holds (FITS header strings by frame_id)."""
    return {int(f): header for f, header in json.loads(open_store(path).attrs.get("wcs", "{}")).items()}


def frame_wcs(ds: xr.Dataset, frame_id: int):
    """The astropy WCS of one frame of a cube (after ``mstlake ingest`` has solved it)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    headers = json.loads(ds.attrs.get("wcs", "{}"))
    if str(frame_id) not in headers:
        raise KeyError(f"frame {frame_id} has no astrometric solution in this cube")
    return WCS(fits.Header.fromstring(headers[str(frame_id)]))


def write_masters(final: Path, arrays: dict[str, np.ndarray], provenance: dict) -> None:
    schema = load_cube_schema("cube_masters")
    shape = next(iter(arrays.values())).shape
    ds = xr.Dataset({v.name: (schema.dims, np.asarray(arrays[v.name], dtype=v.dtype)) for v in schema.variables}, attrs=store_attrs(schema, provenance))
    for v in schema.variables:
        ds[v.name].attrs.update(units=v.unit, description=v.description)
    staging = LakePaths.staging(final)
    if staging.exists():
        shutil.rmtree(staging)
    ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False, encoding=store_encoding(schema, shape))
    commit(staging, final)


def export_masters_fits(lake: LakePaths, *, telescope: str, night: int) -> list[Path]:
    """One FITS file per master product, for DS9 and astropy users."""
    from astropy.io import fits

    ds = open_store(lake.masters(telescope, night))
    lake.masters_fits_dir(telescope, night).mkdir(parents=True, exist_ok=True)
    written = []
    for name, variable in ds.data_vars.items():
        header = fits.Header()
        header["TELESCOP"] = telescope
        header["NIGHT"] = night
        header["PRODUCT"] = name
        header["BUNIT"] = variable.attrs.get("units", "")
        header["COMMENT"] = variable.attrs.get("description", "")
        path = lake.masters_fits_file(telescope, night, name)
        tmp = path.with_name(f".{path.name}.tmp")
        fits.PrimaryHDU(np.asarray(variable.values), header=header).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
        written.append(path)
    return written
