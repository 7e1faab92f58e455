"""A field's stacking grid: one tangent-plane WCS at the frames' pixel scale over the whole field,
cut into tiles small enough that a tile's stack never needs the mosaic in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS


@dataclass(frozen=True)
class Tile:
    index: tuple[int, int]  # (row, column) of the tile in the grid
    y: slice  # its pixels in the full grid
    x: slice
    wcs: WCS

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.stop - self.y.start, self.x.stop - self.x.start)


@dataclass(frozen=True)
class FieldGrid:
    wcs: WCS  # TAN, north up, east left, centred on the field
    shape: tuple[int, int]  # (ny, nx)
    tile_px: int

    def tiles(self) -> list[Tile]:
        ny, nx = self.shape
        found = []
        for row, y0 in enumerate(range(0, ny, self.tile_px)):
            for column, x0 in enumerate(range(0, nx, self.tile_px)):
                ys, xs = slice(y0, min(y0 + self.tile_px, ny)), slice(x0, min(x0 + self.tile_px, nx))
                found.append(Tile((row, column), ys, xs, self.wcs[ys, xs]))
        return found


def field_grid(centre_ra_deg: float, centre_dec_deg: float, width_deg: float, height_deg: float, *, pixel_scale_arcsec: float, tile_px: int = 2048, margin_deg: float = 0.0) -> FieldGrid:
    """The grid of a field: ``width_deg`` x ``height_deg`` (plus ``margin_deg`` on each side, for
    pointing offsets) around the centre, ``pixel_scale_arcsec`` pixels, tiles of ``tile_px``."""
    if pixel_scale_arcsec <= 0 or tile_px < 16:
        raise ValueError(f"stacking grid: pixel scale {pixel_scale_arcsec}\" and tile size {tile_px} px must be positive (tiles >= 16 px)")
    scale = pixel_scale_arcsec / 3600
    nx = int(np.ceil((width_deg + 2 * margin_deg) / scale))
    ny = int(np.ceil((height_deg + 2 * margin_deg) / scale))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [centre_ra_deg, centre_dec_deg]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.wcs.cdelt = [-scale, scale]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.pixel_shape = (nx, ny)
    return FieldGrid(wcs, (ny, nx), tile_px)
