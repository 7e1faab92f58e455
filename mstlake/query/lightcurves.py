"""Light curves from a lake as tables and plots: what ``mstlake lightcurve`` prints and draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mstlake.query.lake import open_lake

BAND_COLOURS = {"g": "tab:green", "r": "tab:red", "i": "tab:purple"}


def lightcurves_at(lake: str | Path, ra_deg: float, dec_deg: float, *, radius_arcsec: float = 1.0, band: str | None = None, release: str | None = None) -> pd.DataFrame:
    """Every measurement of every object within ``radius_arcsec`` of (ra, dec): one row per point
    (forced photometry, or detections for objects without it), nearest object first, with the
    object's separation and whether the point is good (unflagged, on a clear calibrated frame)."""
    if radius_arcsec <= 0:
        raise ValueError(f"the radius must be positive, not {radius_arcsec}")
    con = open_lake(lake, release=release)
    try:
        objects = con.execute("SELECT object_id, separation_arcsec FROM cone(?, ?, ?)", [float(ra_deg), float(dec_deg), float(radius_arcsec)]).fetch_df()
        frames = []
        for item in objects.itertuples():
            points = con.execute("SELECT * FROM lightcurve(?)", [int(item.object_id)]).fetch_df()
            frames.append(points.assign(separation_arcsec=item.separation_arcsec))
    finally:
        con.close()
    if not frames:
        return pd.DataFrame(columns=["object_id", "separation_arcsec", "frame_id", "mjd", "band", "flux", "flux_err", "mag", "mag_err", "mag_magfit", "flag", "kind", "cloudy", "good"])
    table = pd.concat(frames, ignore_index=True)
    if band is not None:
        table = table[table.band == band]
    first = ["object_id", "separation_arcsec"]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def plot_lightcurves(points: pd.DataFrame, out: str | Path, *, title: str = "", use_magfit: bool = True) -> Path:
    """One panel per object (at most six, nearest first): magnitude against MJD per band with error
    bars; bad points (flagged, cloudy or uncalibrated frames) drawn hollow and grey. PNG, PDF or
    SVG by the file's suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objects = list(dict.fromkeys(points.object_id))[:6]
    if not objects:
        raise ValueError("no light-curve points to plot")
    fig, axes = plt.subplots(len(objects), 1, figsize=(8, 2.6 * len(objects) + 0.6), sharex=True, squeeze=False)
    for ax, object_id in zip(axes[:, 0], objects, strict=True):
        curve = points[points.object_id == object_id]
        mag = curve.mag_magfit.where(curve.mag_magfit.notna(), curve.mag) if use_magfit else curve.mag
        for band, group in curve.groupby("band", sort=True):
            good = group.good.fillna(False).astype(bool)
            colour = BAND_COLOURS.get(band, "black")
            ax.errorbar(group.mjd[good], mag[group.index][good], yerr=group.mag_err[good], fmt="o", ms=3, color=colour, label=band, lw=0.8)
            if (~good).any():
                ax.errorbar(group.mjd[~good], mag[group.index][~good], yerr=group.mag_err[~good], fmt="o", ms=3, mfc="none", color="0.6", lw=0.6)
        # limits from the good points, so that one faint point's 10-mag error bar does not flatten the rest
        good_mag = mag[curve.good.fillna(False).astype(bool)].dropna()
        if len(good_mag) >= 2:
            pad = 3 * float(curve.mag_err[good_mag.index].median()) + 0.02
            ax.set_ylim(float(good_mag.quantile(0.01)) - pad, float(good_mag.quantile(0.99)) + pad)
        ax.invert_yaxis()
        separation = curve.separation_arcsec.iloc[0] if "separation_arcsec" in curve else np.nan
        ax.set_title(f"object {object_id}" + (f'  ({separation:.2f}" away)' if np.isfinite(separation) else ""), fontsize=9, loc="left")
        ax.set_ylabel("mag (magfit)" if use_magfit else "mag")
        ax.legend(fontsize=8, loc="best", title_fontsize=8)
    axes[-1, 0].set_xlabel("MJD")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
