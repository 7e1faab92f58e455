"""Data releases made by reprocessing (``mstlake reprocess --release DR1``).

A reprocessed release is a whole lake of its own under ``<lake>/releases/<name>``: every raw
frame the lake's inventory knows is calibrated and measured again, with the pipeline and
configuration of today, into tables, cubes, masters and an archive that nothing touches
afterwards; earlier releases and the nightly lake stay as they are. The release is finished when
its manifest (``release.json``) is written, last: an interrupted reprocess, run again, resumes
(every stage skips what it committed) and only then names it. The manifest carries the
provenance every row traces back to through its ``frame_id``: the pipeline version (``git
describe`` of the source tree, or the installed version), the hash of the configuration files,
the input files (their sha256, from the inventory) and the masters each night was calibrated with.
Before anything is calibrated every raw file is hashed again: one that is gone or no longer holds
the bytes the inventory hashed is left out of the release (its status ``failed: input: ...``, and
named in the manifest), so that no row traces back to a sha256 its pixels did not come from.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa

import mstlake
from mstlake.config import FieldConfig, InstrumentConfig, PipelineConfig
from mstlake.lake.tables import read_table, update_column, write_table_atomic
from mstlake.paths import LakePaths, config_dir as resolve_config_dir
from mstlake.pipeline.calibrate import FAILED_CALIBRATION
from mstlake.schemas import load_schema

RELEASE_TABLES = ("frames", "quarantine", "calibration_log", "astrometry", "photometry")
FAILED_INPUT = "failed: input: "  # a release's frames-table status: the raw file is not what the inventory hashed


class ReleaseError(RuntimeError):
    """A release that cannot be made (its name is taken, nothing to reprocess)."""


def pipeline_version() -> str:
    """``git describe --always --dirty`` of the source tree mstlake runs from, else its installed version."""
    source = Path(mstlake.__file__).resolve().parent.parent
    try:
        described = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{mstlake.__version__} ({described})" if described else mstlake.__version__


def config_hash(config_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """sha256 over the configuration files (names and contents, in name order) and their names."""
    root = resolve_config_dir(config_dir)
    files = sorted(p for p in root.rglob("*.toml") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest(), [str(p.relative_to(root)) for p in files]


def released(lake: LakePaths) -> list[dict]:
    """Every finished reprocessed release of the lake (their manifests), oldest first."""
    manifests = [json.loads(release.release_manifest.read_text()) for release in lake.release_lakes() if release.release_manifest.exists()]
    return sorted(manifests, key=lambda m: m["created"])


def reprocess(lake: LakePaths, name: str, *, fields: dict[str, FieldConfig], instrument: InstrumentConfig, pipeline: PipelineConfig, config_dir=None, reference_base: Path, progress: bool = True) -> dict:
    """Calibrate and measure again every raw frame ``lake``'s inventory knows, into the release
    ``name``; returns its manifest. Raises ReleaseError if the name is taken."""
    from mstlake.lake.archive import Archive
    from mstlake.lake.refcat import load_reference
    from mstlake.pipeline.calibrate import calibrate_nights
    from mstlake.pipeline.static import measure_field

    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ReleaseError(f"{name!r} cannot name a release (no slashes, not hidden)")
    target = lake.release_lake(name)
    if target.release_manifest.exists():
        raise ReleaseError(f"release {name!r} already exists at {target.root}: releases are immutable")
    if lake.archive_catalogue.exists():
        from mstlake.lake.archive import releases as named_snapshots

        if name in dict(named_snapshots(lake)):
            raise ReleaseError(f"{name!r} already names a snapshot of the archive at {lake.archive_dir}: choose another name")
    frames = read_table(lake.frames_table, load_schema("frames"))
    if not frames.num_rows:
        raise ReleaseError(f"the lake at {lake.root} has no inventory: nothing to reprocess")
    # the inventory, as the lake knows it, with earlier calibration failures given another chance
    if not target.frames_table.exists():
        status = [("ok" if s and s.startswith(FAILED_CALIBRATION) else s) for s in frames.column("status").to_pylist()]
        copy = frames.set_column(frames.schema.get_field_index("status"), "status", pa.array(status, frames.schema.field("status").type))
        write_table_atomic(read_table(lake.quarantine_table, load_schema("quarantine")), target.quarantine_table, load_schema("quarantine"))
        write_table_atomic(copy, target.frames_table, load_schema("frames"))
    changed_inputs(target, scheduler=pipeline.inventory.scheduler, workers=pipeline.inventory.workers, progress=progress)
    calibrate_nights(target, instrument=instrument, cfg=pipeline.calibration, progress=progress)
    measured = {}
    for field_name in sorted({f for f in frames.column("field").to_pylist() if f}):
        field = fields.get(field_name)
        if field is None or field.reference is None:
            continue
        reference = load_reference(field, target, base=reference_base)
        result = measure_field(target, field_name, reference, instrument=instrument, astrometry_cfg=pipeline.astrometry, photometry_cfg=pipeline.photometry, archive_cfg=pipeline.archive, magfit_cfg=pipeline.magfit, release=name, progress=progress)
        measured[field_name] = {"solved": result.solved, "calibrated": result.calibrated}
    snapshot = None
    if target.archive_catalogue.exists():  # named inside the release too (a reprocess resumed after this keeps the name)
        archive = Archive(target, pipeline.archive)
        named = dict(archive.releases())
        snapshot = named[name] if name in named else archive.release(name, note="reprocessed")
    config_sha256, config_files = config_hash(config_dir)
    inputs = frames.select(["frame_id", "path", "sha256"]).to_pylist()
    manifest = {
        "name": name, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "lake": str(target.root), "parent_lake": str(lake.root),
        "pipeline_version": pipeline_version(), "config_sha256": config_sha256, "config_files": config_files,
        "inputs": {
            "frames": len(inputs), "sha256_of_list": hashlib.sha256("\n".join(f"{r['frame_id']} {r['sha256']}" for r in sorted(inputs, key=lambda r: r["frame_id"])).encode()).hexdigest(),
            "left_out": [{"frame_id": r["frame_id"], "path": r["path"], "reason": r["status"].removeprefix(FAILED_INPUT)} for r in read_table(target.frames_table, load_schema("frames")).select(["frame_id", "path", "status"]).to_pylist() if (r["status"] or "").startswith(FAILED_INPUT)],
        },
        "masters": [str(p.relative_to(target.root)) for p in target.masters_stores()],
        "archive_snapshot": snapshot, "measured": measured, "rows": release_row_counts(target),
    }
    tmp = target.release_manifest.with_name(f".{target.release_manifest.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, target.release_manifest)
    return manifest


def changed_inputs(lake: LakePaths, *, scheduler: str, workers: int | None, progress: bool = True) -> dict[int, str]:
    """Hash again every raw file ``lake``'s frames table has not left out; each one that is gone
    or whose sha256 is no longer the inventory's gets the status ``failed: input: <reason>`` (the
    calibration and measurement then leave it out). Returns them, frame_id -> reason. Run each
    time a reprocess starts or resumes: a file changed in between is caught before its night."""
    import dask

    from mstlake.pipeline.execute import compute

    frames = read_table(lake.frames_table, load_schema("frames")).select(["frame_id", "path", "sha256", "status"]).to_pylist()
    checked = [r for r in frames if r["path"] and r["sha256"] and not (r["status"] or "").startswith("failed")]
    tasks = [dask.delayed(input_problem, pure=True)(r["path"], r["sha256"], dask_key_name=f"release-input-{r['frame_id']}") for r in checked]
    problems = compute(tasks, tracked=tasks, description="checking the raw files' sha256", scheduler=scheduler, workers=workers, progress=progress)
    changed = {r["frame_id"]: problem for r, problem in zip(checked, problems, strict=True) if problem}
    if changed:
        update_column(lake.frames_table, load_schema("frames"), "status", {fid: f"{FAILED_INPUT}{why}" for fid, why in changed.items()})
    return changed


def input_problem(path: str, sha256: str) -> str | None:
    """Why the raw file at ``path`` is not the one the inventory hashed as ``sha256`` (None: it is)."""
    try:
        with open(path, "rb") as handle:
            now = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as err:
        return f"the raw file {path} cannot be read: {err.strerror or err}"
    return None if now == sha256 else f"the raw file {path} changed since the inventory (sha256 {now[:12]}..., the inventory's {sha256[:12]}...)"


def release_row_counts(lake: LakePaths) -> dict[str, int]:
    """Rows per table of a lake: its Parquet tables and its archive's (at the last snapshot)."""
    counts = {name: read_table(lake.table(name), load_schema(name)).num_rows for name in RELEASE_TABLES}
    if lake.archive_catalogue.exists():
        from mstlake.lake.archive import open_reader

        con = open_reader(lake)
        try:
            for name in ("frames", "sources", "forced", "objects"):
                counts[f"archive.{name}"] = int(con.execute(f"SELECT count(*) FROM lake.{name}").fetchone()[0])
        finally:
            con.close()
    return counts
