"""One calibrated frame resampled onto a grid tile (pure arrays in, arrays out; no I/O).

The image is resampled flux-conserving with ``reproject``'s adaptive (anti-aliased) method
(DeForest 2004): each output pixel integrates the input under a kernel mapped through the frame's
full TAN-SIP WCS, scaled by the Jacobian, so a star keeps its flux whatever the distortion and
rotation. The variance goes through the same operator: a pixel's resampled variance is the
kernel-weighted mean of the input variances, which ignores the correlation the resampling
introduces between neighbouring output pixels (as SWarp's weight maps do); inverse-variance
weights stay right relative to each other, which is what a weighted mean needs. A masked input
pixel taints every output pixel whose interpolation touches it.

reproject is not thread-safe under threaded schedulers (astropy's WCS objects are shared): call
this from a process-based Dask scheduler, or one thread per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area

# output pixels whose resampled mask indicator exceeds this are tainted (bilinear interpolation
# of a 0/1 plane: any weight at all from a masked pixel)
TAINT_THRESHOLD = 1e-6


@dataclass(frozen=True)
class Resampled:
    image: np.ndarray  # float32, flux per output pixel (NaN where the frame does not cover)
    variance: np.ndarray  # float32
    bad: np.ndarray  # bool: a masked input pixel contributes, or outside the frame
    coverage: np.ndarray  # float32, 0-1: the frame's footprint on the tile


def resample_frame(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, frame_wcs: WCS, tile_wcs: WCS, tile_shape: tuple[int, int]) -> Resampled:
    """``image``, ``variance`` and ``mask`` (non-zero: do not use) of one frame on the tile whose
    WCS and shape are given."""
    from reproject import reproject_adaptive, reproject_interp

    image = np.asarray(image, np.float64)
    variance = np.asarray(variance, np.float64)
    bad_in = (np.asarray(mask) != 0) | ~np.isfinite(image) | ~np.isfinite(variance) | (variance <= 0)
    # masked pixels hold no information: their values must not leak into good output pixels
    clean_image = np.where(bad_in, 0.0, image)
    clean_variance = np.where(bad_in, 0.0, variance)
    options = {"shape_out": tile_shape, "conserve_flux": True, "boundary_mode": "strict", "return_footprint": True}
    out_image, footprint = reproject_adaptive((clean_image, frame_wcs), tile_wcs, **options)
    # variance: the kernel-weighted mean of the inputs', times the square of the factor the image
    # picked up (the ratio of pixel areas, at the projection planes' reference points: enough for
    # weights on a grid at the frames' pixel scale)
    out_variance, _ = reproject_adaptive((clean_variance, frame_wcs), tile_wcs, **(options | {"conserve_flux": False}))
    out_variance = out_variance * (proj_plane_pixel_area(tile_wcs.celestial) / proj_plane_pixel_area(frame_wcs.celestial)) ** 2
    taint, taint_footprint = reproject_interp((bad_in.astype(np.float64), frame_wcs), tile_wcs, shape_out=tile_shape, order="bilinear")
    covered = (footprint > 0.5) & np.isfinite(out_image)
    bad = ~covered | (np.nan_to_num(taint, nan=1.0) > TAINT_THRESHOLD) | (taint_footprint <= 0)
    out_image = np.where(covered, out_image, np.nan)
    return Resampled(out_image.astype(np.float32), np.where(covered, out_variance, np.nan).astype(np.float32), bad, footprint.astype(np.float32))

