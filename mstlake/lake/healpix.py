"""The one place HEALPix indices are computed: NESTED everywhere (healpy defaults to RING)."""

from __future__ import annotations

import numpy as np

SPATIAL_ORDER = 29  # the order of the spatial index column, as HATS defines it (_healpix_29)


def spatial_index(ra_deg, dec_deg) -> np.ndarray:
    """NESTED HEALPix pixel at order 29 of each position (int64), the same as
    ``hats.pixel_math.spatial_index.compute_spatial_index``."""
    import healpy as hp  # here, not at the top: it imports matplotlib, a second a reader should not pay
    return np.asarray(hp.ang2pix(2**SPATIAL_ORDER, np.asarray(ra_deg, float), np.asarray(dec_deg, float), nest=True, lonlat=True), np.int64)


def parent_pixel(index_29, order: int) -> np.ndarray:
    """The NESTED pixel at ``order`` that holds each order-29 pixel (NESTED children share their
    parent's leading bits)."""
    if not 0 <= order <= SPATIAL_ORDER:
        raise ValueError(f"HEALPix order must be 0-{SPATIAL_ORDER}, not {order}")
    return np.right_shift(np.asarray(index_29, np.int64), 2 * (SPATIAL_ORDER - order))


def pixels_with_neighbours(pixels, order: int) -> np.ndarray:
    """The given NESTED pixels and their (up to 8) neighbours, sorted and unique: what a match of
    radius much smaller than a pixel must read so that nothing across a pixel edge is missed."""
    import healpy as hp

    pixels = np.unique(np.asarray(pixels, np.int64))
    if pixels.size == 0:
        return pixels
    neighbours = hp.get_all_neighbours(2**order, pixels, nest=True).ravel()
    return np.unique(np.concatenate([pixels, neighbours[neighbours >= 0]])).astype(np.int64)


# The same indices in SQL, so that DuckDB can compute a cone's partitions itself: a Python
# function in a query would hide the partition list from DuckLake, which then reads every file.
# healpix_nest(order, ra, dec) is healpy's ang2pix(nest=True, lonlat=True) (the tests compare
# them); healpix_disc(order, ra, dec, radius_arcsec) lists every pixel that may overlap the
# cone: the pixels of a tangent-plane grid (step side/4) out to the radius plus 1.3 pixel sides.
# A pixel that overlaps the cone has its centre within the radius + max_pixrad (1.045 sides) and
# a disc of 0.34 sides around its centre inside it, so some grid point falls in it. Good for
# radii up to ~10 degrees (the grid grows as the square of the radius).
SQL_MACROS = (
    "CREATE OR REPLACE TEMP MACRO _hp_s1(x) AS (x | (x << 16)) & 281470681808895",
    "CREATE OR REPLACE TEMP MACRO _hp_s2(x) AS (x | (x << 8)) & 71777214294589695",
    "CREATE OR REPLACE TEMP MACRO _hp_s3(x) AS (x | (x << 4)) & 1085102592571150095",
    "CREATE OR REPLACE TEMP MACRO _hp_s4(x) AS (x | (x << 2)) & 3689348814741910323",
    "CREATE OR REPLACE TEMP MACRO _hp_s5(x) AS (x | (x << 1)) & 6148914691236517205",
    # the bits of x spread to the even bit positions (NESTED interleaves x and y)
    "CREATE OR REPLACE TEMP MACRO _hp_spread(v) AS _hp_s5(_hp_s4(_hp_s3(_hp_s2(_hp_s1(v::BIGINT)))))",
    # [face, ix, iy] of z = sin(dec), tt = ra / 90 deg in [0, 4) (HEALPix's loc2pix)
    """CREATE OR REPLACE TEMP MACRO _hp_xyf(ns, z, tt) AS (
        CASE WHEN abs(z) <= 2.0 / 3 THEN
            (WITH a AS (SELECT floor(ns * (0.5 + tt) - ns * z * 0.75)::BIGINT AS jp, floor(ns * (0.5 + tt) + ns * z * 0.75)::BIGINT AS jm),
                  b AS (SELECT jp, jm, jp // ns AS ifp, jm // ns AS ifm FROM a)
             SELECT [CASE WHEN ifp = ifm THEN ifp % 4 + 4 WHEN ifp < ifm THEN ifp ELSE ifm + 8 END, jm % ns, ns - (jp % ns) - 1] FROM b)
        ELSE
            (WITH a AS (SELECT least(3, floor(tt))::BIGINT AS ntt, sqrt(3 * (1 - abs(z))) * ns AS tmp),
                  b AS (SELECT ntt, least(floor((tt - ntt) * tmp), ns - 1)::BIGINT AS jp, least(floor((1 - (tt - ntt)) * tmp), ns - 1)::BIGINT AS jm FROM a)
             SELECT CASE WHEN z >= 0 THEN [ntt, ns - jm - 1, ns - jp - 1] ELSE [ntt + 8, jp, jm] END FROM b)
        END)""",
    """CREATE OR REPLACE TEMP MACRO healpix_nest(k, ra_deg, dec_deg) AS (
        WITH f AS (SELECT _hp_xyf(1::BIGINT << k, sin(radians(dec_deg)), ((ra_deg % 360 + 360) % 360) / 90.0) AS v)
        SELECT v[1] * (1::BIGINT << (2 * k)) + _hp_spread(v[2]) + 2 * _hp_spread(v[3]) FROM f)""",
    """CREATE OR REPLACE TEMP MACRO healpix_disc(k, ra_deg, dec_deg, radius_arcsec) AS (
        WITH p AS (SELECT radians(radius_arcsec / 3600) AS r, sqrt(pi() / (3 * 4 ^ k)) AS side, radians(ra_deg) AS a0, radians(dec_deg) AS d0),
        q AS (SELECT *, side / 4 AS s, tan(least(r + 1.3 * side, 1.4)) AS reach FROM p),
        g AS (SELECT *, ceil(reach / s)::BIGINT AS m FROM q),
        xi AS (SELECT *, unnest(range(-m, m + 1)) * s AS x FROM g),
        grid AS (SELECT *, unnest(range(-m, m + 1)) * s AS y FROM xi),
        sky AS (
            SELECT degrees(a0 + atan2(x, cos(d0) - y * sin(d0))) AS ra, degrees(asin((sin(d0) + y * cos(d0)) / sqrt(1 + x * x + y * y))) AS dec
            FROM grid WHERE x * x + y * y <= reach * reach
        )
        SELECT list(DISTINCT healpix_nest(k, ra, dec) ORDER BY healpix_nest(k, ra, dec)) FROM sky)""",
)
