"""Aperture photometry on calibrated cubes (issue 4's aperture-correction figure, so far).

    python benchmarks/photometry_accuracy.py [--lake /tmp/mstlake-calacc/lake]

For every frame of the lake's cubes (e.g. the ones ``benchmarks/calibration_accuracy.py`` leaves):
sep extraction, fluxes in the 25 apertures at the clean sources, the frame's best and reference
apertures, and the aperture-correction surface; reported per frame and over frames: the chosen
apertures, the number of reference stars, and the correction's residual rms (target <= 2 mmag).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mstlake.astrom import extract
from mstlake.lake import cubes
from mstlake.paths import LakePaths
from mstlake.phot import aperture as ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, default=Path("/tmp/mstlake-calacc/lake"))
    args = parser.parse_args()
    lake = LakePaths(args.lake)
    rows = []
    for *_, cube in lake.field_cubes():
        ds = cubes.open_store(cube)
        for i, frame_id in enumerate(ds.frame_id.values):
            image, variance, mask = ds.image[i].values, ds.variance[i].values, ds.mask[i].values
            started = time.perf_counter()
            found = extract.extract_sources(image, variance, mask)
            clean = found.sources[found.sources.flag == 0]
            hidden = (mask & ~np.uint8(4)) > 0
            fluxes = ap.aperture_fluxes(image - found.background, variance, clean.x, clean.y, mask=hidden)
            try:
                best, stars = ap.best_aperture(fluxes)
                reference = ap.reference_aperture(fluxes, stars)
                mag, _ = ap.magnitudes(fluxes.flux, fluxes.flux_err)
                correction = ap.aperture_correction(clean.x.values[stars], clean.y.values[stars], mag[stars, best], mag[stars, reference], scale=max(image.shape) / 2)
            except ValueError as err:
                rows.append({"frame_id": int(frame_id), "error": str(err)})
                continue
            rows.append({
                "frame_id": int(frame_id), "best_diameter_px": float(fluxes.diameters[best]), "reference_diameter_px": float(fluxes.diameters[reference]),
                "reference_stars": correction.n_stars, "correction_rms_mmag": round(1000 * correction.rms_mag, 2), "seconds": round(time.perf_counter() - started, 2),
            })
    good = [r for r in rows if "error" not in r]
    rms = np.array([r["correction_rms_mmag"] for r in good])
    out = {
        "frames": len(rows), "measured": len(good), "failures": [r for r in rows if "error" in r][:5],
        "aperture_correction_rms_mmag": {"median": round(float(np.median(rms)), 2), "p90": round(float(np.percentile(rms, 90)), 2), "max": round(float(rms.max()), 2)},
        "best_diameter_px_median": float(np.median([r["best_diameter_px"] for r in good])),
        "reference_diameter_px_median": float(np.median([r["reference_diameter_px"] for r in good])),
        "reference_stars_median": float(np.median([r["reference_stars"] for r in good])),
        "per_frame": rows,
    }
    (Path(__file__).parent / "results" / "photometry_accuracy.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "per_frame"}, indent=2))


if __name__ == "__main__":
    main()
