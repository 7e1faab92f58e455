"""A lake's digest for tests that compare lakes: equal digests, equal lakes (timestamps aside)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mstlake.lake.tables import read_table
from mstlake.paths import LakePaths
from mstlake.schemas import load_schema


def lake_digest(lake: LakePaths) -> dict:
    """Row counts and content sums of every table an ingest writes, the archive's included (at its
    last snapshot), and the calibrated pixels: equal digests, equal lakes (timestamps aside)."""
    from mstlake.lake import cubes
    from mstlake.lake.archive import open_reader

    def sums(table: pd.DataFrame) -> tuple:  # per column: a flux lost among ids of 1e18 would not show in one total
        return tuple(np.round(table.select_dtypes("number").fillna(0).sum().to_numpy(float), 4))

    digest = {}
    for name in ("frames", "astrometry", "photometry", "calibration_log"):
        table = read_table(getattr(lake, f"{name}_table"), load_schema(name)).to_pandas()
        digest[name] = (len(table), sums(table), tuple(sorted(table.status.fillna(""))) if "status" in table else ())
    for name, folder in (("sources", lake.sources_dir), ("forced_photometry", lake.forced_dir)):
        files = sorted(Path(folder).rglob("*.parquet"))
        table = pd.concat([pd.read_parquet(p) for p in files]) if files else pd.DataFrame()
        digest[name] = (len(files), len(table), sums(table))
    for _, band, night, store in lake.field_cubes():
        cube = cubes.open_store(store)
        digest[f"cube {band} {night}"] = (tuple(cube.frame_id.values.tolist()), round(float(np.nansum(cube.image.values)), 1), len(cube.attrs.get("wcs", "{}")))
    con = open_reader(lake)
    try:
        for name, total in (("frames", "count(*)"), ("sources", "sum(flux_psf)"), ("forced", "sum(flux)"), ("objects", "count(*)")):
            digest[f"archive {name}"] = tuple(round(float(v or 0), 2) for v in con.execute(f"SELECT count(*), {total} FROM lake.{name}").fetchone())
        digest["archive duplicates"] = con.execute("SELECT count(*) FROM (SELECT object_id, frame_id FROM lake.forced GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    finally:
        con.close()
    digest["visible files"] = sorted(str(p.relative_to(lake.root)) for p in Path(lake.root).rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(lake.root).parts) and not {"archive", "masters", "releases"} & set(p.relative_to(lake.root).parts))
    return digest
