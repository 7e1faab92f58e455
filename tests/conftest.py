"""Shared, seeded simulated data. Small frames (1/16 of the detector) keep the suite fast while every
physical ingredient is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from mstlake.config import load_field, load_fields, load_instrument, load_pipeline, load_simulation
from mstlake.paths import SimulationPaths
from mstlake.pipeline.simulate import SimulationRequest, simulate

SMALL_SCALE = 0.0625


@pytest.fixture(scope="session")
def instrument():
    return load_instrument()


@pytest.fixture(scope="session")
def sim_config():
    return load_simulation()


@pytest.fixture(scope="session")
def inventory_config():
    return load_pipeline().inventory


@pytest.fixture(scope="session")
def fields():
    return load_fields()


@pytest.fixture(scope="session")
def small_simulation(tmp_path_factory, instrument, sim_config):
    """One night, MST1 (MaxIm headers) and MST2 (N.I.N.A. headers), three science frames each, the
    100-frame bias series, and every kind of bad file."""
    root = tmp_path_factory.mktemp("sim")
    paths = SimulationPaths.beside(root / "raw")
    request = SimulationRequest(field="f02", nights=1, frames_per_night=3, telescopes=("MST1", "MST2"), scale=SMALL_SCALE, seed=11, with_bad_files=True)
    summary = simulate(request, paths, instrument=instrument, sim=sim_config, field_cfg=load_field("f02"), progress=False)
    return paths, summary


def read_truth_frames(paths: SimulationPaths):
    import pyarrow.parquet as pq

    return pq.read_table(paths.frames).to_pandas()


def raw_image(paths: SimulationPaths, relative: str):
    from astropy.io import fits

    with fits.open(Path(paths.raw) / relative) as hdul:
        return hdul[0].data.astype(float), hdul[0].header


@pytest.fixture(scope="session")
def pipeline_config():
    return load_pipeline()


@pytest.fixture(scope="session")
def calibrated_lake(small_simulation, tmp_path_factory, instrument, fields, pipeline_config):
    """The small simulation taken through the inventory and calibration: (paths, lake, results)."""
    from mstlake.paths import LakePaths
    from mstlake.pipeline.calibrate import calibrate_nights
    from mstlake.pipeline.inventory import run_inventory

    paths, _ = small_simulation
    lake = LakePaths(tmp_path_factory.mktemp("lake"))
    run_inventory(paths.raw, lake, instrument=instrument, fields=fields, config=pipeline_config.inventory, progress=False)
    results = calibrate_nights(lake, instrument=instrument, cfg=pipeline_config.calibration, progress=False)
    return paths, lake, results


def field_with_simulated_reference(fields, paths: SimulationPaths):
    """Field f02 with the simulation's standard library as its reference catalogue."""
    import dataclasses

    from mstlake.config import ReferenceCatalogueConfig

    return dataclasses.replace(fields["f02"], reference=ReferenceCatalogueConfig(path=str(paths.standard_library)))


@pytest.fixture(scope="session")
def solved_lake(calibrated_lake, fields, instrument, pipeline_config):
    """... and through astrometry and photometry: (paths, lake, field config, result)."""
    from mstlake.lake.refcat import load_reference
    from mstlake.pipeline.static import measure_field

    paths, lake, _ = calibrated_lake
    field = field_with_simulated_reference(fields, paths)
    reference = load_reference(field, lake, base=paths.raw)
    result = measure_field(lake, "f02", reference, instrument=instrument, astrometry_cfg=pipeline_config.astrometry, photometry_cfg=pipeline_config.photometry, archive_cfg=pipeline_config.archive, magfit_cfg=pipeline_config.magfit, progress=False)
    return paths, lake, field, result


@pytest.fixture
def running_scheduler(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes (one thread each) on loopback: its
    address."""
    import json
    import subprocess
    import sys
    import time

    scheduler_file = tmp_path / "scheduler.json"
    common = ["--dashboard-address", ":0"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(scheduler_file), *common], **quiet)]
    try:
        for _ in range(240):
            if scheduler_file.exists() and scheduler_file.stat().st_size:
                break
            time.sleep(0.5)
        address = json.loads(scheduler_file.read_text())["address"]
        processes += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--host", "127.0.0.1", *common], **quiet) for _ in range(2)]
        yield address
    finally:
        for process in processes[::-1]:
            process.terminate()
            process.wait(timeout=60)

