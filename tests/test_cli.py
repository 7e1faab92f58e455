import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mstlake.cli import main
from mstlake.config import load_pipeline
from mstlake.lake.archive import Archive
from mstlake.paths import LakePaths


@pytest.mark.parametrize("command", [[], ["simulate"], ["inventory"], ["ingest"], ["demo"], ["sql"], ["reprocess"], ["releases"], ["qa"], ["lightcurve"]])
def test_every_command_explains_itself(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output) > 300


def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "frames in the lake" in result.output
    frames = pq.read_table(tmp_path / "mstlake-demo/lake/tables/frames.parquet").to_pandas()
    quarantine = pq.read_table(tmp_path / "mstlake-demo/lake/tables/quarantine.parquet").to_pandas()
    assert set(frames.telescope) == {"MST1", "MST2", "MST3"} and set(frames.band) == {"g", "r", "i"}
    assert set(frames.type) == {"bias", "dark", "flat", "science"}
    assert len(quarantine) == 7
    archive = Archive(LakePaths(tmp_path / "mstlake-demo/lake"), load_pipeline().archive)
    points = archive.reader().execute("SELECT count(*), count(DISTINCT frame_id) FROM lake.forced").fetchone()
    assert points[0] > 1000 and points[1] >= 30
    stacks = archive.reader().execute("SELECT band, n_frames, status, depth_5sigma_mag FROM lake.stacks ORDER BY band").fetchall()
    assert [row[0] for row in stacks] == ["g", "i", "r"] and all(row[1] >= 8 and row[2] == "calibrated" for row in stacks)
    assert all((tmp_path / f"mstlake-demo/lake/stacks/f02/{band}").glob("*.fits") for band in "gri")
    report = (tmp_path / "mstlake-demo/lake/qa/f02.html").read_text()
    assert report.count("<img src='data:image/png;base64,") >= 10 and "image-stack depth against N" in report
    # running it again is idempotent: same lake, no light-curve point twice
    again = CliRunner().invoke(main, ["demo", "--quiet"])
    assert again.exit_code == 0
    assert len(pq.read_table(tmp_path / "mstlake-demo/lake/tables/frames.parquet")) == len(frames)
    assert archive.reader().execute("SELECT count(*), count(DISTINCT frame_id) FROM lake.forced").fetchone() == points
    assert archive.reader().execute("SELECT band, n_frames, status, depth_5sigma_mag FROM lake.stacks ORDER BY band").fetchall() == stacks


def test_inventory_exit_codes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "junk.fits").write_text("not fits")
    result = CliRunner().invoke(main, ["inventory", str(raw), "--lake", str(tmp_path / "lake"), "--quiet"])
    assert result.exit_code == 1
    assert "not_fits" in result.output
    missing = CliRunner().invoke(main, ["inventory", str(tmp_path / "nope"), "--lake", str(tmp_path / "lake"), "--quiet"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_simulate_then_ingest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw" / "f02"
    sim = CliRunner().invoke(main, ["simulate", "--nights", "1", "--frames-per-night", "1", "--telescopes", "MST3", "--scale", "0.03", "--seed", "4", "--out", str(raw)])
    assert sim.exit_code == 0, sim.output
    assert (tmp_path / "raw" / "f02-truth" / "standard_library.parquet").exists()
    ingest = CliRunner().invoke(main, ["ingest", "--field", "f02", "--quiet"])  # raw/f02 and lake from the field config
    assert ingest.exit_code == 0, ingest.output
    summary = ingest.output[ingest.output.index("science frames per night") :]
    night_row = next(line for line in summary.splitlines() if line.strip().startswith("2023"))
    assert [cell.strip() for cell in night_row.split("│")][1:3] == ["1", "1"]  # one new frame, calibrated
    assert "wall time" in summary
    frames = pq.read_table(tmp_path / "lake/tables/frames.parquet").to_pandas()
    assert (frames.type == "science").sum() == 1 and set(frames.telescope) == {"MST3"}


def test_bad_arguments_are_clear(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--telescopes", "MST9", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "MST9" in result.output
    result = CliRunner().invoke(main, ["ingest", "--field", "f99"])
    assert result.exit_code == 2 and "f99" in result.output


def test_a_cluster_that_cannot_be_used_is_a_clear_error(tmp_path):
    both = CliRunner().invoke(main, ["ingest", "--field", "f02", "--workers", "2", "--scheduler", "tcp://127.0.0.1:9", "--lake", str(tmp_path / "lake")])
    assert both.exit_code == 2 and "not both" in both.output
    nobody = CliRunner().invoke(main, ["ingest", "--field", "f02", "--scheduler", "tcp://127.0.0.1:9", "--raw", str(tmp_path), "--lake", str(tmp_path / "lake")])
    assert nobody.exit_code == 2 and "no Dask scheduler answers at tcp://127.0.0.1:9" in nobody.output
    assert not (tmp_path / "lake").exists()  # nothing was started


def test_ingest_of_chosen_nights_then_of_the_rest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sim = CliRunner().invoke(main, ["simulate", "--nights", "2", "--frames-per-night", "1", "--telescopes", "MST3", "--scale", "0.03", "--seed", "6", "--out", str(tmp_path / "raw" / "f02")])
    assert sim.exit_code == 0, sim.output
    first = CliRunner().invoke(main, ["ingest", "--field", "f02", "--quiet", "--nights", "20230118"])
    assert first.exit_code == 0, first.output
    photometry = pq.read_table(tmp_path / "lake/tables/photometry.parquet").to_pandas()
    frames = pq.read_table(tmp_path / "lake/tables/frames.parquet").to_pandas()
    assert set(frames.night[frames.type == "science"]) == {20230118, 20230119}  # the inventory reads everything
    assert set(photometry.night) == {20230118}
    summary = first.output[first.output.index("science frames per night") :]
    second = next(line for line in summary.splitlines() if line.strip().startswith("20230119"))
    assert [cell.strip() for cell in second.split("│")][1:5] == ["1", "-", "-", "-"]  # new, not calibrated, not measured
    rest = CliRunner().invoke(main, ["ingest", "--field", "f02", "--quiet"])
    assert rest.exit_code == 0, rest.output
    assert set(pq.read_table(tmp_path / "lake/tables/photometry.parquet").to_pandas().night) == {20230118, 20230119}
    unknown = CliRunner().invoke(main, ["ingest", "--field", "f02", "--quiet", "--nights", "20240101"])
    assert unknown.exit_code == 2 and "no night 20240101" in unknown.output
