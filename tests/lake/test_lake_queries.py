"""The light-curve macros of ``open_lake``: HEALPix in SQL, cones at the poles and across partition
edges, light curves, variables and catalogue stacks, each reading only the partitions it needs."""

import re

import duckdb
import healpy as hp
import numpy as np
import pyarrow as pa
import pytest

from mstlake.astro import separation_deg
from mstlake.config import ArchiveConfig
from mstlake.lake import healpix, snapshot
from mstlake.lake.archive import Archive
from mstlake.paths import LakePaths
from mstlake.query import open_lake
from mstlake.schemas import load_schema

CFG = ArchiveConfig(partition_order=7, lock_timeout_s=30.0)
RNG = np.random.default_rng(7)


def sql_healpix() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for statement in healpix.SQL_MACROS:
        con.execute(statement)
    return con


def test_healpix_nest_in_sql_is_healpy_nested_ang2pix():
    n = 5000
    ra, dec = RNG.uniform(0, 360, n), np.rad2deg(np.arcsin(RNG.uniform(-1, 1, n)))
    # poles, the polar-cap boundary (|z| = 2/3), ra = 0/360 and face corners
    ra[:8] = [0.0, 90.0, 359.99999, 45.0, 135.0, 10.0, 315.0, 180.0]
    dec[:8] = [90.0, -90.0, 0.0, 41.8103149, -41.8103149, 89.9999, -89.99999, 0.0]
    con = sql_healpix()
    con.register("points", pa.table({"ra": ra, "dec": dec}))
    for order in (0, 1, 5, 9, 13, 29):
        got = np.array(con.execute(f"SELECT healpix_nest({order}, ra, dec) FROM points").fetchnumpy()[next(iter(con.execute(f"SELECT healpix_nest({order}, ra, dec) FROM points").fetchnumpy()))])
        assert (got == hp.ang2pix(2**order, ra, dec, nest=True, lonlat=True)).all(), order


@pytest.mark.parametrize("order, ra, dec, radius", [(9, 116.0, 28.0, 60), (7, 0.0, 89.99, 600), (9, 359.995, 0.0, 120), (5, 10.0, -90.0, 7200), (13, 200.0, 30.0, 30), (9, 150.0, 2.0, 3600)])
def test_healpix_disc_holds_every_pixel_a_cone_touches(order, ra, dec, radius):
    con = sql_healpix()
    listed = set(con.execute("SELECT healpix_disc(?, ?, ?, ?)", [order, ra, dec, radius]).fetchone()[0])
    # 50000 random points inside the cone, and its rim
    centre = hp.ang2vec(ra, dec, lonlat=True)
    theta = np.deg2rad(radius / 3600) * np.sqrt(RNG.random(50000))
    theta[:2000] = np.deg2rad(radius / 3600) * 0.99999
    phi = RNG.uniform(0, 2 * np.pi, 50000)
    a = np.cross(centre, [0.0, 0.0, 1.0] if abs(centre[2]) < 0.9 else [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(centre, a)
    points = np.cos(theta)[:, None] * centre + np.sin(theta)[:, None] * (np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b)
    needed = set(hp.vec2pix(2**order, *points.T, nest=True).tolist())
    assert needed <= listed
    assert len(listed) <= 4 * len(needed) + 16  # a margin, not the sky


def objects_at(ra, dec, epochs=4, variable=None) -> tuple[pa.Table, dict]:
    """Library stars at these positions, measured on ``epochs`` frames in g."""
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    n = len(ra)
    ids = np.arange(1, n + 1, dtype=np.int64)
    index = healpix.spatial_index(ra, dec)
    rows = n * epochs
    mag = np.full(rows, 15.0) + 0.01 * RNG.normal(size=rows)
    if variable is not None:
        mag[np.tile(ids, epochs) == variable] += 0.5 * np.sin(np.repeat(np.arange(epochs), n)[np.tile(ids, epochs) == variable])
    schema = load_schema("forced")
    forced = schema.from_columns({
        "_healpix_29": np.tile(index, epochs), "healpix_partition": healpix.parent_pixel(np.tile(index, epochs), CFG.partition_order).astype(np.int32),
        "object_id": np.tile(ids, epochs), "frame_id": np.repeat(np.arange(epochs), n), "mjd": np.repeat(60000.0 + np.arange(epochs), n), "band": np.full(rows, "g"),
        "x": np.zeros(rows), "y": np.zeros(rows), "flux": 10 ** (-0.4 * (mag - 25)), "flux_err": np.full(rows, 100.0), "mag": mag, "mag_err": np.full(rows, 0.01),
        "mag_magfit": np.full(rows, np.nan), "flag": np.zeros(rows, np.int32),
    })
    return forced, {"source_id": ids, "ra": ra, "dec": dec}


@pytest.fixture(scope="module")
def sky_lake(tmp_path_factory):
    """Stars scattered near the north pole, across ra = 0, and in a field with partition edges."""
    field_ra, field_dec = 116 + RNG.uniform(-0.6, 0.6, 1500), 28 + RNG.uniform(-0.6, 0.6, 1500)
    pole_ra, pole_dec = RNG.uniform(0, 360, 300), 89.9 + RNG.uniform(0, 0.1, 300)
    wrap_ra, wrap_dec = (RNG.uniform(-0.2, 0.2, 300)) % 360, RNG.uniform(-0.2, 0.2, 300)
    forced, library = objects_at(np.concatenate([field_ra, pole_ra, wrap_ra]), np.concatenate([field_dec, pole_dec, wrap_dec]), epochs=6, variable=7)
    paths = LakePaths(tmp_path_factory.mktemp("sky") / "lake")
    paths.root.mkdir(parents=True)
    Archive(paths, CFG).commit({"forced": forced}, message="six epochs", library=pa.table(library))
    return paths, library


def live_files(paths: LakePaths, table: str) -> int:
    return len(snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data).tables[table].files)


def files_read(con, query: str) -> int:
    plan = "\n".join(row[1] for row in con.execute("EXPLAIN ANALYZE " + query).fetchall())
    return sum(int(n) for n in re.findall(r"Total Files Read:\s*│?\s*│?\s*(\d+)", plan.replace("│", " ")))


@pytest.mark.parametrize("centre", [(116.0, 28.0), (0.0, 90.0), (180.0, 89.95), (0.0, 0.0), (359.9, 0.1)])
def test_cone_finds_exactly_the_objects_within_the_radius(sky_lake, centre):
    paths, library = sky_lake
    con = open_lake(paths.root)
    for radius in (60.0, 300.0, 1200.0):
        got = con.execute("SELECT object_id, separation_arcsec FROM cone(?, ?, ?)", [centre[0], centre[1], radius]).fetchall()
        separation = 3600 * separation_deg(library["ra"], library["dec"], centre[0], centre[1])
        expected = set(library["source_id"][separation <= radius].tolist())
        assert {row[0] for row in got} == expected, (centre, radius)
        assert all(abs(s - separation[i - 1]) < 1e-3 for i, s in got)


def test_cone_at_a_partition_corner_and_its_pruning(sky_lake):
    paths, library = sky_lake
    con = open_lake(paths.root)
    pixel = int(healpix.parent_pixel(healpix.spatial_index([116.0], [28.0]), CFG.partition_order)[0])
    corners = hp.boundaries(2**CFG.partition_order, pixel, step=1, nest=True).T
    nearest = corners[np.argmax(corners @ hp.ang2vec(116.0, 28.0, lonlat=True))]  # inside the field
    corner_ra, corner_dec = hp.vec2ang(nearest, lonlat=True)
    separation = 3600 * separation_deg(library["ra"], library["dec"], corner_ra[0], corner_dec[0])
    got = {row[0] for row in con.execute("SELECT object_id FROM cone(?, ?, 300)", [float(corner_ra[0]), float(corner_dec[0])]).fetchall()}
    assert got == set(library["source_id"][separation <= 300].tolist()) and len(got) > 3
    # exactly the files of the partitions the cone's cover lists, nothing else
    cover = {row[0] for row in con.execute("SELECT unnest(healpix_cone(?, ?, 62))", [float(corner_ra[0]), float(corner_dec[0])]).fetchall()}
    held = [int(f.path.split("healpix_partition=")[1].split("/")[0]) for f in snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data).tables["objects"].files]
    assert 0 < files_read(con, f"SELECT * FROM cone({float(corner_ra[0])}, {float(corner_dec[0])}, 60)") == sum(p in cover for p in held) < len(held)


def test_lightcurve_reads_one_partition_and_finds_the_variable(sky_lake):
    paths, _ = sky_lake
    con = open_lake(paths.root)
    curve = con.execute("SELECT * FROM lightcurve(7)").fetch_df()
    assert len(curve) == 6 and (curve.kind == "forced").all() and curve.mjd.is_monotonic_increasing and (curve.good == True).all()  # noqa: E712
    total = live_files(paths, "forced")
    assert files_read(con, "SELECT * FROM lightcurve(7)") <= 3 < total
    assert con.execute("SELECT count(*) FROM lightcurve(123456789)").fetchone()[0] == 0
    # the macros over the whole-table views (used when a snapshot's files hold hidden rows) agree
    import mstlake.query.lake as lake_module

    plain = open_lake(paths.root)
    original = lake_module._file_lookups
    try:
        lake_module._file_lookups = lambda *args: {}
        viewed = open_lake(paths.root)
    finally:
        lake_module._file_lookups = original
    assert "mstlake_object_files" not in viewed.execute("SELECT macro_definition FROM duckdb_functions() WHERE function_name = 'lightcurve'").fetchone()[0]
    for query in ("SELECT * FROM lightcurve(7)", "SELECT * FROM cone(116.0, 28.0, 300)", "SELECT * FROM lightcurve_at(116.0, 28.0, 120)", "SELECT * FROM catalog_stack(7, 2)"):
        assert plain.execute(query).fetch_arrow_table().equals(viewed.execute(query).fetch_arrow_table()), query
    variables = con.execute("SELECT object_id FROM variables(min_epochs := 5)").fetchall()
    assert [row[0] for row in variables] == [7]
    # around the variable: its light curve among its neighbours'
    ra, dec = con.execute("SELECT ra, dec FROM objects WHERE object_id = 7").fetchone()
    near = con.execute("SELECT DISTINCT object_id FROM lightcurve_at(?, ?, 1)", [ra, dec]).fetchall()
    assert near == [(7,)]


def test_catalog_stack_bins_consecutive_epochs_with_inverse_variance_weights(sky_lake):
    paths, _ = sky_lake
    con = open_lake(paths.root)
    curve = con.execute("SELECT mjd, mag FROM lightcurve(3) ORDER BY mjd").fetch_df()
    stack = con.execute("SELECT * FROM catalog_stack(3, 2)").fetch_df()
    assert len(stack) == 3 and (stack.epochs == 2).all()
    assert np.allclose(stack.mag, curve.mag.values.reshape(3, 2).mean(axis=1), atol=1e-6)
    assert np.allclose(stack.mjd, curve.mjd.values.reshape(3, 2).mean(axis=1)) and np.allclose(stack.mag_err, 0.01 / np.sqrt(2), atol=1e-6)
    assert len(con.execute("SELECT * FROM catalog_stack(3, 4)").fetchall()) == 1  # an incomplete last bin is left out


@pytest.mark.parametrize("order", [3, 9, 12])
def test_healpix_near_holds_every_pixel_within_the_radius(order):
    """Centres next to pixel corners and edges, at the poles and ra = 0; every pixel any point
    within the radius falls in must be listed."""
    con = sql_healpix()
    rng = np.random.default_rng(order)
    nside = 2**order
    corners = hp.boundaries(nside, rng.integers(0, 12 * nside**2, 40), step=1, nest=True)  # (40, 3, 4)
    corner_ra, corner_dec = hp.vec2ang(np.moveaxis(corners, 1, 2).reshape(-1, 3), lonlat=True)
    ra = np.concatenate([corner_ra, [0.0, 359.9999, 10.0, 200.0]])
    dec = np.concatenate([corner_dec, [0.0, 0.0, 89.9999, -89.9999]])
    radius = 2.0
    for r0, d0 in zip(ra + rng.normal(0, 0.5, ra.size) / 3600, dec):
        listed = set(con.execute("SELECT healpix_near(?, ?, ?, ?)", [order, float(r0), float(np.clip(d0, -90, 90)), radius]).fetchone()[0])
        # points filling the disc: polar offsets (rho, phi) on the tangent plane
        rho, phi = radius / 3600 * np.sqrt(rng.uniform(0, 1, 4000)), rng.uniform(0, 2 * np.pi, 4000)
        centre = hp.ang2vec(r0, float(np.clip(d0, -90, 90)), lonlat=True)
        east = np.cross([0, 0, 1], centre)
        east = east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-12 else np.array([1.0, 0, 0])
        north = np.cross(centre, east)
        points = centre + np.radians(rho)[:, None] * (np.cos(phi)[:, None] * east + np.sin(phi)[:, None] * north)
        touched = set(hp.vec2pix(nside, *points.T, nest=True).tolist())
        assert touched <= listed, (order, r0, d0)
