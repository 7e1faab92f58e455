"""Catalogue stacking: light curves binned by N consecutive epochs, scatter against N (issue 5).

    # 26 nights x 16 frames of MST2 (g) at 1/10 scale, then the archive (~20 min on 2 cores):
    mstlake simulate --field f02 --nights 26 --frames-per-night 16 --telescopes MST2 --scale 0.1 --seed 5 --out /tmp/stack400/raw/f02
    (cd /tmp/stack400 && mstlake ingest --field f02 --raw /tmp/stack400/raw/f02 --lake /tmp/stack400/lake)
    python benchmarks/catalog_stack.py --lake /tmp/stack400/lake --raw /tmp/stack400/raw/f02

(416 frames, ~390 clear epochs: three complete 100-epoch bins per star.)

The stacks are one lazy DuckDB query over the archive (the same binning as the ``catalog_stack``
macro, for every object at once): each constant library star's good points (unflagged, on clear
calibrated frames) numbered in time per band, binned by N, each bin the inverse-variance weighted
mean. Per 1-mag bin of true magnitude and per N = 1, 2, 4, ..., 100: the median over stars of the
binned light curve's scatter, against the single-epoch scatter / sqrt(N) (pure white noise) and
the formal error; the floor is what must be added in quadrature to white noise to give the
measured scatter. Done on the calibrated magnitudes and on the magfit magnitudes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mstlake.paths import SimulationPaths
from mstlake.query import open_lake

STACK_SIZES = (1, 2, 4, 8, 16, 32, 64, 100)

BINNED_SQL = """
WITH points AS (
    SELECT f.object_id, f.band, f.mjd, {magnitude} AS m, f.mag_err AS e
    FROM forced f JOIN frames fr USING (frame_id) SEMI JOIN constant c ON c.object_id = f.object_id
    WHERE f.flag = 0 AND fr.status = 'calibrated' AND NOT fr.cloudy AND {magnitude} IS NOT NULL AND f.mag_err > 0
),
numbered AS (SELECT *, (row_number() OVER (PARTITION BY object_id, band ORDER BY mjd) - 1) // {n} AS bin FROM points),
binned AS (
    SELECT object_id, band, bin, sum(m / (e * e)) / sum(1 / (e * e)) AS mag, 1 / sqrt(sum(1 / (e * e))) AS err
    FROM numbered GROUP BY object_id, band, bin HAVING count(*) = {n}
)
SELECT object_id, band, count(*) AS bins, stddev_samp(mag) AS scatter, median(err) AS err
FROM binned GROUP BY object_id, band HAVING count(*) >= 2
"""


def stack_scatter(con, magnitude: str) -> pd.DataFrame:
    frames = []
    for n in STACK_SIZES:
        frame = con.execute(BINNED_SQL.format(magnitude=magnitude, n=n)).fetch_df()
        frames.append(frame.assign(n=n))
    return pd.concat(frames, ignore_index=True)


def summarise(table: pd.DataFrame, true_mag: pd.Series) -> list[dict]:
    table = table.assign(true_mag=table.object_id.map(true_mag)).dropna(subset=["true_mag", "scatter"])
    single = table[table.n == 1].set_index(["object_id", "band"]).scatter
    table = table.assign(single=pd.MultiIndex.from_frame(table[["object_id", "band"]]).map(single))
    rows = []
    for lo in np.arange(np.floor(table.true_mag.min()), np.ceil(table.true_mag.max())):
        in_bin = table[(table.true_mag >= lo) & (table.true_mag < lo + 1)]
        for n, group in in_bin.groupby("n"):
            if len(group) < 5:
                continue
            white = group.single / np.sqrt(n)
            floor = np.sqrt(max(np.median(group.scatter**2) - np.median(white**2), 0.0))
            # pooled over stars, weighted by degrees of freedom: unbiased where a star has only 2-3
            # bins (the median of a 2-bin std is 0.67 sigma)
            dof = group.bins - 1
            pooled = np.sqrt(np.sum(dof * group.scatter**2) / np.sum(dof))
            pooled_white = np.sqrt(np.sum(dof * white**2) / np.sum(dof))
            rows.append({
                "mag_bin": f"{lo:.0f}-{lo + 1:.0f}", "n": int(n), "stars": len(group), "bins_per_star": float(group.bins.median()),
                "scatter_mmag": round(1000 * float(group.scatter.median()), 2), "white_noise_mmag": round(1000 * float(white.median()), 2),
                "formal_error_mmag": round(1000 * float(group.err.median()), 2), "ratio_to_white": round(float((group.scatter / white).median()), 3),
                "floor_mmag": round(1000 * float(floor), 2),
                "pooled_scatter_mmag": round(1000 * float(pooled), 2), "pooled_white_mmag": round(1000 * float(pooled_white), 2),
                "pooled_ratio_to_white": round(float(pooled / pooled_white), 3),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, default=Path("/tmp/stack400/lake"))
    parser.add_argument("--raw", type=Path, default=Path("/tmp/stack400/raw/f02"))
    parser.add_argument("--out", default="catalog_stack.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    stars = pq.read_table(SimulationPaths.beside(args.raw).stars).to_pandas()
    constant = stars[(stars.variable_type == "constant") & stars.in_library]
    con = open_lake(args.lake)
    con.register("constant", pa.table({"object_id": constant.library_source_id.astype(np.int64).values}))
    epochs = con.execute("SELECT band, count(DISTINCT frame_id) FROM forced GROUP BY band").fetchall()
    results = {"epochs_per_band": dict(epochs), "stack_sizes": list(STACK_SIZES)}
    for name, magnitude in (("calibrated", "f.mag"), ("magfit", "f.mag_magfit")):
        started = time.perf_counter()
        table = stack_scatter(con, magnitude)
        results[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
        results[name] = summarise(table, constant.set_index("library_source_id").mag_g)
    (Path(__file__).parent / "results" / args.out).write_text(json.dumps(results, indent=2))
    for name in ("calibrated", "magfit"):
        print(f"\n{name} magnitudes ({results[f'{name}_seconds']} s for all N):")
        print(pd.DataFrame(results[name]).pivot(index="mag_bin", columns="n", values="scatter_mmag").to_string())
        print("pooled over stars (dof-weighted rms), ratio to white noise:")
        print(pd.DataFrame(results[name]).pivot(index="mag_bin", columns="n", values="pooled_ratio_to_white").to_string())
        print("floor (mmag, in quadrature above white noise):")
        print(pd.DataFrame(results[name]).pivot(index="mag_bin", columns="n", values="floor_mmag").to_string())


if __name__ == "__main__":
    main()
