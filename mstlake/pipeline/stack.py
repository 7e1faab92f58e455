"""Image stacks of a field (the paper's STATIC multiple) as one lazy Dask graph over the tiles of
the field's grid, and their measurement into a deep catalogue in the archive.

Frames are chosen from the lake's tables (solved and flux-calibrated; cloudy ones left out unless
asked), each sky-subtracted and scaled to a common zero point through its own zero-point
surface, resampled onto the tile through its TAN-SIP solution and combined (``mstlake.stack``).
A tile task reads from each frame's cube only the pixels the tile needs and writes its own shard
of the staged stack, so no task holds more than one tile's frames (tiles shrink as the number of
frames grows) and the mosaic is never in memory. The staged store is renamed into place when
every tile is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
from astropy.io import fits
from astropy.wcs import WCS

import mstlake
from mstlake.config import ArchiveConfig, AstrometryConfig, FieldConfig, InstrumentConfig, PhotometryConfig, StackConfig
from mstlake.lake import cubes, healpix
from mstlake.lake.tables import read_table
from mstlake.paths import LakePaths
from mstlake.phot.surface import Surface
from mstlake.pipeline.execute import compute
from mstlake.raw.inventory import frame_id_from_sha256
from mstlake.schemas import load_cube_schema, load_schema
from mstlake.stack import grid as stack_grid
from mstlake.stack.combine import BYTES_PER_PIXEL, StackInput, stack_tile
from mstlake.stack.resample import frame_region, sky_region, subtract_sky
from mstlake.stack.store import create_stack, finish_stack, open_stack, write_stack_tile

if TYPE_CHECKING:
    from mstlake.phot.frame import FramePhotometry

class StackError(ValueError):
    """A stack that cannot be made (no frames chosen, no grid)."""


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a field and band go into a stack."""

    nights: tuple[int, ...] = ()  # these nights only (empty: all)
    first_n: int | None = None  # the first N frames, in time, of what the rest chooses
    skip: int = 0  # frames passed over (in time) before the first chosen: with first_n, the next N
    include_cloudy: bool = False  # frames flagged cloudy are left out unless this is set

    def describe(self) -> str:
        nights = "all nights" if not self.nights else (f"night {self.nights[0]}" if len(self.nights) == 1 else f"nights {min(self.nights)}-{max(self.nights)} ({len(self.nights)})")
        span = (f"frames {self.skip + 1}-{self.skip + self.first_n}" if self.first_n else f"frames from {self.skip + 1}") if self.skip else (f"first {self.first_n} frames" if self.first_n else "")
        return nights + (f", {span}" if span else "") + (", cloudy frames included" if self.include_cloudy else "")


@dataclass(frozen=True)
class StackResult:
    name: str
    store: Path
    fits: Path
    frames: pd.DataFrame  # the frames combined (frame_id, night, mjd, ...)
    left_out: dict[str, int]  # reason -> frames of the field and band not used
    shape: tuple[int, int]
    tile_px: int
    n_tiles: int


def select_frames(lake: LakePaths, field: str, band: str, selection: FrameSelection) -> tuple[pd.DataFrame, dict[str, int]]:
    """The frames of ``field`` and ``band`` to stack, in time order, with their cube (store, index),
    WCS, zero-point surface and PSF width; and the number left out for each reason."""
    rows = []
    for _, cube_band, night, store in lake.field_cubes(field):
        if cube_band != band or (selection.nights and night not in selection.nights):
            continue
        for index, frame_id in enumerate(cubes.open_store(store).frame_id.values):
            rows.append({"frame_id": int(frame_id), "store": str(store), "index": index})
    if not rows:
        known = sorted({(b, n) for _, b, n, _ in lake.field_cubes(field)})
        raise StackError(f"no calibrated cubes of field {field!r} in band {band!r}{' for nights ' + ','.join(map(str, selection.nights)) if selection.nights else ''} in {lake.root} (cubes: {', '.join(f'{b} {n}' for b, n in known) or 'none'})")
    chosen = pd.DataFrame(rows).set_index("frame_id")
    inventory = read_table(lake.frames_table, load_schema("frames")).to_pandas().set_index("frame_id")
    astrometry = read_table(lake.astrometry_table, load_schema("astrometry")).to_pandas().set_index("frame_id")
    photometry = read_table(lake.photometry_table, load_schema("photometry")).to_pandas().set_index("frame_id")
    chosen = chosen.join(inventory[["night", "mjd", "exptime", "naxis1", "naxis2", "telescope"]]).join(astrometry[["wcs_header"]].rename(columns={"wcs_header": "wcs"}))
    chosen = chosen.join(photometry[["status", "cloudy", "zero_point", "zero_point_mag", "psf_fwhm_px"]])
    reasons = pd.Series("", index=chosen.index)
    reasons[chosen.wcs.isna()] = "not solved"
    reasons[(reasons == "") & chosen.status.ne("calibrated")] = "not flux-calibrated"
    if not selection.include_cloudy:
        reasons[(reasons == "") & chosen.cloudy.fillna(False).astype(bool)] = "cloudy"
    left_out = reasons[reasons != ""].value_counts().to_dict()
    chosen = chosen[reasons == ""].sort_values("mjd")
    chosen = chosen.iloc[selection.skip : selection.skip + selection.first_n if selection.first_n else None]
    if chosen.empty:
        raise StackError(f"no frame of field {field!r}, band {band!r} ({selection.describe()}) is solved, flux-calibrated and clear: left out {left_out}")
    return chosen.reset_index(), left_out


def stack_grid_for(field_cfg: FieldConfig, frames: pd.DataFrame, *, pixel_scale_arcsec: float, cfg: StackConfig) -> stack_grid.FieldGrid:
    """The field's grid (centre and size from its config, plus the margin), cut down to the
    frames' footprints: stacks of any selection share the field's pixels."""
    field = stack_grid.field_grid(field_cfg.centre_ra_deg, field_cfg.centre_dec_deg, field_cfg.width_deg, field_cfg.height_deg, pixel_scale_arcsec=pixel_scale_arcsec, tile_px=cfg.tile_px, margin_deg=cfg.margin_deg)
    corners = []
    for frame in frames.itertuples():
        wcs = WCS(fits.Header.fromstring(frame.wcs))
        edge_x = np.r_[np.linspace(0, frame.naxis1 - 1, 9), np.full(9, frame.naxis1 - 1), np.linspace(0, frame.naxis1 - 1, 9), np.zeros(9)]
        edge_y = np.r_[np.zeros(9), np.linspace(0, frame.naxis2 - 1, 9), np.full(9, frame.naxis2 - 1), np.linspace(0, frame.naxis2 - 1, 9)]
        corners.append(np.column_stack(field.wcs.world_to_pixel_values(*wcs.pixel_to_world_values(edge_x, edge_y))))
    xy = np.concatenate(corners)
    ny, nx = field.shape
    x0, x1 = max(int(np.floor(xy[:, 0].min())), 0), min(int(np.ceil(xy[:, 0].max())) + 1, nx)
    y0, y1 = max(int(np.floor(xy[:, 1].min())), 0), min(int(np.ceil(xy[:, 1].max())) + 1, ny)
    if x1 <= x0 or y1 <= y0:
        raise StackError(f"the frames lie outside field {field_cfg.name!r}'s grid (centre {field_cfg.centre_ra_deg}, {field_cfg.centre_dec_deg}, {field_cfg.width_deg} x {field_cfg.height_deg} deg + {cfg.margin_deg} margin)")
    wcs = field.wcs[y0:y1, x0:x1]
    wcs.pixel_shape = (x1 - x0, y1 - y0)
    return stack_grid.FieldGrid(wcs, (y1 - y0, x1 - x0), tile_size(len(frames), cfg))


def tile_size(n_frames: int, cfg: StackConfig) -> int:
    """The largest tile (a multiple of the stack cube's chunk, at most ``cfg.tile_px``) whose
    ``n_frames`` resampled frames fit in ``cfg.tile_memory_gb``."""
    chunk = load_cube_schema("cube_stack").chunk_px
    fits_in = int(np.sqrt(cfg.tile_memory_gb * 1e9 / (max(n_frames, 1) * BYTES_PER_PIXEL)))
    return int(min(cfg.tile_px, max(chunk, fits_in // chunk * chunk)))


def _tile_task(staging: str, y: slice, x: slice, tile_header: str, tile_shape: tuple[int, int], frames: list[dict], zero_point_ref: float, cfg: StackConfig) -> None:
    """Stack one tile from the frames that reach it (each read only where the tile needs it) into
    its region of the staged store."""
    tile_wcs = WCS(fits.Header.fromstring(tile_header))

    def cutouts():
        for frame in frames:
            wcs = WCS(fits.Header.fromstring(frame["wcs"]))
            shape = (frame["naxis2"], frame["naxis1"])
            region = frame_region(wcs, tile_wcs, tile_shape, shape)
            if region is None:
                continue
            wide = sky_region(region, shape)
            planes = cubes.open_store(Path(frame["store"]))[["image", "variance", "mask"]].isel(frame=frame["index"], y=wide[0], x=wide[1]).load()
            image = subtract_sky(planes.image.values, planes["mask"].values)
            inner = tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, wide, strict=True))
            ys, xs = region
            # onto the common zero point, through the frame's zero-point surface at each pixel
            yy, xx = np.mgrid[ys, xs]
            surface = Surface.from_coefficients(frame["zero_point"], shape)
            scale = 10 ** (0.4 * (zero_point_ref - surface(xx.ravel().astype(float), yy.ravel().astype(float)).reshape(xx.shape)))
            yield StackInput(image[inner] * scale, planes.variance.values[inner] * scale**2, planes["mask"].values[inner], wcs[ys, xs], frame["typical_variance"], frame["weight"])

    stack = stack_tile(cutouts(), tile_wcs, tile_shape, method=cfg.method, clip_sigma=cfg.clip_sigma, clip_amplitude_fraction=cfg.clip_amplitude_fraction, resampling=cfg.resampling)
    write_stack_tile(Path(staging), y, x, stack)


def stack_field(lake: LakePaths, field_cfg: FieldConfig, band: str, selection: FrameSelection, *, instrument: InstrumentConfig, cfg: StackConfig, name: str | None = None, fits_file: bool = True, progress: bool = True) -> StackResult:
    """Stack the chosen frames of a field and band on the field's grid into
    ``lake/stacks/<field>/<band>/<name>.zarr`` (and ``.fits``); ``name`` defaults to what was
    chosen (``<first night>-<last night>-n<frames>``)."""
    frames, left_out = select_frames(lake, field_cfg.name, band, selection)
    grid = stack_grid_for(field_cfg, frames, pixel_scale_arcsec=instrument.detector.pixel_scale_arcsec, cfg=cfg)
    name = name or default_name(frames, skip=selection.skip)
    store, fits_path = lake.stack(field_cfg.name, band, name), lake.stack_fits(field_cfg.name, band, name)
    provenance = {"field": field_cfg.name, "band": band, "selection": selection.describe()}
    n_tiles = stack_frames(frames, grid, store, fits_path if fits_file else None, cfg=cfg, provenance=provenance, progress=progress)
    return StackResult(name, store, fits_path, frames.drop(columns=["wcs", "zero_point"]), left_out, grid.shape, grid.tile_px, n_tiles)


def stack_frames(frames: pd.DataFrame, grid: stack_grid.FieldGrid, store: Path, fits_path: Path | None, *, cfg: StackConfig, provenance: dict, progress: bool = True) -> int:
    """The Dask graph: ``frames`` (one row each: frame_id, store, index, wcs, naxis1, naxis2,
    zero_point coefficients, zero_point_mag (at the centre), psf_fwhm_px, exptime, mjd, as
    ``select_frames`` gives them) stacked tile by tile on ``grid`` into ``store`` (and
    ``fits_path``). Returns the number of tiles."""
    zero_point_ref = float(np.median(frames.zero_point_mag))
    provenance = provenance | {
        "mstlake_version": mstlake.__version__, "frames": len(frames),
        "zero_point_ref_mag": zero_point_ref, "inputs_fwhm_px": float(np.median(frames.psf_fwhm_px)), "exptime_s": float(frames.exptime.sum()),
        "mjd": [float(frames.mjd.min()), float(frames.mjd.mean()), float(frames.mjd.max())],
        "stack_config": {k: getattr(cfg, k) for k in ("method", "clip_sigma", "clip_amplitude_fraction", "resampling", "weight_by_seeing")}, "cubes": sorted(set(frames.store)),
        "made_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    staging = create_stack(LakePaths.staging(store), grid.shape, tile_px=grid.tile_px, wcs=grid.wcs, frame_ids=frames.frame_id.tolist(), provenance=provenance)
    records = frames[["store", "index", "wcs", "naxis1", "naxis2", "zero_point"]].assign(zero_point=[list(map(float, z)) for z in frames.zero_point]).to_dict("records")
    # a faint point source's optimal weight: 1 / (background variance x FWHM^2)
    seeing = (frames.psf_fwhm_px.median() / frames.psf_fwhm_px).fillna(1.0).to_numpy() ** 2 if cfg.weight_by_seeing else np.ones(len(frames))
    for record, zero_point, weight in zip(records, frames.zero_point_mag, seeing, strict=True):
        # the background variance at the common zero point (zero_point_mag is the surface's value at the centre)
        record["typical_variance"] = typical_variance(Path(record["store"]), record["index"]) * 10 ** (0.8 * (zero_point_ref - float(zero_point)))
        record["weight"] = float(weight)
    tiles = grid.tiles()
    tasks = [dask.delayed(_tile_task)(str(staging), tile.y, tile.x, tile.wcs.to_header(relax=True).tostring(), tile.shape, records, zero_point_ref, cfg, dask_key_name=f"stack-tile-{tile.index[0]}-{tile.index[1]}") for tile in tiles]
    compute(tasks, tracked=tasks, description=f"stacking {len(frames)} frames ({provenance.get('band', '')}) on {len(tiles)} tiles", scheduler=cfg.scheduler, workers=cfg.workers, progress=progress)
    finish_stack(staging, store, fits_path)
    return len(tiles)


def typical_variance(store: Path, index: int, *, block_px: int = 512) -> float:
    """A frame's background variance: the median over a central block of its variance plane
    (unmasked pixels other than pepper-and-salt), read without the rest of the frame."""
    from mstlake.calib.apply import PEPPER_SALT

    frame = cubes.open_store(store).isel(frame=index)
    ny, nx = frame.sizes["y"], frame.sizes["x"]
    ys, xs = slice(max(ny // 2 - block_px // 2, 0), ny // 2 + block_px // 2), slice(max(nx // 2 - block_px // 2, 0), nx // 2 + block_px // 2)
    block = frame[["variance", "mask"]].isel(y=ys, x=xs).load()
    good = (block["mask"].values & ~np.uint8(PEPPER_SALT)) == 0
    values = block["variance"].values[good & np.isfinite(block["variance"].values)]
    return float(np.median(values)) if values.size else float(np.nanmedian(block["variance"].values))


def default_name(frames: pd.DataFrame, *, skip: int = 0) -> str:
    """<first night>[-<last night>]-n<frames>[-from<first frame's rank>]: two runs of N frames
    within one night are told apart by where they start."""
    first, last = int(frames.night.min()), int(frames.night.max())
    return (f"{first}-n{len(frames)}" if first == last else f"{first}-{last}-n{len(frames)}") + (f"-from{skip + 1}" if skip else "")


def stack_identity(field: str, band: str, frame_ids, provenance: dict) -> int:
    """A stable int64 id of a stack's content: its field, band, input frames and how they were
    combined (measuring the same stack twice adds it to the archive once)."""
    text = json.dumps({"field": field, "band": band, "frames": sorted(int(f) for f in frame_ids), "how": provenance.get("stack_config")}, sort_keys=True)
    return frame_id_from_sha256(hashlib.sha256(text.encode()).hexdigest())  # frames' ids are made the same way


@dataclass(frozen=True)
class StackMeasurement:
    stack: pa.Table  # its archive ``stacks`` row
    sources: pa.Table  # the deep catalogue (``stack_sources``)
    forced: pd.DataFrame  # forced photometry of the reference stars on the stack (x, y, flux, flux_err, mag, mag_err, reference_index)
    snapshot: int | None  # the archive snapshot that added it (None: already there)
    photometry: FramePhotometry | None = None  # the final measurement: its PSF model, fitted scene and zero-point surface


def measure_stack(lake: LakePaths, store: Path, reference: pd.DataFrame, *, instrument: InstrumentConfig, astrometry_cfg: AstrometryConfig, photometry_cfg: PhotometryConfig, stack_cfg: StackConfig, archive_cfg: ArchiveConfig, commit: bool = True, replace: bool = False) -> StackMeasurement:
    """Measure a stack as a single frame is measured (extraction, astrometric check against the
    reference stars, ePSF and aperture photometry, forced photometry of the reference stars, a
    zero-point surface from the standards) and add its deep catalogue to the archive (``replace``:
    over an earlier measurement of the same stack)."""
    from mstlake.astrom import extract
    from mstlake.phot.frame import artificial_star_scatter, background_variance, find_unmodelled, photometer_frame

    ds, wcs = open_stack(store)
    provenance = json.loads(ds.attrs["provenance"])
    frame_ids = json.loads(ds.attrs["frame_ids"])
    image, variance, mask, count, bad = measurable_planes(ds)
    photometry_cfg = dataclasses.replace(photometry_cfg, forced_iterations=stack_cfg.forced_iterations, forced_match_radius_px=stack_cfg.forced_match_radius_px)
    extraction = extract.extract_sources(image, variance, mask, thresh=astrometry_cfg.detect_sigma, minarea=astrometry_cfg.min_area_px)
    ny, nx = image.shape
    ref_x, ref_y = wcs.world_to_pixel_values(reference.ra.values, reference.dec.values)
    on_grid = (ref_x > -20) & (ref_x < nx + 20) & (ref_y > -20) & (ref_y < ny + 20)
    near = reference[on_grid].reset_index(drop=True)
    band = provenance["band"]
    gain = stack_gain(instrument.detector.gain_e_per_adu, count)
    residual = image - extraction.background
    fwhm = float(np.nanmedian(extraction.sources.fwhm[(extraction.sources.flag == 0) & (extraction.sources.snr > 20)])) if len(extraction.sources) else 3.0
    # resampling correlates neighbouring pixels: sums (and fits) that treat them as independent
    # would claim errors too small, and the depth too deep. Both noise estimates the photometry
    # uses are scaled to the noise PSF-sized apertures show on blank sky: the variance plane
    # (aperture errors) and the background's own rms map (PSF-fit errors). Measured before
    # anything is fitted: on the image with the fitted stars subtracted, fits of noise peaks
    # found there would have taken some of the noise away (errors 10% too small against the truth).
    # "blank" sky is away from every star the fit models: the detections and the catalogue's stars
    # (forced at their places, their light is fitted, not noise); what is left in the apertures is
    # the sky and the stars no one models, which are noise to every forced measurement
    modelled_xy = np.vstack([extraction.sources[["x", "y"]].to_numpy(), np.column_stack([ref_x[on_grid], ref_y[on_grid]])])
    blank = {"radius_px": max(fwhm, 1.5), "sources_xy": modelled_xy, "avoid_px": 2.5 * max(fwhm, 1.5)}
    correlation = noise_correlation(residual, extraction.background_noise**2, bad, **blank)
    extraction, variance = _noise_scaled(extraction, variance, psf_fit=correlation, apertures=noise_correlation(residual, variance, bad, **blank))
    scene_search = stack_cfg.scene_detect_sigma > 0 and stack_cfg.scene_passes > 0
    if stack_cfg.background_without_stars or scene_search:
        first = current = photometer_frame(image, variance, mask, extraction, wcs, near, band=band, gain=gain, cfg=photometry_cfg)
    if stack_cfg.background_without_stars:
        extraction, residual = background_remapped(image, mask, extraction, first)
        first = current = photometer_frame(image, variance, mask, extraction, wcs, near, band=band, gain=gain, cfg=photometry_cfg)
    if scene_search:
        # a deep stack is crowded with stars the first detection misses (faint ones, and those
        # in brighter stars' wings); unmodelled, their light is noise to every forced
        # measurement near them. They are found on the image with every fitted star subtracted
        # (DAOPHOT's second pass), fitted with the rest, and looked for again around them.
        for search in range(stack_cfg.scene_passes):
            found = find_unmodelled(residual, variance, mask, current.psf, current.scene, thresh=stack_cfg.scene_detect_sigma, minarea=astrometry_cfg.min_area_px)
            extraction = dataclasses.replace(extraction, sources=pd.concat([extraction.sources, found], ignore_index=True))
            scene = pd.concat([current.scene, found[["x", "y", "flux"]]], ignore_index=True)
            if not len(found) or search == stack_cfg.scene_passes - 1:
                break
            current = photometer_frame(image, variance, mask, extraction, wcs, near, band=band, gain=gain, cfg=photometry_cfg)
        # the blank sky's noise holds those stars' light; how much of it fitting them takes away
        # is what artificial stars show: their scatter with and without the new stars modelled
        noise = background_variance(variance, mask, extraction.background_noise)
        probe = {"hidden": extract.hidden_pixels(mask), "psf": first.psf, "gain": gain, "iterations": photometry_cfg.forced_iterations, "flux": ARTIFICIAL_STAR_SNR * float(np.nanmedian(first.forced.flux_err))}
        before, after = (artificial_star_scatter(residual, noise, scene=modelled, **probe) for modelled in (first.scene, scene))
        if np.isfinite(before) and np.isfinite(after) and before > 0:
            correlation *= after / before
            extraction, variance = _noise_scaled(extraction, variance, psf_fit=after / before, apertures=after / before)
    measured = photometer_frame(image, variance, mask, extraction, wcs, near, band=band, gain=gain, cfg=photometry_cfg)
    check = astrometric_check(wcs, measured.sources, near, match_radius_arcsec=1.0, pixel_scale_arcsec=instrument.detector.pixel_scale_arcsec)
    forced = measured.forced.assign(source_id=near.source_id.values[measured.forced.reference_index.values])
    # the depth of the area every frame (or nearly) covers: the grid's edges see fewer frames
    full_depth = frames_at(count, forced.x.values, forced.y.values) >= FULL_DEPTH_FRACTION * count.max()
    forced = forced.assign(full_depth=full_depth)
    depth = depth_5sigma(forced.flux.values[full_depth], forced.flux_err.values[full_depth], measured.zero_point(forced.x.values[full_depth], forced.y.values[full_depth]), gain=gain) if measured.zero_point is not None else None
    stack_id = stack_identity(provenance["field"], band, frame_ids, provenance)
    centre = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    index = int(healpix.spatial_index([float(centre[0])], [float(centre[1])])[0])
    zp = measured.zero_point
    sources = _deep_catalogue(measured, count, stack_id, band, provenance["mjd"][1], archive_cfg.partition_order)
    row = {
        "_healpix_29": index, "healpix_partition": int(healpix.parent_pixel(index, archive_cfg.partition_order)), "stack_id": stack_id, "name": Path(store).stem,
        "field": provenance["field"], "band": band, "n_frames": len(frame_ids), "frame_ids": [int(f) for f in frame_ids],
        "first_mjd": provenance["mjd"][0], "mean_mjd": provenance["mjd"][1], "last_mjd": provenance["mjd"][2], "exptime": provenance["exptime_s"],
        "method": provenance["stack_config"]["method"], "provenance": json.dumps(provenance), "wcs_header": wcs.to_header(relax=True).tostring(), "naxis1": nx, "naxis2": ny,
        "zero_point_ref_mag": provenance["zero_point_ref_mag"], "zero_point_mag": None if zp is None else zp.at_centre, "zero_point_rms_mag": None if zp is None else zp.rms,
        "n_calibrators": 0 if zp is None else zp.n_calibrators, "psf_fwhm_px": measured.psf.fwhm, "inputs_fwhm_px": provenance["inputs_fwhm_px"],
        "noise_correlation": correlation, "rms_x_mas": check[0], "rms_y_mas": check[1], "n_matched": check[2], "depth_5sigma_mag": depth, "n_sources": len(sources),
        "status": "calibrated" if zp is not None else "uncalibrated", "reason": measured.zero_point_problem, "measured_at": dt.datetime.now(dt.UTC), "mstlake_version": mstlake.__version__,
    }
    stack_row = load_schema("stacks").from_rows([row])
    snapshot = None
    if commit:
        from mstlake.lake.archive import Archive

        snapshot = Archive(lake, archive_cfg).commit_stack(stack_row, sources, message=f"stack {provenance['field']} {band} {Path(store).stem}", replace=replace)
    return StackMeasurement(stack_row, sources, forced, snapshot, measured)


def measurable_planes(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A stack's planes as its photometry takes them: image, variance, mask, count, and where
    there is no data (masked or not finite: image 0, the median variance, mask bit 1 as a bad
    pixel)."""
    image, variance, count = ds["image"].values, ds["variance"].values, ds["count"].values
    bad = (ds["mask"].values != 0) | ~np.isfinite(image) | ~np.isfinite(variance)
    filler = float(np.nanmedian(variance[~bad])) if (~bad).any() else 1.0
    image = np.where(bad, 0.0, image).astype(np.float32)
    variance = np.where(bad, filler, variance).astype(np.float32)
    return image, variance, np.where(bad, 1, 0).astype(np.uint8), count, bad


def stack_gain(gain_e_per_adu: float, count: np.ndarray) -> float:
    """e-/ADU of a stack: its ADU are one input's at the reference zero point, and a pixel's
    photo-electrons add up over the frames that entered it."""
    return gain_e_per_adu * float(np.median(count[count > 0]))


def background_remapped(image: np.ndarray, mask: np.ndarray, extraction, measured) -> tuple:
    """``extraction`` with its background mapped again without the stars ``measured`` fitted
    (``mstlake.phot.frame.background_without_stars``: the first map sits high under a deep
    stack's crowd), its rms map kept (already scaled to the noise sums show); and the image
    minus the new background."""
    from mstlake.astrom import extract
    from mstlake.phot.frame import background_without_stars

    background = background_without_stars(image, extract.hidden_pixels(mask), measured.psf, measured.scene)
    return dataclasses.replace(extraction, background=background), image - background


def _noise_scaled(extraction, variance: np.ndarray, *, psf_fit: float, apertures: float):
    """The two noise estimates photometry uses, scaled: the background's rms map (PSF-fit errors)
    by ``psf_fit``, the variance plane (aperture errors) by ``apertures`` squared."""
    return dataclasses.replace(extraction, background_noise=extraction.background_noise * np.float32(psf_fit)), variance * np.float32(apertures**2)


def astrometric_check(wcs: WCS, sources: pd.DataFrame, reference: pd.DataFrame, *, match_radius_arcsec: float, pixel_scale_arcsec: float) -> tuple[float | None, float | None, int]:
    """Robust rms (1.4826 x median absolute offset, mas, along x and y) of clean, bright detections
    about their reference stars projected through the stack's grid WCS, which is not refitted:
    the stack is checked, not solved."""
    from mstlake.lake.associate import nearest_within

    clean = sources[(sources.flag == 0) & (sources.snr > 20)]
    ra, dec = wcs.pixel_to_world_values(clean.x_best.values, clean.y_best.values)
    nearest, _ = nearest_within(ra, dec, reference.ra.values, reference.dec.values, match_radius_arcsec)
    hit = nearest >= 0
    if hit.sum() < 5:
        return None, None, int(hit.sum())
    px, py = wcs.world_to_pixel_values(reference.ra.values[nearest[hit]], reference.dec.values[nearest[hit]])
    dx, dy = clean.x_best.values[hit] - px, clean.y_best.values[hit] - py
    mas = pixel_scale_arcsec * 1000

    def robust_rms(d):  # about zero: an offset of the whole grid counts; a blend read 1" off does not rule it
        return float(1.4826 * np.median(np.abs(d)) * mas)

    return robust_rms(dx), robust_rms(dy), int(hit.sum())


def noise_correlation(residual: np.ndarray, variance: np.ndarray, bad: np.ndarray, *, radius_px: float, sources_xy: np.ndarray, avoid_px: float, n_apertures: int = 8000, seed: int = 0) -> float:
    """How much larger the noise of a sum over a PSF-sized aperture is than the variance map
    says (1 for independent pixels; above 1 where resampling has correlated neighbours): the robust
    scatter of sums in apertures of ``radius_px`` at random places farther than ``avoid_px`` from
    every star in ``sources_xy`` (those the photometry models), over their predicted error. ``residual``: the image with its
    sky subtracted. The faint stars no detection found stay in the apertures: they are noise to
    forced photometry too. Checked against simulator truth (benchmarks/stack_depth.py): the
    corrected errors of faint stars' forced magnitudes scatter as they claim."""
    import sep
    from scipy.spatial import cKDTree

    ny, nx = residual.shape
    rng = np.random.default_rng(seed)
    margin = int(np.ceil(radius_px)) + 1
    xy = np.column_stack([rng.uniform(margin, nx - margin, n_apertures), rng.uniform(margin, ny - margin, n_apertures)])
    if len(sources_xy):
        distance, _ = cKDTree(np.asarray(sources_xy, float)).query(xy)
        xy = xy[distance > avoid_px]
    data = np.ascontiguousarray(residual, dtype=np.float64)
    sums, errors, flags = sep.sum_circle(data, xy[:, 0], xy[:, 1], radius_px, var=np.ascontiguousarray(variance, dtype=np.float64), mask=np.ascontiguousarray(bad), subpix=5)
    usable = (flags == 0) & np.isfinite(sums) & (errors > 0)
    if usable.sum() < 100:
        return 1.0
    scatter = 1.4826 * np.median(np.abs(sums[usable] - np.median(sums[usable])))
    return float(max(scatter / np.median(errors[usable]), 1.0))


ARTIFICIAL_STAR_SNR = 10.0  # the artificial stars that measure the forced photometry's noise: faint, the sky's noise dominates them
FULL_DEPTH_FRACTION = 0.9  # of the most frames any pixel has: the area a stack's depth is quoted for


def frames_at(count: np.ndarray, x, y) -> np.ndarray:
    """The number of frames combined at pixel positions (x, y) of a stack (0 off the grid)."""
    ix, iy = np.round(np.asarray(x, float)).astype(int), np.round(np.asarray(y, float)).astype(int)
    inside = (ix >= 0) & (ix < count.shape[1]) & (iy >= 0) & (iy < count.shape[0])
    return np.where(inside, count[np.clip(iy, 0, count.shape[0] - 1), np.clip(ix, 0, count.shape[1] - 1)], 0)


def depth_5sigma(flux: np.ndarray, flux_err: np.ndarray, zero_point: np.ndarray, *, gain: float | None = None, faint_snr: float = 20.0) -> float | None:
    """The magnitude of a point source its PSF photometry measures at S/N = 5: the median, over
    the stars the sky's noise dominates (S/N < ``faint_snr``), of zero point - 2.5 log10(5 x flux
    error). From the errors, not from the faint stars' measured magnitudes: those that pass an S/N
    cut are the ones noise pushed up (a fit of S/N against measured magnitude comes out ~0.5 mag
    too deep). With ``gain`` (e-/ADU) each error loses its star's own photon noise first: a
    point source at S/N 5 has next to none, while the stars that measure the noise range up to
    S/N 20, and which of them a catalogue holds changes with the depth (a library ending at
    g ~ 21.7 gives a deep stack only S/N > 5 stars, a single frame S/N < 5 ones)."""
    flux, flux_err, zero_point = (np.asarray(a, float) for a in (flux, flux_err, zero_point))
    good = np.isfinite(flux) & np.isfinite(zero_point) & (flux_err > 0)
    faint = good & (flux / np.where(flux_err > 0, flux_err, 1) < faint_snr)
    use = faint if faint.sum() >= 10 else good
    if use.sum() < 10:
        return None
    noise = sky_error(flux[use], flux_err[use], gain=gain) if gain else flux_err[use]
    return float(np.median(zero_point[use] - 2.5 * np.log10(5 * noise)))


def sky_error(flux, flux_err, *, gain: float) -> np.ndarray:
    """A flux error without its star's own photon noise (``gain`` e-/ADU): what a source of no
    flux at the same place would have. Never below half the error (a flux noise pushed up)."""
    flux, flux_err = np.asarray(flux, float), np.asarray(flux_err, float)
    return np.sqrt(np.maximum(flux_err**2 - np.maximum(flux, 0) / gain, 0.25 * flux_err**2))


CATALOGUE_MIN_SNR_FOUND_ON_RESIDUAL = 5.0  # below it, what the second pass found is fitted but not catalogued (noise peaks, mostly)


def _deep_catalogue(measured, count: np.ndarray, stack_id: int, band: str, mjd: float, partition_order: int) -> pa.Table:
    from mstlake.astrom.extract import FOUND_ON_RESIDUAL

    s = measured.sources
    second_pass = (s.flag.values & FOUND_ON_RESIDUAL) != 0
    psf_snr = s.flux_psf.values / np.where(s.flux_psf_err.values > 0, s.flux_psf_err.values, np.inf)
    s = s[~second_pass | (psf_snr >= CATALOGUE_MIN_SNR_FOUND_ON_RESIDUAL)]
    index = healpix.spatial_index(s.ra.values, s.dec.values)
    columns = {
        "_healpix_29": index, "healpix_partition": healpix.parent_pixel(index, partition_order).astype(np.int32), "stack_id": np.full(len(s), stack_id),
        "object_id": np.full(len(s), -1), "separation_arcsec": np.full(len(s), np.nan), "band": np.full(len(s), band), "mjd": np.full(len(s), mjd),
        "x": s.x_best, "y": s.y_best, "ra": s.ra, "dec": s.dec, "flux_psf": s.flux_psf, "flux_psf_err": s.flux_psf_err, "mag_psf": s.mag_psf, "mag_psf_err": s.mag_psf_inst_err,
        "mag_ap": s.mag_ap if "mag_ap" in s else np.full(len(s), np.nan), "mag_ap_err": s.mag_ap_best_err if "mag_ap_best_err" in s else np.full(len(s), np.nan),
        "snr": s.snr, "fwhm": s.fwhm, "a": s.a, "b": s.b, "theta": s.theta, "n_frames": frames_at(count, s.x_best.values, s.y_best.values), "flag": s.flag,
    }
    return load_schema("stack_sources").from_columns(columns)
