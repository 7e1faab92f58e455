"""Time and peak memory of the simulator.

    python benchmarks/simulate_speed.py

1. The demo set (`mstlake demo`'s simulation: 3 telescopes x 2 nights, 1/10 scale) end to end.
2. Full-size 9576x6288 frames: building the survey (stars + one telescope's detector maps), then one
   bias, one twilight flat and one science frame, each timed separately, with the process's peak
   resident memory.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from mstlake.config import load_field, load_instrument, load_simulation
from mstlake.paths import SimulationPaths
from mstlake.pipeline.simulate import SimulationRequest, simulate
from mstlake.simulate.frames import build_survey, make_exposure
from mstlake.simulate.schedule import plan_night


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    instrument, sim, field_cfg = load_instrument(), load_simulation(), load_field("f02")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        request = SimulationRequest(field="f02", nights=2, frames_per_night=6, telescopes=("MST1", "MST2", "MST3"), scale=0.1, seed=2023, with_bad_files=True)
        started = time.perf_counter()
        summary = simulate(request, SimulationPaths.beside(Path(tmp) / "raw"), instrument=instrument, sim=sim, field_cfg=field_cfg, progress=False)
        results["demo_set_seconds"] = round(time.perf_counter() - started, 1)
        results["demo_set_files"] = sum(summary.counts.values())

    started = time.perf_counter()
    survey = build_survey(seed=1, instrument=instrument, sim=sim, field_cfg=field_cfg, telescopes=["MST2"], nights=[20230118], scale=1.0)
    results["full_frame_shape"] = list(survey.shape)
    results["full_survey_build_seconds"] = round(time.perf_counter() - started, 1)
    results["stars_generated"] = survey.stars.size
    plan = plan_night(np.random.default_rng(0), night=20230118, night_index=0, telescope="MST2", telescope_index=0, science_frames=3, field_ra=field_cfg.centre_ra_deg, field_dec=field_cfg.centre_dec_deg, site=instrument.site, cfg=sim.observing)
    for kind in ("bias", "flat", "science"):
        exposure = next(e for e in plan if e.kind == kind and not e.bad_flat)
        started = time.perf_counter()
        result = make_exposure(survey, exposure)
        results[f"full_{kind}_seconds"] = round(time.perf_counter() - started, 1)
        if kind == "science":
            results["full_science_stars_on_frame"] = int(len(result.frame_stars["x"]))
            results["full_science_stars_brighter_than_19"] = int(np.sum(result.frame_stars["mag"] < 19))
            results["full_science_saturated_pixels"] = int(np.sum(result.data >= instrument.detector.saturation_adu))
            results["full_science_cosmic_rays"] = int(result.truth["n_cosmic_rays"])
    results["peak_rss_gb"] = round(peak_rss_gb(), 2)
    out = Path(__file__).parent / "results" / "simulate_speed.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
