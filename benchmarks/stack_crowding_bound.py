"""How well forced photometry of a crowded stack could do, against how well it does (issue 6).

    python benchmarks/stack_crowding_bound.py --lake /tmp/stack400/lake --raw /tmp/stack400/raw/f02 --n 64

Reads the stack ``bench-n{N}`` that ``benchmarks/stack_depth.py`` leaves in the lake, measures it as
``measure_stack`` does (not committed) and takes its faint constant library stars (true S/N 3-20).
The unit is the optimal error: what optimal weighting of the input frames would give a star on
empty sky, from the frames' own depths as the truth shows them (``stack_depth.py``'s optimal true
gain). For each star, the best linear estimate of its flux when the simulator's stars within
2.5 FWHM are fitted with it at their true positions (Gaussian PSF of the stack's FWHM, white noise
at the optimal error): those with true S/N >= a threshold as free fluxes, the fainter ones' light
left in as noise. The S/N over the optimum that the spread of that estimate gives, per threshold,
is the bound a pipeline that finds every star above the threshold, at its true place, would
reach; "none" is what ignoring the crowding gives. Against it: the S/N over the optimum of the
stack's forced fluxes (their robust scatter about the true ones), and the stack's claimed error
of faint stars over that scatter (1 when the errors are honest).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from stack_depth import library_truth, optimal_error, robust_sigma, stack_parser

from mstlake import config as cfg
from mstlake.paths import LakePaths
from mstlake.pipeline.stack import measure_stack
from mstlake.stack.store import open_stack

THRESHOLDS = (0.0, 2.0, 3.0, 5.0, np.inf)


def gaussian_stamp(half: int, sigma: float, dx: float, dy: float) -> np.ndarray:
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return (np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)).ravel()


def main() -> None:
    args = stack_parser(__doc__, n=64).parse_args()

    lake = LakePaths(args.lake)
    pipeline, instrument, field = cfg.load_pipeline(), cfg.load_instrument(), cfg.load_field("f02")
    reference = pd.read_parquet(lake.reference_catalogue(field.name))
    stars, true_mag, constant = library_truth(args.raw, args.band)
    mag_column = f"mag_{args.band}"
    store = lake.stack(field.name, args.band, f"bench-n{args.n}")
    measured = measure_stack(lake, store, reference, instrument=instrument, astrometry_cfg=pipeline.astrometry, photometry_cfg=pipeline.photometry, stack_cfg=pipeline.stack, archive_cfg=pipeline.archive, commit=False)
    fwhm = measured.stack.to_pylist()[0]["psf_fwhm_px"]
    sigma_psf = fwhm / 2.3548
    ds, wcs = open_stack(store)

    forced = measured.forced.assign(true=measured.forced.source_id.map(true_mag))
    forced = forced[forced.source_id.isin(constant) & (forced.flag == 0) & forced.full_depth]
    zero_point = float(np.nanmedian(forced.mag - forced.mag_inst))
    forced = forced.assign(true_flux=10 ** (-0.4 * (forced.true - zero_point)))
    isolated_error = float(np.median(forced.flux_err[(forced.flux / forced.flux_err) < 20]))
    # the unit: the error optimal weighting of the input frames would give a star on empty sky
    optimal = optimal_error(lake, json.loads(ds.attrs["frame_ids"]), true_mag, constant, zero_point)
    faint = forced[(forced.true_flux / optimal > 3) & (forced.true_flux / optimal < 20)]

    x, y = wcs.world_to_pixel_values(stars.ra.values, stars.dec.values)
    flux = 10 ** (-0.4 * (stars[mag_column].values - zero_point))
    tree = cKDTree(np.column_stack([x, y]))
    half = int(np.ceil(3 * fwhm))
    own = gaussian_stamp(half, sigma_psf, 0.0, 0.0)
    pixel_sigma = optimal * np.sqrt(own @ own)  # white noise giving a star on empty sky the optimal error
    bounds = {}
    for threshold in THRESHOLDS:
        noise_variance, contamination = [], []
        for star in faint.itertuples():
            near = tree.query_ball_point([star.x, star.y], 2.5 * fwhm)
            itself = near[int(np.argmin(np.hypot(x[near] - star.x, y[near] - star.y)))]
            others = [j for j in near if j != itself]
            free = [j for j in others if flux[j] / optimal >= threshold]
            left = [j for j in others if flux[j] / optimal < threshold]
            design = np.column_stack([own] + [gaussian_stamp(half, sigma_psf, x[j] - star.x, y[j] - star.y) for j in free])
            estimator = (np.linalg.pinv(design.T @ design) @ design.T)[0]
            noise_variance.append(pixel_sigma**2 * estimator @ estimator)
            contamination.append(sum(flux[j] * estimator @ gaussian_stamp(half, sigma_psf, x[j] - star.x, y[j] - star.y) for j in left))
        # the neighbours' light is what it is; the sky's part is drawn, and the robust scatter
        # (the statistic the measured one is) averaged over draws
        contamination = np.array(contamination) - np.median(contamination)
        rng = np.random.default_rng(0)
        spread = float(np.mean([robust_sigma(contamination + rng.normal(0, np.sqrt(noise_variance))) for _ in range(200)]))
        bounds["none" if not np.isfinite(threshold) else f"snr>={threshold:g}"] = optimal / spread
    measured_scatter = robust_sigma((faint.flux - faint.true_flux).values)
    result = {
        "n": args.n, "faint_stars": len(faint), "optimal_error": optimal, "claimed_isolated_error": isolated_error, "fwhm_px": fwhm,
        "bound_snr_over_optimal_by_neighbours_fitted": bounds, "measured_snr_over_optimal": optimal / measured_scatter, "claimed_error_over_scatter": isolated_error / measured_scatter,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
