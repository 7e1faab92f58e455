"""The inventory as a Dask graph: one task per new file (read, hash, parse), then one step that
judges them together and commits the ``frames`` and ``quarantine`` tables.

A file already in the lake with the same size and modification time is not read again, so a re-run
over an unchanged directory reads nothing and adds nothing. Files are opened read-only; nothing under
the raw directory is ever modified, moved or deleted.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dask
import pyarrow as pa

import mstlake
from mstlake.config import FieldConfig, InstrumentConfig, InventoryConfig
from mstlake.lake.tables import read_table, write_table_atomic
from mstlake.paths import LakePaths
from mstlake.pipeline.execute import compute
from mstlake.raw.inventory import FileFacts, build_inventory, examine_bytes, unreadable
from mstlake.schemas import load_schema


@dataclass
class InventoryReport:
    raw_dir: Path
    files_seen: int
    files_read: int
    new_frames: int
    new_quarantined: int
    total_frames: int
    total_quarantined: int
    frames_by_kind: Counter = field(default_factory=Counter)  # (telescope, night, type) of new frames
    quarantine_reasons: list[tuple[str, str, str]] = field(default_factory=list)  # new: (path, code, reason)

    @property
    def usable(self) -> bool:
        return self.total_frames > 0


def find_raw_files(raw_dir: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Every file under raw_dir whose name ends with one of the extensions (case-insensitive),
    skipping hidden files and directories."""
    endings = tuple(e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(endings):
                found.append(Path(root) / name)
    return found


def _examine_path(path: str, config: InventoryConfig, saturation_adu: float) -> FileFacts:
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return unreadable(path, size_bytes=0, mtime_ns=0, error=err)
    return examine_bytes(path, data, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, config=config, saturation_adu=saturation_adu)


def run_inventory(
    raw_dir: str | Path,
    lake: LakePaths,
    *,
    instrument: InstrumentConfig,
    fields: dict[str, FieldConfig],
    config: InventoryConfig,
    progress: bool = True,
) -> InventoryReport:
    raw_dir = Path(raw_dir).resolve()
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw directory {raw_dir} does not exist or is not a directory")
    frames_schema, quarantine_schema = load_schema("frames"), load_schema("quarantine")
    frames = read_table(lake.frames_table, frames_schema)
    quarantine = read_table(lake.quarantine_table, quarantine_schema)

    seen = {}
    for table in (frames, quarantine):
        for path, size, mtime in zip(*(table.column(c).to_pylist() for c in ("path", "size_bytes", "mtime_ns"))):
            seen[path] = (size, mtime)

    files = find_raw_files(raw_dir, config.extensions)
    todo = []
    for path in files:
        stat = path.stat()
        if seen.get(str(path)) != (stat.st_size, stat.st_mtime_ns):
            todo.append(str(path))

    tasks = [dask.delayed(_examine_path, pure=False)(p, config, instrument.detector.saturation_adu, dask_key_name=f"inventory-file-{i}") for i, p in enumerate(todo)]
    facts = compute(tasks, tracked=tasks, description=f"inventory of {raw_dir.name}", scheduler=config.scheduler, workers=config.workers, progress=progress)

    # a quarantined file that now reads fine (replaced by a good copy) leaves quarantine
    refreshed = {f.path for f in facts}
    keep = [p not in refreshed for p in quarantine.column("path").to_pylist()]
    quarantine = quarantine.filter(pa.array(keep, type=pa.bool_()))

    now = dt.datetime.now(dt.UTC)
    update = build_inventory(facts, frames, instrument=instrument, fields=fields, config=config, now=now, version=mstlake.__version__)
    new_frames = frames_schema.from_rows(update.frames)
    new_quarantine = quarantine_schema.from_rows(update.quarantine)
    all_frames = pa.concat_tables([frames, new_frames])
    all_quarantine = pa.concat_tables([quarantine, new_quarantine])
    if new_frames.num_rows or not lake.frames_table.exists():
        write_table_atomic(all_frames, lake.frames_table, frames_schema)
    if new_quarantine.num_rows or len(keep) != sum(keep) or not lake.quarantine_table.exists():
        write_table_atomic(all_quarantine, lake.quarantine_table, quarantine_schema)

    report = InventoryReport(
        raw_dir=raw_dir,
        files_seen=len(files),
        files_read=len(todo),
        new_frames=new_frames.num_rows,
        new_quarantined=new_quarantine.num_rows,
        total_frames=all_frames.num_rows,
        total_quarantined=all_quarantine.num_rows,
    )
    for row in update.frames:
        report.frames_by_kind[(row["telescope"], row["night"], row["type"])] += 1
    report.quarantine_reasons = [(row["path"], row["reason_code"], row["reason"]) for row in update.quarantine]
    return report


def science_nights(lake: LakePaths, field: str) -> list[int]:
    """The nights of the field's science frames in the lake's inventory."""
    frames = read_table(lake.frames_table, load_schema("frames")).to_pandas()
    return sorted({int(n) for n in frames.night[(frames.type == "science") & (frames.field == field)].dropna()})
