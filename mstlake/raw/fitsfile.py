"""What a raw file holds, from its bytes alone (no file-system access here).

Accepts plain FITS, gzip-compressed FITS and fpack (tile-compressed image extension) files. The image
is the first HDU with two-dimensional data. Pixel statistics use every ``stride``-th row and column,
which keeps a 60-Mpx frame's statistics under a second while describing it well.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits

from mstlake.raw.header import HeaderProblem

GZIP_MAGIC = b"\x1f\x8b"
_SKIPPED_CARDS = {"", "COMMENT", "HISTORY"}


@dataclass(frozen=True)
class PixelStats:
    median_adu: float
    robust_std_adu: float
    min_adu: float
    max_adu: float
    saturated_fraction: float


@dataclass(frozen=True)
class FitsContent:
    header: dict[str, Any]
    compression: str
    shape: tuple[int, int]
    bitpix: int
    stats: PixelStats


def header_to_dict(header: fits.Header) -> dict[str, Any]:
    cards: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if key in _SKIPPED_CARDS or key in cards:
            continue
        value = card.value
        if isinstance(value, fits.card.Undefined):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        cards[key] = value
    return cards


def pixel_stats(image: np.ndarray, *, stride: int, saturation_adu: float) -> PixelStats:
    sample = np.asarray(image[::stride, ::stride], dtype=np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return PixelStats(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))
    median = float(np.median(finite))
    robust_std = 1.4826 * float(np.median(np.abs(finite - median)))
    return PixelStats(
        median_adu=median,
        robust_std_adu=robust_std,
        min_adu=float(np.nanmin(image)),
        max_adu=float(np.nanmax(image)),
        saturated_fraction=float(np.mean(finite > saturation_adu)),
    )


def read_fits_bytes(data: bytes, *, stride: int, saturation_adu: float) -> FitsContent:
    """Parse a raw file's bytes. Raises ``HeaderProblem`` (not_fits, truncated, no_image)."""
    compression = "none"
    if data[:2] == GZIP_MAGIC:
        compression = "gzip"
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise HeaderProblem("truncated", f"the gzip stream is damaged or cut short ({err})") from None
    if not data.startswith(b"SIMPLE  ="):
        raise HeaderProblem("not_fits", "the file does not start with a FITS header (no SIMPLE card): not a FITS file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False) as hdul:
                return _first_image(hdul, compression, stride=stride, saturation_adu=saturation_adu)
        except HeaderProblem:
            raise
        except Exception as err:  # astropy raises many kinds on damaged files
            truncated = any("truncated" in str(w.message).lower() for w in caught)
            if truncated or isinstance(err, (TypeError, EOFError)) or "buffer" in str(err).lower():
                raise HeaderProblem("truncated", f"the file ends before its image data does ({len(data)} bytes): truncated copy or interrupted transfer") from None
            raise HeaderProblem("not_fits", f"astropy cannot read it as FITS: {err}") from None


def image_hdu(hdul: fits.HDUList):
    """The first HDU holding a two-dimensional image (the primary, or a tile-compressed extension),
    or None."""
    for hdu in hdul:
        if isinstance(hdu, fits.CompImageHDU) or hdu.header.get("NAXIS", 0) == 2:
            return hdu
    return None


def _first_image(hdul: fits.HDUList, compression: str, *, stride: int, saturation_adu: float) -> FitsContent:
    hdu = image_hdu(hdul)
    image = None if hdu is None else hdu.data
    if image is None or image.ndim != 2:
        raise HeaderProblem("no_image", "the file holds no two-dimensional image")
    if isinstance(hdu, fits.CompImageHDU):
        compression = "fpack"
    bitpix = int(hdu.header.get("ZBITPIX", hdu.header.get("BITPIX", 0)))  # ZBITPIX: a tile-compressed image
    stats = pixel_stats(image, stride=stride, saturation_adu=saturation_adu)
    return FitsContent(header=header_to_dict(hdu.header), compression=compression, shape=tuple(int(n) for n in image.shape), bitpix=bitpix, stats=stats)
