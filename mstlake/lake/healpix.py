"""The one place HEALPix indices are computed: NESTED everywhere (healpy defaults to RING)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy and healpy are imported in the functions that use them: a reader needs only SQL_MACROS,
# and the imports are most of a fresh process's start-up

SPATIAL_ORDER = 29  # the order of the spatial index column, as HATS defines it (_healpix_29)


def spatial_index(ra_deg, dec_deg) -> np.ndarray:
    """NESTED HEALPix pixel at order 29 of each position (int64), the same as
    ``hats.pixel_math.spatial_index.compute_spatial_index``."""
    import healpy as hp
    import numpy as np

    return np.asarray(hp.ang2pix(2**SPATIAL_ORDER, np.asarray(ra_deg, float), np.asarray(dec_deg, float), nest=True, lonlat=True), np.int64)


def parent_pixel(index_29, order: int) -> np.ndarray:
    """The NESTED pixel at ``order`` that holds each order-29 pixel (NESTED children share their
    parent's leading bits)."""
    import numpy as np

    if not 0 <= order <= SPATIAL_ORDER:
        raise ValueError(f"HEALPix order must be 0-{SPATIAL_ORDER}, not {order}")
    return np.right_shift(np.asarray(index_29, np.int64), 2 * (SPATIAL_ORDER - order))


def pixels_with_neighbours(pixels, order: int) -> np.ndarray:
    """The given NESTED pixels and their (up to 8) neighbours, sorted and unique: what a match of
    radius much smaller than a pixel must read so that nothing across a pixel edge is missed."""
    import healpy as hp
    import numpy as np

    pixels = np.unique(np.asarray(pixels, np.int64))
    if pixels.size == 0:
        return pixels
    neighbours = hp.get_all_neighbours(2**order, pixels, nest=True).ravel()
    return np.unique(np.concatenate([pixels, neighbours[neighbours >= 0]])).astype(np.int64)


# The same indices in SQL, so that DuckDB can compute a cone's partitions itself: a Python
# function in a query would hide the partition list from the planner, which then reads every
# file. Each macro is one expression without subqueries, so a cone with constant centre and
# radius folds to a constant pixel list at planning time, and DuckDB skips the files of every
# other healpix_partition directory before opening any. Values used several times are bound
# once as lambda parameters (a macro argument is copied wherever it appears, and nested copies
# made planning take ~1 s). healpix_nest(order, ra, dec) is healpy's ang2pix(nest=True,
# lonlat=True) (the tests compare them); healpix_disc(order, ra, dec, radius_arcsec) lists every
# pixel that may overlap the cone: the pixels of a tangent-plane grid (step side/4) out to the
# radius plus 1.3 pixel sides. A pixel that overlaps the cone has its centre within the radius +
# max_pixrad (1.045 sides) and a disc of 0.34 sides around its centre inside it, so some grid
# point falls in it. Good for radii up to ~10 degrees (the grid grows as the square of the radius).
SQL_MACROS = (
    # the k low bits of x spread to the even bit positions (NESTED interleaves x and y)
    "CREATE OR REPLACE TEMP MACRO _hp_spread(k, x) AS coalesce(list_sum(list_transform(range(k), b -> ((x::BIGINT >> b) & 1) << (2 * b))), 0)",
    # [face, ix, iy] in the equatorial belt from the ascending and descending edge indices jp, jm ...
    """CREATE OR REPLACE TEMP MACRO _hp_equatorial(ns, jp, jm) AS list_transform([[jp, jm, jp // ns, jm // ns]], j ->
        [CASE WHEN j[3] = j[4] THEN j[3] % 4 + 4 WHEN j[3] < j[4] THEN j[3] ELSE j[4] + 8 END, j[2] % ns, ns - (j[1] % ns) - 1])[1]""",
    # ... and in the polar caps
    """CREATE OR REPLACE TEMP MACRO _hp_polar(ns, z, tt, ntt, tmp) AS list_transform(
        [[least(floor((tt - ntt) * tmp), ns - 1)::BIGINT, least(floor((1 - (tt - ntt)) * tmp), ns - 1)::BIGINT]], j ->
        CASE WHEN z >= 0 THEN [ntt, ns - j[2] - 1, ns - j[1] - 1] ELSE [ntt + 8, j[1], j[2]] END)[1]""",
    # [face, ix, iy] of z = sin(dec), tt = ra / 90 deg in [0, 4) (HEALPix's loc2pix)
    """CREATE OR REPLACE TEMP MACRO _hp_xyf(ns, z, tt) AS
        CASE WHEN abs(z) <= 2.0 / 3
             THEN _hp_equatorial(ns, floor(ns * (0.5 + tt) - ns * z * 0.75)::BIGINT, floor(ns * (0.5 + tt) + ns * z * 0.75)::BIGINT)
             ELSE _hp_polar(ns, z, tt, least(3, floor(tt))::BIGINT, sqrt(3 * (1 - abs(z))) * ns) END""",
    """CREATE OR REPLACE TEMP MACRO healpix_nest(k, ra_deg, dec_deg) AS list_transform(
        [list_transform([[sin(radians(dec_deg)), ((ra_deg % 360 + 360) % 360) / 90.0]], p -> _hp_xyf(1::BIGINT << k, p[1], p[2]))[1]], v ->
        v[1] * (1::BIGINT << (2 * k)) + _hp_spread(k, v[2]) + 2 * _hp_spread(k, v[3]))[1]""",
    # grid points (i, j) = (n // w - m, n % w - m), w = 2m + 1, in steps of s on the tangent plane
    # at (a0, d0) within reach of it, each to its pixel
    """CREATE OR REPLACE TEMP MACRO _hp_disc(k, a0, d0, s, reach, m) AS list_sort(list_distinct(list_transform(
        list_transform(list_filter(range((2 * m + 1) * (2 * m + 1)), n -> ((n // (2 * m + 1) - m) ^ 2 + (n % (2 * m + 1) - m) ^ 2) * s * s <= reach * reach),
                       n -> [(n // (2 * m + 1) - m) * s, (n % (2 * m + 1) - m) * s]),
        g -> healpix_nest(k, degrees(a0 + atan2(g[1], cos(d0) - g[2] * sin(d0))), degrees(asin((sin(d0) + g[2] * cos(d0)) / sqrt(1 + g[1] * g[1] + g[2] * g[2])))))))""",
    "CREATE OR REPLACE TEMP MACRO _hp_disc_reach(k, a0, d0, s, reach) AS _hp_disc(k, a0, d0, s, reach, ceil(reach / s)::BIGINT)",
    """CREATE OR REPLACE TEMP MACRO healpix_disc(k, ra_deg, dec_deg, radius_arcsec) AS
        _hp_disc_reach(k, radians(ra_deg), radians(dec_deg), sqrt(pi() / (3 * 4 ^ k)) / 4, tan(least(radians(radius_arcsec / 3600) + 1.3 * sqrt(pi() / (3 * 4 ^ k)), 1.4)))""",
)
