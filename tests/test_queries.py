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
    con = duckdb.connect()
    con.execute(f"SET VARIABLE lake = '{lake.root}'")
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
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM lake.forced")
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
    refused = CliRunner().invoke(main, ["sql", "--lake", str(lake.root), "DELETE FROM lake.forced"])
    assert refused.exit_code == 2 and "read-only" in refused.output
