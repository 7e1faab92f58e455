import gzip
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from mstlake.lake import tables
from mstlake.paths import LakePaths
from mstlake.pipeline.inventory import run_inventory
from tests.conftest import read_truth_frames

BAD_KIND_TO_CODE = {
    "truncated": "truncated",
    "not_fits": "not_fits",
    "missing_date_obs": "missing_keyword",
    "wrong_shape": "wrong_shape",
    "all_zero": "all_zero",
    "duplicate": "duplicate",
    "dome_closed": "no_light",
}


def _run(raw, lake, instrument, fields, inventory_config):
    return run_inventory(raw, lake, instrument=instrument, fields=fields, config=inventory_config, progress=False)


def _hashes(root: Path):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inventoried(small_simulation, tmp_path_factory, instrument, fields, inventory_config):
    paths, _ = small_simulation
    lake = LakePaths(tmp_path_factory.mktemp("lake"))
    before = _hashes(paths.raw)
    report = _run(paths.raw, lake, instrument, fields, inventory_config)
    return paths, lake, report, before


def test_every_good_frame_is_in_frames_with_the_right_type(inventoried):
    paths, lake, report, _ = inventoried
    truth = read_truth_frames(paths)
    good = truth[truth.kind.isin(["bias", "dark", "flat", "science"])]
    frames = pq.read_table(lake.frames_table).to_pandas()
    assert len(frames) == len(good) == report.total_frames
    by_path = frames.set_index(frames.path.map(lambda p: str(Path(p).relative_to(paths.raw.resolve()))))
    for row in good.itertuples():
        frame = by_path.loc[row.file]
        assert frame.type == row.kind
        assert frame.telescope == row.telescope and frame.band == row.band and frame.night == row.night
        assert frame.mjd == pytest.approx(row.mjd, abs=2e-5)  # DATE-OBS is written to the second by MaxIm
        assert frame.exptime == row.exptime


def test_every_bad_input_is_quarantined_with_its_reason(inventoried):
    paths, lake, report, _ = inventoried
    truth = read_truth_frames(paths)
    bad = truth[truth.kind.isin(list(BAD_KIND_TO_CODE))]
    assert set(bad.kind) == set(BAD_KIND_TO_CODE)
    quarantine = pq.read_table(lake.quarantine_table).to_pandas()
    codes = dict(zip(quarantine.path.map(lambda p: str(Path(p).relative_to(paths.raw.resolve()))), quarantine.reason_code))
    for row in bad.itertuples():
        assert codes[row.file] == BAD_KIND_TO_CODE[row.kind], row.file
    assert len(quarantine) == len(bad)
    assert all(len(reason) > 20 for reason in quarantine.reason)
    duplicate = quarantine[quarantine.reason_code == "duplicate"].iloc[0]
    assert Path(duplicate.duplicate_of).read_bytes() == Path(duplicate.path).read_bytes()


def test_science_frames_get_field_pointing_airmass_and_night(inventoried, instrument):
    paths, lake, _, _ = inventoried
    frames = pq.read_table(lake.frames_table).to_pandas()
    science = frames[frames.type == "science"]
    assert set(science.field) == {"f02"}
    assert science.airmass.between(1.0, 2.1).all()
    # MaxIm (MST1) writes no AIRMASS: computed; N.I.N.A. (MST2) writes it
    assert set(science[science.telescope == "MST1"].airmass_source) == {"computed"}
    assert set(science[science.telescope == "MST2"].airmass_source) == {"header"}
    assert set(science[science.telescope == "MST1"].pointing_source) == {"OBJCTRA/OBJCTDEC"}
    assert (science.egain == instrument.detector.gain_e_per_adu).all() and (science.gain_setting == 100).all()
    truth = read_truth_frames(paths)
    truth_airmass = truth[truth.kind == "science"].set_index("file").airmass
    for row in science.itertuples():
        rel = str(Path(row.path).relative_to(paths.raw.resolve()))
        # the header pointing is off by arcminutes, so the airmass agrees to ~1%
        assert row.airmass == pytest.approx(truth_airmass[rel], rel=0.02)


def test_frame_ids_are_content_hashes(inventoried):
    _, lake, _, _ = inventoried
    frames = pq.read_table(lake.frames_table).to_pandas()
    assert frames.frame_id.is_unique and (frames.frame_id > 0).all()
    for row in frames.head(5).itertuples():
        assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256
        assert row.frame_id == int(row.sha256[:16], 16) >> 1


def test_raw_files_are_never_touched(inventoried):
    paths, _, _, before = inventoried
    assert _hashes(paths.raw) == before


def test_rerun_adds_nothing_and_reads_nothing(inventoried, instrument, fields, inventory_config):
    paths, lake, report, _ = inventoried
    frames_before = pq.read_table(lake.frames_table)
    quarantine_before = pq.read_table(lake.quarantine_table)
    again = _run(paths.raw, lake, instrument, fields, inventory_config)
    assert (again.files_read, again.new_frames, again.new_quarantined) == (0, 0, 0)
    assert pq.read_table(lake.frames_table).equals(frames_before)
    assert pq.read_table(lake.quarantine_table).equals(quarantine_before)


def test_new_files_are_added_incrementally(small_simulation, tmp_path, instrument, fields, inventory_config):
    paths, _ = small_simulation
    raw = tmp_path / "raw"
    files = sorted(p for p in paths.raw.rglob("*.fit*") if "MST2" in p.parts)
    first, second = files[: len(files) // 2], files[len(files) // 2 :]
    for p in first:
        (raw / p.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, raw / p.name)
    lake = LakePaths(tmp_path / "lake")
    one = _run(raw, lake, instrument, fields, inventory_config)
    for p in second:
        shutil.copy2(p, raw / p.name)
    two = _run(raw, lake, instrument, fields, inventory_config)
    assert two.files_read == len(second)
    assert one.total_frames + one.total_quarantined + two.new_frames + two.new_quarantined == len(files)


def test_compressed_and_alternative_extensions(small_simulation, tmp_path, instrument, fields, inventory_config):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    science = truth[(truth.kind == "science") & (truth.telescope == "MST2")].file.tolist()[:3]
    raw = tmp_path / "raw"
    raw.mkdir()
    data = [(paths.raw / f).read_bytes() for f in science]
    (raw / "a.fits.gz").write_bytes(gzip.compress(data[0]))
    with fits.open(io.BytesIO(data[1])) as hdul:
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(hdul[0].data, header=hdul[0].header, compression_type="RICE_1")]).writeto(buffer)
    (raw / "b.FITS.FZ").write_bytes(buffer.getvalue())
    (raw / "c.fts").write_bytes(data[2])
    (raw / "notes.txt").write_text("not a frame")
    report = _run(raw, LakePaths(tmp_path / "lake"), instrument, fields, inventory_config)
    assert report.files_seen == 3 and report.new_frames == 3
    frames = pq.read_table(LakePaths(tmp_path / "lake").frames_table).to_pandas().set_index("path")
    assert frames.loc[str(raw / "a.fits.gz"), "compression"] == "gzip"
    assert frames.loc[str(raw / "b.FITS.FZ"), "compression"] == "fpack"
    assert (frames.type == "science").all()


def test_band_mismatch_and_unknown_telescope_are_quarantined(small_simulation, tmp_path, instrument, fields, inventory_config):
    paths, _ = small_simulation
    truth = read_truth_frames(paths)
    source = paths.raw / truth[(truth.kind == "science") & (truth.telescope == "MST2")].file.iloc[0]
    raw = tmp_path / "raw"
    raw.mkdir()
    with fits.open(source) as hdul:
        image, header = hdul[0].data, hdul[0].header
        fits.PrimaryHDU(image, header=header).writeto(raw / "good.fits")
        h = header.copy()
        h["FILTER"] = "r"
        fits.PrimaryHDU(image, header=h).writeto(raw / "wrong_filter.fits")
        h = header.copy()
        h["TELESCOP"] = "Celestron 8"
        fits.PrimaryHDU(image + np.uint16(1), header=h).writeto(raw / "other_scope.fits")
    report = _run(raw, LakePaths(tmp_path / "lake"), instrument, fields, inventory_config)
    codes = {Path(p).name: code for p, code, _ in report.quarantine_reasons}
    assert codes == {"wrong_filter.fits": "band_mismatch", "other_scope.fits": "unknown_telescope"}
    assert report.new_frames == 1


def test_failed_table_write_leaves_previous_table_intact(inventoried, tmp_path, monkeypatch, instrument, fields, inventory_config):
    paths, lake, _, _ = inventoried
    copy = LakePaths(tmp_path / "lake")
    shutil.copytree(lake.root, copy.root)
    before = pq.read_table(copy.frames_table)
    extra = tmp_path / "extra"
    extra.mkdir()
    src = next(p for p in paths.raw.rglob("*LIGHT*.fits") if "_" in p.stem)
    with fits.open(src) as hdul:
        fits.PrimaryHDU(hdul[0].data + np.uint16(3), header=hdul[0].header).writeto(extra / "new.fits")

    def exploding_write(table, where, **kwargs):
        Path(where).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tables.pq, "write_table", exploding_write)
    with pytest.raises(tables.LakeWriteError, match="No space left on device"):
        _run(extra, copy, instrument, fields, inventory_config)
    monkeypatch.undo()
    assert pq.read_table(copy.frames_table).equals(before)
    assert not list(copy.tables_dir.glob(".*.tmp"))


def test_missing_raw_directory_is_a_clear_error(tmp_path, instrument, fields, inventory_config):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(tmp_path / "nowhere", LakePaths(tmp_path / "lake"), instrument, fields, inventory_config)
