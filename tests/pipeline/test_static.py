"""Astrometry over the calibrated cubes of a simulated night, against the simulator's truth."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from mstlake.config import ReferenceCatalogueConfig
from mstlake.lake.refcat import ReferenceCatalogueError, load_reference
from mstlake.lake.tables import read_table
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema
from tests.conftest import read_truth_frames
from tests.digest import lake_digest


def test_every_frame_is_solved_and_its_wcs_puts_stars_where_they_are(solved_lake):
    paths, lake, _, result = solved_lake
    table = read_table(lake.astrometry_table, load_schema("astrometry")).to_pandas()
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    truth = read_truth_frames(paths)
    assert len(table) > 0 and (table.status == "solved").all(), result.failed
    import pyarrow.parquet as pq

    stars = pq.read_table(paths.stars).to_pandas().set_index("star_id")
    for row in table.itertuples():
        path = frames.loc[row.frame_id, "path"]
        (match,) = [t for t in truth.itertuples() if path.endswith(t.file)]
        stem = match.stem
        wcs = WCS(fits.Header.fromstring(row.wcs_header))
        assert row.mirrored == bool(match.mirrored)
        on_frame = pq.read_table(paths.frame_stars(stem)).to_pandas()
        on_frame = on_frame[on_frame.mag < 17]
        x, y = wcs.all_world2pix(stars.loc[on_frame.star_id, "ra"].values, stars.loc[on_frame.star_id, "dec"].values, 0)
        error = np.hypot(x - on_frame.x.values, y - on_frame.y.values)
        # pixels; these 1/16-scale frames hold ~100 matched stars, so the 4th-order fit is loose
        assert np.median(error) < 0.15 and np.sqrt(np.mean(error**2)) < 0.25, stem


def test_the_reference_catalogue_is_cached_and_a_missing_file_is_a_clear_error(solved_lake, tmp_path):
    paths, lake, field, _ = solved_lake
    assert lake.reference_catalogue("f02").exists()
    broken = dataclasses.replace(field, reference=ReferenceCatalogueConfig(path="nowhere/library.parquet"))
    with pytest.raises(ReferenceCatalogueError, match="does not exist"):
        load_reference(broken, LakePaths(tmp_path / "lake"), base=tmp_path)
    renamed = dataclasses.replace(field, reference=ReferenceCatalogueConfig(path=str(paths.standard_library), columns={"ra": "RA_ICRS"}))
    with pytest.raises(ReferenceCatalogueError, match="RA_ICRS"):
        load_reference(renamed, LakePaths(tmp_path / "lake2"), base=tmp_path)


def test_photometry_is_flux_calibrated_against_truth(solved_lake):
    paths, lake, _, result = solved_lake
    import pyarrow.parquet as pq

    photometry = read_table(lake.photometry_table, load_schema("photometry")).to_pandas()
    assert len(photometry) == result.solved and result.calibrated >= 0.9 * result.solved, result.uncalibrated
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    truth = read_truth_frames(paths).query("kind == 'science'").set_index("stem")
    library = pq.read_table(paths.standard_library).to_pandas()
    stars = pq.read_table(paths.stars).to_pandas()
    star_of = dict(zip(stars.library_source_id, stars.star_id, strict=True))
    constant = set(stars.star_id[stars.variable_type == "constant"])
    calibrated = photometry[photometry.status == "calibrated"]
    for row in calibrated.itertuples():
        assert row.n_calibrators >= 10 and 0 < row.transparency <= 1
        stem = Path(frames.loc[row.frame_id, "path"]).name.split(".fit")[0]
        assert row.cloudy == bool(truth.loc[stem, "cloudy"]), stem  # flagged exactly when clouds were simulated
        forced = pq.read_table(lake.forced_file("f02", row.band, row.night), filters=[("frame_id", "=", row.frame_id)]).to_pandas()
        forced["star_id"] = forced.source_id.map(star_of)
        on_frame = pq.read_table(paths.frame_stars(stem)).to_pandas()
        merged = forced.merge(on_frame[["star_id", "mag"]], on="star_id", suffixes=("", "_true"))
        good = merged[(merged.flux / merged.flux_err > 50) & (merged.flag == 0) & merged.star_id.isin(constant)]
        offset = np.median(good.mag - good.mag_true)
        if not row.cloudy:
            assert abs(offset) < 0.01, (stem, offset, len(good))  # per-frame zero point, ~10-40 standards at this scale
    assert set(library.columns) >= {"source_id", "mag_g", "mag_g_error"}


def test_sources_and_forced_files_open_in_duckdb_with_every_aperture(solved_lake):
    _, lake, _, _ = solved_lake
    import duckdb

    sources = duckdb.sql(f"select count(*), min(len(flux_ap)), max(len(flux_ap)), count(mag_psf) from '{lake.tables_dir}/sources/*/*/*.parquet'").fetchall()[0]
    assert sources[0] > 100 and sources[1] == sources[2] == 25 and sources[3] > 0.9 * sources[0]
    negative = duckdb.sql(f"select count(*) filter (where flux < 0), count(*) filter (where mag is null) from '{lake.tables_dir}/forced_photometry/*/*/*.parquet'").fetchall()[0]
    assert negative[0] > 0 and negative[1] >= negative[0]  # non-detections keep their (negative) flux, without a magnitude


def test_each_nights_light_curve_points_are_in_the_archive_once(solved_lake, pipeline_config):
    import duckdb
    import healpy as hp
    import pyarrow.parquet as pq

    from mstlake.lake.archive import NEW_OBJECT_BASE, Archive

    paths, lake, _, _ = solved_lake
    archive = Archive(lake, pipeline_config.archive)
    con = archive.reader()
    points = con.execute("SELECT object_id, frame_id, mjd, flux, _healpix_29, healpix_partition FROM lake.forced").df()
    snapshots = con.execute("SELECT count(*) FROM lake.snapshots() WHERE commit_message LIKE 'f02 % night %'").fetchone()[0]
    con.close()
    files = duckdb.sql(f"select frame_id, source_id, flux from '{lake.tables_dir}/forced_photometry/*/*/*.parquet'").df()
    assert len(points) == len(files) > 0 and snapshots == len(lake.field_cubes("f02"))
    assert not points.duplicated(["object_id", "frame_id"]).any()
    library = pq.read_table(paths.standard_library).to_pandas().set_index("source_id")
    # objects found on an earlier night (or band) of the run are measured on the later ones, at the place they were found
    found = points[points.object_id >= NEW_OBJECT_BASE]
    assert found.groupby("object_id")._healpix_29.nunique().eq(1).all()
    sample = points[points.object_id < NEW_OBJECT_BASE].sample(200, random_state=1)
    expected = hp.ang2pix(2**29, library.ra.loc[sample.object_id].values, library.dec.loc[sample.object_id].values, nest=True, lonlat=True)
    assert (sample._healpix_29.values == expected).all()
    assert (sample.healpix_partition.values == expected >> 2 * (29 - pipeline_config.archive.partition_order)).all()
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    assert np.allclose(sample.mjd.values, frames.mjd.loc[sample.frame_id].values)


@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # nested-pandas, under lsdb, uses what pandas 3.1 deprecates
def test_a_hats_reference_catalogue_gives_the_same_stars(solved_lake, tmp_path):
    import lsdb
    import pyarrow.parquet as pq

    paths, lake, field, _ = solved_lake
    library = pq.read_table(paths.standard_library).to_pandas().rename(columns={"ra": "RA_ICRS", "dec": "DE_ICRS"})
    lsdb.from_dataframe(library, ra_column="RA_ICRS", dec_column="DE_ICRS", highest_order=5).write_catalog(tmp_path / "library_hats", catalog_name="library", progress_bar=False)
    hats_field = dataclasses.replace(field, reference=ReferenceCatalogueConfig(path=str(tmp_path / "library_hats"), columns={"ra": "RA_ICRS", "dec": "DE_ICRS"}))
    from_hats = load_reference(hats_field, LakePaths(tmp_path / "lake"), base=tmp_path).to_pandas()
    from_parquet = read_table(lake.reference_catalogue("f02"), load_schema("standard_library")).to_pandas()
    assert len(from_parquet) > 100 and set(from_hats.source_id) == set(from_parquet.source_id)


def test_the_cube_carries_each_frames_wcs_and_the_table_its_residual_map(solved_lake):
    from mstlake.lake import cubes

    _, lake, _, _ = solved_lake
    table = read_table(lake.astrometry_table, load_schema("astrometry")).to_pandas().set_index("frame_id")
    for *_, store in lake.field_cubes("f02"):
        ds = cubes.open_store(store)
        for frame_id in ds.frame_id.values:
            wcs = cubes.frame_wcs(ds, int(frame_id))
            assert wcs.to_header(relax=True).tostring() == WCS(fits.Header.fromstring(table.loc[frame_id, "wcs_header"])).to_header(relax=True).tostring()
            residuals = np.array(table.loc[frame_id, "residual_map_x_mas"], float)
            assert residuals.size == 40 and np.isfinite(residuals).sum() >= 10
            assert np.nanmax(np.abs(residuals)) < 3 * table.loc[frame_id, "rms_x_mas"]  # no unmodelled distortion


def test_the_frames_table_carries_each_solution_too(solved_lake):
    _, lake, _, _ = solved_lake
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    table = read_table(lake.astrometry_table, load_schema("astrometry")).to_pandas().set_index("frame_id")
    solved = table[table.status == "solved"]
    assert len(solved) > 0 and (frames.loc[solved.index, "wcs_header"] == solved.wcs_header).all()
    assert frames.drop(index=solved.index).wcs_header.isna().all()  # calibration frames, unsolved ones


def test_a_second_psf_from_the_image_without_neighbours_measures_as_well(solved_lake, instrument, pipeline_config):
    import pyarrow.parquet as pq

    from mstlake.astrom import frame as frame_kernel
    from mstlake.lake import cubes
    from mstlake.phot.frame import photometer_frame

    paths, lake, _, _ = solved_lake
    library = pq.read_table(paths.standard_library).to_pandas()
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    store = lake.field_cubes("f02")[0][3]
    ds = cubes.open_store(store)
    row = frames.loc[int(ds.frame_id.values[0])]
    image, variance, mask = ds.image[0].values, ds.variance[0].values, ds.mask[0].values
    found = frame_kernel.solve_image(image, variance, mask, pointing=(row.ra_pointing, row.dec_pointing), ref_ra=library.ra, ref_dec=library.dec, ref_mag=library[f"mag_{row.band}"], pixel_scale_deg=instrument.detector.pixel_scale_arcsec / 3600, cfg=pipeline_config.astrometry)
    results = [photometer_frame(image, variance, mask, found.extraction, found.solution.wcs, library, band=row.band, gain=instrument.detector.gain_e_per_adu, cfg=dataclasses.replace(pipeline_config.photometry, psf_rebuild=rebuild)) for rebuild in (False, True)]
    once, twice = results
    assert twice.zero_point is not None and twice.solution.n_matched >= 0.9 * once.solution.n_matched
    # a different ePSF scales every PSF flux alike: the zero point takes it, calibrated magnitudes agree
    bright = (once.forced.flux / once.forced.flux_err > 50).values & (once.forced.flag == 0).values & (twice.forced.flag == 0).values
    assert bright.sum() >= 10 and abs(np.median(twice.forced.mag.values[bright] - once.forced.mag.values[bright])) < 0.005


def test_a_later_run_measures_the_archives_new_objects_on_every_frame(solved_lake, instrument, pipeline_config, tmp_path):
    import shutil

    import duckdb

    import pyarrow as pa

    from mstlake.lake import associate
    from mstlake.lake.archive import NEW_OBJECT_BASE, Archive, new_objects, open_reader
    from mstlake.lake.refcat import load_reference
    from mstlake.paths import LakePaths
    from mstlake.pipeline.static import measure_field

    paths, lake, field, _ = solved_lake
    copy = LakePaths(tmp_path / "lake")
    shutil.copytree(lake.root, copy.root)
    # a transient found on an earlier night, in an empty spot of the field
    con = open_reader(copy)
    frame = con.execute("SELECT * FROM lake.sources LIMIT 1").fetch_arrow_table()
    library = con.execute("SELECT ra, dec FROM lake.objects WHERE library_id IS NOT NULL").fetch_df()
    con.close()
    grid_ra, grid_dec = np.meshgrid(np.linspace(*np.percentile(library.ra, [30, 70]), 40), np.linspace(*np.percentile(library.dec, [30, 70]), 40))
    clearance = associate.nearest_within(grid_ra.ravel(), grid_dec.ravel(), library.ra.values, library.dec.values, 8.0)[0]
    spot = np.flatnonzero(clearance < 0)[0]
    ra, dec = grid_ra.ravel()[spot], grid_dec.ravel()[spot]
    detection = frame.set_column(frame.column_names.index("frame_id"), "frame_id", pa.array([1], pa.int64()))
    for name, value in (("ra", ra), ("dec", dec)):
        detection = detection.set_column(detection.column_names.index(name), name, pa.array([value]))
    before = set(new_objects(copy).column("object_id").to_pylist())
    assert Archive(copy, pipeline_config.archive).commit({"sources": detection}, message="a transient").new_objects == 1
    new = new_objects(copy).to_pandas()
    (transient,) = set(new.object_id) - before
    assert (new.object_id >= NEW_OBJECT_BASE).all()
    reference = load_reference(field, copy, base=paths.raw)
    # committed frames are measured again only when forced: the transient then gets points on them
    measure_field(copy, "f02", reference, instrument=instrument, astrometry_cfg=pipeline_config.astrometry, photometry_cfg=pipeline_config.photometry, archive_cfg=pipeline_config.archive, magfit_cfg=pipeline_config.magfit, force=True, progress=False)
    forced = duckdb.sql(f"SELECT frame_id, source_id, flux, flux_err FROM '{copy.tables_dir}/forced_photometry/*/*/*.parquet' WHERE source_id = {transient}").df()
    # the transient is measured on every frame that holds it (here all of them), flux kept when negative
    from astropy.io import fits
    from astropy.wcs import WCS

    holding = set()
    for frame_id, header, nx, ny in duckdb.sql(f"SELECT frame_id, wcs_header, naxis1, naxis2 FROM '{copy.frames_table}' WHERE wcs_header IS NOT NULL").fetchall():
        x, y = WCS(fits.Header.fromstring(header)).all_world2pix(ra, dec, 0)
        if -0.5 < x < nx - 0.5 and -0.5 < y < ny - 0.5:
            holding.add(frame_id)
    assert len(holding) >= 3 and set(forced.frame_id) == holding and forced.flux_err.gt(0).all()
    assert duckdb.sql(f"SELECT count(DISTINCT source_id) FROM '{copy.tables_dir}/forced_photometry/*/*/*.parquet' WHERE source_id >= {NEW_OBJECT_BASE}").fetchone()[0] == len(new)
    assert abs(np.median(forced.flux / forced.flux_err)) < 3  # nothing there


# -- image stacks of the measured frames (issue 6) ------------------------------------------------


def _stack_config(pipeline_config, **changes):
    return dataclasses.replace(pipeline_config.stack, **({"scheduler": "synchronous"} | changes))


def test_a_stack_keeps_star_fluxes_beats_one_frames_noise_and_is_measured_into_the_archive(solved_lake, instrument, pipeline_config):
    import pyarrow.parquet as pq

    from mstlake.lake.refcat import load_reference
    from mstlake.pipeline.stack import FrameSelection, measure_stack, stack_field
    from mstlake.query import open_lake
    from mstlake.stack.store import open_stack

    paths, lake, field, _ = solved_lake
    photometry = read_table(lake.photometry_table, load_schema("photometry")).to_pandas()
    clear_g = photometry[(photometry.band == "g") & (photometry.status == "calibrated") & ~photometry.cloudy]
    result = stack_field(lake, field, "g", FrameSelection(), instrument=instrument, cfg=_stack_config(pipeline_config), progress=False)
    assert sorted(result.frames.frame_id) == sorted(clear_g.frame_id) and len(result.frames) >= 2
    ds, wcs = open_stack(result.store)
    with fits.open(result.fits) as hdul:
        assert list(hdul["FRAMES"].data["frame_id"]) == list(result.frames.frame_id)
        assert np.allclose(WCS(hdul[0].header).wcs.crval, wcs.wcs.crval) and np.array_equal(np.isnan(hdul[0].data), np.isnan(ds["image"].values))
    count = ds["count"].values
    assert count.max() == len(result.frames) and (count >= len(result.frames) - 1).mean() > 0.3

    reference = load_reference(field, lake, base=paths.raw).to_pandas()
    measured = measure_stack(lake, result.store, reference, instrument=instrument, astrometry_cfg=pipeline_config.astrometry, photometry_cfg=pipeline_config.photometry, stack_cfg=pipeline_config.stack, archive_cfg=pipeline_config.archive)
    row = measured.stack.to_pylist()[0]
    assert row["status"] == "calibrated" and abs(row["zero_point_mag"] - row["zero_point_ref_mag"]) < 0.03
    # calibrated forced magnitudes of bright, isolated constant stars agree with the truth
    stars = pq.read_table(paths.stars).to_pandas()
    truth = dict(zip(stars.library_source_id, stars.mag_g, strict=True))
    constant = set(stars.library_source_id[stars.variable_type == "constant"])
    forced = measured.forced[(measured.forced.flag == 0) & measured.forced.source_id.isin(constant)]
    bright = forced[forced.mag_inst_err < 0.01]
    offset = bright.mag.values - bright.source_id.map(truth).values
    assert len(bright) >= 15 and abs(np.median(offset)) < 0.02 and np.std(offset) < 0.03
    # deeper than one frame by about 2.5 log10 sqrt(N)
    single = pd_read_forced(lake, clear_g.frame_id.iloc[0])
    single_depth = _depth(single.flux.values, single.flux_err.values, single.zero_point.values, gain=instrument.detector.gain_e_per_adu)
    gain = 1.25 * np.log10(len(result.frames))
    assert row["depth_5sigma_mag"] - single_depth > 0.7 * gain, (row["depth_5sigma_mag"], single_depth)
    assert 0.9 < row["psf_fwhm_px"] / row["inputs_fwhm_px"] < 1.05
    assert row["rms_x_mas"] < 250 and row["rms_y_mas"] < 250 and row["n_matched"] > 20

    with open_lake(lake.root) as con:
        held = con.execute("SELECT n_frames, n_sources FROM stacks").fetchall()
        associated = con.execute("SELECT avg((object_id >= 0)::INT) FROM stack_sources").fetchone()[0]
    assert held == [(len(result.frames), row["n_sources"])] and associated > 0.5
    again = measure_stack(lake, result.store, reference, instrument=instrument, astrometry_cfg=pipeline_config.astrometry, photometry_cfg=pipeline_config.photometry, stack_cfg=pipeline_config.stack, archive_cfg=pipeline_config.archive)
    assert again.snapshot is None  # the same stack is held once
    replaced = measure_stack(lake, result.store, reference, instrument=instrument, astrometry_cfg=pipeline_config.astrometry, photometry_cfg=pipeline_config.photometry, stack_cfg=pipeline_config.stack, archive_cfg=pipeline_config.archive, replace=True)
    assert replaced.snapshot is not None
    with open_lake(lake.root) as con:
        assert con.execute("SELECT count(*) FROM stacks").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM stack_sources").fetchone()[0] == row["n_sources"]


def pd_read_forced(lake, frame_id):
    import pandas as pd

    table = pd.concat([pd.read_parquet(p) for p in Path(lake.forced_dir).rglob("*.parquet")])
    return table[table.frame_id == frame_id]


def _depth(flux, flux_err, zero_point, *, gain):
    from mstlake.pipeline.stack import depth_5sigma

    return depth_5sigma(flux, flux_err, zero_point, gain=gain)


def test_tiles_stacked_in_worker_processes_join_without_a_seam(solved_lake, instrument, pipeline_config):
    from mstlake.pipeline.stack import FrameSelection, stack_field
    from mstlake.stack.store import open_stack

    _, lake, field, _ = solved_lake
    whole = stack_field(lake, field, "g", FrameSelection(), instrument=instrument, cfg=_stack_config(pipeline_config), name="whole", fits_file=False, progress=False)
    tiled = stack_field(lake, field, "g", FrameSelection(), instrument=instrument, cfg=_stack_config(pipeline_config, tile_px=512, scheduler="processes"), name="tiled", fits_file=False, progress=False)
    assert tiled.n_tiles > 1 and whole.n_tiles == 1
    a, _ = open_stack(whole.store)
    b, _ = open_stack(tiled.store)
    # the tiles' WCS mappings come from their own nodes: equal to ~1e-5 px, not to the bit
    noise = np.sqrt(a["variance"].values)
    assert np.nanmax(np.abs(a["image"].values - b["image"].values) / noise) < 1e-2
    assert np.array_equal(np.isnan(a["image"].values), np.isnan(b["image"].values))
    assert (a["count"].values != b["count"].values).mean() < 1e-4 and np.array_equal(a["mask"].values, b["mask"].values)


def test_a_track_and_cosmic_rays_the_masks_missed_stay_out_of_a_stack_and_a_transient_stays(solved_lake, instrument, pipeline_config):
    """On real calibrated frames: a satellite track and cosmic rays added to one frame with no
    mask bit (what calibration missed) are dropped by the clipping; a transient on two of the
    frames is kept; a stack with no clipping shows the track."""
    from mstlake.lake import cubes
    from mstlake.pipeline.stack import FrameSelection, select_frames, stack_grid_for, typical_variance
    from mstlake.stack.combine import StackInput, stack_tile
    from mstlake.stack.resample import subtract_sky

    _, lake, field, _ = solved_lake
    frames, _ = select_frames(lake, field.name, "g", FrameSelection())
    grid = stack_grid_for(field, frames, pixel_scale_arcsec=instrument.detector.pixel_scale_arcsec, cfg=pipeline_config.stack)
    zero_point_ref = float(np.median(frames.zero_point_mag))
    inputs = []
    for frame in frames.itertuples():
        plane = cubes.open_store(Path(frame.store)).isel(frame=frame.index).load()
        scale = 10 ** (0.4 * (zero_point_ref - frame.zero_point_mag))
        inputs.append(StackInput(subtract_sky(plane.image.values, plane["mask"].values) * scale, plane.variance.values * scale**2, plane.mask.values, WCS(fits.Header.fromstring(frame.wcs)), typical_variance(Path(frame.store), frame.index) * scale**2))
    rng = np.random.default_rng(2)
    # the transient and the artefacts, placed in grid pixels away from the edges and mapped into each frame
    transient_xy = np.array([grid.shape[1] * 0.4, grid.shape[0] * 0.55])
    track_x = np.arange(int(grid.shape[1] * 0.2), int(grid.shape[1] * 0.8))
    track_y = (grid.shape[0] * 0.3 + 0.2 * (track_x - track_x[0])).astype(int)
    cosmic_x, cosmic_y = rng.integers(60, grid.shape[1] - 60, 30), rng.integers(60, grid.shape[0] - 60, 30)
    clean = stack_tile(inputs, grid.wcs, grid.shape)
    noise = float(np.sqrt(np.nanmedian(clean.variance)))
    for k, item in enumerate(inputs):
        image, wcs = item.image, item.wcs
        frame_x, frame_y = wcs.world_to_pixel_values(*grid.wcs.pixel_to_world_values(*transient_xy))
        if k < 2:
            yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
            image += 3e4 * np.exp(-((xx - frame_x) ** 2 + (yy - frame_y) ** 2) / (2 * 1.3**2)) / (2 * np.pi * 1.3**2)
        if k == 0:
            for gx, gy, amplitude in ((track_x, track_y, 40 * noise), (cosmic_x, cosmic_y, 200 * noise)):
                fx, fy = (np.round(v).astype(int) for v in wcs.world_to_pixel_values(*grid.wcs.pixel_to_world_values(gx, gy)))
                inside = (fx >= 0) & (fx < image.shape[1]) & (fy >= 0) & (fy < image.shape[0])
                image[fy[inside], fx[inside]] += amplitude
    stacked = stack_tile(inputs, grid.wcs, grid.shape)
    naive = stack_tile(inputs, grid.wcs, grid.shape, clip_sigma=None)
    near_track = np.zeros(grid.shape, bool)
    for dy in (-1, 0, 1):
        near_track[track_y + dy, track_x] = True
    near_cosmic = np.zeros(grid.shape, bool)
    near_cosmic[cosmic_y, cosmic_x] = True
    for where, name in ((near_track, "track"), (near_cosmic, "cosmic rays")):
        use = where & (clean.count == len(inputs)) & (stacked.count >= 2)
        assert use.sum() > 20, name
        excess_naive, excess = np.sum((naive.image - clean.image)[use]), np.sum((stacked.image - clean.image)[use])
        assert excess_naive > 2 * noise * use.sum(), name  # they were there
        # what stays is what no clipping can tell from noise: the faint edges of the resampled line
        assert abs(excess) < 0.1 * excess_naive, (name, excess / excess_naive)
        assert (np.abs(stacked.image - clean.image)[use] > 6 * noise).mean() < 0.01, name
    yy, xx = np.mgrid[: grid.shape[0], : grid.shape[1]]
    aperture = np.hypot(xx - transient_xy[0], yy - transient_xy[1]) < 6
    kept = np.nansum((stacked.image - clean.image)[aperture])
    assert 0.6 * 3e4 < kept < 1.05 * 3e4  # two of three frames: 2/3 of its flux in the mean, or all of it where the third was dropped


def test_runs_of_n_consecutive_frames_are_disjoint_and_named_apart(solved_lake):
    from mstlake.pipeline.stack import FrameSelection, StackError, default_name, select_frames

    _, lake, field, _ = solved_lake
    every, _ = select_frames(lake, field.name, "g", FrameSelection())
    assert len(every) >= 3
    first, _ = select_frames(lake, field.name, "g", FrameSelection(first_n=2))
    rest, _ = select_frames(lake, field.name, "g", FrameSelection(first_n=2, skip=2))
    assert list(first.frame_id) + list(rest.frame_id) == list(every.frame_id[: len(first) + len(rest)])
    assert not set(first.frame_id) & set(rest.frame_id)
    assert default_name(first) != default_name(rest, skip=2)
    assert "frames 3-4" in FrameSelection(first_n=2, skip=2).describe()
    with pytest.raises(StackError, match="frames from"):
        select_frames(lake, field.name, "g", FrameSelection(skip=len(every)))


def test_ingest_through_a_running_scheduler_and_two_workers_gives_what_the_local_schedulers_give(small_simulation, solved_lake, running_scheduler, tmp_path):
    """`mstlake ingest --scheduler ADDRESS` on a real `dask scheduler` with two `dask worker`
    processes: inventory, calibration, astrometry, photometry and the archive commit end as the
    local schedulers left them, and the frames' tasks ran on the workers."""
    from click.testing import CliRunner

    from mstlake.cli import main
    from mstlake.paths import config_dir
    from mstlake.pipeline.execute import cluster

    paths, _ = small_simulation
    _, local_lake, _, _ = solved_lake
    config = tmp_path / "ingest"
    shutil.copytree(config_dir(None), config)
    field_file = config / "fields" / "f02.toml"
    field_file.write_text(field_file.read_text().replace('path = "raw/f02-truth/standard_library.parquet"', f'path = "{paths.standard_library}"'))
    lake = LakePaths(tmp_path / "lake")
    run = CliRunner().invoke(main, ["ingest", "--field", "f02", "--raw", str(paths.raw), "--lake", str(lake.root), "--scheduler", running_scheduler, "--config-dir", str(config), "--quiet"])
    assert run.exit_code == 0, run.output
    with cluster(scheduler_address=running_scheduler) as client:
        ran = client.run_on_scheduler(lambda dask_scheduler: {name: sum(prefix.all_durations.values()) for name, prefix in dask_scheduler.task_prefixes.items()})
        workers = {w["host"] for w in client.scheduler_info()["workers"].values()}
    assert workers == {"127.0.0.1"} and ran.get("static-frame", 0) > 0 and any(name.startswith("calibrate") and seconds > 0 for name, seconds in ran.items()), ran
    digest, local = lake_digest(lake), lake_digest(local_lake)
    for name in ("astrometry", "photometry", "sources", "forced_photometry", "archive frames", "archive forced"):
        assert digest[name] == local[name], name


def test_a_stack_made_through_a_running_scheduler_and_two_workers_is_the_local_one(solved_lake, instrument, pipeline_config, running_scheduler):
    """A real `dask scheduler` and two `dask worker` processes on loopback, reached by address."""
    from mstlake.pipeline.execute import cluster
    from mstlake.pipeline.stack import FrameSelection, open_stack, stack_field

    _, lake, field, _ = solved_lake
    cfg = _stack_config(pipeline_config, tile_px=512)
    local = stack_field(lake, field, "g", FrameSelection(), instrument=instrument, cfg=cfg, name="on-this-machine", fits_file=False, progress=False)
    with cluster(scheduler_address=running_scheduler) as client:
        client.wait_for_workers(2, timeout=120)
        remote = stack_field(lake, field, "g", FrameSelection(), instrument=instrument, cfg=cfg, name="on-the-cluster", fits_file=False, progress=False)
        assert {w["host"] for w in client.scheduler_info()["workers"].values()} == {"127.0.0.1"}
    assert remote.n_tiles == local.n_tiles > 1
    here, there = open_stack(local.store)[0], open_stack(remote.store)[0]
    for plane in ("image", "variance", "count", "mask"):
        np.testing.assert_array_equal(here[plane].values, there[plane].values)
