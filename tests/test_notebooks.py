"""The notebooks in notebooks/ (issue 8), executed on the small simulated lake: no cell fails and
each shows what it is about (tables, figures, the cluster's dashboard, the release)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


@pytest.fixture(scope="module")
def notebook_lake(solved_lake, tmp_path_factory):
    """A copy of the solved lake (the cluster notebook adds a release to it), and where the
    field's reference catalogue path resolves."""
    paths, lake, _, _ = solved_lake
    root = tmp_path_factory.mktemp("notebooks")
    shutil.copytree(lake.root, root / "lake")
    base = root / "base"
    (base / "raw").mkdir(parents=True)
    (base / "raw" / "f02-truth").symlink_to(Path(paths.standard_library).parent)  # ingest/fields/f02.toml: raw/f02-truth/standard_library.parquet
    return root / "lake", base


def _execute(name: str, lake: Path, base: Path, monkeypatch) -> list[dict]:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MSTLAKE_LAKE", str(lake))
    monkeypatch.setenv("MSTLAKE_REFERENCE_BASE", str(base))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def _images(outputs) -> int:
    return sum("image/png" in (o.get("data") or {}) for o in outputs)


def _text(outputs) -> str:
    return "\n".join(o.get("text", "") + (o.get("data") or {}).get("text/plain", "") + (o.get("data") or {}).get("text/html", "") for o in outputs)


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == ["01_quickstart.ipynb", "02_lightcurves_sql.ipynb", "03_cluster_reprocess.ipynb"]


def test_the_quickstart_goes_from_the_lake_to_a_light_curve_plot(notebook_lake, monkeypatch):
    outputs = _execute("01_quickstart.ipynb", *notebook_lake, monkeypatch)
    assert _images(outputs) == 1
    text = _text(outputs)
    assert "calibrated" in text and "in_the_library" in text and "points," in text and "good" in text


def test_the_sql_notebook_runs_the_query_library_and_draws_a_folded_curve_and_catalogue_stacks(notebook_lake, monkeypatch):
    outputs = _execute("02_lightcurves_sql.ipynb", *notebook_lake, monkeypatch)
    assert _images(outputs) == 2
    text = _text(outputs)
    assert "cone.sql" in text and "separation_arcsec" in text and "stetson_j" in text and "period" in text


def test_the_cluster_notebook_reprocesses_a_release_on_a_local_cluster(notebook_lake, monkeypatch):
    lake, base = notebook_lake
    outputs = _execute("03_cluster_reprocess.ipynb", lake, base, monkeypatch)
    text = _text(outputs)
    assert "dashboard: http://" in text and "config_sha256" in text
    releases = [p.name for p in (lake / "releases").iterdir()]
    assert len(releases) == 1 and (lake / "releases" / releases[0] / "release.json").exists()
    assert f"'{releases[0]}'" in text and "calibrated" in text
