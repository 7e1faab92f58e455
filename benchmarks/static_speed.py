"""Speed of one full-size frame through astrometry, photometry and flux calibration (issue 4),
with SExtractor on the same frame for comparison.

    python benchmarks/calibration_speed.py     # leaves a calibrated full-size frame behind
    python benchmarks/static_speed.py [--cube /tmp/mstlake-fullframe/lake/cubes/f02/g/.0.zarr.staging]

Per-step wall-clock times on this machine (2 cores; our kernels are single-threaded numpy/sep)
for extraction, blind solve + TAN-SIP, the background-variance map, the ePSF, PSF photometry of
every detection, the WCS refit, forced photometry of every library star, 25 apertures with the
growth curve and aperture correction, and the zero point. Then ``source-extractor`` (Debian
package) on the same image with its variance as the weight map, measuring windowed centroids
and the same 25 apertures; the ratio of our extraction + aperture photometry to its run is
reported. Accuracy against truth on this frame: the zero point (median calibrated - true
magnitude of S/N > 50 constant library stars) and astrometry of S/N > 100 stars.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits
from truth_matching import aperture_correction_error_mmag, sky_residuals_mas

from mstlake.astrom import extract, solve
from mstlake.config import load_instrument, load_pipeline
from mstlake.lake import cubes
from mstlake.paths import LakePaths, SimulationPaths
from mstlake.phot import aperture as ap
from mstlake.phot.frame import photometer_frame


def run_sextractor(image: np.ndarray, variance: np.ndarray, workdir: Path) -> tuple[float, int]:
    """Seconds for SExtractor to detect and measure (windowed centroids, 25 apertures) and the
    number of sources it found (FITS writing excluded)."""
    fits.writeto(workdir / "image.fits", image.astype(np.float32), overwrite=True)
    fits.writeto(workdir / "variance.fits", variance.astype(np.float32), overwrite=True)
    (workdir / "params").write_text("\n".join(["NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FLUX_APER(25)", "FLUXERR_APER(25)", "A_IMAGE", "B_IMAGE", "THETA_IMAGE", "FWHM_IMAGE", "FLAGS"]) + "\n")
    share = Path("/usr/share/source-extractor")
    command = [
        "source-extractor", str(workdir / "image.fits"), "-c", str(share / "default.sex"), "-PARAMETERS_NAME", str(workdir / "params"),
        "-FILTER_NAME", str(share / "default.conv"), "-STARNNW_NAME", str(share / "default.nnw"), "-CATALOG_NAME", str(workdir / "catalogue.fits"), "-CATALOG_TYPE", "FITS_LDAC",
        "-WEIGHT_TYPE", "MAP_VAR", "-WEIGHT_IMAGE", str(workdir / "variance.fits"), "-DETECT_THRESH", "3.0", "-ANALYSIS_THRESH", "3.0", "-DETECT_MINAREA", "5",
        "-PHOT_APERTURES", ",".join(str(int(d)) for d in ap.DIAMETERS_PX), "-DEBLEND_NTHRESH", "32", "-DEBLEND_MINCONT", "0.005", "-VERBOSE_TYPE", "QUIET",
        "-CHECKIMAGE_TYPE", "NONE",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    with fits.open(workdir / "catalogue.fits") as hdus:
        found = len(hdus[2].data)
    return seconds, found


def main() -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cube", type=Path, default=Path("/tmp/mstlake-fullframe/lake/cubes/f02/g/.0.zarr.staging"))
    parser.add_argument("--lake", type=Path, default=Path("/tmp/mstlake-fullframe/lake"))
    parser.add_argument("--raw", type=Path, default=Path("/tmp/mstlake-fullframe/raw"))
    parser.add_argument("--out", default="static_speed.json")
    args = parser.parse_args()
    instrument, pipeline = load_instrument(), load_pipeline()
    det = instrument.detector
    lake, sim = LakePaths(args.lake), SimulationPaths.beside(args.raw)
    frames = pq.read_table(lake.frames_table).to_pandas().set_index("frame_id")
    library = pq.read_table(sim.standard_library).to_pandas()
    ds = cubes.open_store(args.cube)
    frame_id = int(ds.frame_id.values[0])
    row = frames.loc[frame_id]
    stem = SimulationPaths.stem(row.path)
    image, variance, mask = ds.image[0].values, ds.variance[0].values, ds.mask[0].values
    cfg = pipeline.astrometry
    steps: dict[str, float] = {}

    started = time.perf_counter()
    found = extract.extract_sources(image, variance, mask, thresh=cfg.detect_sigma, minarea=cfg.min_area_px)
    steps["extraction"] = time.perf_counter() - started
    started = time.perf_counter()
    sources = found.sources
    ny, nx = image.shape
    wcs, _, parity = solve.blind_solve(sources.x, sources.y, sources.flux, library.ra, library.dec, library[f"mag_{row.band}"], pointing=(row.ra_pointing, row.dec_pointing), pixel_scale_deg=det.pixel_scale_arcsec / 3600, shape=(ny, nx), n_bright=cfg.bright_sources, scale_tolerance=cfg.scale_tolerance)
    clean = sources[sources.flag == 0]
    solution = solve.refine(wcs, clean.x, clean.y, library.ra, library.dec, shape=(ny, nx), sip_degree=cfg.sip_degree, match_radius_px=cfg.match_radius_px, clip_sigma=cfg.clip_sigma, parity=parity)
    steps["blind_solve_and_tan_sip"] = time.perf_counter() - started
    timings: dict[str, float] = {}
    started = time.perf_counter()
    phot = photometer_frame(image, variance, mask, found, solution.wcs, library, band=row.band, gain=det.gain_e_per_adu, cfg=pipeline.photometry, timings=timings)
    steps.update(timings)
    total = sum(steps.values())
    # only the aperture sums (the growth curve and correction are not SExtractor's job)
    started = time.perf_counter()
    ap.aperture_fluxes(image - found.background, variance, sources.x, sources.y, mask=extract.hidden_pixels(mask))
    aperture_only = time.perf_counter() - started

    workdir = Path(tempfile.mkdtemp(prefix="mstlake-sex-"))
    try:
        sex_seconds, sex_found = run_sextractor(image, variance, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # accuracy on this frame
    stars = pq.read_table(sim.stars).to_pandas()
    truth = pq.read_table(sim.frame_stars(stem)).to_pandas()
    star_of = dict(zip(stars.library_source_id, stars.star_id, strict=True))
    constant = set(stars.star_id[stars.variable_type == "constant"])
    forced = phot.forced.assign(star_id=library.source_id.values[phot.forced.reference_index.values])
    forced["star_id"] = forced.star_id.map(star_of)
    merged = forced.merge(truth[["star_id", "mag", "fwhm_px"]].rename(columns={"mag": "mag_true"}), on="star_id")
    good = merged[(merged.flux / merged.flux_err > 50) & (merged.flag == 0) & merged.star_id.isin(constant)]
    residuals = sky_residuals_mas(phot.sources, truth, stars.set_index("star_id"))
    correction_error = None
    if phot.aperture_correction is not None:
        frame_truth = pq.read_table(sim.frames).to_pandas().set_index("stem").loc[stem]
        correction_error = round(aperture_correction_error_mmag(phot, merged.x, merged.y, merged.fwhm_px, float(frame_truth.psf_beta), ellipticity=float(frame_truth.psf_ellipticity), angle_deg=float(frame_truth.psf_angle_deg)), 2)
    out = {
        "frame_shape": [ny, nx], "detections": len(phot.sources), "forced_stars": len(phot.forced), "psf_stars": phot.psf_stars, "psf_degree": phot.psf.degree, "psf_oversampling": phot.psf.oversampling,
        "seconds_per_step": {k: round(v, 2) for k, v in steps.items()}, "seconds_total": round(total, 1),
        "sextractor": {"seconds": round(sex_seconds, 1), "sources": sex_found, "threads": 1},
        "our_extraction_plus_25_apertures_seconds": round(steps["extraction"] + aperture_only, 1),
        "ratio_ours_to_sextractor": round((steps["extraction"] + aperture_only) / sex_seconds, 2),
        "zero_point": {"calibrators": phot.zero_point.n_calibrators if phot.zero_point else 0, "rms_mmag": round(1000 * phot.zero_point.rms, 1) if phot.zero_point else None,
                       "error_vs_truth_mmag": round(1000 * float(np.median(good.mag - good.mag_true)), 2), "stars_compared": len(good)},
        "astrometry_snr_above_100": {"stars": len(residuals), "rms_mas_per_axis": [round(float(np.sqrt(np.mean(residuals[:, k] ** 2))), 1) for k in (0, 1)]},
        "aperture_correction": {"best_px": ap.DIAMETERS_PX[phot.best_aperture] if phot.best_aperture is not None else None, "reference_px": ap.DIAMETERS_PX[phot.reference_aperture] if phot.reference_aperture is not None else None,
                                "error_vs_truth_mmag": correction_error, "method": pipeline.photometry.aperture_correction,
                                "measured_scatter_mmag": round(1000 * phot.measured_correction.rms, 1) if phot.measured_correction else None, "stars": phot.measured_correction.n_used if phot.measured_correction else 0},
        "cloudy_flag": phot.cloudy,
    }
    (Path(__file__).parent / "results" / args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
