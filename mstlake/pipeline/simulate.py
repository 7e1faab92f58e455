"""Writing a simulated data set: the survey's truth, then every exposure as a task in a Dask graph.

Each task simulates one exposure and writes its FITS file and per-frame truth atomically (temporary
file, then rename), so an interrupted run leaves only complete files. Tasks are independent and
keyed by the seed, so the result does not depend on scheduling.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits

import mstlake
from mstlake.astro import night_to_mjd_local_noon
from mstlake.config import FieldConfig, InstrumentConfig, SimulationConfig
from mstlake.paths import SimulationPaths
from mstlake.pipeline.execute import compute
from mstlake.schemas import load_schema
from mstlake.simulate.frames import ExposureResult, Survey, build_survey, make_exposure, rng_for
from mstlake.simulate.schedule import Exposure, plan_night
from mstlake.simulate.sky import make_library

BAD_FILE_KINDS = ("truncated", "not_fits", "missing_date_obs", "wrong_shape", "all_zero", "duplicate", "dome_closed")


@dataclass(frozen=True)
class SimulationRequest:
    field: str
    nights: int
    frames_per_night: int
    telescopes: tuple[str, ...]
    scale: float
    seed: int
    with_bad_files: bool = False
    start_night: int | None = None


@dataclass(frozen=True)
class SimulationSummary:
    raw_dir: Path
    truth_dir: Path
    counts: dict[str, int]
    n_stars: int
    n_library: int
    shape: tuple[int, int]


def _nights(start: int, count: int) -> list[int]:
    import datetime as dt

    first = dt.date(start // 10000, (start // 100) % 100, start % 100)
    days = [first + dt.timedelta(days=i) for i in range(count)]
    return [d.year * 10000 + d.month * 100 + d.day for d in days]


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fits_bytes(data: np.ndarray, header: fits.Header) -> bytes:
    import io

    buffer = io.BytesIO()
    hdu = fits.PrimaryHDU(data=data, header=header)
    hdu.writeto(buffer, output_verify="silentfix")
    return buffer.getvalue()


def _write_parquet(path: Path, columns: dict, table: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(load_schema(table).from_columns(columns), tmp, compression="zstd")
    os.replace(tmp, path)


def _write_exposure(survey: Survey, exposure: Exposure, paths: SimulationPaths) -> dict:
    result = make_exposure(survey, exposure)
    _store(result, paths, exposure)
    return result.truth


def _store(result: ExposureResult, paths: SimulationPaths, exposure: Exposure) -> None:
    truth = result.truth
    truth["date_obs"] = result.header["DATE-OBS"]
    stem = truth["stem"]
    if result.frame_stars is not None:
        _write_parquet(paths.frame_stars(stem), result.frame_stars, "truth_frame_stars")
    if result.artefacts is not None:
        _write_parquet(paths.frame_artefacts(stem), result.artefacts, "truth_artefacts")
    _atomic_bytes(paths.raw_file(truth["file"]), _fits_bytes(result.data, result.header))


def _write_static_truth(survey: Survey, paths: SimulationPaths, nights: list[int]) -> None:
    for name, tel in survey.telescopes.items():
        det = tel.detector
        maps = {
            "bias_pattern": (det.bias_pattern, "Static bias pattern [ADU] (each read adds an offset, row noise and read noise)"),
            "ps_std": (det.ps_std, "Random-telegraph (pepper-and-salt) std per pixel [ADU]; 0 for normal pixels"),
            "bad_pixels": (det.bad_pixels, "1 hot pixel, 2 dead or low-response pixel"),
            "dark_current": (det.dark_current, "Dark current [e-/s]"),
            "vignetting": (det.vignetting, "Vignetting (large-scale flat)"),
        }
        for key, (array, description) in maps.items():
            header = fits.Header()
            header["CONTENT"] = description
            header["TELESCOP"] = name
            _atomic_bytes(paths.static_map(name, key), _fits_bytes(array, header))
        for i, night in enumerate(nights):
            header = fits.Header()
            header["CONTENT"] = "True flat field: vignetting x pixel response x dust"
            header["TELESCOP"] = name
            header["NIGHT"] = night
            _atomic_bytes(paths.nightly_flat(name, night), _fits_bytes(det.pixel_response(i), header))


def _bad_files(survey: Survey, plans: list[Exposure], paths: SimulationPaths) -> list[dict]:
    """Deliberately broken inputs, each made from a real science exposure of the first telescope."""
    science = [e for e in plans if e.kind == "science"]
    if not science:
        return []
    source = science[0]
    made = make_exposure(survey, source)
    raw_bytes = _fits_bytes(made.data, made.header)
    rows = []

    def record(kind: str, relpath: str, data: bytes, origin: ExposureResult) -> None:
        _atomic_bytes(paths.raw_file(relpath), data)
        row = dict(origin.truth)
        row.update(kind=kind, file=relpath, stem=SimulationPaths.stem(relpath), date_obs=origin.header.get("DATE-OBS"))
        rows.append(row)

    def beside_source(suffix: str) -> str:
        return paths.frame_relpath(source.night, source.telescope, f"{made.filename.rsplit('.', 1)[0]}{suffix}")

    record("truncated", beside_source("_retry.fits"), raw_bytes[: int(len(raw_bytes) * 0.6)], made)
    record("not_fits", paths.frame_relpath(source.night, source.telescope, "observing_log.fits"), b"MST observing log\n" + b"21:03 dome open, tracking f02\n" * 40, made)
    header = made.header.copy()
    del header["DATE-OBS"]
    header.pop("DATE-LOC", None)
    record("missing_date_obs", beside_source("_nodate.fits"), _fits_bytes(made.data, header), made)
    ny, nx = (n // 2 * 2 for n in made.data.shape)
    binned = made.data[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).astype(np.float64).mean(axis=(1, 3))
    header = made.header.copy()
    header["XBINNING"], header["YBINNING"] = 2, 2
    record("wrong_shape", beside_source("_bin2.fits"), _fits_bytes(np.clip(binned, 0, 65535).astype(np.uint16), header), made)
    record("all_zero", beside_source("_zero.fits"), _fits_bytes(np.zeros_like(made.data), made.header), made)
    original = paths.raw_file(paths.frame_relpath(source.night, source.telescope, made.filename))
    if original.exists():
        record("duplicate", paths.backup_relpath(source.night, made.filename), original.read_bytes(), made)
    later = science[min(1, len(science) - 1)]
    dome = make_exposure(survey, Exposure(later.night, later.night_index, later.telescope, "science", later.mjd_start + 90 / 86400, later.exptime, 999), no_light=True)
    record("dome_closed", paths.frame_relpath(later.night, later.telescope, dome.filename), _fits_bytes(dome.data, dome.header), dome)
    return rows


def simulate(
    request: SimulationRequest,
    paths: SimulationPaths,
    *,
    instrument: InstrumentConfig,
    sim: SimulationConfig,
    field_cfg: FieldConfig,
    scheduler: str = "threads",
    workers: int = 2,
    progress: bool = True,
) -> SimulationSummary:
    unknown = [t for t in request.telescopes if t not in instrument.telescopes or t not in sim.telescopes]
    if unknown:
        raise ValueError(f"unknown telescope(s) {unknown}: known are {sorted(instrument.telescopes)}")
    if not 0 < request.scale <= 1:
        raise ValueError(f"--scale must be in (0, 1], got {request.scale}")
    nights = _nights(request.start_night or sim.observing.start_night, request.nights)
    survey = build_survey(seed=request.seed, instrument=instrument, sim=sim, field_cfg=field_cfg, telescopes=list(request.telescopes), nights=nights, scale=request.scale)

    plans: list[Exposure] = []
    for t_pos, name in enumerate(request.telescopes):
        tel = survey.telescopes[name]
        for i, night in enumerate(nights):
            plans += plan_night(
                rng_for(request.seed, 4, tel.index, i), night=night, night_index=i, telescope=name, telescope_index=t_pos,
                science_frames=request.frames_per_night, field_ra=field_cfg.centre_ra_deg, field_dec=field_cfg.centre_dec_deg,
                site=instrument.site, cfg=sim.observing,
            )

    paths.truth.mkdir(parents=True, exist_ok=True)
    _write_parquet(paths.stars, survey.stars.columns, "truth_stars")
    library = make_library(rng_for(request.seed, 5), survey.stars)
    _write_parquet(paths.standard_library, library, "standard_library")
    _write_static_truth(survey, paths, nights)

    tasks = [dask.delayed(_write_exposure, pure=False)(survey, exposure, paths, dask_key_name=f"simulate-exposure-{i}") for i, exposure in enumerate(plans)]
    truths = compute(tasks, tracked=tasks, description="simulating exposures", scheduler=scheduler, workers=workers, progress=progress)
    if request.with_bad_files:
        truths += _bad_files(survey, plans, paths)

    schema = load_schema("truth_frames")
    truth_columns = {name: [row.get(name) for row in truths] for name in schema.names}
    _write_parquet(paths.frames, truth_columns, "truth_frames")

    counts: dict[str, int] = {}
    for row in truths:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    manifest = {
        "mstlake_version": mstlake.__version__,
        "request": {**asdict(request), "telescopes": list(request.telescopes)},
        "nights": nights,
        "shape": list(survey.shape),
        "counts": counts,
        "stars": survey.stars.size,
        "library_stars": int(len(library["source_id"])),
        "mjd_first_night_noon": night_to_mjd_local_noon(nights[0], instrument.site.utc_offset_hours),
        "telescopes": {
            name: {"axis_x": t.axis_x, "axis_y": t.axis_y, "rotation_deg": t.rotation_deg, "mirrored": t.mirrored, "distortion_k1_k2_p1_p2_px": list(t.distortion), "header_dialect": t.dialect}
            for name, t in survey.telescopes.items()
        },
    }
    _atomic_bytes(paths.manifest, json.dumps(manifest, indent=2).encode())
    return SimulationSummary(raw_dir=paths.raw, truth_dir=paths.truth, counts=counts, n_stars=survey.stars.size, n_library=int(len(library["source_id"])), shape=survey.shape)
