import pyarrow as pa
import pytest

from mstlake.paths import schema_names
from mstlake.schemas import SchemaError, load_schema


def _is_cube(name):
    from mstlake.config import read_toml
    from mstlake.paths import schema_file

    return read_toml(schema_file(name)).get("kind") == "cube"


@pytest.mark.parametrize("name", [n for n in schema_names() if not _is_cube(n)])
def test_every_table_schema_loads_with_descriptions(name):
    schema = load_schema(name)
    arrow = schema.arrow()
    assert len(arrow) == len(schema.columns) > 0
    assert all(field.metadata[b"description"] for field in arrow)
    assert set(schema.sort_by) <= set(schema.names)


@pytest.mark.parametrize("name", [n for n in schema_names() if _is_cube(n)])
def test_every_cube_schema_loads(name):
    import numpy as np

    from mstlake.schemas import load_cube_schema

    cube = load_cube_schema(name)
    assert cube.variables and cube.chunk_px > 0
    for variable in cube.variables + cube.coords:
        np.dtype(variable.dtype)
        assert variable.description
    with pytest.raises(SchemaError, match="cube schema"):
        load_schema(name)


def test_units_travel_as_field_metadata():
    field = load_schema("frames").arrow().field("exptime")
    assert field.metadata[b"unit"] == b"s"


def test_rows_must_match_columns_exactly():
    schema = load_schema("truth_artefacts")
    good = {"x": 1, "y": 2, "track_e": 3.0, "cosmic_e": 0.0}
    assert schema.from_rows([good]).num_rows == 1
    with pytest.raises(SchemaError, match="missing columns \\['cosmic_e'\\]"):
        schema.from_rows([{k: v for k, v in good.items() if k != "cosmic_e"}])
    with pytest.raises(SchemaError, match="unexpected columns \\['z'\\]"):
        schema.from_rows([{**good, "z": 1}])


def test_nulls_rejected_where_not_nullable():
    schema = load_schema("truth_artefacts")
    with pytest.raises(SchemaError, match="may not hold nulls"):
        schema.from_columns({"x": [1, None], "y": [1, 2], "track_e": [0.0, 0.0], "cosmic_e": [0.0, 0.0]})


def test_conform_casts_and_orders():
    schema = load_schema("truth_artefacts")
    table = pa.table({"cosmic_e": [1.0], "track_e": [0.0], "y": [3], "x": [4]})
    out = schema.conform(table)
    assert out.column_names == ["x", "y", "track_e", "cosmic_e"] and out.schema.field("x").type == pa.int32()


def test_a_nullable_column_added_later_reads_as_null_and_a_required_one_is_an_error():
    schema = load_schema("frames")
    old = schema.empty().drop_columns(["wcs_header"])
    assert schema.conform(old).column("wcs_header").null_count == 0  # no rows, no nulls, but the column is there
    assert "wcs_header" in schema.conform(old).column_names
    with pytest.raises(SchemaError, match="missing columns"):
        schema.conform(schema.empty().drop_columns(["path"]))
