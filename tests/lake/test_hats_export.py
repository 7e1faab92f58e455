"""The HATS export: what lsdb reads back (objects, light curves by id, cones, the margin), and how the
export refuses, fails and replaces."""

import duckdb
import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hats.io import validation

from mstlake.astro import separation_deg
from mstlake.lake import hats_export
from mstlake.lake.hats_export import export_from_connection, export_hats

# nested-pandas and lsdb still use what pandas 3.1 deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

FIELD_RA, FIELD_DEC = 150.0, 2.0
BOUNDARY_OFFSETS_ARCSEC = (-1.5, -0.5, 0.5, 1.5, 60.0)  # from a base-pixel edge: all but the last within the 2" margin
SMALL_PARTITIONS = 60_000  # bytes: the ~1 MB test survey in a dozen or more partitions


def base_pixel_edge_dec(ra: float, dec_low: float, dec_high: float) -> float:
    """The declination, along ``ra``, of the edge between two HEALPix base pixels: the edge of a
    pixel at every order, so a partition boundary however the catalogue is partitioned."""
    base = lambda dec: hp.ang2pix(1, ra, dec, nest=True, lonlat=True)  # noqa: E731
    assert base(dec_low) != base(dec_high)
    for _ in range(60):
        middle = (dec_low + dec_high) / 2
        dec_low, dec_high = (middle, dec_high) if base(middle) == base(dec_low) else (dec_low, middle)
    return dec_low


def simulated_survey(seed: int = 7, n_field: int = 3000) -> tuple[pa.Table, pa.Table, float]:
    """Objects in ~1 deg^2 around the field centre plus a few on either side of a base-pixel edge,
    5-10 points each in a shuffled order (the first object none), a few points of objects not in
    the table, and the lake's partitioning columns; and the edge's declination."""
    rng = np.random.default_rng(seed)
    edge_dec = base_pixel_edge_dec(FIELD_RA, FIELD_DEC, 40.0)
    ra = np.r_[FIELD_RA + rng.uniform(-0.5, 0.5, n_field) / np.cos(np.radians(FIELD_DEC)), np.full(len(BOUNDARY_OFFSETS_ARCSEC), FIELD_RA)]
    dec = np.r_[FIELD_DEC + rng.uniform(-0.5, 0.5, n_field), edge_dec + np.array(BOUNDARY_OFFSETS_ARCSEC) / 3600]
    object_id = 5_000_000 + rng.permutation(10 * len(ra))[: len(ra)].astype(np.int64)
    n_points = rng.integers(5, 11, len(ra))
    n_points[0] = 0
    objects = pa.table(
        {
            "object_id": object_id,
            "ra": ra,
            "dec": dec,
            "mean_mag": rng.normal(18, 1.5, len(ra)).astype(np.float32),
            "n_epochs": n_points.astype(np.int32),
            "_healpix_29": np.zeros(len(ra), np.int64),
            "healpix_partition": np.zeros(len(ra), np.int32),
        }
    )
    owner = np.r_[np.repeat(object_id, n_points), [1, 2, 3]]  # 1-3: objects not exported
    shuffled = rng.permutation(len(owner))
    mjd = rng.uniform(60000, 60100, len(owner))
    mag = rng.normal(18, 0.2, len(owner))
    points = pa.table(
        {
            "object_id": owner[shuffled],
            "frame_id": rng.permutation(len(owner)).astype(np.int64),
            "mjd": mjd[shuffled],
            "band": pa.array(rng.choice(["g", "r", "i"], len(owner))[shuffled]),
            "mag": mag[shuffled].astype(np.float32),
            "flux": (10 ** (-0.4 * (mag[shuffled] - 25))).astype(np.float32),
            "flag": np.zeros(len(owner), np.int32),
            "_healpix_29": np.zeros(len(owner), np.int64),
            "healpix_partition": np.zeros(len(owner), np.int32),
        }
    )
    return objects, points, edge_dec


@pytest.fixture(scope="module")
def survey():
    return simulated_survey()


@pytest.fixture(scope="module")
def exported(survey, tmp_path_factory):
    objects, points, _ = survey
    out = tmp_path_factory.mktemp("hats") / "mst_dr1"
    return export_hats(objects, points, out, catalog_name="mst_objects", partition_bytes=SMALL_PARTITIONS)


@pytest.fixture(scope="module")
def catalog(exported):
    import lsdb

    return lsdb.open_catalog(exported.out_dir)


def test_the_collection_holds_every_object_in_several_partitions(survey, exported, catalog):
    objects, points, _ = survey
    assert exported.n_objects == objects.num_rows
    assert exported.n_points == points.num_rows - 3  # the points of objects not exported are left out
    assert exported.catalog_path == exported.out_dir / "mst_objects"
    assert exported.n_partitions > 1 and catalog.npartitions == exported.n_partitions
    assert catalog.hc_collection.default_index_field == "object_id"
    assert not [p for p in exported.out_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left
    for part in (exported.out_dir, *(p for p in exported.out_dir.iterdir() if p.is_dir())):
        assert validation.is_valid_catalog(part, strict=True, verbose=False), part
    assert sorted(p.name for p in exported.out_dir.iterdir()) == ["collection.properties", "mst_objects", "mst_objects_2arcs", "mst_objects_object_id"]
    frame = catalog.compute(progress_bar=False)
    assert sorted(frame["object_id"]) == sorted(objects["object_id"].to_pylist())
    assert "healpix_partition" not in frame.columns and "healpix_partition" not in frame["lightcurve"].nest.columns
    assert frame["lightcurve"].nest.columns == ["frame_id", "mjd", "band", "mag", "flux", "flag"]
    n_epochs = frame.set_index("object_id")["n_epochs"]
    assert (frame.set_index("object_id")["lightcurve"].nest.len() == n_epochs).all()


def test_id_search_gives_an_objects_light_curve_in_time_order(survey, catalog):
    objects, points, _ = survey
    object_id = objects["object_id"][17].as_py()
    search = catalog.id_search(values={"object_id": object_id})
    assert search.npartitions == 1  # the index led it to the object's partition
    found = search.compute(progress_bar=False)
    assert found["object_id"].tolist() == [object_id]
    light_curve = found["lightcurve"].iloc[0]
    expected = points.filter(pc.equal(points["object_id"], object_id)).sort_by("mjd").to_pandas()
    assert len(light_curve) == len(expected) > 0
    assert np.all(np.diff(light_curve["mjd"].to_numpy()) > 0)
    for column in ("mjd", "frame_id", "band", "mag", "flux"):
        assert light_curve[column].tolist() == expected[column].tolist(), column

    without_points = catalog.id_search(values={"object_id": objects["object_id"][0].as_py()}).compute(progress_bar=False)
    assert len(without_points) == 1 and len(without_points["lightcurve"].iloc[0]) == 0
    assert len(catalog.id_search(values={"object_id": 1}).compute(progress_bar=False)) == 0


def test_a_cone_search_finds_what_brute_force_finds(survey, catalog):
    objects, _, _ = survey
    ra0, dec0, radius = FIELD_RA + 0.1, FIELD_DEC - 0.15, 900.0
    found = catalog.cone_search(ra=ra0, dec=dec0, radius_arcsec=radius).compute(progress_bar=False)
    inside = 3600 * separation_deg(objects["ra"].to_numpy(), objects["dec"].to_numpy(), ra0, dec0) <= radius
    assert 100 < len(found) == inside.sum()
    assert set(found["object_id"]) == set(objects["object_id"].to_numpy()[inside])


def test_the_margin_holds_the_objects_just_across_partition_edges(survey, exported, catalog):
    objects, _, edge_dec = survey
    margin = catalog.margin.compute(progress_bar=False)
    assert exported.n_margin_rows == len(margin) > 0
    assert catalog.margin.hc_structure.catalog_info.margin_threshold == 2.0
    assert set(margin["object_id"]) <= set(objects["object_id"].to_pylist())
    for pixel in catalog.margin.get_healpix_pixels():  # each row lies outside the pixel it is the margin of
        rows = catalog.margin.get_partition(pixel.order, pixel.pixel).compute()
        assert len(rows) and not (hp.ang2pix(2**pixel.order, rows["ra"], rows["dec"], nest=True, lonlat=True) == pixel.pixel).any()
    near_edge = np.abs(objects["dec"].to_numpy() - edge_dec) * 3600 < 2 + 1e-6
    far_from_edge = np.abs(objects["dec"].to_numpy() - edge_dec - BOUNDARY_OFFSETS_ARCSEC[-1] / 3600) < 1e-9
    assert near_edge.sum() == 4 and far_from_edge.sum() == 1
    assert set(objects["object_id"].to_numpy()[near_edge]) <= set(margin["object_id"])
    assert not set(objects["object_id"].to_numpy()[far_from_edge]) & set(margin["object_id"])


def test_an_export_refuses_a_directory_that_is_not_empty(survey, exported, tmp_path):
    objects, points, _ = survey
    with pytest.raises(ValueError, match=str(exported.out_dir)):
        export_hats(objects, points, exported.out_dir)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_hats(objects, points, tmp_path)


def test_a_failed_export_leaves_the_previous_one_and_no_debris(survey, tmp_path, monkeypatch):
    import lsdb

    objects, points, _ = survey
    few_objects = objects.slice(0, 200)
    out = tmp_path / "export"
    export_hats(few_objects, points, out)

    def broken_index(collection, catalog_name):
        raise OSError("disk full")

    monkeypatch.setattr(hats_export, "_write_index", broken_index)
    with pytest.raises(OSError, match="disk full"):
        export_hats(objects, points, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert len(lsdb.open_catalog(out).compute(progress_bar=False)) == 200

    monkeypatch.undo()
    assert export_hats(objects.slice(0, 300), points, out, overwrite=True).n_objects == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert len(lsdb.open_catalog(out).compute(progress_bar=False)) == 300


def test_inputs_the_export_cannot_take_are_refused(survey, tmp_path):
    objects, points, _ = survey
    with pytest.raises(ValueError, match="not unique"):
        export_hats(pa.concat_tables([objects, objects.slice(0, 1)]), points, tmp_path / "a")
    with pytest.raises(ValueError, match="points.mjd"):
        export_hats(objects, points.drop_columns(["mjd"]), tmp_path / "b")
    with pytest.raises(ValueError, match="no objects"):
        export_hats(objects.slice(0, 0), points, tmp_path / "c")
    assert not list(tmp_path.iterdir())


def test_export_from_a_duckdb_connection(survey, tmp_path):
    import lsdb

    objects, points, _ = survey
    con = duckdb.connect()
    con.register("objects_arrow", objects.slice(0, 500))
    con.register("points_arrow", points)
    (tmp_path / "from_sql").mkdir()  # an empty directory is no export to protect
    result = export_from_connection(con, tmp_path / "from_sql", objects_sql="SELECT * FROM objects_arrow", points_sql="SELECT * FROM points_arrow WHERE band = 'g'")
    assert result.n_objects == 500
    frame = lsdb.open_catalog(result.out_dir).compute(progress_bar=False)
    assert len(frame) == 500
    assert set(frame["lightcurve"].nest.to_flat()["band"]) == {"g"}
    assert frame["lightcurve"].nest.len().sum() == result.n_points > 0
