"""Releases made by reprocessing (issue 7): a lake of their own, with provenance, that nothing
changes afterwards."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from mstlake.paths import LakePaths
from tests.digest import lake_digest


def test_reprocessing_makes_an_immutable_release_with_provenance_and_leaves_the_lake(solved_lake, instrument, pipeline_config, tmp_path):
    from mstlake.cli import main
    from mstlake.lake.archive import open_reader
    from mstlake.pipeline.release import ReleaseError, config_hash, released, reprocess
    from mstlake.query import open_lake

    paths, lake, field, _ = solved_lake
    copy = LakePaths(tmp_path / "lake")
    shutil.copytree(lake.root, copy.root)
    before = lake_digest(copy)
    options = {"fields": {"f02": field}, "instrument": instrument, "pipeline": pipeline_config, "reference_base": paths.raw, "progress": False}
    manifest = reprocess(copy, "DR1", **options)
    assert lake_digest(copy) == before  # the nightly lake is not touched
    release = copy.release_lake("DR1")
    assert json.loads(release.release_manifest.read_text()) == manifest
    assert manifest["config_sha256"] == config_hash()[0] and "pipeline.toml" in manifest["config_files"]
    assert manifest["inputs"]["frames"] == before["frames"][0] and len(manifest["inputs"]["sha256_of_list"]) == 64 and manifest["inputs"]["left_out"] == []
    assert manifest["masters"] and all((release.root / m).is_dir() for m in manifest["masters"])
    assert manifest["rows"]["archive.forced"] == before["archive forced"][0] and manifest["rows"]["photometry"] == before["photometry"][0]
    # the same pipeline and configuration measure the same numbers
    again = lake_digest(release)
    for name in ("astrometry", "photometry", "forced_photometry", "archive forced", "archive sources", "archive objects"):
        assert again[name] == before[name], name
    # every frame row names the release; readers reach it by name
    con = open_reader(copy, "DR1")
    assert {row[0] for row in con.execute("SELECT DISTINCT release FROM lake.frames").fetchall()} == {"DR1"}
    con.close()
    assert open_lake(copy.root, release="DR1").execute("SELECT count(*) FROM forced").fetchone()[0] == manifest["rows"]["archive.forced"]
    assert [m["name"] for m in released(copy)] == ["DR1"]
    with pytest.raises(ReleaseError, match="immutable"):
        reprocess(copy, "DR1", **options)
    listed = CliRunner().invoke(main, ["releases", "--lake", str(copy.root)])
    assert listed.exit_code == 0 and "DR1" in listed.output and "reprocessed" in listed.output


def test_a_raw_file_changed_or_gone_since_the_inventory_is_left_out_of_a_release(calibrated_lake, tmp_path):
    from mstlake.lake.tables import read_table, update_column
    from mstlake.pipeline.release import FAILED_INPUT, changed_inputs
    from mstlake.schemas import load_schema

    _, lake, _ = calibrated_lake
    copy = LakePaths(tmp_path / "lake")
    copy.tables_dir.mkdir(parents=True)
    shutil.copy(lake.frames_table, copy.frames_table)
    schema = load_schema("frames")
    frames = read_table(copy.frames_table, schema).to_pandas()
    science = frames[(frames["type"] == "science") & (frames.status == "ok")].frame_id.tolist()
    altered, gone, failed = science[:3]
    path = dict(zip(frames.frame_id, frames.path, strict=True))
    moved = {fid: tmp_path / f"{fid}.fits" for fid in (altered, gone)}
    for fid, target in moved.items():
        shutil.copy(path[fid], target)  # copies: raw files are never touched
    data = bytearray(moved[altered].read_bytes())
    data[-100] ^= 0xFF  # one byte flipped
    moved[altered].write_bytes(bytes(data))
    moved[gone].unlink()
    update_column(copy.frames_table, schema, "path", {fid: str(target) for fid, target in moved.items()})
    update_column(copy.frames_table, schema, "status", {failed: "failed: calibration: an earlier failure"})
    changed = changed_inputs(copy, scheduler="synchronous", workers=1, progress=False)
    assert set(changed) == {altered, gone}
    assert "changed since the inventory" in changed[altered] and str(moved[altered]) in changed[altered]
    assert "cannot be read" in changed[gone]
    status = dict(zip(*read_table(copy.frames_table, schema).select(["frame_id", "status"]).to_pydict().values(), strict=True))
    assert status[altered].startswith(FAILED_INPUT) and status[gone].startswith(FAILED_INPUT) and status[failed].startswith("failed: calibration")
    assert sum(s == "ok" for s in status.values()) == (frames.status == "ok").sum() - 3

