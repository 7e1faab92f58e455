"""Reading raw frames (read-only: files are opened for reading and never written).

Uncompressed files are memory-mapped and only the rows asked for are read; BZERO/BSCALE are applied
here (astropy will not scale a memory-mapped image), giving uint16 for the MST cameras' BZERO=32768.
"""

from __future__ import annotations

import gzip
import io

import numpy as np
from astropy.io import fits

from mstlake.raw.fitsfile import GZIP_MAGIC, image_hdu


def _open(path: str):
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == GZIP_MAGIC:
        with gzip.open(path, "rb") as handle:
            return fits.open(io.BytesIO(handle.read()), memmap=False)
    return fits.open(path, memmap=True, mode="readonly", do_not_scale_image_data=True)


def _image_hdu(hdul):
    hdu = image_hdu(hdul)
    if hdu is None:
        raise ValueError("no 2-D image")
    return hdu


def _rows(hdu, rows: slice) -> np.ndarray:
    if isinstance(hdu, fits.CompImageHDU):
        return np.array(hdu.data[rows])
    raw = hdu.data[rows]
    bzero, bscale = hdu.header.get("BZERO", 0), hdu.header.get("BSCALE", 1)
    if bscale == 1 and bzero == 32768 and raw.dtype.kind == "i" and raw.dtype.itemsize == 2:
        return (raw.astype(np.int32) + 32768).astype(np.uint16)
    if bscale == 1 and bzero == 0:
        return np.array(raw)
    return (raw * np.float32(bscale) + np.float32(bzero)).astype(np.float32)


def read_frame(path: str) -> np.ndarray:
    """The whole image of a raw frame, as the camera wrote it (uint16 for MST cameras)."""
    with _open(path) as hdul:
        return _rows(_image_hdu(hdul), slice(None))


def read_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a raw frame."""
    with _open(path) as hdul:
        return _rows(_image_hdu(hdul), slice(start, stop))
