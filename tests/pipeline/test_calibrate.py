"""The calibration graph end to end on a simulated night."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from mstlake.calib import apply
from mstlake.calib.flat import large_scale
from mstlake.lake import cubes
from mstlake.lake.rawfiles import read_frame
from mstlake.paths import LakePaths
from mstlake.pipeline.calibrate import calibrate_nights
from mstlake.pipeline.inventory import run_inventory
from mstlake.schemas import load_cube_schema
from tests.conftest import read_truth_frames


@pytest.fixture(scope="module")
def calibrated(calibrated_lake):
    return calibrated_lake


def test_one_cube_per_field_band_night_in_the_schema(calibrated):
    paths, lake, results = calibrated
    frames = pq.read_table(lake.frames_table).to_pandas()
    science = frames[frames.type == "science"]
    assert {(r.telescope, r.night) for r in results} == set(zip(science.telescope, science.night))
    schema = load_cube_schema("cube_calibrated")
    for r in results:
        assert not r.failed and len(r.cubes) == 1
        ds = cubes.open_store(r.cubes[0])
        assert ds.image.dims == schema.dims
        assert {v.name: str(ds[v.name].dtype) for v in schema.variables} == {v.name: v.dtype for v in schema.variables}
        mine = science[(science.telescope == r.telescope) & (science.night == r.night)]
        assert sorted(ds.frame_id.values.tolist()) == sorted(mine.frame_id.tolist())
        assert ds.image.encoding["shards"][0] == 1  # one frame per shard
        assert cubes.provenance(ds)["telescope"] == r.telescope


def test_calibrated_pixels_against_truth(calibrated, instrument):
    paths, lake, results = calibrated
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    truth = read_truth_frames(paths).set_index("file")
    g = instrument.detector.gain_e_per_adu
    for r in results:
        ds = cubes.open_store(r.cubes[0])
        masters = cubes.open_store(r.masters)
        true_flat = fits.getdata(paths.nightly_flat(r.telescope, r.night)).astype(np.float32)
        vignetting = large_scale(true_flat, 51)
        for i, frame_id in enumerate(ds.frame_id.values):
            path = frames.loc[frame_id, "path"]
            raw = read_frame(path)
            image, variance, mask = (ds[v][i].values for v in ("image", "variance", "mask"))
            # saturation bit is exact; PS bit is the master's map
            assert np.array_equal((mask & apply.SATURATED) > 0, raw > instrument.detector.saturation_adu)
            assert np.array_equal((mask & apply.PEPPER_SALT) > 0, masters.pepper_salt.values > 0)
            row = truth.loc[str(Path(path).relative_to(paths.raw.resolve()))]
            clean = (mask == 0)
            sky = row.sky_e_per_pix / g * vignetting
            ratio = np.median((image / sky)[clean])
            assert ratio == pytest.approx(1.0, abs=0.02)  # faint stars lift it a little
            pull = ((image - sky) / np.sqrt(variance))[clean]
            robust = 1.4826 * np.median(np.abs(pull - np.median(pull)))
            assert robust == pytest.approx(1.0, abs=0.08)


def test_rejected_flats_are_logged_with_reasons(calibrated):
    paths, lake, _ = calibrated
    log = pq.read_table(lake.calibration_log_table).to_pandas()
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    truth = read_truth_frames(paths).set_index("file")
    rejected = log[(log.kind == "flat") & (log.decision == "rejected")]
    bad_truth = {f for f, b in truth.bad_flat.dropna().items()}
    logged = {str(Path(frames.loc[fid, "path"]).relative_to(paths.raw.resolve())) for fid in rejected.frame_id}
    assert logged == bad_truth
    assert rejected.reason.str.len().min() > 15
    assert (log[log.kind == "science"].decision == "used").all()


def test_masters_export_to_fits(calibrated):
    _, lake, results = calibrated
    r = results[0]
    written = cubes.export_masters_fits(lake, telescope=r.telescope, night=r.night)
    names = {p.name for p in written}
    assert f"{r.telescope}_{r.night}_small_flat.fits" in names and f"{r.telescope}_{r.night}_master_bias.fits" in names
    with fits.open(lake.masters_fits_file(r.telescope, r.night, "small_flat")) as hdul:
        assert hdul[0].header["TELESCOP"] == r.telescope and hdul[0].header["NIGHT"] == r.night
        assert abs(np.median(hdul[0].data) - 1) < 1e-3


def test_rerun_skips_done_nights_and_force_gives_identical_cubes(calibrated, instrument, pipeline_config, tmp_path):
    _, shared, results = calibrated
    lake = LakePaths(tmp_path / "lake")  # a copy: the session's lake is measured by other tests
    shutil.copytree(shared.root, lake.root)
    results = [dataclasses.replace(r, cubes=[lake.root / c.relative_to(shared.root) for c in r.cubes]) for r in results]
    before = {r.cubes[0]: cubes.open_store(r.cubes[0]).image.values.copy() for r in results}
    solved = {path: {min(cubes.frame_ids(path)): f"a solution of {path.name}"} for path in before}
    for path, headers in solved.items():
        cubes.set_frame_wcs(path, headers)
    assert calibrate_nights(lake, instrument=instrument, cfg=pipeline_config.calibration, progress=False) == []
    again = calibrate_nights(lake, instrument=instrument, cfg=pipeline_config.calibration, force=True, progress=False)
    assert {(r.telescope, r.night) for r in again} == {(r.telescope, r.night) for r in results}
    for path, image in before.items():
        assert np.array_equal(cubes.open_store(path).image.values, image)
        assert not lake.staging(path).exists()
        # a cube built again keeps its frames' astrometric solutions (calibration moves no pixel)
        (frame_id, header), = solved[path].items()
        assert cubes.frame_wcs_headers(path)[frame_id] == header


def test_a_failing_frame_is_recorded_and_the_night_goes_on(small_simulation, tmp_path, instrument, fields, pipeline_config):
    paths, _ = small_simulation
    raw = tmp_path / "raw"
    shutil.copytree(paths.raw, raw)
    lake = LakePaths(tmp_path / "lake")
    run_inventory(raw, lake, instrument=instrument, fields=fields, config=pipeline_config.inventory, progress=False)
    frames = pq.read_table(lake.frames_table).to_pandas()
    victim = frames[(frames.type == "science") & (frames.telescope == "MST2")].iloc[0]
    intact = Path(victim.path).read_bytes()
    Path(victim.path).write_bytes(intact[:5000])  # damaged after the inventory (our own copy)
    results = calibrate_nights(lake, telescopes=["MST2"], instrument=instrument, cfg=pipeline_config.calibration, progress=False)
    (result,) = results
    assert [fid for fid, _ in result.failed] == [victim.frame_id]
    assert result.science == (frames[(frames.type == "science") & (frames.telescope == "MST2")]).shape[0]
    status = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id").status
    assert status[victim.frame_id].startswith("failed: calibration:")
    log = pq.read_table(lake.calibration_log_table).to_pandas()
    assert (log.set_index("frame_id").decision[victim.frame_id]) == "failed"
    # a plain re-run leaves the failed frame out; --retry-failed, once the file is mended, takes it again
    assert calibrate_nights(lake, telescopes=["MST2"], instrument=instrument, cfg=pipeline_config.calibration, progress=False)[0].failed == []
    Path(victim.path).write_bytes(intact)
    (retried,) = calibrate_nights(lake, telescopes=["MST2"], instrument=instrument, cfg=pipeline_config.calibration, retry_failed=True, progress=False)
    assert retried.failed == [] and victim.frame_id in retried.science_ids
    assert pq.read_table(lake.frames_table).to_pandas().set_index("frame_id").status[victim.frame_id] == "ok"
    assert pq.read_table(lake.calibration_log_table).to_pandas().set_index("frame_id").decision[victim.frame_id] == "used"
    cube = cubes.open_store(retried.cubes[0])
    assert np.isfinite(cube.image.sel(frame=cube.frame_id.values.tolist().index(victim.frame_id)).values).mean() > 0.99
    assert calibrate_nights(lake, telescopes=["MST2"], instrument=instrument, cfg=pipeline_config.calibration, retry_failed=True, progress=False) == []  # nothing left to retry


def test_quantisation_error_is_a_small_fraction_of_the_noise():
    rng = np.random.default_rng(5)
    image = rng.normal(300, 10, (200, 200)).astype(np.float32)
    stored, step = cubes.quantise(image, 10.0)
    error = stored - image
    assert step == pytest.approx(10 / 16)
    assert np.std(error) == pytest.approx(step / np.sqrt(12), rel=0.05)
    assert np.std(error) / 10 < 0.02


def test_optional_dark_subtraction_runs_and_changes_little(small_simulation, tmp_path, instrument, fields, pipeline_config):
    import dataclasses

    paths, _ = small_simulation
    lake = LakePaths(tmp_path / "lake")
    run_inventory(paths.raw, lake, instrument=instrument, fields=fields, config=pipeline_config.inventory, progress=False)
    plain = calibrate_nights(lake, telescopes=["MST2"], instrument=instrument, cfg=pipeline_config.calibration, progress=False)
    before = cubes.open_store(plain[0].cubes[0]).image.values.copy()
    with_dark = calibrate_nights(lake, telescopes=["MST2"], instrument=instrument, cfg=dataclasses.replace(pipeline_config.calibration, subtract_dark=True), force=True, progress=False)
    after = cubes.open_store(with_dark[0].cubes[0]).image.values
    assert not with_dark[0].failed
    # 0.002 e-/s x 60 s is 0.5 ADU of dark per pixel: hot pixels aside, the frames barely move
    assert abs(np.median(after - before)) < 1.0
