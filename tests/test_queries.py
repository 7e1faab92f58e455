from pathlib import Path

import duckdb
import pytest

from mstlake.config import ReferenceCatalogueConfig
from mstlake.lake.refcat import load_reference
from mstlake.paths import LakePaths
from mstlake.pipeline.astrometry import solve_field
from mstlake.pipeline.calibrate import calibrate_nights
from mstlake.pipeline.inventory import run_inventory

QUERIES = sorted((Path(__file__).parents[1] / "queries").glob("*.sql"))


@pytest.fixture(scope="module")
def lake(small_simulation, tmp_path_factory, instrument, fields, pipeline_config):
    """Every stage that writes tables the queries read: inventory, calibration, astrometry."""
    paths, _ = small_simulation
    lake = LakePaths(tmp_path_factory.mktemp("lake"))
    run_inventory(paths.raw, lake, instrument=instrument, fields=fields, config=pipeline_config.inventory, progress=False)
    calibrate_nights(lake, instrument=instrument, cfg=pipeline_config.calibration, progress=False)
    field = type(fields["f02"])(**{**fields["f02"].__dict__, "reference": ReferenceCatalogueConfig(path=str(paths.standard_library))})
    solve_field(lake, "f02", load_reference(field, lake, base=paths.raw), instrument=instrument, cfg=pipeline_config.astrometry, progress=False)
    return lake


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
