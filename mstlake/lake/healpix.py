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
    "CREATE OR REPLACE TEMP MACRO _hp_spread(k, x) AS coalesce(list_sum(list_transform(range(k), _hp_bit -> ((x::BIGINT >> _hp_bit) & 1) << (2 * _hp_bit))), 0)",
    # [face, ix, iy] in the equatorial belt from the ascending and descending edge indices jp, jm ...
    """CREATE OR REPLACE TEMP MACRO _hp_equatorial(ns, jp, jm) AS list_transform([[jp, jm, jp // ns, jm // ns]], _hp_j ->
        [CASE WHEN _hp_j[3] = _hp_j[4] THEN _hp_j[3] % 4 + 4 WHEN _hp_j[3] < _hp_j[4] THEN _hp_j[3] ELSE _hp_j[4] + 8 END,
         _hp_j[2] % ns, ns - (_hp_j[1] % ns) - 1])[1]""",
    # ... and in the polar caps
    """CREATE OR REPLACE TEMP MACRO _hp_polar(ns, z, tt, ntt, tmp) AS list_transform(
        [[least(floor((tt - ntt) * tmp), ns - 1)::BIGINT, least(floor((1 - (tt - ntt)) * tmp), ns - 1)::BIGINT]], _hp_j ->
        CASE WHEN z >= 0 THEN [ntt, ns - _hp_j[2] - 1, ns - _hp_j[1] - 1] ELSE [ntt + 8, _hp_j[1], _hp_j[2]] END)[1]""",
    # [face, ix, iy] of z = sin(dec), tt = ra / 90 deg in [0, 4) (HEALPix's loc2pix)
    """CREATE OR REPLACE TEMP MACRO _hp_xyf(ns, z, tt) AS
        CASE WHEN abs(z) <= 2.0 / 3
             THEN _hp_equatorial(ns, floor(ns * (0.5 + tt) - ns * z * 0.75)::BIGINT, floor(ns * (0.5 + tt) + ns * z * 0.75)::BIGINT)
             ELSE _hp_polar(ns, z, tt, least(3, floor(tt))::BIGINT, sqrt(3 * (1 - abs(z))) * ns) END""",
    # (lambda parameters carry macro-specific names: a macro's arguments are pasted into its body,
    # and an argument mentioning a lambda parameter of the caller must not be captured by one here)
    """CREATE OR REPLACE TEMP MACRO healpix_nest(k, ra_deg, dec_deg) AS list_transform(
        [list_transform([[sin(radians(dec_deg)), ((ra_deg % 360 + 360) % 360) / 90.0]], _hp_zt -> _hp_xyf(1::BIGINT << k, _hp_zt[1], _hp_zt[2]))[1]], _hp_fxy ->
        _hp_fxy[1] * (1::BIGINT << (2 * k)) + _hp_spread(k, _hp_fxy[2]) + 2 * _hp_spread(k, _hp_fxy[3]))[1]""",
    # grid points (i, j) = (n // w - m, n % w - m), w = 2m + 1, in steps of s on the tangent plane
    # at (a0, d0) within reach of it, each to its pixel
    """CREATE OR REPLACE TEMP MACRO _hp_disc(k, a0, d0, s, reach, m) AS list_sort(list_distinct(list_transform(
        list_transform(list_filter(range((2 * m + 1) * (2 * m + 1)), _hp_n -> ((_hp_n // (2 * m + 1) - m) ^ 2 + (_hp_n % (2 * m + 1) - m) ^ 2) * s * s <= reach * reach),
                       _hp_n -> [(_hp_n // (2 * m + 1) - m) * s, (_hp_n % (2 * m + 1) - m) * s]),
        _hp_g -> healpix_nest(k, degrees(a0 + atan2(_hp_g[1], cos(d0) - _hp_g[2] * sin(d0))),
                              degrees(asin((sin(d0) + _hp_g[2] * cos(d0)) / sqrt(1 + _hp_g[1] * _hp_g[1] + _hp_g[2] * _hp_g[2])))))))""",
    "CREATE OR REPLACE TEMP MACRO _hp_disc_reach(k, a0, d0, s, reach) AS _hp_disc(k, a0, d0, s, reach, ceil(reach / s)::BIGINT)",
    """CREATE OR REPLACE TEMP MACRO healpix_disc(k, ra_deg, dec_deg, radius_arcsec) AS
        _hp_disc_reach(k, radians(ra_deg), radians(dec_deg), sqrt(pi() / (3 * 4 ^ k)) / 4, tan(least(radians(radius_arcsec / 3600) + 1.3 * sqrt(pi() / (3 * 4 ^ k)), 1.4)))""",
    # the point and 8 points at distance rho from it, bearings 0, 45, ... 315 degrees, as unit
    # vectors c cos(rho) + sin(rho) (n cos(b) + e sin(b)), e and n east and north at (a0, d0)
    # (well defined at the poles too)
    """CREATE OR REPLACE TEMP MACRO _hp_near(k, a0, d0, rho) AS list_sort(list_distinct(list_transform(
        list_transform([-1, 0, 1, 2, 3, 4, 5, 6, 7], _hp_b -> [CASE WHEN _hp_b < 0 THEN 0 ELSE rho END, radians(45 * greatest(_hp_b, 0))]), _hp_rb ->
        list_transform([[cos(_hp_rb[1]) * cos(d0) * cos(a0) + sin(_hp_rb[1]) * (-cos(_hp_rb[2]) * sin(d0) * cos(a0) - sin(_hp_rb[2]) * sin(a0)),
                         cos(_hp_rb[1]) * cos(d0) * sin(a0) + sin(_hp_rb[1]) * (-cos(_hp_rb[2]) * sin(d0) * sin(a0) + sin(_hp_rb[2]) * cos(a0)),
                         cos(_hp_rb[1]) * sin(d0) + sin(_hp_rb[1]) * cos(_hp_rb[2]) * cos(d0)]], _hp_u ->
            healpix_nest(k, degrees(atan2(_hp_u[2], _hp_u[1])), degrees(asin(least(1, greatest(-1, _hp_u[3]))))))[1])))""",
    # the pixels within radius_arcsec of a point, for a radius much smaller than a pixel (an
    # association radius): those of the point and of 8 points around it at twice the radius (a
    # pixel corner within the radius leaves more than 45 degrees of that circle inside the pixel);
    # far cheaper to plan than healpix_disc
    "CREATE OR REPLACE TEMP MACRO healpix_near(k, ra_deg, dec_deg, radius_arcsec) AS _hp_near(k, radians(ra_deg), radians(dec_deg), radians(2 * radius_arcsec / 3600))",
)
