"""The DuckLake archive: atomic, idempotent night commits; snapshots for readers; immutable releases."""

import os
import signal
import subprocess
import sys
import textwrap

import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mstlake.config import ArchiveConfig
from mstlake.lake import healpix
from mstlake.lake.archive import NEW_OBJECT_BASE, Archive, ArchiveError
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema

CFG = ArchiveConfig(partition_order=7, lock_timeout_s=30.0)  # 27.5' pixels: several in the test field, few files per commit


FIELD = (150.0, 2.0)
N_LIBRARY = 400
TRANSIENT = (150.2, 2.1)  # a new object: detected on the first frame of every night, in no library


def library(n_objects: int = N_LIBRARY, seed: int = 0) -> pa.Table:
    """Reference stars in a 1-degree field; the last few sit on a partition edge (see ``edge_pairs``)."""
    rng = np.random.default_rng(seed)
    ra, dec = FIELD[0] + rng.uniform(-0.5, 0.5, n_objects), FIELD[1] + rng.uniform(-0.5, 0.5, n_objects)
    edge_ra, edge_dec, _, _ = edge_pairs()
    ra[-len(edge_ra):], dec[-len(edge_ra):] = edge_ra, edge_dec
    return pa.table({"source_id": np.arange(1000, 1000 + n_objects, dtype=np.int64), "ra": ra, "dec": dec, "mag_g": 12 + 6 * rng.random(n_objects)})


def edge_pairs(n: int = 4):
    """Star positions 0.3" inside one partition pixel and their detections 0.3" across the edge in
    the neighbouring pixel."""
    order = CFG.partition_order
    pixel = int(healpix.parent_pixel(healpix.spatial_index([FIELD[0]], [FIELD[1]]), order)[0])
    corners = hp.boundaries(2**order, pixel, step=1, nest=True).T  # 4 corner vectors
    star, detection = [], []
    for k in range(n):
        a, b = corners[k % 4], corners[(k + 1) % 4]
        middle = (a + b) / np.linalg.norm(a + b)
        centre = hp.pix2vec(2**order, pixel, nest=True)
        inward = centre - middle * np.dot(centre, middle)
        inward /= np.linalg.norm(inward)
        step = np.deg2rad(0.3 / 3600)
        star.append(middle + step * inward)
        detection.append(middle - step * inward)
    star_ra, star_dec = hp.vec2ang(np.array(star), lonlat=True)
    det_ra, det_dec = hp.vec2ang(np.array(detection), lonlat=True)
    return star_ra, star_dec, det_ra, det_dec


def schema_rows(name: str, n: int, **columns) -> pa.Table:
    """``n`` rows of a schema: the given columns, zeros / empty strings / empty lists elsewhere."""
    schema = load_schema(name)
    filled = {}
    for column in schema.columns:
        if column.name in columns:
            filled[column.name] = columns[column.name]
        elif column.type == "string":
            filled[column.name] = np.full(n, "")
        elif column.type.startswith("list"):
            filled[column.name] = [[] for _ in range(n)]
        elif column.type.startswith("timestamp"):
            filled[column.name] = pa.nulls(n, pa.timestamp("us", tz="UTC")) if column.nullable else np.zeros(n, "datetime64[us]")
        elif column.type == "bool":
            filled[column.name] = np.zeros(n, bool)
        else:
            filled[column.name] = np.zeros(n)
    return schema.from_columns(filled)


def night_tables(night: int, frames_per_night: int = 3, seed: int = 0, variable: int = 1000) -> dict[str, pa.Table]:
    """A night's ``frames``, ``sources`` and ``forced`` for the library stars (constant, except
    ``variable`` which swings by 0.3 mag), plus the transient's detection on the first frame."""
    stars = library(seed=seed)
    ra, dec, ids = stars.column("ra").to_numpy(), stars.column("dec").to_numpy(), stars.column("source_id").to_numpy()
    _, _, edge_ra, edge_dec = edge_pairs()
    n_objects = len(ids)
    index = healpix.spatial_index(ra, dec)
    frame_ids = night * 100 + np.arange(frames_per_night)
    mjd = 60000.0 + night + 0.01 * np.arange(frames_per_night)
    n = n_objects * frames_per_night
    rng = np.random.default_rng(seed + night)
    flux = 1e4 * (1 + 0.01 * rng.normal(size=n))
    flux[np.tile(ids, frames_per_night) == variable] *= 10 ** (-0.4 * 0.3 * np.sin(night + np.arange(frames_per_night)))
    mag = (25 - 2.5 * np.log10(flux)).astype(np.float32)
    forced = schema_rows(
        "forced", n, _healpix_29=np.tile(index, frames_per_night),
        healpix_partition=healpix.parent_pixel(np.tile(index, frames_per_night), CFG.partition_order).astype(np.int32),
        object_id=np.tile(ids, frames_per_night), frame_id=np.repeat(frame_ids, n_objects), mjd=np.repeat(mjd, n_objects), band=np.full(n, "g"),
        x=np.full(n, 100.0), y=np.full(n, 100.0), flux=flux.astype(np.float32), flux_err=np.full(n, 100.0, np.float32), mag=mag, mag_err=np.full(n, 0.011, np.float32),
        mag_magfit=np.full(n, np.nan, np.float32),
    )
    # detections: every star 0.1" from its position, the edge stars across their pixel's edge, the transient
    det_ra = np.tile(ra, frames_per_night) + rng.normal(0, 0.1 / 3600, n)
    det_dec = np.tile(dec, frames_per_night) + rng.normal(0, 0.1 / 3600, n)
    edge_rows = (np.arange(n) % n_objects) >= n_objects - len(edge_ra)
    det_ra[edge_rows], det_dec[edge_rows] = np.tile(edge_ra, frames_per_night), np.tile(edge_dec, frames_per_night)
    det_ra, det_dec = np.append(det_ra, TRANSIENT[0]), np.append(det_dec, TRANSIENT[1])
    det_frame, det_mjd, det_mag = np.append(np.repeat(frame_ids, n_objects), frame_ids[0]), np.append(np.repeat(mjd, n_objects), mjd[0]), np.append(mag, 17.0)
    det_index = healpix.spatial_index(det_ra, det_dec)
    m = len(det_ra)
    sources = schema_rows(
        "archive_sources", m, _healpix_29=det_index, healpix_partition=healpix.parent_pixel(det_index, CFG.partition_order).astype(np.int32),
        object_id=np.full(m, -1), frame_id=det_frame, mjd=det_mjd, band=np.full(m, "g"), ra=det_ra, dec=det_dec,
        mag_psf=det_mag, mag_psf_err=np.full(m, 0.011, np.float32), flux_ap=[[1.0]] * m, flux_ap_err=[[1.0]] * m,
    )
    frame_index = healpix.spatial_index(np.full(frames_per_night, FIELD[0]), np.full(frames_per_night, FIELD[1]))
    frames = schema_rows(
        "archive_frames", frames_per_night, _healpix_29=frame_index, healpix_partition=healpix.parent_pixel(frame_index, CFG.partition_order).astype(np.int32),
        frame_id=frame_ids, band=np.full(frames_per_night, "g"), night=np.full(frames_per_night, 20230100 + night), mjd=mjd, status=np.full(frames_per_night, "calibrated"),
    )
    return {"frames": frames, "sources": sources, "forced": forced}


def commit_night(archive: Archive, night: int, **kw):
    return archive.commit(night_tables(night, **kw), message=f"night {night}", library=library())


def count(archive: Archive, release: str | None = None) -> tuple[int, int]:
    con = archive.reader(release)
    try:
        return con.execute("SELECT count(*), count(DISTINCT frame_id) FROM lake.forced").fetchone()
    finally:
        con.close()


def test_a_night_commits_once_and_a_rerun_adds_nothing(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    first = commit_night(archive, 1)
    assert first.rows_added == {"frames": 3, "sources": 1201, "forced": 1200} and first.snapshot_id is not None
    assert first.new_objects == 1  # the transient
    again = commit_night(archive, 1)
    assert again.rows_added == {"frames": 0, "sources": 0, "forced": 0} and again.frames_skipped == 3 and again.snapshot_id is None
    assert count(archive) == (1200, 3)


def test_data_files_are_healpix_partitioned_sorted_and_never_rewritten(tmp_path):
    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    commit_night(archive, 1)
    before = {p: p.stat().st_mtime_ns for p in paths.archive_data.rglob("*.parquet")}
    commit_night(archive, 2)
    after = {p: p.stat().st_mtime_ns for p in paths.archive_data.rglob("*.parquet")}
    assert set(before) < set(after) and all(after[p] == t for p, t in before.items())
    partitioned = [path for path in after if path.parent.name.startswith("healpix_partition=")]
    assert len(partitioned) > len(after) / 2  # all but the object_index's files
    for path in partitioned:
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


def test_a_large_night_lands_sorted_in_one_file_per_partition(tmp_path):
    """400 000 points in random order over ~60 partitions: each partition gets one file, sorted
    (a multi-threaded partitioned write interleaves chunks out of order)."""
    rng = np.random.default_rng(3)
    n_stars, frames = 20_000, 20
    ra, dec = 150 + rng.uniform(-1.5, 1.5, n_stars), 2 + rng.uniform(-1.5, 1.5, n_stars)
    index = healpix.spatial_index(ra, dec)
    order = rng.permutation(n_stars * frames)
    n = order.size
    forced = schema_rows(
        "forced", n, _healpix_29=np.tile(index, frames)[order], healpix_partition=healpix.parent_pixel(np.tile(index, frames), CFG.partition_order).astype(np.int32)[order],
        object_id=np.tile(np.arange(n_stars), frames)[order], frame_id=np.repeat(np.arange(frames), n_stars)[order], mjd=np.repeat(60000.0 + np.arange(frames), n_stars)[order],
        band=np.full(n, "g"), flux=np.ones(n, np.float32), flux_err=np.ones(n, np.float32), mag=np.ones(n, np.float32), mag_err=np.ones(n, np.float32), mag_magfit=np.ones(n, np.float32),
    )
    paths = LakePaths(tmp_path / "lake")
    Archive(paths, CFG).commit({"forced": forced}, message="large", library=pa.table({"source_id": np.arange(n_stars), "ra": ra, "dec": dec}), refresh_objects=False)
    files = sorted((paths.archive_data / "main" / "forced").rglob("*.parquet"))
    pixels = [path.parent.name for path in files]
    assert len(set(pixels)) == len(pixels) > 30
    for path in files:
        key = pq.read_table(path, columns=["_healpix_29", "object_id", "mjd"]).to_pandas()
        assert key.equals(key.sort_values(["_healpix_29", "object_id", "mjd"]).reset_index(drop=True)), path


def test_a_release_stays_as_it_was_after_later_nights(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    commit_night(archive, 1)
    archive.release("DR1", note="first night")
    commit_night(archive, 2)
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
    from test_archive import commit_night, CFG
    from mstlake.lake.archive import Archive
    from mstlake.paths import LakePaths
    archive = Archive(LakePaths(Path({lake!r})), CFG)
    original = Archive._insert_sorted
    held = []
    def append_then(self, con, name, source):
        result = original(self, con, name, source)
        if {mode!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # the rows are written, the COMMIT never comes
        if not held:
            held.append(name)
            print("WRITTEN", flush=True)
            sys.stdin.readline()  # hold the transaction open until told
        return result
    Archive._insert_sorted = append_then
    commit_night(archive, 2)
    print("COMMITTED", flush=True)
""")


def writer_process(lake, mode):
    code = WRITER.format(tests=os.path.dirname(__file__), lake=str(lake), mode=mode)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_writer_killed_before_its_commit_leaves_the_last_snapshot_and_no_files(tmp_path):
    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    commit_night(archive, 1)
    files_before = set(paths.archive_data.rglob("*.parquet"))
    writer = writer_process(paths.root, "kill")
    writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL
    assert set(paths.archive_data.rglob("*.parquet")) > files_before  # it did write data files
    assert count(archive) == (1200, 3)  # ... that no reader sees
    # the next writer removes them and commits the night as if nothing had happened
    commit_night(archive, 2)
    clean = Archive(LakePaths(tmp_path / "clean"), CFG)
    for night in (1, 2):
        commit_night(clean, night)
    assert count(archive) == count(clean) == (2400, 6)
    checksum = "SELECT sum(hash(object_id, frame_id, flux)) FROM lake.forced"
    con_a, con_b = archive.reader(), clean.reader()
    assert con_a.execute(checksum).fetchone() == con_b.execute(checksum).fetchone()
    con_a.close(), con_b.close()
    # every file on disk is one the catalogue knows (in some snapshot: time travel keeps replaced ones)
    con = archive.reader()
    known = "SELECT path FROM __ducklake_metadata_lake.ducklake_data_file UNION ALL SELECT path FROM __ducklake_metadata_lake.ducklake_delete_file"
    tracked = {os.path.basename(row[0]) for row in con.execute(known).fetchall()}
    con.close()
    assert {p.name for p in paths.archive_data.rglob("*.parquet")} == tracked


def test_readers_in_another_process_see_only_committed_nights(tmp_path):
    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    commit_night(archive, 1)
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
    with pytest.raises(ArchiveError, match="not night tables"):
        archive.commit({"objects": night_tables(1)["forced"]}, message="x")
    with pytest.raises(ArchiveError, match="nothing has been committed"):
        archive.reader()
    # a lake where the archive's directory cannot be made (here: a file is in the way)
    blocked = LakePaths(tmp_path / "blocked")
    blocked.root.mkdir()
    blocked.archive_dir.write_text("not a directory")
    with pytest.raises(ArchiveError, match="cannot write to the archive"):
        commit_night(Archive(blocked, CFG), 1)


def test_objects_are_seeded_associated_across_pixel_edges_and_new_ones_made(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    commit_night(archive, 1)
    second = commit_night(archive, 2)
    assert second.new_objects == 0  # the transient, seen again, joins its object
    con = archive.reader()
    objects = con.execute("SELECT * FROM lake.objects ORDER BY object_id").fetch_df().set_index("object_id")
    sources = con.execute("SELECT * FROM lake.sources").fetch_df()
    con.close()
    assert len(objects) == N_LIBRARY + 1 and objects.index.is_unique
    transient = objects.loc[NEW_OBJECT_BASE]
    assert pd.isna(transient.library_id)
    from mstlake.query import open_lake

    curve = open_lake(archive.paths.root).execute(f"SELECT * FROM lightcurve({NEW_OBJECT_BASE})").fetch_df()
    assert len(curve) == 2 and (curve.kind == "detection").all()  # no forced photometry yet: its detections
    assert transient.n_detections == 2 and abs(transient.ra - TRANSIENT[0]) < 1e-9 and abs(transient.dec - TRANSIENT[1]) < 1e-9
    # the edge stars' detections sit in the neighbouring partition, 0.6" away, and still join them
    star_ra, star_dec, det_ra, det_dec = edge_pairs()
    assert (healpix.parent_pixel(healpix.spatial_index(star_ra, star_dec), CFG.partition_order) != healpix.parent_pixel(healpix.spatial_index(det_ra, det_dec), CFG.partition_order)).all()
    edge_ids = library().column("source_id").to_numpy()[-len(star_ra):]
    on_edge = sources[sources.object_id.isin(edge_ids)]
    assert len(on_edge) == 2 * 3 * len(edge_ids) and np.allclose(on_edge.separation_arcsec, 0.6, atol=0.01)
    assert (sources.object_id >= 0).all() and (sources.groupby("frame_id").object_id.nunique() == sources.groupby("frame_id").size()).all()
    # statistics: 6 epochs; a constant star with honest errors has chi^2 ~ 1, the variable does not
    library_stars = objects[objects.library_id.notna()]
    assert (library_stars.n_g == 6).all() and (library_stars.n_r == 0).all()
    constant = library_stars.drop(index=1000)
    assert 0.7 < constant.chi2_g.median() < 1.3 and 0.6 < constant.stetson_k_g.median() < 1.0
    assert library_stars.loc[1000, "chi2_g"] > 50 and library_stars.loc[1000, "amplitude_g"] > 0.3
    assert library_stars.loc[1000, "stetson_j_g"] > 5 * abs(constant.stetson_j_g).median()
    assert np.allclose(library_stars.first_mjd, 60001.0) and np.allclose(library_stars.last_mjd, 60002.02)
    # a night touching few objects refreshes their whole partitions: objects gets no delete file
    # (so readers of the snapshot's files need no anti-join), and the others keep their statistics
    few = night_tables(3)
    few["forced"] = few["forced"].filter(pa.compute.is_in(few["forced"]["object_id"], pa.array(library().column("source_id").to_numpy()[:5])))
    few["sources"] = few["sources"].slice(0, 5)
    archive.commit(few, message="a few objects", library=library())
    from mstlake.lake import snapshot

    found = snapshot.read_snapshot(archive.paths.archive_catalogue, archive.paths.archive_data).tables["objects"]
    assert all(f.delete_path is None for f in found.files)
    con = archive.reader()
    after = con.execute("SELECT * FROM lake.objects ORDER BY object_id").fetch_df().set_index("object_id")
    con.close()
    assert len(after) == len(objects) and (after.n_g.drop(index=library().column("source_id").to_numpy()[:5]) == objects.n_g.drop(index=library().column("source_id").to_numpy()[:5])).all()
    assert (after.n_g.loc[library().column("source_id").to_numpy()[:5]] == 9).all()  # 6 epochs + 3 frames


def test_association_works_at_the_poles_and_across_ra_zero():
    from mstlake.lake import associate

    # objects at the pole (ra means nothing there) and on both sides of ra = 0
    objects_ra, objects_dec = np.array([0.0, 359.9999, 45.0]), np.array([89.99995, 0.0, -89.9999])
    detections_ra, detections_dec = np.array([180.0, 0.0001, 225.0, 0.0]), np.array([89.99990, 0.0, -89.99985, 30.0])
    index, separation = associate.nearest_within(detections_ra, detections_dec, objects_ra, objects_dec, 1.0)
    assert index.tolist() == [0, 1, 2, -1]
    assert np.allclose(separation[:3], [0.54, 0.72, 0.9], atol=0.01) and np.isnan(separation[3])
    groups = associate.group_positions([359.99995, 0.00005, 10.0], [0.0, 0.0, 0.0], 1.0)
    assert groups[0] == groups[1] != groups[2]
    ra, dec = associate.mean_positions([359.99995, 0.00015], [0.0, 0.0], [0, 0])
    assert np.allclose(ra, 0.00005) and np.allclose(dec, 0.0)


def test_compaction_merges_nightly_files_and_leaves_every_snapshot_as_it_was(tmp_path):
    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    for night in (1, 2):
        commit_night(archive, night)
    archive.release("DR1")
    commit_night(archive, 3)
    checksum = "SELECT count(*), sum(hash(object_id, frame_id, flux)) FROM lake.forced"
    con = archive.reader()
    before, release_before = con.execute(checksum).fetchone(), archive.reader("DR1").execute(checksum).fetchone()
    con.close()
    counts = archive.compact()
    assert counts["forced"][1] < counts["forced"][0] / 2 and counts["sources"][1] < counts["sources"][0]
    con, released = archive.reader(), archive.reader("DR1")
    assert con.execute(checksum).fetchone() == before and released.execute(checksum).fetchone() == release_before
    assert con.execute("SELECT count(*) FROM lake.objects").fetchone()[0] == N_LIBRARY + 1
    # one file per partition, sorted inside as the schema says
    files = [row[0] for row in con.execute("SELECT data_file FROM ducklake_list_files('lake', 'forced')").fetchall()]
    partitions = [f.split("healpix_partition=")[1].split("/")[0] for f in files]
    assert len(set(partitions)) == len(partitions)
    for path in files:
        key = pq.read_table(path, columns=["_healpix_29", "object_id", "mjd"]).to_pandas()
        assert key.equals(key.sort_values(["_healpix_29", "object_id", "mjd"]).reset_index(drop=True))
    con.close(), released.close()
    assert commit_night(archive, 4).rows_added["forced"] == 1200  # nights go on after a compaction


def test_a_commit_that_leaves_a_partition_in_too_many_files_compacts(tmp_path):
    from dataclasses import replace

    from mstlake.lake import snapshot

    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, replace(CFG, compact_after_files=2))

    def most_files() -> int:
        files = snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data).tables["forced"].files
        partitions = [f.path.rsplit("/", 2)[-2] for f in files]
        return max(partitions.count(p) for p in partitions)

    for night in (1, 2):
        commit_night(archive, night)
    assert most_files() == 2
    commit_night(archive, 3)  # a third file per partition: over the limit, compacted
    assert most_files() == 1
    assert count(archive) == (3 * 1200, 9)


def test_open_lake_views_of_a_release_hold_only_its_nights(tmp_path):
    from mstlake.query import open_lake

    archive = Archive(LakePaths(tmp_path / "lake"), CFG)
    commit_night(archive, 1)
    archive.release("DR1")
    commit_night(archive, 2)
    # forced, frames and sources are read from the snapshot's own files: a later night is not in them
    for release, nights in ((None, 2), ("DR1", 1)):
        con = open_lake(tmp_path / "lake", release=release)
        assert con.sql("SELECT count(*) FROM forced").fetchone()[0] == 1200 * nights
        assert con.sql("SELECT count(DISTINCT frame_id) FROM frames").fetchone()[0] == 3 * nights
        assert con.sql("SELECT count(*) FROM sources").fetchone()[0] == 1201 * nights
        assert "read_parquet" in con.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'forced'").fetchone()[0]
        con.close()


def test_the_snapshot_reader_sees_what_ducklake_sees_at_every_snapshot(tmp_path, monkeypatch):
    """open_lake reads the catalogue itself (mstlake.lake.snapshot): after compactions (files
    holding several snapshots' rows), deletes and releases, every table at every snapshot must hold
    exactly DuckLake's rows; and a catalogue feature the reader does not know falls back to DuckLake."""
    import duckdb

    from mstlake.lake import snapshot
    from mstlake.lake.archive import CATALOG, connect
    from mstlake.query import open_lake

    paths = LakePaths(tmp_path / "lake")
    archive = Archive(paths, CFG)
    for night in (1, 2):
        commit_night(archive, night)
    archive.release("DR1")
    commit_night(archive, 3)
    con = connect(paths)  # DuckLake's own merge: files holding rows of several snapshots
    for name in ("forced", "sources", "objects"):
        con.execute(f"CALL ducklake_merge_adjacent_files('{CATALOG}', '{name}')")
    # deletes that leave most of a file: DuckLake writes delete files
    con.execute(f"DELETE FROM {CATALOG}.forced WHERE frame_id % 3 = 1 AND object_id % 2 = 0")
    con.execute(f"DELETE FROM {CATALOG}.objects WHERE object_id % 5 = 0")
    con.close()
    commit_night(archive, 4)
    archive.compact()
    latest = snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data)
    held_cut = held_deleted = 0
    for snapshot_id in range(1, latest.snapshot_id + 1):
        try:
            found = snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data, snapshot_id)
        except snapshot.UnsupportedCatalogue:
            continue  # a snapshot id DuckLake skipped
        ducklake = connect(paths, snapshot_id=snapshot_id)
        plain = duckdb.connect()
        for name, table in found.tables.items():
            held_cut += sum(f.visible_rows < f.record_count for f in table.files)
            held_deleted += sum(f.delete_path is not None for f in table.files)
            expected = ducklake.execute(f"SELECT * FROM {CATALOG}.{name} ORDER BY ALL").fetch_arrow_table()
            got = plain.execute(f"SELECT * FROM ({table.scan_sql()}) ORDER BY ALL").fetch_arrow_table()
            assert got.equals(expected), (snapshot_id, name)
        ducklake.close(), plain.close()
    assert held_cut and held_deleted  # both kinds of partial file were met
    # open_lake at a release and now, against DuckLake
    for release in ("DR1", None):
        reader, lake = archive.reader(release), open_lake(paths.root, release=release)
        for name in ("forced", "objects", "sources"):
            assert lake.execute(f"SELECT * FROM {name} ORDER BY ALL").fetch_arrow_table().equals(reader.execute(f"SELECT * FROM {CATALOG}.{name} ORDER BY ALL").fetch_arrow_table())
        assert "read_parquet" in lake.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'objects'").fetchone()[0]
    # a catalogue this reader does not know (here: another format version) is read through DuckLake
    monkeypatch.setattr(snapshot, "SUPPORTED_VERSIONS", ("0.1",))
    with pytest.raises(snapshot.UnsupportedCatalogue, match="version"):
        snapshot.read_snapshot(paths.archive_catalogue, paths.archive_data)
    lake = open_lake(paths.root, release="DR1")
    assert "lake.forced" in lake.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'forced'").fetchone()[0]
    assert lake.execute("SELECT count(*) FROM forced").fetchone() == archive.reader("DR1").execute(f"SELECT count(*) FROM {CATALOG}.forced").fetchone()
