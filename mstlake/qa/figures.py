"""The QA report's figures (the pipeline paper's diagnostic figures): arrays and tables in, a
matplotlib ``Figure`` out. No I/O and no pyplot state: each figure is its own object, safe to make
in a worker, written by whoever calls (``mstlake.qa.report``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from mstlake.calib.apply import BAD, COSMIC_RAY, PEPPER_SALT, SATURATED, TRACK

BAND_COLOURS = {"g": "tab:green", "r": "tab:red", "i": "tab:purple"}
MASK_COLOURS = {"bad pixel": (BAD, "gold"), "saturated": (SATURATED, "deepskyblue"), "pepper-and-salt": (PEPPER_SALT, "magenta"), "satellite track": (TRACK, "red"), "cosmic ray": (COSMIC_RAY, "lime")}
MAG_PER_FLUX_FRACTION = 2.5 / np.log(10)  # 1.0857: an error in magnitudes per fractional flux error


def binned(image: np.ndarray, max_px: int = 900, *, how: str = "mean") -> np.ndarray:
    """``image`` shrunk by whole-pixel blocks until neither side exceeds ``max_px``: the mean of each
    block (NaN left out; ``how="max"``: its largest value, so that a single flagged pixel stays
    visible). The last partial blocks are dropped."""
    from skimage.measure import block_reduce

    image = np.asarray(image)
    factor = max(1, int(np.ceil(max(image.shape) / max_px)))
    if factor == 1:
        return image
    ny, nx = (s // factor * factor for s in image.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a block with no finite value: NaN
        return block_reduce(image[:ny, :nx], (factor, factor), func=np.max if how == "max" else np.nanmean)


def stretch_limits(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Display limits: the ``low`` and ``high`` percentiles of the finite values."""
    finite = np.asarray(image, float)[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def image_panels(panels: list[tuple[str, np.ndarray, str]], *, title: str = "", columns: int = 3) -> Figure:
    """Images side by side, each ``(title, image, kind)``: ``"linear"`` (1-99 percentile stretch
    with a colour bar), ``"binary"`` (non-zero pixels dark, block maxima so single pixels show;
    the count in the title) or ``"ratio"`` (a flat: 0.5-99.5 percentile stretch about 1)."""
    rows = int(np.ceil(len(panels) / columns))
    fig = Figure(figsize=(4.2 * min(columns, len(panels)), 3.6 * rows + 0.4), layout="constrained")
    for k, (name, image, kind) in enumerate(panels):
        ax = fig.add_subplot(rows, min(columns, len(panels)), k + 1)
        if kind == "binary":
            flagged = np.asarray(image) != 0
            ax.imshow(binned(flagged.astype(np.uint8), how="max"), origin="lower", cmap=ListedColormap(["white", "black"]), vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}: {int(flagged.sum()):,} px ({100 * flagged.mean():.3f}%)", fontsize=9)
        else:
            shown = binned(np.asarray(image, np.float32))
            lo, hi = stretch_limits(shown, *((0.5, 99.5) if kind == "ratio" else (1.0, 99.0)))
            drawn = ax.imshow(shown, origin="lower", cmap="gray" if kind == "linear" else "RdBu_r", vmin=lo, vmax=hi, interpolation="nearest")
            fig.colorbar(drawn, ax=ax, shrink=0.8)
            ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def frame_with_masks(image: np.ndarray, mask: np.ndarray, *, title: str = "") -> Figure:
    """A calibrated frame beside its mask planes, each bit in its colour (satellite tracks red),
    with the number of pixels each flags."""
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    shown = binned(np.asarray(image, np.float32))
    lo, hi = stretch_limits(shown, 5.0, 99.5)
    for ax in (left, right):
        ax.imshow(shown, origin="lower", cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
    left.set_title("calibrated image", fontsize=9)
    handles = []
    for name, (bit, colour) in MASK_COLOURS.items():
        planes = binned(((np.asarray(mask) & bit) != 0).astype(np.uint8), how="max")
        count = int(((np.asarray(mask) & bit) != 0).sum())
        overlay = np.zeros((*planes.shape, 4))
        overlay[planes > 0] = (*_rgb(colour), 1.0)
        right.imshow(overlay, origin="lower", interpolation="nearest")
        handles.append((colour, f"{name} ({count:,} px)"))
    from matplotlib.patches import Patch

    right.legend(handles=[Patch(color=c, label=label) for c, label in handles], fontsize=8, loc="upper right", framealpha=0.85)
    right.set_title("mask planes", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


def cell_centres(shape: tuple[int, int], cells: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """x and y (rows, columns) of the centres of a grid of ``cells`` over a detector of ``shape``."""
    ny, nx = shape
    return np.meshgrid((np.arange(cells[1]) + 0.5) * nx / cells[1], (np.arange(cells[0]) + 0.5) * ny / cells[0])


def cell_medians(x, y, dx, dy, shape: tuple[int, int], cells: tuple[int, int] = (8, 12), min_points: int = 3) -> tuple[np.ndarray, ...]:
    """Median (dx, dy) in a grid of ``cells`` (rows, columns) over a detector of ``shape``
    (``mstlake.astrom.solve.residual_map``, the astrometry table's maps): cell centres x, y and
    the medians (NaN where fewer than ``min_points``)."""
    from mstlake.astrom.solve import residual_map

    mx, my = residual_map(x, y, dx, dy, shape, grid=cells, min_stars=min_points)
    return (*cell_centres(shape, cells), mx.reshape(cells), my.reshape(cells))


def robust_rms(values) -> float:
    """``mstlake.calib.combine.robust_std`` (1.4826 x the median absolute deviation) of the finite values."""
    from mstlake.calib.combine import robust_std

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(robust_std(values)) if values.size else float("nan")


def astrometric_residuals(x, y, before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray], *, shape: tuple[int, int], title: str = "") -> Figure:
    """Residuals (mas) of matched stars, detected minus reference projected, through a linear TAN
    fit (``before``: no distortion terms) and through the frame's TAN-SIP solution (``after``):
    histograms per axis, and vector maps of the median residual per detector cell."""
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    # about ten stars a cell, at most 8 x 12 cells; both maps on the scale of the larger residuals
    columns = int(np.clip(np.sqrt(len(x) / 10 * shape[1] / shape[0]), 2, 12))
    cells = (int(np.clip(round(columns * shape[0] / shape[1]), 2, 8)), columns)
    maps = [cell_medians(x, y, dx, dy, shape, cells) for dx, dy in (before, after)]
    longest = max(max(np.nanmax(np.hypot(mx, my)) if np.isfinite(mx).any() else 1.0 for _, _, mx, my in maps), 1.0)
    limit = max(3 * robust_rms(np.concatenate([before[0], before[1]])), 50.0)
    bins = np.linspace(-limit, limit, 61)
    for column, (label, (dx, dy), (cx, cy, mx, my)) in enumerate(zip(("TAN only (before the distortion fit)", "TAN-SIP (after)"), (before, after), maps, strict=True)):
        ax = fig.add_subplot(2, 2, column + 1)
        for values, axis, colour in ((dx, "x", "tab:blue"), (dy, "y", "tab:orange")):
            ax.hist(np.clip(values, -limit, limit), bins=bins, histtype="step", color=colour, label=f"{axis}: rms {robust_rms(values):.0f} mas")
        ax.set_xlabel("residual (mas)"), ax.set_ylabel("stars")
        ax.set_title(f"{label}: {len(dx)} stars", fontsize=9)
        ax.legend(fontsize=8)
        vectors = fig.add_subplot(2, 2, column + 3)
        vectors.quiver(cx, cy, mx, my, angles="xy", scale_units="xy", scale=longest / (shape[1] / (cells[1] + 2)), color="k", width=0.004)
        vectors.set_xlim(0, shape[1]), vectors.set_ylim(0, shape[0]), vectors.set_aspect("equal")
        vectors.set_title(f"median residual per cell ({cells[0]} x {cells[1]} cells; longest arrow {longest:.0f} mas)", fontsize=9)
        vectors.set_xlabel("x (px)"), vectors.set_ylabel("y (px)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def residual_trend(time, rms_x, rms_y, *, xlabel: str, title: str = "", labels=None) -> Figure:
    """Astrometric rms per frame (or per night) along ``time``."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(time, rms_x, "o", ms=4, label="x", color="tab:blue")
    ax.plot(time, rms_y, "s", ms=4, label="y", color="tab:orange", mfc="none")
    ax.set_xlabel(xlabel), ax.set_ylabel("rms (mas)")
    if labels is not None:
        ax.set_xticks(time, labels, rotation=45, fontsize=7)
    else:
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def residual_maps(maps: list[tuple[str, np.ndarray, np.ndarray]], *, shape: tuple[int, int], title: str = "", columns: int = 4) -> Figure:
    """Small multiples of astrometric residual maps ``(label, mx, my)`` (mas, median per detector
    cell, rows follow y), all on one arrow scale: a distortion the fit leaves shows as the same
    pattern night after night."""
    rows = int(np.ceil(len(maps) / columns))
    fig = Figure(figsize=(3.2 * min(columns, len(maps)), 2.4 * rows + 0.6), layout="constrained")
    finite = [np.hypot(mx, my)[np.isfinite(mx) & np.isfinite(my)] for _, mx, my in maps]
    longest = max([float(v.max()) for v in finite if v.size] + [1.0])
    for k, (label, mx, my) in enumerate(maps):
        ax = fig.add_subplot(rows, min(columns, len(maps)), k + 1)
        cells = np.shape(mx)
        cx, cy = cell_centres(shape, cells)
        ax.quiver(cx, cy, np.nan_to_num(mx), np.nan_to_num(my), angles="xy", scale_units="xy", scale=longest / (shape[1] / (cells[1] + 1)), width=0.006)
        ax.set_xlim(0, shape[1]), ax.set_ylim(0, shape[0]), ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=8)
    fig.suptitle(f"{title} (longest arrow {longest:.0f} mas)" if title else f"longest arrow {longest:.0f} mas", fontsize=10)
    return fig


def growth_curves(diameters, fluxes: np.ndarray, *, best: float | None, reference: float | None, title: str = "") -> Figure:
    """Growth curves of bright stars (``fluxes``: stars x apertures), each over its flux in the
    reference aperture (or the largest), with the best (S/N) and reference apertures marked."""
    diameters = np.asarray(diameters, float)
    fluxes = np.asarray(fluxes, float)
    norm_index = int(np.argmin(np.abs(diameters - reference))) if reference else len(diameters) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = fluxes / fluxes[:, norm_index : norm_index + 1]
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for curve in curves[:200]:
        ax.plot(diameters, curve, color="0.6", lw=0.5, alpha=0.6)
    if len(curves):
        ax.plot(diameters, np.nanmedian(curves, axis=0), color="k", lw=2, label=f"median of {len(curves)} stars")
    for value, name, colour in ((best, "best", "tab:blue"), (reference, "reference", "tab:red")):
        if value:
            ax.axvline(value, color=colour, ls="--", label=f"{name} aperture {value:g} px")
    ax.set_ylim(0, 1.3)
    ax.set_xlabel("aperture diameter (px)"), ax.set_ylabel("flux / reference-aperture flux")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def surface_and_residuals(surface_map: np.ndarray, x, y, residual, *, label: str, title: str = "") -> Figure:
    """A fitted surface over the detector (``surface_map``, mag) and the residuals of the points it
    was fitted to (``residual`` at ``x``, ``y``: measured - surface)."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax = fig.add_subplot(1, 3, 1)
    drawn = ax.imshow(surface_map, origin="lower", cmap="viridis", aspect="auto")
    fig.colorbar(drawn, ax=ax, label=f"{label} (mag)")
    ax.set_title(f"{label}: surface", fontsize=9), ax.set_xticks([]), ax.set_yticks([])
    residual = np.asarray(residual, float)
    limit = max(5 * robust_rms(residual), 0.02) if np.isfinite(residual).any() else 0.1
    for k, (coordinate, name) in enumerate(((x, "x (px)"), (y, "y (px)"))):
        panel = fig.add_subplot(1, 3, k + 2)
        panel.plot(coordinate, np.clip(residual, -limit, limit), ".", ms=2, color="k", alpha=0.5)
        panel.axhline(0, color="tab:red", lw=0.8)
        panel.set_ylim(-limit, limit), panel.set_xlabel(name), panel.set_ylabel("residual (mag)")
        panel.set_title(f"residuals: rms {robust_rms(residual):.4f} mag, {np.isfinite(residual).sum()} stars", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def zero_points_in_time(frames: pd.DataFrame, *, title: str = "") -> Figure:
    """Zero point and transparency of each frame against time, by band; cloudy frames hollow.
    ``frames``: mjd, band, zero_point_mag, transparency, cloudy."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    for band, group in frames.groupby("band", sort=True):
        colour = BAND_COLOURS.get(band, "k")
        cloudy = group.cloudy.fillna(False).astype(bool)
        for ax, column in ((top, "zero_point_mag"), (bottom, "transparency")):
            ax.plot(group.mjd[~cloudy], group[column][~cloudy], "o", ms=4, color=colour, label=band)
            if cloudy.any():
                ax.plot(group.mjd[cloudy], group[column][cloudy], "o", ms=4, mfc="none", color=colour, label=f"{band} cloudy")
    top.set_ylabel("zero point (mag)"), bottom.set_ylabel("transparency"), bottom.set_xlabel("MJD")
    for ax in (top, bottom):
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    bottom.set_ylim(0, max(1.1, float(np.nanmax(frames.transparency)) + 0.05) if frames.transparency.notna().any() else 1.1)
    top.legend(fontsize=8, ncols=3)
    top.set_title(title, fontsize=10)
    return fig


def noise_model(mag, *, zero_point: float, gain: float, sky_error_adu: float) -> dict[str, np.ndarray]:
    """Expected magnitude error of a point source at ``mag`` on a frame of ``zero_point`` (mag for
    1 ADU), ``gain`` (e-/ADU) and sky noise ``sky_error_adu`` (the flux error of a source of no
    flux, ADU): its own photon noise, the sky's, and both."""
    flux = 10 ** (-0.4 * (np.asarray(mag, float) - zero_point))
    photon = MAG_PER_FLUX_FRACTION * np.sqrt(flux / gain) / flux
    sky = MAG_PER_FLUX_FRACTION * sky_error_adu / flux
    return {"photon": photon, "sky": sky, "total": np.hypot(photon, sky)}


def scatter_vs_magnitude(mag, rms, *, theory: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "", ylabel: str = "light-curve rms (mag)") -> Figure:
    """Light-curve scatter of each star against its magnitude, with the noise ``theory`` curves
    (name -> (mag, sigma)) and the running median of the stars."""
    mag, rms = np.asarray(mag, float), np.asarray(rms, float)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(mag, rms, ".", ms=2.5, color="0.45", alpha=0.7, label=f"{np.isfinite(rms).sum()} stars")
    good = np.isfinite(mag) & np.isfinite(rms) & (rms > 0)
    if good.sum() >= 20:
        edges = np.arange(np.floor(mag[good].min()), np.ceil(mag[good].max()) + 0.5, 0.5)
        which = np.digitize(mag[good], edges)
        centres = [(edges[k - 1] + edges[k]) / 2 for k in range(1, len(edges)) if (which == k).sum() >= 5]
        medians = [np.median(rms[good][which == k]) for k in range(1, len(edges)) if (which == k).sum() >= 5]
        ax.plot(centres, medians, "o-", color="k", ms=4, label="median")
    styles = {"photon": ":", "sky": "--", "total": "-"}
    for name, (grid, sigma) in theory.items():
        ax.plot(grid, sigma, styles.get(name, "-"), color="tab:red", lw=1.3, label=f"{name} noise")
    ax.set_yscale("log")
    ax.set_ylim(max(1e-3, np.nanmin(rms[good]) / 2) if good.any() else 1e-3, 2.0)
    ax.set_xlabel("magnitude"), ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def gain_with_n(n, values, *, ylabel: str, title: str = "", by=None, expected: dict | None = None, expected_label: str = "expected", log_y: bool = False) -> Figure:
    """A figure of merit against the number of frames combined (log N), a colour per ``by`` label
    (e.g. band), with what it should be: ``expected`` maps a label to (N, value) arrays, drawn as
    a line in that label's colour."""
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    n, values = np.asarray(n, float), np.asarray(values, float)
    labels = np.asarray(by if by is not None else np.full(n.size, ""), dtype=str)
    for label in dict.fromkeys(labels):
        sel = labels == label
        ax.plot(n[sel], values[sel], "o", color=BAND_COLOURS.get(label, "k"), label=label or None)
    for k, (label, (grid, curve)) in enumerate((expected or {}).items()):
        ax.plot(grid, curve, "-", color=BAND_COLOURS.get(str(label), "0.4"), lw=1, alpha=0.7, label=expected_label if k == 0 else None)
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("frames combined (N)"), ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def light_curve_panels(curves: list[tuple[str, pd.DataFrame, float | None]], *, title: str = "") -> Figure:
    """One panel per light curve ``(label, points, period)``: points with mjd, band, mag, mag_err
    and good; folded on ``period`` (days) when given, else against MJD. Bad points hollow grey."""
    fig = Figure(figsize=(10, 2.5 * max(len(curves), 1) + 0.5), layout="constrained")
    for k, (label, points, period) in enumerate(curves):
        ax = fig.add_subplot(max(len(curves), 1), 1, k + 1)
        draw_light_curve(ax, points, period=period)
        ax.set_title(label, fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def draw_light_curve(ax, points: pd.DataFrame, *, period: float | None = None, magnitude: str = "mag") -> None:
    """Magnitude against MJD (or phase, on ``period`` days: two cycles) per band with error bars on
    ``ax``; points not good (flagged, cloudy or uncalibrated frames) hollow grey; limits from the
    good points of every band."""
    good_all = points.good.fillna(False).astype(bool) if "good" in points else pd.Series(True, index=points.index)
    for band, group in points.groupby("band", sort=True):
        good = good_all[group.index]
        t = group.mjd.values
        if period:
            t = ((t - points.mjd.min()) / period) % 1.0
        colour = BAND_COLOURS.get(band, "k")
        for shift in (0.0, 1.0) if period else (0.0,):
            ax.errorbar(t[good.values] + shift, group[magnitude].values[good.values], yerr=group.mag_err.values[good.values], fmt="o", ms=3, lw=0.7, color=colour, label=band if shift == 0 else None)
            if (~good).any():
                ax.errorbar(t[~good.values] + shift, group[magnitude].values[~good.values], yerr=group.mag_err.values[~good.values], fmt="o", ms=3, lw=0.5, mfc="none", color="0.6", label="flagged" if shift == 0 and band == min(points.band) else None)
    good_mag = points[magnitude][good_all].dropna()
    if len(good_mag) >= 2:  # every good point in view; a bad point's 10-mag error bar does not flatten the rest
        pad = 2 * float(points.mag_err[good_mag.index].median()) + 0.02
        ax.set_ylim(float(good_mag.max()) + pad, float(good_mag.min()) - pad)  # magnitudes: bright up
    else:
        ax.invert_yaxis()
    ax.set_xlabel(f"phase (P = {period:.5f} d)" if period else "MJD")
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_ylabel(magnitude)
    ax.legend(fontsize=7, loc="best")


def best_period(mjd, mag, mag_err, *, minimum_days: float = 0.02, maximum_days: float | None = None) -> tuple[float | None, float]:
    """The Lomb-Scargle period (days) of a light curve and its false-alarm probability (astropy):
    (None, 1) with fewer than 8 points or a baseline too short to search."""
    from astropy.timeseries import LombScargle

    mjd, mag, mag_err = (np.asarray(a, float) for a in (mjd, mag, mag_err))
    good = np.isfinite(mjd) & np.isfinite(mag) & np.isfinite(mag_err) & (mag_err > 0)
    if good.sum() < 8:
        return None, 1.0
    baseline = float(np.ptp(mjd[good]))
    maximum = min(maximum_days or baseline / 2, baseline / 2)
    if maximum <= minimum_days:
        return None, 1.0
    model = LombScargle(mjd[good], mag[good], mag_err[good])
    frequency, power = model.autopower(minimum_frequency=1 / maximum, maximum_frequency=1 / minimum_days, samples_per_peak=10)
    peak = int(np.argmax(power))
    return float(1 / frequency[peak]), float(model.false_alarm_probability(power[peak]))
