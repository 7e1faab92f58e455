"""Light curves from a lake as tables and plots: what ``mstlake lightcurve`` prints and draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mstlake.query.lake import open_lake

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


def plot_lightcurves(points: pd.DataFrame, out: str | Path, *, title: str = "", use_magfit: bool = True, fold: bool | float = False) -> Path:
    """``lightcurve_figure`` written to ``out``: PNG, PDF or SVG by the file's suffix."""
    out = Path(out)
    lightcurve_figure(points, title=title, use_magfit=use_magfit, fold=fold).savefig(out, dpi=150)
    return out


def lightcurve_figure(points: pd.DataFrame, *, title: str = "", use_magfit: bool = True, fold: bool | float = False):
    """A matplotlib Figure with one panel per object of ``points`` (``lightcurves_at``; at most
    six, nearest first): magnitude against MJD per band with error bars; bad points (flagged,
    cloudy or uncalibrated frames) drawn hollow and grey. ``fold``: a period in days, or True for
    each object's Lomb-Scargle period (astropy; from its good points in its best-covered band),
    drawn over two cycles of phase."""
    from mstlake.qa.figures import best_period, light_curve_panels

    objects = list(dict.fromkeys(points.object_id))[:6]
    if not objects:
        raise ValueError("no light-curve points to plot")
    curves = []
    for object_id in objects:
        curve = points[points.object_id == object_id]
        shown = curve.mag_magfit.where(curve.mag_magfit.notna(), curve.mag) if use_magfit else curve.mag
        curve = curve.assign(mag=shown)
        period = None
        if fold is True:
            good = curve[curve.good.fillna(False).astype(bool)]
            if len(good):
                band = good.band.value_counts().index[0]
                period, _ = best_period(good.mjd[good.band == band], good.mag[good.band == band], good.mag_err[good.band == band])
        elif fold:
            period = float(fold)
        separation = curve.separation_arcsec.iloc[0] if "separation_arcsec" in curve else np.nan
        label = f"object {object_id}" + (f'  ({separation:.2f}" away)' if np.isfinite(separation) else "") + (f"  P = {period:.5f} d" if period else "")
        curves.append((label, curve, period))
    fig = light_curve_panels(curves, title=title)
    for ax in fig.axes:
        ax.set_ylabel("mag (magfit)" if use_magfit else "mag")
    return fig
