import pyarrow as pa
import pytest

from mstlake.paths import schema_names
from mstlake.schemas import SchemaError, load_schema


@pytest.mark.parametrize("name", schema_names())
def test_every_schema_loads_with_descriptions(name):
    schema = load_schema(name)
    arrow = schema.arrow()
    assert len(arrow) == len(schema.columns) > 0
    assert all(field.metadata[b"description"] for field in arrow)
    assert set(schema.sort_by) <= set(schema.names)


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
