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
