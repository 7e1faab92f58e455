"""Calibration (the paper's STIR) as one lazy Dask graph over a set of nights.

For each telescope: master bias per night (row blocks over the night's bias frames), the
pepper-and-salt map from the nearest night with a long bias series, hot pixels from the darks, a
small-scale flat per night, combined over +-5 nights with flats; then every science frame is
calibrated, masked (bad, saturated, PS, tracks, cosmic rays) and written into its night's Zarr cube.
Nothing is computed while the graph is built. A science frame that fails is logged with its reason
and the night goes on; cubes and masters are built aside and swapped into place when complete.
"""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa

from mstlake.astro import night_to_mjd_local_noon
from mstlake.calib import apply, artefacts, bias, flat
from mstlake.calib.combine import clipped_mean, screen_frames
from mstlake.config import CalibrationConfig, InstrumentConfig
from mstlake.lake import cubes
from mstlake.lake.rawfiles import read_frame, read_rows
from mstlake.lake.tables import read_table, update_column, without_frames, write_table_atomic
from mstlake.paths import LakePaths
from mstlake.pipeline.execute import compute
from mstlake.schemas import load_schema


class CalibrationError(RuntimeError):
    """Calibration of a night cannot proceed (no bias frames, no flats within reach)."""


@dataclass
class NightResult:
    telescope: str
    night: int
    masters: Path
    cubes: list[Path] = field(default_factory=list)
    science: int = 0
    science_ids: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # frame_id, kind, reason
    flat_nights: list[int] = field(default_factory=list)
    ps_night: int | None = None


# -- graph pieces (each returns a Delayed) ---------------------------------------------------------


def _row_blocks(ny: int, rows: int):
    return [(y, min(y + rows, ny)) for y in range(0, ny, rows)]


def _stack_block(paths, y0, y1):
    return np.stack([read_rows(p, y0, y1) for p in paths]).astype(np.float32)


def _bias_block(paths, keep, y0, y1, sigma, pixel_std):
    kept = [p for p, k in zip(paths, keep) if k]
    return clipped_mean(_stack_block(kept, y0, y1), sigma=sigma, pixel_noise=pixel_std)[0]


def master_bias_graph(paths: list[str], levels, noises, shape, cfg: CalibrationConfig, pixel_std):
    """Master bias from bias frames whose median level and robust noise the inventory measured
    (frames.median_adu, frames.robust_std_adu): frames are screened without reading them again.
    Each pixel is clipped in units of its own std over the PS series (``pixel_std``, delayed), so
    pepper-and-salt pixels get their mean level (see ``bias.master_bias``)."""
    screen = screen_frames(levels, noises, reject_sigma=cfg.frame_reject_sigma, noise_ratio_max=cfg.frame_noise_ratio_max)
    blocks = [dask.delayed(_bias_block)(paths, screen.keep, y0, y1, cfg.bias_clip_sigma, pixel_std[y0:y1]) for y0, y1 in _row_blocks(shape[0], cfg.row_block)]
    return dask.delayed(np.concatenate)(blocks, axis=0), screen


def _ps_block(paths, y0, y1, threshold, groups):
    result = bias.pepper_salt_map(_stack_block(paths, y0, y1), threshold_adu=threshold, groups=groups)
    return result.mask, result.std


def pepper_salt_graph(paths: list[str], shape, cfg: CalibrationConfig):
    blocks = [dask.delayed(_ps_block, nout=2)(paths, y0, y1, cfg.ps_std_threshold_adu, cfg.ps_groups) for y0, y1 in _row_blocks(shape[0], cfg.row_block)]
    mask = dask.delayed(np.concatenate)([b[0] for b in blocks], axis=0)
    std = dask.delayed(np.concatenate)([b[1] for b in blocks], axis=0)
    return mask, std


def _hot_block(paths, master_block, y0, y1, sigma):
    return bias.hot_pixels(_stack_block(paths, y0, y1), master_block, sigma=sigma)[0]


def hot_graph(dark_paths: list[str], master, shape, cfg: CalibrationConfig):
    # hot_pixels normalises each dark by its own robust spread: blocks are large enough for that
    blocks = [dask.delayed(_hot_block)(dark_paths, master[y0:y1], y0, y1, cfg.hot_sigma) for y0, y1 in _row_blocks(shape[0], cfg.row_block)]
    return dask.delayed(np.concatenate)(blocks, axis=0)


def _dark_rate_block(paths, exptimes, master_block, y0, y1, sigma):
    stack = (_stack_block(paths, y0, y1) - master_block) / np.asarray(exptimes, np.float32)[:, None, None]
    return clipped_mean(stack, sigma=sigma)[0]


def dark_rate_graph(dark_paths: list[str], exptimes: list[float], master, shape, cfg: CalibrationConfig):
    """Master dark current in ADU per second."""
    blocks = [dask.delayed(_dark_rate_block)(dark_paths, exptimes, master[y0:y1], y0, y1, cfg.bias_clip_sigma) for y0, y1 in _row_blocks(shape[0], cfg.row_block)]
    return dask.delayed(np.concatenate)(blocks, axis=0)


def _prepare_flat(path, master, cfg: CalibrationConfig, saturation, gain):
    return flat.prepare_flat(read_frame(path), master, size=cfg.flat_smoothing_px, saturation_adu=saturation, gain=gain)


def _combine_flats(target_mjd, nightly, cfg: CalibrationConfig):
    usable = [n for n, _ in nightly if n is not None]
    if not usable:
        raise CalibrationError("no usable twilight flat within reach of this night")
    return flat.combine_nights(target_mjd, usable, window_nights=cfg.flat_window_nights, max_span_days=cfg.flat_max_span_days)


def _calibrate_science(path, exptime, index, staging, masters, cfg: CalibrationConfig, instrument: InstrumentConfig):
    """One science frame, start to finish; returns (index, None) or (index, reason)."""
    try:
        det = instrument.detector
        raw = read_frame(path)
        master, bias_std, ps, bad, small, dark_rate = masters
        dark = None if dark_rate is None else dark_rate * np.float32(exptime)
        image, variance = apply.calibrate(raw, master_bias=master, flat=small, bias_std=bias_std, gain=det.gain_e_per_adu, dark_adu=dark)
        mask = apply.static_mask(raw, bad=bad > 0, pepper_salt=ps, saturation_adu=det.saturation_adu)
        known_bad = mask > 0
        found = artefacts.artefact_masks(image, variance, known_bad, cfg=cfg, gain=det.gain_e_per_adu, read_noise_e=det.read_noise_e, saturation_adu=det.saturation_adu)
        mask[found.tracks] |= apply.TRACK
        mask[found.cosmic_rays] |= apply.COSMIC_RAY
        stored, _ = cubes.quantise(image, found.background_rms)
        cubes.write_frame(staging, index, image=stored, variance=variance, mask=mask)
        return index, None, {"tracks": len(found.found_tracks), "cosmic_ray_pixels": int(found.cosmic_rays.sum()), "star_peak_fraction": found.star_peak_fraction}
    except Exception as err:  # a frame's failure is recorded, the night goes on
        return index, f"{type(err).__name__}: {err}", {"traceback": traceback.format_exc(limit=3)}


# -- orchestration ---------------------------------------------------------------------------------


def _nearest(nights_with, night):
    return min(nights_with, key=lambda n: (abs(night_to_mjd_local_noon(n, 0) - night_to_mjd_local_noon(night, 0)), n))


def _already_done(lake: LakePaths, telescope: str, band: str, science) -> bool:
    """A night is done when its masters exist and its cubes hold exactly its current science frames."""
    if not lake.masters(telescope, int(science.night.iloc[0])).exists():
        return False
    for fld, rows in science.groupby(science.field.fillna("nofield")):
        cube = lake.cube(fld, band, int(rows.night.iloc[0]))
        if not cube.exists() or cubes.frame_ids(cube) != set(rows.frame_id.tolist()):
            return False
    return True


def _plan_telescope(lake: LakePaths, telescope: str, tel_frames, nights: list[int] | None, *, instrument: InstrumentConfig, cfg: CalibrationConfig, force: bool, redo: set[int] = frozenset()) -> list:
    """The graph for one telescope's nights (``redo``: calibrated again even if done): a list of
    (result, staged cubes, extras)."""
    det = instrument.detector
    gain, saturation = det.gain_e_per_adu, det.saturation_adu
    offset = instrument.site.utc_offset_hours
    graph = []
    shape = (int(tel_frames.naxis2.iloc[0]), int(tel_frames.naxis1.iloc[0]))
    by_kind = {k: g.sort_values("mjd") for k, g in tel_frames.groupby("type")}
    science = by_kind.get("science")
    if science is None:
        return []
    wanted = sorted(set(science.night)) if nights is None else [n for n in nights if n in set(science.night)]
    band = instrument.telescopes[telescope].band
    if not force:
        wanted = [n for n in wanted if n in redo or not _already_done(lake, telescope, band, science[science.night == n])]
    if not wanted:
        return []
    biases = by_kind.get("bias")
    if biases is None:
        raise CalibrationError(f"{telescope}: no bias frames at all")
    bias_nights = sorted(set(biases.night))
    counts = biases.groupby("night").size()
    series_nights = sorted(counts[counts >= cfg.ps_min_frames].index)
    if not series_nights:
        raise CalibrationError(f"{telescope}: no night has a series of >= {cfg.ps_min_frames} bias frames for the pepper-and-salt map")

    master_cache, ps_cache, nightly_cache = {}, {}, {}

    def master_for(night):
        source = night if counts.get(night, 0) >= cfg.min_bias_frames else _nearest([n for n in bias_nights if counts[n] >= cfg.min_bias_frames], night)
        if source not in master_cache:
            rows = biases[biases.night == source]
            pixel_std = ps_for(source)[1]
            master_cache[source] = (*master_bias_graph(rows.path.tolist(), rows.median_adu.tolist(), rows.robust_std_adu.tolist(), shape, cfg, pixel_std), source, rows.frame_id.tolist())
        return master_cache[source]

    def ps_for(night):
        source = _nearest(series_nights, night)
        if source not in ps_cache:
            paths = biases[biases.night == source].path.tolist()
            ps_cache[source] = (*pepper_salt_graph(paths, shape, cfg), source)
        return ps_cache[source]

    flats = by_kind.get("flat")
    flat_nights = sorted(set(flats.night)) if flats is not None else []

    def nightly_for(night):
        if night not in nightly_cache:
            master = master_for(night)[0]
            rows = flats[flats.night == night]
            prepared = [dask.delayed(_prepare_flat)(p, master, cfg, saturation, gain) for p in rows.path]
            nightly_cache[night] = (dask.delayed(flat.nightly_flat_from_prepared, nout=2)(prepared, night_mjd=night_to_mjd_local_noon(night, offset), cfg=cfg, gain=gain), rows.frame_id.tolist())
        return nightly_cache[night]

    darks = by_kind.get("dark")
    for night in wanted:
        result = NightResult(telescope=telescope, night=night, masters=lake.masters(telescope, night))
        master, screen, bias_source, bias_ids = master_for(night)
        ps_mask, bias_std, ps_source = ps_for(night)
        result.ps_night = ps_source
        dark_rate = None
        if darks is not None and len(darks):
            dark_night = _nearest(sorted(set(darks.night)), night)
            night_darks = darks[darks.night == dark_night]
            hot = hot_graph(night_darks.path.tolist(), master, shape, cfg)
            if cfg.subtract_dark:
                dark_rate = dark_rate_graph(night_darks.path.tolist(), night_darks.exptime.tolist(), master, shape, cfg)
        else:
            if cfg.subtract_dark:
                raise CalibrationError(f"{telescope}: subtract_dark is set but there are no darks")
            hot = dask.delayed(np.zeros)(shape, bool)
        if not flat_nights:
            raise CalibrationError(f"{telescope}: no twilight flats at all")
        target = night_to_mjd_local_noon(night, offset)
        times = {night_to_mjd_local_noon(n, offset): n for n in flat_nights}
        chosen_nights = [times[t] for t in flat.choose_nights(target, list(times), window_nights=cfg.flat_window_nights, max_span_days=cfg.flat_max_span_days)]
        result.flat_nights = chosen_nights
        nightly = [nightly_for(n) for n in chosen_nights]
        combined = dask.delayed(_combine_flats, nout=2)(target, [n[0] for n in nightly], cfg)
        small = combined[0]
        bad = dask.delayed(bias.bad_pixel_map)(hot, ps_mask, small, dead_response_max=cfg.dead_response_max)
        masters = dask.delayed(tuple)([master, bias_std, ps_mask, bad, small, dark_rate])

        sci = science[science.night == night]
        staged = []
        for fld, rows in sci.groupby(sci.field.fillna("nofield")):
            final = lake.cube(fld, instrument.telescopes[telescope].band, night)
            staging = lake.staging(final)
            coords = {"frame_id": rows.frame_id.to_numpy(), "mjd": rows.mjd.to_numpy(), "exptime": rows.exptime.to_numpy(), "airmass": rows.airmass.fillna(np.nan).to_numpy()}
            layout = dask.delayed(cubes.create_cube)(staging, shape=shape, coords=coords, provenance={"telescope": telescope, "night": night, "field": fld, "frames": rows.path.tolist()})
            # each frame's task takes the laid-out store as input, so it cannot run before it exists
            tasks = [dask.delayed(_calibrate_science)(p, t, i, layout, masters, cfg, instrument, dask_key_name=f"calibrate-science-{telescope}-{night}-{fld}-{i}") for i, (p, t) in enumerate(zip(rows.path, rows.exptime))]
            staged.append((final, staging, rows.frame_id.tolist(), tasks))
        provenance = {
            "telescope": telescope, "night": night, "bias_night": bias_source, "bias_frames": bias_ids, "pepper_salt_series_night": ps_source,
            "flat_nights": chosen_nights, "parameters": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        }
        graph.append((result, staged, dict(screen=screen, nightly=[n[0] for n in nightly], nightly_ids=[n[1] for n in nightly], master=master, bias_std=bias_std, ps=ps_mask, bad=bad, small=small, provenance=provenance)))
    return graph


def calibrate_nights(lake: LakePaths, *, nights: list[int] | None = None, telescopes: list[str] | None = None, instrument: InstrumentConfig, cfg: CalibrationConfig, force: bool = False, retry_failed: bool = False, progress: bool = True) -> list[NightResult]:
    """Calibrate the science frames of the given nights (default: all). A night whose masters and
    cubes already hold exactly its current science frames is skipped unless ``force``;
    ``retry_failed`` calibrates again the nights (of those) with frames whose calibration failed,
    those frames included."""
    redo = retry_failed_calibrations(lake, nights) if retry_failed else set()
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas()
    frames = frames[frames.status == "ok"]
    if frames.empty:
        raise CalibrationError(f"the lake at {lake.root} has no frames: run the inventory first")
    results: list[NightResult] = []
    graph = []  # (result, staged cubes, extras) to compute together

    for telescope, tel_frames in frames.groupby("telescope"):
        if telescopes and telescope not in telescopes:
            continue
        planned = _plan_telescope(lake, telescope, tel_frames, nights, instrument=instrument, cfg=cfg, force=force, redo={n for t, n in redo if t == telescope})
        graph += planned
        results += [entry[0] for entry in planned]

    to_compute = [(staged_tasks, extras) for _, staged, extras in graph for staged_tasks in [[t for *_, t in staged]]]
    tracked = [t for _, staged, _ in graph for *_, tasks in staged for t in tasks]
    computed = compute([dask.delayed(to_compute)], tracked=tracked, description="calibrating science frames", scheduler=cfg.scheduler, workers=cfg.workers, progress=progress)[0]

    now = dt.datetime.now(dt.UTC)
    night_of, mjd_of = dict(zip(frames.frame_id, frames.night)), dict(zip(frames.frame_id, frames.mjd))
    for (result, staged, _), (task_results, extras) in zip(graph, computed):
        for (final, _, ids, _), outcomes in zip(staged, task_results):
            for index, reason, _info in outcomes:
                if reason is not None:
                    result.failed.append((ids[index], reason))
            result.cubes.append(final)
            result.science += len(ids)
            result.science_ids += ids
        prov = extras["provenance"]
        prov["bias_rejected"] = {str(prov["bias_frames"][i]): why for i, why in extras["screen"].reasons.items()}
        flat_rejected = {}
        for (_, reasons), ids in zip(extras["nightly"], extras["nightly_ids"]):
            for fid, why in zip(ids, reasons):
                if why is not None:
                    flat_rejected[str(fid)] = why
                    result.rejected.append((fid, "flat", why))
        prov["flat_rejected"] = flat_rejected
        for fid, why in prov["bias_rejected"].items():
            result.rejected.append((int(fid), "bias", why))
        arrays = {"master_bias": extras["master"], "bias_std": extras["bias_std"], "pepper_salt": extras["ps"], "bad": extras["bad"], "small_flat": extras["small"]}
        cubes.write_masters(result.masters, arrays, prov)
        log_rows: dict[int, dict] = {}
        for fid, kind, why in result.rejected:
            log_rows[fid] = {"telescope": result.telescope, "frame_id": fid, "kind": kind, "decision": "rejected", "reason": why, "recorded_at": now}
        failed_ids = dict(result.failed)
        for fid in result.science_ids:
            log_rows[fid] = {"telescope": result.telescope, "frame_id": fid, "kind": "science", "decision": "failed" if fid in failed_ids else "used", "reason": failed_ids.get(fid), "recorded_at": now}
        # the log and the failures first, the cubes last: a night whose cubes are in place is done
        # (a re-run skips it), so a run stopped in between must find it not done
        _write_log(lake, [result], [{**row, "night": int(night_of[fid]), "mjd": float(mjd_of[fid])} for fid, row in log_rows.items()])
        _mark_failed(lake, [result])
        for final, staging, _, _ in staged:
            cubes.commit_cube(staging, final)
    return results


def _write_log(lake: LakePaths, results: list[NightResult], rows: list[dict]) -> None:
    """Replace what the log said about these frames (a re-run supersedes the earlier verdict)."""
    schema = load_schema("calibration_log")
    redone = {row["frame_id"] for row in rows} | {fid for r in results for fid in r.science_ids}
    existing = without_frames(read_table(lake.calibration_log_table, schema), redone)
    write_table_atomic(pa.concat_tables([existing, schema.from_rows(rows)]), lake.calibration_log_table, schema)


def retry_failed_calibrations(lake: LakePaths, nights: list[int] | None = None) -> set[tuple[str, int]]:
    """Mark the frames whose calibration failed (of ``nights``, default all) usable again, and
    return their (telescope, night)s, to be calibrated again."""
    schema = load_schema("frames")
    frames = read_table(lake.frames_table, schema).select(["frame_id", "telescope", "night", "status"]).to_pandas()
    failed = frames[frames.status.fillna("").str.startswith(FAILED_CALIBRATION) & (frames.night.isin(nights) if nights else True)]
    if failed.empty:
        return set()
    update_column(lake.frames_table, schema, "status", dict.fromkeys(failed.frame_id.astype(int), "ok"))
    return set(zip(failed.telescope, failed.night.astype(int), strict=True))


FAILED_CALIBRATION = "failed: calibration: "  # a frames-table status: the frame is left out of later runs until retried


def _mark_failed(lake: LakePaths, results: list[NightResult]) -> None:
    failed = {fid: f"{FAILED_CALIBRATION}{why}" for r in results for fid, why in r.failed}
    if failed:
        update_column(lake.frames_table, load_schema("frames"), "status", failed)
