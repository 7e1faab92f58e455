"""The DuckLake archive: atomic, idempotent night commits; snapshots for readers; immutable releases."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from mstlake.config import ArchiveConfig
from mstlake.lake import healpix
from mstlake.lake.archive import Archive, ArchiveError
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema

CFG = ArchiveConfig(partition_order=9, lock_timeout_s=30.0)


def night_of_forced(night: int, n_objects: int = 400, frames_per_night: int = 3, seed: int = 0):
    """Forced photometry of ``n_objects`` stars in a 1-degree field on a night's frames."""
    rng = np.random.default_rng(seed)
    ra, dec = 150 + rng.uniform(-0.5, 0.5, n_objects), 2 + rng.uniform(-0.5, 0.5, n_objects)
    index = healpix.spatial_index(ra, dec)
    frame_ids = night * 100 + np.arange(frames_per_night)
    n = n_objects * frames_per_night
    rng_night = np.random.default_rng(seed + night)
    flux = 1e4 * (1 + 0.01 * rng_night.normal(size=n))
    return load_schema("forced").from_columns({
        "_healpix_29": np.tile(index, frames_per_night),
        "healpix_partition": healpix.parent_pixel(np.tile(index, frames_per_night), CFG.partition_order).astype(np.int32),
        "object_id": np.tile(np.arange(n_objects), frames_per_night),
        "frame_id": np.repeat(frame_ids, n_objects),
        "mjd": np.repeat(60000.0 + night + 0.01 * np.arange(frames_per_night), n_objects),
        "band": np.full(n, "g"),
        "flux": flux.astype(np.float32),
        "flux_err": np.full(n, 100.0, np.float32),
        "mag": (25 - 2.5 * np.log10(flux)).astype(np.float32),
        "mag_err": np.full(n, 0.011, np.float32),
        "mag_magfit": np.full(n, np.nan, np.float32),
        "flag": np.zeros(n, np.int32),
    })


def count(archive: Archive, release: str | None = None) -> tuple[int, int]:
    con = archive.reader(release)
    try:
        return con.execute("SELECT count(*), count(DISTINCT frame_id) FROM lake.forced").fetchone()
    finally:
        con.close()


def test_a_night_commits_once_and_a_rerun_adds_nothing(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    first = archive.commit({"forced": night_of_forced(1)}, message="night 1")
    assert first.rows_added == {"forced": 1200} and first.snapshot_id is not None
    again = archive.commit({"forced": night_of_forced(1)}, message="night 1 again")
    assert again.rows_added == {"forced": 0} and again.frames_skipped == 3 and again.snapshot_id is None
    assert count(archive) == (1200, 3)


def test_data_files_are_healpix_partitioned_sorted_and_never_rewritten(tmp_path):
    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    archive.commit({"forced": night_of_forced(1)}, message="night 1")
    before = {p: p.stat().st_mtime_ns for p in paths.archive_data.rglob("*.parquet")}
    archive.commit({"forced": night_of_forced(2)}, message="night 2")
    after = {p: p.stat().st_mtime_ns for p in paths.archive_data.rglob("*.parquet")}
    assert set(before) < set(after) and all(after[p] == t for p, t in before.items())
    for path in after:
        table = pq.read_table(path)
        pixel = int(path.parent.name.split("=")[1])
        index = table.column("_healpix_29").to_numpy()
        assert (healpix.parent_pixel(index, CFG.partition_order) == pixel).all()
        assert (np.diff(index) >= 0).all()
    # a position query prunes to the files of its pixels
    con = archive.reader()
    lo = int(healpix.spatial_index([150.0], [2.0])[0]) >> 40 << 40
    plan = "\n".join(row[1] for row in con.execute(f"EXPLAIN ANALYZE SELECT count(*) FROM lake.forced WHERE _healpix_29 BETWEEN {lo} AND {lo + (1 << 40)}").fetchall())
    con.close()
    read = int(plan.split("Total Files Read:")[1].split()[0])
    assert 0 < read < len(after) / 4


def test_a_release_stays_as_it_was_after_later_nights(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    archive.commit({"forced": night_of_forced(1)}, message="night 1")
    archive.release("DR1", note="first night")
    archive.commit({"forced": night_of_forced(2)}, message="night 2")
    assert count(archive, "DR1") == (1200, 3)
    assert count(archive) == (2400, 6)
    with pytest.raises(ArchiveError, match="immutable"):
        archive.release("DR1")
    with pytest.raises(ArchiveError, match="no release 'DR9'"):
        archive.reader("DR9")
    con = archive.reader("DR1")
    with pytest.raises(Exception, match="(?i)read.only"):
        con.execute("INSERT INTO lake.forced SELECT * FROM lake.forced LIMIT 1")
    con.close()


WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_archive import night_of_forced, CFG
    from mstlake.lake.archive import Archive
    from mstlake.paths import LakePaths
    archive = Archive(LakePaths(Path({lake!r})), CFG)
    original = Archive._append
    def append_then(self, con, name, table):
        result = original(self, con, name, table)
        if {mode!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # the rows are written, the COMMIT never comes
        print("WRITTEN", flush=True)
        sys.stdin.readline()  # hold the transaction open until told
        return result
    Archive._append = append_then
    archive.commit({{"forced": night_of_forced(2)}}, message="night 2")
    print("COMMITTED", flush=True)
""")


def writer_process(lake, mode):
    code = WRITER.format(tests=os.path.dirname(__file__), lake=str(lake), mode=mode)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_writer_killed_before_its_commit_leaves_the_last_snapshot_and_no_files(tmp_path):
    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    archive.commit({"forced": night_of_forced(1)}, message="night 1")
    files_before = set(paths.archive_data.rglob("*.parquet"))
    writer = writer_process(paths.root, "kill")
    writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL
    assert set(paths.archive_data.rglob("*.parquet")) > files_before  # it did write data files
    assert count(archive) == (1200, 3)  # ... that no reader sees
    # the next writer removes them and commits the night as if nothing had happened
    archive.commit({"forced": night_of_forced(2)}, message="night 2, again")
    clean = Archive(LakePaths(tmp_path / "clean"), CFG)
    for night in (1, 2):
        clean.commit({"forced": night_of_forced(night)}, message=f"night {night}")
    assert count(archive) == count(clean) == (2400, 6)
    checksum = "SELECT sum(hash(object_id, frame_id, flux)) FROM lake.forced"
    con_a, con_b = archive.reader(), clean.reader()
    assert con_a.execute(checksum).fetchone() == con_b.execute(checksum).fetchone()
    con_a.close(), con_b.close()
    tracked = {row[0] for row in archive.reader().execute("SELECT data_file FROM ducklake_list_files('lake', 'forced')").fetchall()}
    assert {str(p) for p in paths.archive_data.rglob("*.parquet")} == tracked


def test_readers_in_another_process_see_only_committed_nights(tmp_path):
    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    archive.commit({"forced": night_of_forced(1)}, message="night 1")
    writer = writer_process(paths.root, "hold")
    try:
        assert writer.stdout.readline().strip() == "WRITTEN"  # night 2 written, not committed
        reader = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from pathlib import Path
            from mstlake.lake.archive import connect
            from mstlake.paths import LakePaths
            con = connect(LakePaths(Path({str(paths.root)!r})), read_only=True)
            print(con.execute("SELECT count(*) FROM lake.forced").fetchone()[0])
        """)], capture_output=True, text=True, timeout=120)
        assert reader.stdout.strip() == "1200", reader.stderr
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "COMMITTED"
    finally:
        writer.kill()
        writer.communicate()
    assert count(archive) == (2400, 6)


def test_a_wrong_table_or_an_unwritable_lake_says_so(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    with pytest.raises(ArchiveError, match="not archive tables"):
        archive.commit({"sources": night_of_forced(1)}, message="x")
    with pytest.raises(ArchiveError, match="nothing has been committed"):
        archive.reader()
    # a lake where the archive's directory cannot be made (here: a file is in the way)
    blocked = LakePaths(tmp_path / "blocked")
    blocked.root.mkdir()
    blocked.archive_dir.write_text("not a directory")
    with pytest.raises(ArchiveError, match="cannot write to the archive"):
        Archive(blocked, CFG).commit({"forced": night_of_forced(1)}, message="x")
