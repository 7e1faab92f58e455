"""Artefact masks against simulator truth, over many frames (issue 3's track and cosmic-ray figures).

    python benchmarks/artefact_accuracy.py [--scale 0.1] [--frames 40] [--seeds 31 32 33]

Frames are calibrated with the true bias and flat, so this judges the detectors alone
(``benchmarks/calibration_accuracy.py`` runs them end to end on the pipeline's own masters). For
each seed: frames that all carry a satellite (a third also an aircraft), frames with no track at
all (false tracks), and frames at ~100 times the real cosmic-ray rate (the real rate gives ~0.1 hit
per frame at this scale; per-hit detection does not depend on the rate). Scored: track pixels more
than 3 sigma above the sky that are flagged, masked false tracks (> 100 px), cosmic-ray hits with a
pixel above 5 sigma that are flagged, and star cores (peak above 5 sigma, not on a track pixel above
3 sigma) flagged as track or cosmic ray; for cosmic rays both counting every star without a hit on
its core, and only those without a hit within 4 px (a hit inside the aperture rightly flags it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from mstlake.calib import apply, artefacts
from mstlake.config import load_field, load_instrument, load_pipeline, load_simulation
from mstlake.simulate.frames import build_survey, make_exposure
from mstlake.simulate.schedule import Exposure


def frames(instrument, sim, *, scale, seed, count, satellites, aircraft, cosmic_rate):
    observing = dataclasses.replace(sim.observing, satellite_frame_fraction=satellites, aircraft_frame_fraction=aircraft, cloudy_frame_fraction=0.0, cosmic_rays_per_cm2_per_min=cosmic_rate)
    survey = build_survey(seed=seed, instrument=instrument, sim=dataclasses.replace(sim, observing=observing), field_cfg=load_field("f02"), telescopes=["MST2"], nights=[20230118], scale=scale)
    detector = survey.telescopes["MST2"].detector
    flat = detector.pixel_response(0)
    det = instrument.detector
    bias_std = np.hypot(detector.ps_std, det.read_noise_e / det.gain_e_per_adu).astype(np.float32)
    for seq in range(40, 40 + count):
        result = make_exposure(survey, Exposure(20230118, 0, "MST2", "science", 59962.55 + seq * 0.004, 60.0, seq))
        image, variance = apply.calibrate(result.data, master_bias=detector.bias_pattern, flat=flat, bias_std=bias_std, gain=det.gain_e_per_adu)
        bad = (detector.ps_std > 0) | (detector.bad_pixels > 0) | (result.data > det.saturation_adu)
        yield result, image, variance, bad


def truth_maps(result, shape, read_noise_e):
    art, ny, nx = result.artefacts, *shape
    noise_e = np.sqrt(result.truth["sky_e_per_pix"] + read_noise_e**2)
    track = np.zeros(shape, bool)
    track[art["y"], art["x"]] = art["track_e"] > 3 * noise_e
    charge = np.zeros(shape, np.float32)
    charge[art["y"], art["x"]] = art["cosmic_e"]
    fs = result.frame_stars
    on = (fs["x"] >= 0) & (fs["x"] < nx - 0.5) & (fs["y"] >= 0) & (fs["y"] < ny - 0.5) & (fs["peak_e"] > 5 * noise_e)
    cores = np.zeros(shape, bool)
    cores[np.rint(fs["y"][on]).astype(int), np.rint(fs["x"][on]).astype(int)] = True
    return track, charge, cores, noise_e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33])
    args = parser.parse_args()
    instrument, sim, cfg = load_instrument(), load_simulation(), load_pipeline().calibration
    det = instrument.detector
    t = dict(track_px=0, track_hit=0, track_cores=0, track_cores_flagged=0, clean_frames=0, false_tracks=0, cr_events=0, cr_found=0, cr_cores=0, cr_cores_flagged=0, cr_cores_far=0, cr_cores_far_flagged=0)
    started = time.perf_counter()

    def masks(image, variance, bad):
        return artefacts.artefact_masks(image, variance, bad, cfg=cfg, gain=det.gain_e_per_adu, read_noise_e=det.read_noise_e, saturation_adu=det.saturation_adu)

    for seed in args.seeds:
        for result, image, variance, bad in frames(instrument, sim, scale=args.scale, seed=seed, count=args.frames, satellites=1.0, aircraft=0.3, cosmic_rate=1.5):
            m = masks(image, variance, bad)
            track, _, cores, _ = truth_maps(result, image.shape, det.read_noise_e)
            t["track_px"] += int((track & ~bad).sum())
            t["track_hit"] += int((track & ~bad & m.tracks).sum())
            clean = cores & ~bad & ~track
            t["track_cores"] += int(clean.sum())
            t["track_cores_flagged"] += int((clean & m.tracks).sum())
        for _, image, variance, bad in frames(instrument, sim, scale=args.scale, seed=seed + 100, count=args.frames, satellites=0.0, aircraft=0.0, cosmic_rate=1.5):
            m = masks(image, variance, bad)
            labels, n = ndimage.label(m.tracks)
            sizes = ndimage.sum(m.tracks, labels, np.arange(1, n + 1)) if n else np.zeros(0)
            t["clean_frames"] += 1
            t["false_tracks"] += int(np.any(sizes > 100))
        for result, image, variance, bad in frames(instrument, sim, scale=args.scale, seed=seed + 200, count=args.frames // 2, satellites=0.0, aircraft=0.0, cosmic_rate=150.0):
            m = masks(image, variance, bad)
            _, charge, cores, noise_e = truth_maps(result, image.shape, det.read_noise_e)
            labels, n = ndimage.label(charge > 0, structure=np.ones((3, 3)))
            if n:
                peaks = ndimage.maximum(charge, labels, np.arange(1, n + 1))
                strong = np.flatnonzero(peaks > 5 * noise_e) + 1
                t["cr_events"] += strong.size
                t["cr_found"] += int(np.isin(strong, np.unique(labels[m.cosmic_rays & (labels > 0)])).sum())
            for key, reach in (("cr_cores", 1), ("cr_cores_far", 4)):
                clean = cores & ~bad & ~ndimage.binary_dilation(charge > 0, iterations=reach)
                t[key] += int(clean.sum())
                t[key + "_flagged"] += int((clean & m.cosmic_rays).sum())
    out = {
        "scale": args.scale, "seeds": args.seeds, "frames_per_set": args.frames, "seconds": round(time.perf_counter() - started, 1), "counts": t,
        "track_pixels_above_3sigma_flagged": round(t["track_hit"] / max(t["track_px"], 1), 4),
        "false_track_frames": f"{t['false_tracks']} of {t['clean_frames']}",
        "star_cores_flagged_by_tracks": round(t["track_cores_flagged"] / max(t["track_cores"], 1), 5),
        "cosmic_ray_hits_above_5sigma_found": round(t["cr_found"] / max(t["cr_events"], 1), 4),
        "star_cores_flagged_by_cosmic_rays": round(t["cr_cores_flagged"] / max(t["cr_cores"], 1), 5),
        "star_cores_flagged_by_cosmic_rays_no_hit_within_4px": round(t["cr_cores_far_flagged"] / max(t["cr_cores_far"], 1), 5),
    }
    (Path(__file__).parent / "results" / "artefact_accuracy.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
