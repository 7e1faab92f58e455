"""Measure the simulator's physical properties from the data it writes, against its truth.

    python benchmarks/simulator_properties.py --scale 0.25 [--out /tmp/simprops]

Simulates two nights of MST1-3 (the first with the 100-frame bias series) and reports star counts,
saturation, background noise, pepper-and-salt pixels, flat levels, distortion and artefact rates,
each next to the value the MST survey (and issue #2) calls for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits

from mstlake.config import load_field, load_instrument, load_simulation
from mstlake.paths import SimulationPaths
from mstlake.pipeline.simulate import SimulationRequest, simulate
from mstlake.simulate import diagnostics
from mstlake.simulate.optics import FrameGeometry
from mstlake.simulate.sky import expected_star_count

FULL_FRAME_DEG2 = 2.29 * 1.53


def _image(paths, relative):
    with fits.open(paths.raw / relative) as hdul:
        return hdul[0].data.astype(float)


def _static(paths, telescope, name):
    return fits.getdata(paths.static_map(telescope, name)).astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--frames-per-night", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mstlake-simprops"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    instrument, sim = load_instrument(), load_simulation()
    paths = SimulationPaths.beside(args.out / "raw")
    request = SimulationRequest(field="f02", nights=2, frames_per_night=args.frames_per_night, telescopes=("MST1", "MST2", "MST3"), scale=args.scale, seed=args.seed, with_bad_files=True)
    started = time.perf_counter()
    summary = simulate(request, paths, instrument=instrument, sim=sim, field_cfg=load_field("f02"))
    seconds = time.perf_counter() - started
    truth = pq.read_table(paths.frames).to_pandas()
    g, rn = instrument.detector.gain_e_per_adu, instrument.detector.read_noise_e
    results: dict[str, object] = {"scale": args.scale, "shape": list(summary.shape), "simulation_seconds": round(seconds, 1), "files": summary.counts}

    # star counts
    stars = pq.read_table(paths.stars).to_pandas()
    stars = stars[stars.variable_type != "transient"]
    area = np.ptp(stars.ra) * np.cos(np.radians(stars.dec.mean())) * np.ptp(stars.dec)
    edges = np.arange(10.0, 21.0, 1.0)
    counts, _ = np.histogram(stars.mag_r, bins=edges)
    expected = [expected_star_count(area, dataclasses.replace(sim.sky, bright_limit_mag=lo, faint_limit_mag=lo + 1)) for lo in edges[:-1]]
    results["stars_brighter_than_19_per_full_frame"] = round(float((stars.mag_r < 19).sum() / area * FULL_FRAME_DEG2))
    results["star_counts_per_deg2_by_r_mag"] = {f"{lo:.0f}-{lo + 1:.0f}": round(c / area) for lo, c in zip(edges[:-1], counts)}
    results["star_counts_max_pull_vs_model"] = round(float(np.max(np.abs((counts - expected) / np.sqrt(expected)))), 2)
    results["variable_fraction"] = round(float((stars.variable_type != "constant").mean()), 4)
    library = pq.read_table(paths.standard_library).to_pandas()
    bright = stars[stars.mag_r < sim.sky.library_limit_mag]
    results["library_missing_fraction"] = round(1 - len(library) / len(bright), 4)

    # per science frame: saturation magnitude, background noise, artefacts, distortion
    per_band: dict[str, list] = {}
    pulls, residual_max, corner = [], [], []
    science = truth[truth.kind == "science"]
    for row in science.itertuples():
        image = _image(paths, row.file)
        bias = _static(paths, row.telescope, "bias_pattern")
        flat = fits.getdata(paths.nightly_flat(row.telescope, row.night)).astype(float)
        fs = pq.read_table(paths.frame_stars(row.stem)).to_pandas()
        ix, iy = np.clip(np.rint(fs.x).astype(int), 0, image.shape[1] - 1), np.clip(np.rint(fs.y).astype(int), 0, image.shape[0] - 1)
        peak_above_bias = fs.peak_e.to_numpy() * fs.scintillation_factor.to_numpy() * flat[iy, ix] / g
        per_band.setdefault(row.band, []).append(diagnostics.saturation_magnitude(fs.mag.to_numpy(), peak_above_bias, instrument.detector.saturation_adu - 500))
        if not row.cloudy:
            clean = (_static(paths, row.telescope, "ps_std") == 0) & (_static(paths, row.telescope, "bad_pixels") == 0)
            clean &= diagnostics.star_free_mask(image.shape, fs.x, fs.y, fs.flux_e, fs.fwhm_px)
            pulls.append(diagnostics.background_pull(image, bias=bias, flat=flat, sky_e=row.sky_e_per_pix, gain=g, read_noise_e=rn, row_noise_adu=0.8, clean=clean)[0])
        geometry = FrameGeometry.from_truth(row, latitude_deg=instrument.site.latitude_deg, longitude_deg=instrument.site.longitude_deg)
        corner.append(geometry.corner_distortion_px(int(row.nx), int(row.ny)))
        cat = stars.set_index("star_id").reindex(fs.star_id)
        ok = cat.ra.notna().to_numpy()
        undistorted = dataclasses.replace(geometry, k1=0.0, k2=0.0, p1=0.0, p2=0.0, refraction=False)
        u, v = undistorted.sky_to_pixel(cat.ra.to_numpy()[ok], cat.dec.to_numpy()[ok])
        residual_max.append(float(diagnostics.affine_residuals(u, v, fs.x.to_numpy()[ok], fs.y.to_numpy()[ok]).max()))
    results["saturation_mag_50000adu_by_band"] = {band: round(float(np.median(v)), 2) for band, v in sorted(per_band.items())}
    results["background_noise_over_photon_plus_read"] = round(float(np.median(pulls)), 3)
    results["distortion_at_far_corner_px"] = [round(float(min(corner)), 2), round(float(max(corner)), 2)]
    results["distortion_plus_refraction_beyond_affine_max_px"] = [round(min(residual_max), 2), round(max(residual_max), 2)]
    results["science_frames"] = int(len(science))
    results["satellite_frame_fraction"] = round(float((science.n_satellites > 0).mean()), 3)
    results["aircraft_frames"] = int((science.n_aircraft > 0).sum())
    results["cloudy_frames"] = int(science.cloudy.sum())
    results["cosmic_rays_per_frame_full_scale"] = round(float(science.n_cosmic_rays.mean() / args.scale**2), 1)
    results["seeing_fwhm_arcsec_range"] = [round(float(science.seeing_fwhm_arcsec.min()), 2), round(float(science.seeing_fwhm_arcsec.max()), 2)]
    results["sky_e_per_pix_by_band"] = {b: round(float(v), 1) for b, v in science.groupby("band").sky_e_per_pix.median().items()}
    results["pointing_error_arcmin_range"] = [round(float(x), 2) for x in np.percentile(np.hypot((science.commanded_ra - science.axis_ra) * np.cos(np.radians(science.axis_dec)), science.commanded_dec - science.axis_dec) * 60, [0, 100])]

    # pepper-and-salt pixels from the 100-frame bias series, per telescope
    ps = {}
    for telescope in ("MST1", "MST2", "MST3"):
        rows = truth[(truth.kind == "bias") & (truth.telescope == telescope) & (truth.night == truth.night.min())]
        stack = np.stack([_image(paths, f) for f in rows.file])
        std = stack.std(axis=0, ddof=1)
        truth_std = _static(paths, telescope, "ps_std")
        normal = (truth_std == 0) & (_static(paths, telescope, "bad_pixels") == 0)
        strong = truth_std > 12
        ps[telescope] = {
            "bias_frames": int(len(rows)),
            "fraction_std_above_8adu": round(float(np.mean(std > 8)), 4),
            "fraction_rtn_pixels_truth": round(float(np.mean(truth_std > 0)), 4),
            "normal_pixel_std_adu": round(float(np.median(std[normal])), 2),
            "ps_std_measured_over_truth": round(float(np.median(np.sqrt(np.maximum(std[strong] ** 2 - np.median(std[normal]) ** 2, 0)) / truth_std[strong])), 3),
            "ps_std_adu_percentiles_5_50_95": [round(float(x), 1) for x in np.percentile(std[std > 8], [5, 50, 95])],
            "bad_pixel_fraction": round(float(np.mean(_static(paths, telescope, "bad_pixels") > 0)), 5),
        }
        del stack
    results["pepper_and_salt"] = ps

    # flats
    flats = {}
    for telescope in ("MST1", "MST2", "MST3"):
        rows = truth[(truth.kind == "flat") & (truth.telescope == telescope) & (truth.night == truth.night.min())]
        bias = _static(paths, telescope, "bias_pattern")
        good = rows[rows.bad_flat.isna()]
        levels, stack = [], []
        for row in good.itertuples():
            image = _image(paths, row.file) - bias
            levels.append(np.mean(image) / row.flat_level_adu)
            stack.append(image / np.median(image))
        true_flat = fits.getdata(paths.nightly_flat(telescope, int(rows.night.iloc[0]))).astype(float)
        inner = (slice(30, -30), slice(30, -30))
        good_pixels = _static(paths, telescope, "bad_pixels")[inner] == 0
        small_true = diagnostics.small_scale(true_flat)[inner][good_pixels]
        small_measured = diagnostics.small_scale(np.mean(stack, axis=0))[inner][good_pixels]
        vignetting = _static(paths, telescope, "vignetting")
        flats[telescope] = {
            "good_flats": int(len(good)),
            "rejectable_flats": rows.bad_flat.dropna().tolist(),
            "median_level_adu": round(float(good.flat_level_adu.median())),
            "mean_level_over_target": round(float(np.median(levels)), 4),
            "vignetting_at_worst_corner": round(float(min(vignetting[0, 0], vignetting[0, -1], vignetting[-1, 0], vignetting[-1, -1])), 3),
            "pixel_response_rms_truth": round(float(np.std(small_true)), 5),
            "one_night_master_vs_truth_rms": round(float(np.std(small_measured / small_true - 1)), 5),
        }
    results["flats"] = flats

    out = Path(__file__).parent / "results" / "simulator_properties.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
