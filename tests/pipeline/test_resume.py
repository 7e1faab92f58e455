"""Re-runs of the measurement stage (issue 7): what is committed is not measured again, a frame that
raises is recorded and retried, and an ingest killed anywhere ends, run again, where an unbroken
one does."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mstlake.lake.tables import read_table
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema
from tests.digest import lake_digest


def _measure(lake, paths, field, instrument, pipeline_config, **options):
    from mstlake.lake.refcat import load_reference
    from mstlake.pipeline.static import measure_field

    reference = load_reference(field, lake, base=paths.raw)
    astrometry = dataclasses.replace(pipeline_config.astrometry, scheduler="synchronous")  # in this process: the monkeypatch holds
    return measure_field(lake, "f02", reference, instrument=instrument, astrometry_cfg=astrometry, photometry_cfg=pipeline_config.photometry, archive_cfg=pipeline_config.archive, magfit_cfg=pipeline_config.magfit, progress=False, **options)


def test_a_second_run_measures_nothing_and_force_measures_everything_again(solved_lake, instrument, pipeline_config, tmp_path):
    paths, lake, field, first = solved_lake
    copy = LakePaths(tmp_path / "lake")
    shutil.copytree(lake.root, copy.root)
    before = lake_digest(copy)
    again = _measure(copy, paths, field, instrument, pipeline_config)
    assert again.nights == [] and again.skipped == len(copy.field_cubes("f02")) >= 2
    forced = _measure(copy, paths, field, instrument, pipeline_config, force=True)
    assert forced.skipped == 0 and sum(n["frames"] for n in forced.nights) == sum(n["frames"] for n in first.nights)
    # replaced in the archive; more points than the first run, which knew fewer new objects when each night began
    assert sum(n["points"] for n in forced.nights) >= sum(n["points"] for n in first.nights)
    after = lake_digest(copy)
    assert after["archive duplicates"] == 0 and after["archive frames"] == before["archive frames"]
    for name in ("astrometry", "visible files"):
        assert after[name] == before[name], name


def test_a_frame_that_raises_is_recorded_the_night_goes_on_and_retry_failed_measures_it(solved_lake, instrument, pipeline_config, tmp_path, monkeypatch):
    import mstlake.pipeline.static as static
    from mstlake.lake.archive import open_reader

    paths, lake, field, _ = solved_lake
    copy = LakePaths(tmp_path / "lake")
    shutil.copytree(lake.root, copy.root)
    for item in [copy.astrometry_table, copy.photometry_table, copy.archive_dir, copy.sources_dir, copy.forced_dir]:
        shutil.rmtree(item) if Path(item).is_dir() else Path(item).unlink()
    victim = int(read_table(lake.photometry_table, load_schema("photometry")).column("frame_id")[0].as_py())
    measure = static.photometer_frame

    def flaky(image, *args, **kwargs):
        if kwargs["forced_extra"] is not None and _frame_of(image, copy) == victim:
            raise MemoryError("simulated failure")
        return measure(image, *args, **kwargs)

    monkeypatch.setattr(static, "photometer_frame", flaky)
    broken = _measure(copy, paths, field, instrument, pipeline_config)
    photometry = read_table(copy.photometry_table, load_schema("photometry")).to_pandas().set_index("frame_id")
    assert photometry.status[victim] == "failed" and photometry.reason[victim] == "MemoryError: simulated failure"
    assert (photometry.drop(index=victim).status == "calibrated").all()  # the night went on
    assert len(broken.nights) == len(lake.field_cubes("f02"))
    monkeypatch.setattr(static, "photometer_frame", measure)
    assert _measure(copy, paths, field, instrument, pipeline_config).nights == []  # a plain re-run leaves it
    retried = _measure(copy, paths, field, instrument, pipeline_config, retry_failed=True)
    assert sum(n["frames"] for n in retried.nights) == 1 and retried.calibrated == 1
    con = open_reader(copy)
    rows = con.execute(f"SELECT status FROM lake.frames WHERE frame_id = {victim}").fetchall()
    points = con.execute(f"SELECT count(*) FROM lake.forced WHERE frame_id = {victim}").fetchone()[0]
    con.close()
    assert rows == [("calibrated",)] and points > 100
    # as if it had never failed, but for the objects found after its night (measured on it now)
    retried_digest, original = lake_digest(copy), lake_digest(lake)
    differing = [name for name in original if retried_digest[name] != original[name]]
    assert set(differing) <= {"photometry", "forced_photometry", "archive forced"}, differing
    library_points = "SELECT count(*), sum(flux) FROM lake.forced WHERE object_id < 9000000000000000000"
    (count, flux), (count_retried, flux_retried) = _query(lake, library_points), _query(copy, library_points)
    assert count == count_retried and flux_retried == pytest.approx(flux, rel=1e-4)  # fitted with those objects' light modelled too


def _query(lake: LakePaths, sql: str) -> tuple:
    from mstlake.lake.archive import open_reader

    con = open_reader(lake)
    try:
        return tuple(round(float(v), 2) for v in con.execute(sql).fetchone())
    finally:
        con.close()


def _frame_of(image, lake: LakePaths) -> int | None:
    """The frame of a cube whose pixels these are (the kernel is handed arrays, not ids)."""
    from mstlake.lake import cubes

    for *_, store in lake.field_cubes("f02"):
        cube = cubes.open_store(store)
        for index, frame_id in enumerate(cube.frame_id.values):
            if np.array_equal(cube.image.isel(frame=index).values, image, equal_nan=True):
                return int(frame_id)
    return None


def _read_while_running(run: subprocess.Popen, lake: LakePaths, *, frames_per_night: int) -> set[int]:
    """Query the archive over and over while ``run`` ingests into it; every snapshot must hold whole
    nights (each frame's row with its light-curve points). Returns the frame counts seen."""
    import duckdb

    from mstlake.lake.archive import ArchiveError, open_reader

    seen = set()
    while run.poll() is None:
        try:
            con = open_reader(lake)
        except ArchiveError:  # nothing committed yet
            time.sleep(0.2)
            continue
        try:
            frames = con.execute("SELECT frame_id, night, status FROM lake.frames").df()
            measured = {row[0] for row in con.execute("SELECT DISTINCT frame_id FROM lake.forced").fetchall()}
        except duckdb.CatalogException:  # the first writer is still creating the tables
            continue
        finally:
            con.close()
        assert frames.groupby("night").size().eq(frames_per_night).all() and not frames.frame_id.duplicated().any()
        assert set(frames.frame_id[frames.status == "calibrated"]) <= measured
        seen.add(len(frames))
        time.sleep(0.2)
    return seen


def _ingest(raw: Path, lake: Path, cwd: Path) -> subprocess.Popen:
    log = open(lake.with_suffix(".log"), "ab")  # noqa: SIM115 (the child writes it; closed when the child ends)
    with log:
        return subprocess.Popen([sys.executable, "-m", "mstlake.cli", "ingest", "--field", "f02", "--raw", str(raw), "--lake", str(lake), "--quiet"], cwd=cwd, stdout=log, stderr=log, start_new_session=True)


@pytest.mark.parametrize("seed", [3])
def test_an_ingest_killed_at_random_points_ends_where_an_unbroken_one_does(tmp_path, seed):
    """SIGKILL (the whole process group: local-scheduler worker processes too) at random moments,
    then a run to the end: the same tables, archive, cubes and files as one run never stopped."""
    from click.testing import CliRunner

    from mstlake.cli import main

    sim = CliRunner().invoke(main, ["simulate", "--nights", "2", "--frames-per-night", "2", "--telescopes", "MST2", "--scale", "0.06", "--seed", "8", "--out", str(tmp_path / "raw" / "f02")])
    assert sim.exit_code == 0, sim.output
    raw = tmp_path / "raw" / "f02"
    started = time.perf_counter()
    unbroken = _ingest(raw, tmp_path / "unbroken", tmp_path)
    seen = _read_while_running(unbroken, LakePaths(tmp_path / "unbroken"), frames_per_night=2)
    assert unbroken.wait(timeout=600) == 0, (tmp_path / "unbroken.log").read_text()
    duration = time.perf_counter() - started
    assert seen >= {2, 4}  # a reader in this process saw each night arrive whole, and only whole
    rng = np.random.default_rng(seed)
    kills = 0
    for moment in sorted(rng.uniform(0.15, 0.95, 3) * duration):
        run = _ingest(raw, tmp_path / "killed", tmp_path)
        time.sleep(moment)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            kills += 1
        run.wait(timeout=60)
    assert kills >= 2
    last = _ingest(raw, tmp_path / "killed", tmp_path)
    assert last.wait(timeout=600) == 0, (tmp_path / "killed.log").read_text()
    expected = lake_digest(LakePaths(tmp_path / "unbroken"))
    assert expected["archive forced"][0] > 1000 and expected["archive duplicates"] == 0
    assert lake_digest(LakePaths(tmp_path / "killed")) == expected


def test_a_worker_killed_mid_night_changes_nothing(solved_lake, instrument, pipeline_config, tmp_path):
    """On a 2-worker local cluster, one worker process is SIGKILLed while it measures a frame: the
    scheduler runs its tasks again elsewhere and the lake ends as the local schedulers left it."""
    import threading

    from mstlake.pipeline.execute import cluster

    paths, lake, field, _ = solved_lake
    copy = LakePaths(tmp_path / "lake")
    shutil.copytree(lake.root, copy.root)
    for item in [copy.astrometry_table, copy.photometry_table, copy.archive_dir, copy.sources_dir, copy.forced_dir]:
        shutil.rmtree(item) if Path(item).is_dir() else Path(item).unlink()
    with cluster(workers=2) as client:
        outcome = {}
        run = threading.Thread(target=lambda: outcome.update(result=_measure(copy, paths, field, instrument, pipeline_config)))
        run.start()
        deadline, killed = time.monotonic() + 120, None
        while killed is None and time.monotonic() < deadline and run.is_alive():
            busy = [address for address, keys in client.processing().items() if any("static-frame" in str(k) for k in keys)]
            if busy:
                killed = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        run.join(timeout=600)
    assert killed is not None and "result" in outcome
    assert lake_digest(copy) == lake_digest(lake)


def test_a_full_disk_during_a_nights_commit_is_a_clear_error_and_the_last_snapshot_stays(tmp_path, monkeypatch):
    """The archive's disk fills while the second night's light-curve points are written: ingest
    stops with a message that says so (exit 2), the first night stays committed, nothing of the
    second is visible, and the run after the disk is freed resumes."""
    import duckdb
    from click.testing import CliRunner

    from mstlake.cli import main
    from mstlake.lake.archive import Archive, open_reader
    from mstlake.paths import config_dir

    monkeypatch.chdir(tmp_path)
    sim = CliRunner().invoke(main, ["simulate", "--nights", "2", "--frames-per-night", "1", "--telescopes", "MST2", "--scale", "0.06", "--seed", "6", "--out", str(tmp_path / "raw" / "f02")])
    assert sim.exit_code == 0, sim.output
    config = tmp_path / "config"
    shutil.copytree(config_dir(), config)
    toml = config / "pipeline.toml"
    toml.write_text(toml.read_text().replace('scheduler = "processes"', 'scheduler = "synchronous"').replace('scheduler = "threads"', 'scheduler = "synchronous"'))  # in this process: the monkeypatch holds
    insert = Archive._insert_sorted
    forced_writes = []

    def filling_disk(self, con, name, source):
        if name == "forced":
            forced_writes.append(name)
            if len(forced_writes) == 2:
                raise duckdb.IOException('Could not write file "ducklake-0193.parquet": No space left on device')
        return insert(self, con, name, source)

    monkeypatch.setattr(Archive, "_insert_sorted", filling_disk)
    stopped = CliRunner().invoke(main, ["ingest", "--field", "f02", "--quiet", "--config-dir", str(config)])
    assert stopped.exit_code == 2, stopped.output
    assert "No space left on device" in stopped.output and "run ingest again" in stopped.output
    lake = LakePaths(tmp_path / "lake")
    con = open_reader(lake)
    nights = con.execute("SELECT DISTINCT night FROM lake.frames").fetchall()
    points = con.execute("SELECT count(*) FROM lake.forced").fetchone()[0]
    con.close()
    assert nights == [(20230118,)] and points > 0
    monkeypatch.setattr(Archive, "_insert_sorted", insert)
    resumed = CliRunner().invoke(main, ["ingest", "--field", "f02", "--quiet", "--config-dir", str(config)])
    assert resumed.exit_code == 0, resumed.output
    digest = lake_digest(lake)
    assert digest["archive frames"][0] == 2 and digest["archive duplicates"] == 0 and digest["photometry"][0] == 2
