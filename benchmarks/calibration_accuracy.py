"""Calibration accuracy against simulator truth (issue 3's figures).

    python benchmarks/calibration_accuracy.py [--scale 0.1] [--nights 11]

Simulates MST2 over consecutive nights, runs the inventory and the calibration graph, and scores:
the pepper-and-salt map (precision/recall), hot/dead pixels, the small-scale flat of the middle night
against the true pixel response as a function of the number of nights combined (the paper's
Figure 4) next to the photon-noise limit, satellite tracks, cosmic rays, star cores spared, the
saturation bit, and the cube's bytes per pixel.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits
from scipy import ndimage

from mstlake.astro import night_to_mjd_local_noon
from mstlake.calib import apply, flat
from mstlake.config import load_field, load_fields, load_instrument, load_pipeline, load_simulation
from mstlake.lake import cubes
from mstlake.lake.rawfiles import read_frame
from mstlake.paths import LakePaths, SimulationPaths
from mstlake.pipeline.calibrate import calibrate_nights
from mstlake.pipeline.inventory import run_inventory
from mstlake.pipeline.simulate import SimulationRequest, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--nights", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mstlake-calacc"))
    parser.add_argument("--results", default="calibration_accuracy.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    instrument, sim, pipeline = load_instrument(), load_simulation(), load_pipeline()
    cfg = pipeline.calibration
    paths = SimulationPaths.beside(args.out / "raw")
    if not paths.frames.exists():
        simulate(SimulationRequest(field="f02", nights=args.nights, frames_per_night=4, telescopes=("MST2",), scale=args.scale, seed=17), paths, instrument=instrument, sim=sim, field_cfg=load_field("f02"), progress=False)
    lake = LakePaths(args.out / "lake")
    if lake.root.exists():
        shutil.rmtree(lake.root)  # each run starts from a fresh lake
    run_inventory(paths.raw, lake, instrument=instrument, fields=load_fields(), config=pipeline.inventory, progress=False)
    started = time.perf_counter()
    results = calibrate_nights(lake, instrument=instrument, cfg=cfg, progress=False)
    out: dict = {"scale": args.scale, "nights": args.nights, "calibration_seconds": round(time.perf_counter() - started, 1)}
    failures = [(r.night, reason) for r in results for _, reason in r.failed]
    if failures:
        raise SystemExit(f"{len(failures)} science frames failed calibration, e.g. {failures[0]}")
    static = {name: fits.getdata(paths.static_map("MST2", name)).astype(np.float32) for name in ("ps_std", "bad_pixels")}
    truth_frames = pq.read_table(paths.frames).to_pandas()
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    g = instrument.detector.gain_e_per_adu

    # pepper-and-salt map and bad pixels (masters of the middle night)
    nights = sorted(r.night for r in results)
    middle = nights[len(nights) // 2]
    result = next(r for r in results if r.night == middle)
    masters = cubes.open_store(result.masters)
    ps = masters.pepper_salt.values > 0
    true_ps = np.hypot(static["ps_std"], 4.2) > cfg.ps_std_threshold_adu
    out["pepper_salt"] = {"precision": round(float((ps & true_ps).sum() / ps.sum()), 4), "recall": round(float((ps & true_ps).sum() / true_ps.sum()), 4), "fraction": round(float(ps.mean()), 4)}
    bad = masters.bad.values
    for code, name in ((1, "hot"), (2, "dead")):
        truth = (static["bad_pixels"] == code) & ~(static["ps_std"] > 0)
        found = (bad == code) & ~(static["ps_std"] > 0)
        out[f"{name}_pixels"] = {"true": int(truth.sum()), "found": int(found.sum()), "precision": round(float((found & truth).sum() / max(found.sum(), 1)), 3), "recall": round(float((found & truth).sum() / max(truth.sum(), 1)), 3)}

    # small-scale flat vs truth, by number of nights combined (Figure 4)
    true_flat = fits.getdata(paths.nightly_flat("MST2", middle)).astype(np.float32)
    true_small = flat.small_scale(true_flat, cfg.flat_smoothing_px)
    inner = (slice(30, -30), slice(30, -30))
    good = (static["bad_pixels"] == 0)[inner]
    offset = instrument.site.utc_offset_hours
    nightly = []
    for night in nights:
        rows = frames[(frames.type == "flat") & (frames.night == night)]
        master = cubes.open_store(lake.masters("MST2", night)).master_bias.values
        nf, _ = flat.nightly_flat([read_frame(p) for p in rows.path], master, night_mjd=night_to_mjd_local_noon(night, offset), cfg=cfg, saturation_adu=instrument.detector.saturation_adu, gain=g)
        nightly.append(nf)
    curve = {}
    for window in range(0, cfg.flat_window_nights + 1):
        combined, used = flat.combine_nights(night_to_mjd_local_noon(middle, offset), nightly, window_nights=window, max_span_days=cfg.flat_max_span_days)
        electrons = sum(n.electrons_per_pixel for n in nightly if n.night_mjd in used)
        limit = float(np.sqrt(np.mean(np.mean(true_flat) / (electrons * true_flat))))
        curve[len(used)] = {"rms": round(float(np.std((combined / true_small - 1)[inner][good])), 5), "photon_limit": round(limit, 5)}
    out["small_flat_rms_by_nights"] = curve
    pipeline_flat = masters.small_flat.values
    residual = (pipeline_flat / true_small - 1)[inner]
    out["small_flat_rms_pipeline"] = round(float(np.std(residual[good])), 5)
    # where a dust shadow arrived during the run, the nights before it are left out there
    changed = np.zeros(true_small.shape, bool)
    for night in nights:
        changed |= np.abs(flat.small_scale(fits.getdata(paths.nightly_flat("MST2", night)).astype(np.float32), cfg.flat_smoothing_px) / true_small - 1) > 2e-4
    changed = changed[inner]
    out["small_flat_rms_where_the_flat_did_not_change"] = {"pixels": round(float(np.mean(~changed[good])), 4), "rms": round(float(np.std(residual[good & ~changed])), 5)}
    out["small_flat_rms_where_it_changed"] = {"pixels": round(float(np.mean(changed[good])), 4), "rms": round(float(np.std(residual[good & changed])), 5)}

    # tracks, cosmic rays, star cores, saturation, storage
    totals = dict(track_px=0, track_hit=0, cr_events=0, cr_hit=0, cores=0, cores_flagged=0, saturation_mismatch=0, false_track_frames=0, clean_frames=0)
    for r in results:
        ds = cubes.open_store(r.cubes[0])
        for i, frame_id in enumerate(ds.frame_id.values):
            path = frames.loc[frame_id, "path"]
            stem = SimulationPaths.stem(path)
            truth = truth_frames.set_index("stem").loc[stem]
            mask = ds.mask[i].values
            raw = read_frame(path)
            totals["saturation_mismatch"] += int(np.sum(((mask & apply.SATURATED) > 0) != (raw > instrument.detector.saturation_adu)))
            known_bad = (mask & (apply.BAD | apply.SATURATED | apply.PEPPER_SALT)) > 0
            art = pq.read_table(paths.frame_artefacts(stem)).to_pandas()
            noise_e = np.sqrt(truth.sky_e_per_pix + instrument.detector.read_noise_e**2)
            track = np.zeros(mask.shape, bool)
            track[art.y, art.x] = art.track_e > 3 * noise_e
            totals["track_px"] += int((track & ~known_bad).sum())
            totals["track_hit"] += int((track & ~known_bad & ((mask & apply.TRACK) > 0)).sum())
            if truth.n_satellites == 0 and truth.n_aircraft == 0:
                totals["clean_frames"] += 1
                labels, n = ndimage.label((mask & apply.TRACK) > 0)
                sizes = ndimage.sum(np.ones(mask.shape), labels, np.arange(1, n + 1)) if n else np.array([])
                totals["false_track_frames"] += int(np.any(sizes > 100))
            charge = np.zeros(mask.shape, np.float32)
            charge[art.y, art.x] = art.cosmic_e
            labels, n = ndimage.label(charge > 0, structure=np.ones((3, 3)))
            if n:
                peaks = ndimage.maximum(charge, labels, np.arange(1, n + 1))
                strong = np.flatnonzero(peaks > 5 * noise_e) + 1
                totals["cr_events"] += strong.size
                totals["cr_hit"] += int(np.isin(strong, np.unique(labels[((mask & apply.COSMIC_RAY) > 0) & (labels > 0)])).sum())
            stars = pq.read_table(paths.frame_stars(stem)).to_pandas()
            ny, nx = mask.shape
            on = stars.x.between(0, nx - 1) & stars.y.between(0, ny - 1) & (stars.peak_e > 5 * noise_e)
            iy, ix = np.rint(stars.y[on]).astype(int), np.rint(stars.x[on]).astype(int)
            clean = ~known_bad[iy, ix] & ~ndimage.binary_dilation(charge > 0)[iy, ix] & ~track[iy, ix]
            totals["cores"] += int(clean.sum())
            totals["cores_flagged"] += int((((mask[iy, ix] & (apply.TRACK | apply.COSMIC_RAY)) > 0) & clean).sum())
    out["tracks"] = {"pixels_above_3sigma_flagged": round(totals["track_hit"] / max(totals["track_px"], 1), 4), "frames_without_tracks": totals["clean_frames"], "false_track_frames": totals["false_track_frames"]}
    out["cosmic_rays"] = {"hits_above_5sigma": totals["cr_events"], "found_fraction": round(totals["cr_hit"] / max(totals["cr_events"], 1), 4)}
    out["star_cores_flagged_fraction"] = round(totals["cores_flagged"] / max(totals["cores"], 1), 5)
    out["saturation_bit_mismatches"] = totals["saturation_mismatch"]
    cube = results[0].cubes[0]
    ds = cubes.open_store(cube)
    n_pixels = ds.image.size
    for name in ("image", "variance", "mask"):
        size = sum(p.stat().st_size for p in (cube / name).rglob("*") if p.is_file())
        out[f"bytes_per_pixel_{name}"] = round(size / n_pixels, 3)
    (Path(__file__).parent / "results" / args.results).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
