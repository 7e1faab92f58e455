"""HEALPix indices: NESTED, order 29 as HATS computes it, parents by bit shifts."""

import healpy as hp
import numpy as np
import pytest

from mstlake.lake import healpix


def test_spatial_index_is_the_hats_one_and_parents_are_nested_pixels():
    from hats.pixel_math.spatial_index import compute_spatial_index

    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 2000), np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    index = healpix.spatial_index(ra, dec)
    assert index.dtype == np.int64
    assert (index == compute_spatial_index(ra, dec)).all()
    for order in (0, 5, 9, 13):
        assert (healpix.parent_pixel(index, order) == hp.ang2pix(2**order, ra, dec, nest=True, lonlat=True)).all()
    # the RING scheme numbers pixels differently: mixing them up would scatter partitions
    assert (healpix.parent_pixel(index, 9) != hp.ang2pix(2**9, ra, dec, nest=False, lonlat=True)).mean() > 0.9
    with pytest.raises(ValueError, match="order"):
        healpix.parent_pixel(index, 30)
