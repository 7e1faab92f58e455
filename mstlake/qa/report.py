"""The QA report (``mstlake qa``): a night's or the whole survey's diagnostic figures and tables
as one self-contained HTML file (figures embedded as PNG), read from a lake.

This module reads the lake and writes the file; the figures themselves are drawn by
``mstlake.qa.figures`` from plain arrays. Every section says what it shows and, where the lake
does not hold what a figure needs (no stacks yet, a night with no solved frame), says so in place
of the figure.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
import warnings
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

import mstlake
from mstlake.astrom.solve import RESIDUAL_GRID
from mstlake.config import InstrumentConfig
from mstlake.lake.tables import read_table
from mstlake.paths import LakePaths
from mstlake.phot import aperture as ap
from mstlake.phot.surface import Surface
from mstlake.qa import figures
from mstlake.query.lake import open_lake
from mstlake.schemas import load_schema

FRAME_COLUMNS = ["frame_id", "telescope", "band", "time_utc", "exptime", "airmass", "status", "seeing_arcsec", "zero_point_mag", "transparency", "cloudy", "rms_x_mas", "rms_y_mas", "n_matched", "reason"]


class QAError(RuntimeError):
    """A report that cannot be made (no lake, no such night)."""


@dataclass
class Section:
    title: str
    text: str = ""
    items: list = dataclass_field(default_factory=list)  # ("figure", caption, Figure) | ("table", caption, DataFrame) | ("note", text)

    def figure(self, caption: str, fig) -> None:
        self.items.append(("figure", caption, fig))

    def table(self, caption: str, table: pd.DataFrame) -> None:
        self.items.append(("table", caption, table))

    def note(self, text: str) -> None:
        self.items.append(("note", text))


def night_report(lake: LakePaths, field: str, night: int, *, instrument: InstrumentConfig, out_dir: Path | None = None) -> Path:
    """The QA report of one night of a field: its frames, the night's masters, a frame's mask
    planes, astrometric residuals before and after the distortion fit, growth curves and the
    aperture correction, zero points, the light-curve scatter against the noise, and the files
    quarantined. Returns the HTML file written (``out_dir``, default the lake's qa directory)."""
    frames = _field_frames(lake, field)
    night_frames = frames[frames.night == night]
    if night_frames.empty:
        known = sorted(frames.night.unique().tolist())
        raise QAError(f"field {field} has no frames on night {night} in {lake.root} (nights: {known})")
    sections = [
        _frames_section(night_frames),
        _masters_section(lake, sorted(night_frames.telescope.unique()), night),
        _mask_section(lake, field, night),
    ]
    sections += _frame_measurement_sections(lake, field, night, night_frames, instrument)
    sections.append(_zero_point_section(night_frames, f"night {night}"))
    sections.append(_scatter_section(clear_frame_points(lake, night_frames), instrument, f"night {night}: rms of each star over the night's clear frames"))
    sections.append(_quarantine_section(lake, night))
    path = (out_dir or lake.qa_dir) / f"{field}-{night}.html"
    return write_report(path, f"mstlake QA: field {field}, night {night}", sections, subtitle=f"{len(night_frames)} frames, {lake.root}")


def survey_report(lake: LakePaths, field: str, *, instrument: InstrumentConfig, out_dir: Path | None = None, examples: int = 3) -> Path:
    """The QA report of a whole field: nights, zero points and transparency over time, the
    astrometric rms night by night, light-curve scatter against the noise, image-stack depth and
    catalogue-stack scatter against N, example light curves (constant stars, variables folded on
    their Lomb-Scargle period, the newest transients) and every quarantined file."""
    frames = _field_frames(lake, field)
    if frames.empty:
        raise QAError(f"field {field} has no measured frames in {lake.root}: run mstlake ingest first")
    points = clear_frame_points(lake, frames)
    sections = [_nights_section(frames), _zero_point_section(frames, f"field {field}"), _astrometry_trend_section(lake, frames)]
    sections.append(_scatter_section(points, instrument, f"field {field}: rms of each object over every clear frame (magfit magnitudes)"))
    con = open_lake(lake.root)
    try:
        sections.append(_stacks_section(con, field, sorted(frames.band.unique()), points, gain=instrument.detector.gain_e_per_adu))
        sections.append(_example_curves_section(con, frames.band.value_counts().index[0], examples))
    finally:
        con.close()
    sections.append(_quarantine_section(lake, None))
    path = (out_dir or lake.qa_dir) / f"{field}.html"
    return write_report(path, f"mstlake QA: field {field}", sections, subtitle=f"{frames.night.nunique()} nights, {len(frames)} frames, {lake.root}")


# -- reading the lake ------------------------------------------------------------------------------


def _field_frames(lake: LakePaths, field: str) -> pd.DataFrame:
    """The field's frames as the archive holds them (status, seeing, zero point, astrometry)."""
    if not lake.root.is_dir():
        raise QAError(f"no lake at {lake.root}")
    if not lake.archive_catalogue.exists():
        raise QAError(f"the lake at {lake.root} has no archive yet: run mstlake ingest first")
    con = open_lake(lake.root)
    try:
        frames = con.execute("SELECT * FROM frames WHERE field = ? ORDER BY mjd", [field]).fetch_df()
    finally:
        con.close()
    return frames.assign(time_utc=pd.to_datetime(frames.date_obs).dt.strftime("%Y-%m-%d %H:%M:%S"))


def clear_frame_points(lake: LakePaths, frames: pd.DataFrame) -> pd.DataFrame:
    """The light-curve points (the archive's ``forced``) on ``frames`` that are calibrated and
    not cloudy: what the scatter and the single frames' depths are measured on."""
    clear = frames[(frames.status == "calibrated") & ~frames.cloudy.fillna(False).astype(bool)]
    con = open_lake(lake.root)
    try:
        con.register("chosen_frames", pd.DataFrame({"frame_id": clear.frame_id.to_numpy(np.int64)}))
        return con.execute("SELECT f.object_id, f.frame_id, f.band, f.mjd, f.x, f.y, f.flux, f.flux_err, f.mag, f.mag_err, f.mag_magfit, f.flag FROM forced f JOIN chosen_frames USING (frame_id)").fetch_df()
    finally:
        con.close()


# -- sections --------------------------------------------------------------------------------------


def _frames_section(frames: pd.DataFrame) -> Section:
    section = Section("Frames", "Every frame of the night with its status, seeing, zero point, transparency and astrometric rms; the reason where a frame failed.")
    section.table("frames", _rounded(frames[[c for c in FRAME_COLUMNS if c in frames]]))
    return section


def _masters_section(lake: LakePaths, telescopes: list[str], night: int) -> Section:
    section = Section("Calibration masters", "Master bias and its per-pixel scatter over the bias series, the pepper-and-salt pixels, the bad pixels and the small-scale flat of each telescope (the paper's Figures 3-5). The large-scale flat is the zero-point surface (Zero points below).")
    from mstlake.lake import cubes

    for telescope in telescopes:
        store = lake.masters(telescope, night)
        if not store.exists():
            section.note(f"{telescope}: no masters for night {night} (calibration not run, or it failed: see the calibration log).")
            continue
        ds = cubes.open_store(store)
        panels = [("master bias (ADU)", ds.master_bias.values, "linear"), ("bias scatter (ADU)", ds.bias_std.values, "linear"), ("pepper-and-salt pixels", ds.pepper_salt.values, "binary"), ("bad pixels", ds.bad.values, "binary")]
        if "small_flat" in ds:
            panels.append(("small-scale flat", ds.small_flat.values, "ratio"))
        section.figure(f"{telescope}, night {night}: masters", figures.image_panels(panels, title=f"{telescope} masters, night {night}"))
    return section


def _mask_section(lake: LakePaths, field: str, night: int) -> Section:
    section = Section("Masks", "The night's frame with the most satellite-track pixels (else the most masked), with each mask plane in its colour (the paper's Figure 6).")
    from mstlake.calib.apply import TRACK
    from mstlake.lake import cubes

    best = None
    for _, band, cube_night, store in lake.field_cubes(field):
        if cube_night != night:
            continue
        ds = cubes.open_store(store)
        for index in range(ds.sizes["frame"]):
            mask = ds["mask"].isel(frame=index).values
            score = (int(((mask & TRACK) != 0).sum()), int((mask != 0).sum()))
            if best is None or score > best[0]:
                best = (score, store, index, band, int(ds.frame_id.values[index]))
    if best is None:
        section.note(f"no calibrated cube for night {night}.")
        return section
    (tracks, masked), store, index, band, frame_id = best
    ds = cubes.open_store(store).isel(frame=index)
    section.figure(f"frame {frame_id} ({band}): {tracks:,} track pixels, {masked:,} masked", figures.frame_with_masks(ds.image.values, ds["mask"].values, title=f"frame {frame_id}, {band}, night {night}"))
    return section


def _frame_measurement_sections(lake: LakePaths, field: str, night: int, frames: pd.DataFrame, instrument: InstrumentConfig) -> list[Section]:
    zero_point = Section("Zero-point surface", "The frame's zero point over the detector (the large-scale flat and the transparency together) and the residuals of its standards, library magnitude - calibrated magnitude.")
    astrometry = Section("Astrometry", "Residuals of matched reference stars on the night's best-matched frame through a TAN-only fit and through its TAN-SIP solution (Figures 7-8), and each frame's rms through the night (Figure 11).")
    apertures = Section("Apertures", "Growth curves of the frame's bright stars with its best (S/N) and reference apertures (Figure 9), and the aperture correction mag_ref - mag_best over the detector with its residuals (Figure 10).")
    solved = frames[frames.wcs_header.notna() & (frames.n_matched > 0)]
    if solved.empty:
        astrometry.note("no frame of this night was solved.")
        return [astrometry, apertures, zero_point]
    astrometry.figure("astrometric rms per frame", figures.residual_trend(solved.mjd.values, solved.rms_x_mas.values, solved.rms_y_mas.values, xlabel="MJD", title=f"night {night}: rms per frame"))
    frame = solved.sort_values("n_matched", ascending=False).iloc[0]
    frame_id, band = int(frame.frame_id), frame.band
    sources = read_table(lake.sources_file(field, band, night), load_schema("sources")).to_pandas()
    sources = sources[sources.frame_id == frame_id]
    shape = (int(frame.naxis2), int(frame.naxis1))
    scale_mas = instrument.detector.pixel_scale_arcsec * 1000
    reference = pd.read_parquet(lake.reference_catalogue(field)) if lake.reference_catalogue(field).exists() else None
    if reference is not None and len(sources):
        residuals = astrometric_residuals_of(sources, reference, fits.Header.fromstring(frame.wcs_header), shape=shape, scale_mas=scale_mas)
        if residuals is not None:
            x, y, before, after = residuals
            astrometry.figure(f"frame {frame_id} ({band}): residuals before and after the distortion fit", figures.astrometric_residuals(x, y, before, after, shape=shape, title=f"frame {frame_id}, {band}"))
    photometry = _photometry_row(lake, frame_id)
    bright = sources[(sources.flag == 0) & (sources.snr > 100) & (sources.snr < 2000)]
    if photometry is not None and photometry["reference_aperture_px"]:
        bright = bright[isolated(bright, sources, radius_px=photometry["reference_aperture_px"] / 2 + 3)]
    if photometry is None or bright.empty:
        apertures.note(f"frame {frame_id} has no photometry or no bright clean star.")
        return [astrometry, apertures, zero_point]
    fluxes = np.vstack(bright.flux_ap.values).astype(float)
    best, reference_diameter = photometry["best_aperture_px"], photometry["reference_aperture_px"]
    apertures.figure(f"frame {frame_id}: growth curves", figures.growth_curves(ap.DIAMETERS_PX, fluxes, best=best, reference=reference_diameter, title=f"frame {frame_id}, {band}: {len(bright)} stars"))
    if photometry["aperture_correction"] is not None and best and reference_diameter:
        surface = Surface.from_coefficients(photometry["aperture_correction"], shape)
        b, r = ap.DIAMETERS_PX.index(best), ap.DIAMETERS_PX.index(reference_diameter)
        with np.errstate(invalid="ignore", divide="ignore"):
            measured = -2.5 * np.log10(fluxes[:, r] / fluxes[:, b])
        residual = measured - surface(bright.x.values, bright.y.values)
        apertures.figure(f"frame {frame_id}: aperture correction", figures.surface_and_residuals(surface_grid(surface, shape), bright.x.values, bright.y.values, residual, label="aperture correction", title=f"frame {frame_id}, {band}: mag_ref - mag_best"))
    if photometry["zero_point"] is not None and reference is not None and f"mag_{band}" in reference:
        forced = read_table(lake.forced_file(field, band, night), load_schema("forced_photometry")).to_pandas()
        forced = forced[(forced.frame_id == frame_id) & (forced.flag == 0) & (forced.mag_err < 0.05)]
        library = forced.source_id.map(pd.Series(reference[f"mag_{band}"].values, index=reference.source_id.values))
        surface = Surface.from_coefficients(photometry["zero_point"], shape)
        zero_point.figure(f"frame {frame_id}: zero-point surface", figures.surface_and_residuals(surface_grid(surface, shape), forced.x.values, forced.y.values, (library - forced.mag).values, label="zero point", title=f"frame {frame_id}, {band}: zero point and its standards"))
    else:
        zero_point.note(f"frame {frame_id} has no zero-point surface.")
    return [astrometry, apertures, zero_point]


def isolated(stars: pd.DataFrame, everything: pd.DataFrame, *, radius_px: float, contrast: float = 0.01) -> np.ndarray:
    """Which ``stars`` have no other detection within ``radius_px`` brighter than ``contrast`` of
    their own flux: their large apertures hold only their own light."""
    from scipy.spatial import cKDTree

    xy = everything[["x", "y"]].to_numpy()
    flux = everything.flux_psf.to_numpy()
    tree = cKDTree(xy)
    keep = np.ones(len(stars), bool)
    for k, (position, own) in enumerate(zip(stars[["x", "y"]].to_numpy(), stars.flux_psf.to_numpy(), strict=True)):
        others = [j for j in tree.query_ball_point(position, radius_px) if np.hypot(*(xy[j] - position)) > 0.5]  # not the star itself
        keep[k] = not others or np.nanmax(flux[others]) < contrast * own
    return keep


def astrometric_residuals_of(sources: pd.DataFrame, reference: pd.DataFrame, header: fits.Header, *, shape: tuple[int, int], scale_mas: float, match_px: float = 1.5):
    """Clean bright detections matched to reference stars through the frame's solution: their
    (x, y), and residuals (mas, detected - projected) through a TAN-only fit to the same matches
    and through the solution itself. None with fewer than 10 matches."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points
    from scipy.spatial import cKDTree

    wcs = WCS(header)
    clean = sources[(sources.flag == 0) & (sources.snr > 20)]
    px, py = wcs.all_world2pix(reference.ra.values, reference.dec.values, 0, quiet=True)  # stars far off the frame need not converge
    inside = (px > -1) & (px < shape[1]) & (py > -1) & (py < shape[0])
    if inside.sum() < 10 or len(clean) < 10:
        return None
    distance, nearest = cKDTree(np.column_stack([px[inside], py[inside]])).query(clean[["x", "y"]].to_numpy())
    hit = distance < match_px
    if hit.sum() < 10:
        return None
    x, y = clean.x.values[hit], clean.y.values[hit]
    ra, dec = reference.ra.values[inside][nearest[hit]], reference.dec.values[inside][nearest[hit]]
    after = ((x - px[inside][nearest[hit]]) * scale_mas, (y - py[inside][nearest[hit]]) * scale_mas)
    linear = fit_wcs_from_points((x, y), SkyCoord(ra, dec, unit="deg"), projection="TAN", sip_degree=None)
    lx, ly = linear.all_world2pix(ra, dec, 0)
    return x, y, ((x - lx) * scale_mas, (y - ly) * scale_mas), after


def surface_grid(surface: Surface, shape: tuple[int, int], cells: int = 60) -> np.ndarray:
    """A surface evaluated on a coarse grid over the detector (rows follow y)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, cells), np.linspace(0, ny - 1, max(2, int(cells * ny / nx))))
    return surface(gx.ravel(), gy.ravel()).reshape(gx.shape)


def _photometry_row(lake: LakePaths, frame_id: int) -> dict | None:
    table = read_table(lake.photometry_table, load_schema("photometry")).to_pandas()
    rows = table[table.frame_id == frame_id]
    return None if rows.empty else rows.iloc[-1].to_dict()


def _zero_point_section(frames: pd.DataFrame, what: str) -> Section:
    section = Section("Zero points and transparency", "Zero point at the detector centre and transparency (flux relative to the clearest frame of the night) of each frame; frames flagged cloudy hollow.")
    calibrated = frames[frames.zero_point_mag.notna()]
    if calibrated.empty:
        section.note("no frame is flux-calibrated.")
        return section
    section.figure(f"{what}: zero point and transparency", figures.zero_points_in_time(calibrated, title=what))
    return section


def _scatter_section(points: pd.DataFrame, instrument: InstrumentConfig, what: str) -> Section:
    section = Section("Light-curve scatter", "The rms of each star's magnitudes over the clear calibrated frames against its median magnitude (magfit magnitudes where present), beside the noise a point source has on a typical frame: its own photon noise, the sky's (from the faint stars' errors), and both (the paper's Figure 12).")
    if points.empty:
        section.note("no clear calibrated frame.")
        return section
    points = points[(points.flag == 0) & np.isfinite(points.mag)]
    gain = instrument.detector.gain_e_per_adu
    for band, group in points.groupby("band", sort=True):
        mag = group.mag_magfit.where(group.mag_magfit.notna(), group.mag)
        per_star = group.assign(shown=mag).groupby("object_id").shown.agg(["median", "std", "size"])
        per_star = per_star[per_star["size"] >= 3]
        if len(per_star) < 10:
            section.note(f"{band}: fewer than 10 stars with 3 or more clear points.")
            continue
        zero_point = float(np.nanmedian(group.mag + 2.5 * np.log10(np.where(group.flux > 0, group.flux, np.nan))))
        faint = group[(group.flux / group.flux_err).between(-3, 5)]
        sky = float(np.sqrt(np.nanmedian(np.maximum(faint.flux_err**2 - np.maximum(faint.flux, 0) / gain, 0)))) if len(faint) >= 10 else float(np.nanmedian(group.flux_err))
        grid = np.linspace(per_star["median"].min() - 0.5, per_star["median"].max() + 0.5, 200)
        theory = {name: (grid, sigma) for name, sigma in figures.noise_model(grid, zero_point=zero_point, gain=gain, sky_error_adu=sky).items()}
        section.figure(f"{band}: scatter against magnitude", figures.scatter_vs_magnitude(per_star["median"].values, per_star["std"].values, theory=theory, title=f"{what}, {band}"))
    return section


def _quarantine_section(lake: LakePaths, night: int | None) -> Section:
    section = Section("Quarantined files", "Raw files the inventory set aside, with the reason (nothing is deleted or moved).")
    table = read_table(lake.quarantine_table, load_schema("quarantine")).to_pandas() if lake.quarantine_table.exists() else pd.DataFrame()
    if night is not None and len(table):
        date = dt.datetime.strptime(str(night), "%Y%m%d").date()
        observed = pd.to_datetime(table.date_obs, errors="coerce", utc=True).dt.date
        table = table[table.path.str.contains(str(night), regex=False) | observed.isin([date, date + dt.timedelta(days=1)])]
    if table.empty:
        section.note("none.")
    else:
        section.table(f"{len(table)} files", _rounded(table[["path", "reason_code", "reason", "duplicate_of"]].reset_index(drop=True)))
    return section


def _nights_section(frames: pd.DataFrame) -> Section:
    section = Section("Nights", "Frames per night and band: how many were solved and flux-calibrated, how many flagged cloudy, and the night's median seeing, zero point and astrometric rms.")
    summary = frames.groupby(["night", "band"]).agg(
        frames=("frame_id", "size"), solved=("wcs_header", lambda h: int(h.notna().sum())), calibrated=("status", lambda s: int((s == "calibrated").sum())),
        cloudy=("cloudy", lambda c: int(c.fillna(False).astype(bool).sum())), seeing_arcsec=("seeing_arcsec", "median"), zero_point_mag=("zero_point_mag", "median"),
        rms_x_mas=("rms_x_mas", "median"), rms_y_mas=("rms_y_mas", "median"),
    ).reset_index()
    section.table("nights", _rounded(summary))
    return section


def _astrometry_trend_section(lake: LakePaths, frames: pd.DataFrame) -> Section:
    section = Section("Astrometry night by night", "Median astrometric rms of each night's solved frames (the paper's Figure 11), and the median residual map of each night's frames: what the distortion fit leaves, night after night.")
    per_night = frames[frames.rms_x_mas.notna()].groupby("night")[["rms_x_mas", "rms_y_mas"]].median().reset_index()
    if per_night.empty:
        section.note("no solved frame.")
        return section
    position = np.arange(len(per_night))
    section.figure("median rms per night", figures.residual_trend(position, per_night.rms_x_mas.values, per_night.rms_y_mas.values, xlabel="night", labels=per_night.night.astype(str).tolist(), title="astrometric rms per night"))
    maps = nightly_residual_maps(lake, frames)
    if maps:
        solved = frames[frames.naxis1.notna()]
        section.figure("residual maps per night", figures.residual_maps(maps, shape=(int(solved.naxis2.max()), int(solved.naxis1.max())), title="median residual per detector cell, night by night and telescope"))
    return section


def nightly_residual_maps(lake: LakePaths, frames: pd.DataFrame, *, last: int = 12) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The median over each night's solved frames of each telescope (each camera has its own
    distortion) of their residual maps (the astrometry table's cells, ``RESIDUAL_GRID``), for the
    last ``last`` nights and telescopes: (label, mx, my) in mas."""
    table = read_table(lake.astrometry_table, load_schema("astrometry")).to_pandas()
    table = table[table.residual_map_x_mas.notna()].merge(frames[["frame_id", "telescope"]], on="frame_id")
    maps = []
    for (night, telescope), group in sorted(table.groupby(["night", "telescope"]))[-last:]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a cell no frame had stars in
            mx, my = (np.nanmedian(np.stack([np.asarray(m, float).reshape(RESIDUAL_GRID) for m in group[column]]), axis=0) for column in ("residual_map_x_mas", "residual_map_y_mas"))
        maps.append((f"{night} {telescope} ({len(group)} frames)", mx, my))
    return maps


def _stacks_section(con, field: str, bands: list[str], points: pd.DataFrame, *, gain: float) -> Section:
    section = Section("Stacking", "Image stacks: 5-sigma depth against the number of frames, beside the single frames' median depth + 1.25 log10 N (equal frames; Figure 13). Catalogue stacks (the catalog_stack macro): the rms of constant stars' light curves binned by N consecutive epochs, beside 1/sqrt(N) (Figure 14).")
    stacks = con.execute("SELECT band, n_frames, depth_5sigma_mag FROM stacks WHERE field = ? AND depth_5sigma_mag IS NOT NULL ORDER BY n_frames", [field]).fetch_df()
    if stacks.empty:
        section.note("no measured image stack yet (mstlake stack --field ... --band ...).")
    else:
        singles = single_frame_depths(points, gain=gain)
        n_max = max(2.0, float(stacks.n_frames.max()))
        grid = np.geomspace(1, n_max, 50)
        expected = {band: (grid, depth + 1.25 * np.log10(grid)) for band, depth in singles.items() if band in set(stacks.band)}
        n = np.concatenate([stacks.n_frames.values, np.ones(len(expected))])
        depth = np.concatenate([stacks.depth_5sigma_mag.values, [singles[b] for b in expected]])
        labels = np.concatenate([stacks.band.values, list(expected)])
        section.figure("image-stack depth against N", figures.gain_with_n(n, depth, by=labels, expected=expected, ylabel="5-sigma depth (mag)", title="image stacks (N = 1: the clear frames' median depth)", expected_label="frames' median depth + 1.25 log10 N"))
    binned = catalogue_stack_scatter(con, bands)
    if binned.empty:
        section.note("too few epochs for catalogue stacks.")
    else:
        expected = {band: (group.n.values, group.rms.values[0] / np.sqrt(group.n.values)) for band, group in binned.groupby("band")}
        section.figure("catalogue-stack scatter against N", figures.gain_with_n(binned.n.values, binned.rms.values, by=binned.band.values, expected=expected, ylabel="median rms of binned light curves (mag)", title="catalogue stacks of constant stars", expected_label="rms(1) / sqrt(N)", log_y=True))
    return section


def single_frame_depths(points: pd.DataFrame, *, gain: float) -> dict[str, float]:
    """Per band, the median over frames of each frame's 5-sigma depth from its light-curve
    ``points`` (``mstlake.pipeline.stack.depth_5sigma``, ``gain`` e-/ADU: what a stack's depth is
    measured with)."""
    from mstlake.pipeline.stack import depth_5sigma

    points = points[np.isfinite(points.mag) & (points.flux > 0)]
    depths: dict[str, list[float]] = {}
    for (band, _), group in points.groupby(["band", "frame_id"]):
        zero_point = group.mag.values + 2.5 * np.log10(group.flux.values)
        depth = depth_5sigma(group.flux.values, group.flux_err.values, zero_point, gain=gain)
        if depth is not None:
            depths.setdefault(band, []).append(depth)
    return {band: float(np.median(values)) for band, values in depths.items()}


def catalogue_stack_scatter(con, bands, *, sizes=(1, 2, 4, 8, 16, 32), stars: int = 25, min_epochs: int = 8) -> pd.DataFrame:
    """Per band and N: the median, over the brightest constant stars with ``min_epochs`` good
    epochs (``variables``: reduced chi^2 < 3), of the rms of their catalogue stacks of N
    (``catalog_stack``, as users query them), where a star has at least three bins (band, n,
    rms, stars). ``con``: ``mstlake.open_lake``'s connection."""
    by_n = " UNION ALL ".join(f"SELECT {int(n)} AS n, band, mag FROM catalog_stack($object_id, {int(n)})" for n in sizes)
    rows = []
    for band in bands:
        chosen = con.execute("SELECT object_id FROM variables(?, ?, 0.0, -1e9) WHERE chi2 < 3 ORDER BY median_mag LIMIT ?", [band, min_epochs, stars]).fetchnumpy()["object_id"]
        rms: dict[int, list[float]] = {}
        for object_id in chosen:
            binned = con.execute(by_n, {"object_id": int(object_id)}).fetch_df()
            for n, group in binned[binned.band == band].groupby("n"):
                if len(group) >= 3:
                    rms.setdefault(int(n), []).append(float(np.std(group.mag, ddof=1)))
        rows += [{"band": band, "n": n, "rms": float(np.median(values)), "stars": len(values)} for n, values in sorted(rms.items()) if len(values) >= 5]
    return pd.DataFrame(rows, columns=["band", "n", "rms", "stars"])


def _example_curves_section(con, band: str, count: int) -> Section:
    section = Section("Example light curves", "Constant stars (most epochs, least variable), variable candidates (largest Stetson J, folded on their Lomb-Scargle period) and the newest transients (objects the library lacks, latest first seen) (Figures 15-17). Hollow grey: flagged points or cloudy frames.")
    from mstlake.query.lightcurves import lightcurve_figure

    constant = con.execute("SELECT object_id FROM variables(?, 3, 0.0, -1e9) WHERE chi2 < 3 ORDER BY epochs DESC, median_mag LIMIT ?", [band, count]).fetchnumpy()["object_id"]
    variable = con.execute("SELECT object_id FROM variables(?, 10, 5.0, 0.5) ORDER BY stetson_j DESC LIMIT ?", [band, count]).fetchnumpy()["object_id"]
    newest = con.execute("SELECT object_id FROM objects WHERE library_id IS NULL ORDER BY first_mjd DESC, n_detections DESC LIMIT ?", [count]).fetchnumpy()["object_id"]
    for name, ids in (("constant stars", constant), ("variable candidates", variable), ("newest transients", newest)):
        curves = [con.execute("SELECT * FROM lightcurve(?)", [int(object_id)]).fetch_df() for object_id in ids]
        curves = [curve for curve in curves if len(curve)]
        if curves:
            section.figure(name, lightcurve_figure(pd.concat(curves, ignore_index=True), title=name, fold=name == "variable candidates"))
        else:
            section.note(f"{name}: none in this lake.")
    return section


# -- writing ---------------------------------------------------------------------------------------


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """A table as shown: floats rounded (float32 through float64, so 27.102 is not 27.101999),
    missing text blank."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype.kind == "f":
            table[column] = table[column].astype(np.float64).round(4 if column == "transparency" else 3 if column.endswith("_mag") or column == "airmass" else 1 if column.endswith("_mas") else 2)
        elif table[column].dtype == object:
            table[column] = table[column].where(table[column].notna(), "")
    return table


def png_data(fig, dpi: int = 110) -> str:
    """A figure as a base64 PNG ``data:`` URL."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1250px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td:last-child{text-align:left}.note{color:#8a5a00}nav a{margin-right:1em}.wide{overflow-x:auto}"""


def write_report(path: Path, title: str, sections: list[Section], *, subtitle: str = "") -> Path:
    """Write ``sections`` as one HTML file (figures embedded; atomic: a reader never sees half)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}<br>made {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by mstlake {html.escape(mstlake.__version__)}</p>")
    parts.append("<nav>" + "".join(f"<a href='#s{k}'>{html.escape(s.title)}</a>" for k, s in enumerate(sections)) + "</nav>")
    for k, section in enumerate(sections):
        parts.append(f"<section id='s{k}'><h2>{html.escape(section.title)}</h2><p>{html.escape(section.text)}</p>")
        for item in section.items:
            if item[0] == "figure":
                _, caption, fig = item
                parts.append(f"<figure><img src='{png_data(fig)}' alt='{html.escape(caption, quote=True)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
            elif item[0] == "table":
                _, caption, table = item
                parts.append(f"<p><b>{html.escape(caption)}</b></p><div class='wide'>" + table.to_html(index=False, na_rep="", escape=True, border=0) + "</div>")
            else:
                parts.append(f"<p class='note'>{html.escape(item[1])}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
