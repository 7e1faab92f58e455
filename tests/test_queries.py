from pathlib import Path

import duckdb
import pytest


QUERIES = sorted((Path(__file__).parents[1] / "queries").glob("*.sql"))


@pytest.fixture(scope="module")
def lake(solved_lake):
    """Every stage that writes tables the queries read: inventory, calibration, astrometry."""
    return solved_lake[1]


def test_there_are_queries():
    assert len(QUERIES) >= 3


@pytest.mark.parametrize("query", QUERIES, ids=lambda p: p.name)
def test_every_query_runs_and_answers(query, lake):
    from mstlake.query import open_lake

    con = open_lake(lake.root)
    con.execute("SET VARIABLE min_epochs = 3")  # the test lake has one night of three frames per band
    result = con.sql(query.read_text())
    rows = result.fetchall()
    assert rows, f"{query.name} returned nothing"
    assert all(value is not None for value in rows[0][:3])


def test_observing_log_sky_rates_are_physical(lake):
    con = duckdb.connect()
    con.execute(f"SET VARIABLE lake = '{lake.root}'")
    rows = con.sql((Path(__file__).parents[1] / "queries" / "observing_log.sql").read_text()).df()
    # dark-sky rates for a 30 cm f/3 at 0.86"/px: roughly 0.5-3 e-/s/pixel in g and i
    assert rows.sky_e_per_s.between(0.3, 5).all()


def test_open_lake_gives_every_table_and_the_archive_read_only(lake):
    import mstlake
    from mstlake.query import open_lake

    assert mstlake.open_lake is open_lake
    con = open_lake(lake.root)
    views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"frames", "quarantine", "astrometry", "photometry", "sources", "forced"} <= views
    files = duckdb.sql(f"SELECT count(*) FROM '{lake.tables_dir}/forced_photometry/*/*/*.parquet'").fetchone()[0]
    assert con.execute("SELECT count(*) FROM forced").fetchone()[0] == files > 0
    # the queries/ files run on it as they are
    assert con.sql((Path(__file__).parents[1] / "queries" / "zero_points.sql").read_text()).fetchall()
    with pytest.raises(duckdb.Error):  # views over the snapshot's files: nothing to write through
        con.execute("DELETE FROM forced")
    with pytest.raises(FileNotFoundError, match="no lake"):
        open_lake(lake.root / "nowhere")


def test_sql_command_prints_writes_and_refuses_to_change_the_lake(lake, tmp_path):
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from mstlake.cli import main

    query = "SELECT band, count(*) AS points FROM forced GROUP BY band ORDER BY band"
    table = CliRunner().invoke(main, ["sql", "--lake", str(lake.root), query])
    assert table.exit_code == 0 and "points" in table.output and "│" in table.output
    csv = CliRunner().invoke(main, ["sql", "--lake", str(lake.root), query, "--format", "csv"])
    assert csv.output.splitlines()[0] == "band,points" and len(csv.output.splitlines()) >= 2
    out = tmp_path / "points.parquet"
    written = CliRunner().invoke(main, ["sql", "--lake", str(lake.root), "SELECT * FROM forced LIMIT 7", "--format", "parquet", "--out", str(out)])
    assert written.exit_code == 0 and pq.read_table(out).num_rows == 7
    for statement in ("DELETE FROM forced", "ATTACH 'other.db'", "SELECT 1; COPY forced TO 'out.csv'"):
        refused = CliRunner().invoke(main, ["sql", "--lake", str(lake.root), statement])
        assert refused.exit_code == 2 and "read-only" in refused.output, statement


def test_the_archive_holds_frames_associated_detections_objects_and_magfit(lake):
    from mstlake.query import open_lake

    con = open_lake(lake.root)
    frames = con.sql("SELECT * FROM frames").df()
    photometry = con.sql("SELECT frame_id, status FROM photometry").df()
    assert set(frames.frame_id) == set(photometry.frame_id) and (frames.status == "calibrated").mean() > 0.8
    clear = frames[(frames.status == "calibrated") & ~frames.cloudy]
    assert (clear.magfit_stars >= 20).all() and clear.magfit_rms_mag.between(0.001, 0.05).all()
    # nearly every detection of a library star joins it; the rest made new objects, none twice per frame
    sources = con.sql("SELECT s.object_id, s.frame_id, s.separation_arcsec, o.library_id FROM sources s JOIN objects o USING (object_id)").df()
    assert len(sources) == con.sql("SELECT count(*) FROM sources").fetchone()[0]
    assert (sources.separation_arcsec <= 1.0).all() and sources.library_id.notna().mean() > 0.8
    assert not sources.duplicated(["frame_id", "object_id"]).any()
    objects = con.sql("SELECT * FROM objects").df()
    assert objects.object_id.is_unique and set(con.sql("SELECT DISTINCT object_id FROM forced").df().object_id) <= set(objects.object_id)
    # magfit magnitudes on the clear frames, none on cloudy ones, close to the calibrated magnitudes
    points = con.sql("SELECT f.mag, f.mag_magfit, fr.cloudy FROM forced f JOIN frames fr USING (frame_id) WHERE f.flag = 0 AND f.mag_err < 0.02").df()
    on_clear = points[~points.cloudy]
    assert on_clear.mag_magfit.notna().mean() > 0.95 and points[points.cloudy].mag_magfit.isna().all()
    assert abs((on_clear.mag_magfit - on_clear.mag).median()) < 0.05
    bright = objects[(objects.n_g == 3) & (objects.mean_g < 17) & objects.library_id.notna()]
    assert len(bright) > 10 and 0.3 < bright.chi2_g.median() < 5


@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # lsdb 0.11 sets an option pandas 3 deprecates
def test_lightcurve_release_and_hats_export_commands(lake, tmp_path):
    import lsdb
    from click.testing import CliRunner

    from mstlake.cli import main
    from mstlake.query import open_lake

    con = open_lake(lake.root)
    object_id, ra, dec, n_points = con.sql(
        "SELECT o.object_id, o.ra, o.dec, count(*) FROM objects o JOIN forced f USING (object_id) WHERE o.library_id IS NOT NULL GROUP BY ALL ORDER BY 4 DESC, 1 LIMIT 1"
    ).fetchone()
    con.close()
    runner = CliRunner()
    plot = tmp_path / "lc.png"
    shown = runner.invoke(main, ["lightcurve", "--lake", str(lake.root), "--ra", str(ra), "--dec", str(dec), "--radius", "0.5", "--plot", str(plot)])
    assert shown.exit_code == 0, shown.output
    assert f"1 object(s), {n_points} points" in shown.output and plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    folded = runner.invoke(main, ["lightcurve", "--lake", str(lake.root), "--ra", str(ra), "--dec", str(dec), "--radius", "0.5", "--plot", str(tmp_path / "folded.pdf"), "--fold", "0.37"])
    assert folded.exit_code == 0 and (tmp_path / "folded.pdf").read_bytes()[:4] == b"%PDF", folded.output
    unfolded = runner.invoke(main, ["lightcurve", "--lake", str(lake.root), "--ra", str(ra), "--dec", str(dec), "--fold", "soon"])
    assert unfolded.exit_code == 2 and "neither a period" in unfolded.output
    csv = runner.invoke(main, ["lightcurve", "--lake", str(lake.root), "--ra", str(ra), "--dec", str(dec), "--format", "csv"])
    assert csv.output.splitlines()[0].startswith("object_id,separation_arcsec") and str(object_id) in csv.output
    nothing = runner.invoke(main, ["lightcurve", "--lake", str(lake.root), "--ra", "10", "--dec", "-40"])
    assert nothing.exit_code != 0 and "no object within" in nothing.output
    # a release, then its HATS export, read back with lsdb
    named = runner.invoke(main, ["release", "DR0", "--lake", str(lake.root), "--note", "test"])
    assert named.exit_code == 0 and "DR0" in named.output
    out = tmp_path / "hats"
    exported = runner.invoke(main, ["export-hats", "--lake", str(lake.root), "--release", "DR0", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    catalog = lsdb.open_catalog(out)
    release = open_lake(lake.root, release="DR0")
    n_objects = release.sql("SELECT count(*) FROM objects").fetchone()[0]
    release.close()
    assert len(catalog.compute()) == n_objects
    found = catalog.id_search(values={"object_id": object_id}).compute()
    assert len(found) == 1 and len(found.iloc[0]["lightcurve"]) == n_points
    again = runner.invoke(main, ["export-hats", "--lake", str(lake.root), "--release", "DR0", "--out", str(out)])
    assert again.exit_code != 0 and "not empty" in again.output
