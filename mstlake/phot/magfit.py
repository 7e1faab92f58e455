"""Ensemble magnitude fitting ("magfit"): frame-to-frame systematics removed from light curves.

The light curves of constant stars scatter from frame to frame by more than their photon noise:
the zero-point surface leaves residuals, the PSF model errs in a way that depends on position and
brightness, and differential extinction adds a colour term. Because these effects are shared by
all stars of a frame, the ensemble of (mostly constant) stars measures them. This is the magfit
step of the HATNet pipeline (Bakos et al. 2010, PASP 122, 1321; Pál 2009, PhD thesis, Eötvös
University, the ``fitsh`` suite): every frame is fitted to a reference, and the reference is then
replaced by the mean of the fitted light curves, iterating until it stops changing.

1. The reference is the frame with the most good stars (ties: lowest median error, then the
   lowest frame id); it is replaced by the master after the first round.
2. For every frame, ``delta = mag_master - mag_frame`` of its good stars (clean ``good`` flag,
   finite, error < ``max_error``, a master value, a colour if the colour term is fitted) is fitted
   by least squares with weights 1 / (error^2 + floor^2) as

       delta = P(u, v) + sum_k a_k (mag_master - m0)^k + b (colour - c0)

   with P a 2-D polynomial in the scaled detector coordinates of ``mstlake.phot.surface``
   (u = (x - cx) / scale), clipping stars whose residual exceeds ``clip_sigma`` times the robust
   (MAD) scatter in units of their own errors (and never fewer than ``clip_sigma`` errors).
   Frames with few stars get fewer terms (at least ``stars_per_parameter`` stars per term, down to
   a constant offset); frames with fewer than ``min_stars`` good stars are not corrected (NaN)
   and reported.
3. The fit is applied to every star of the frame, faint ones included.
4. The master is the clipped, weighted mean over frames of each star's fitted magnitudes, for stars
   with at least ``min_frames`` good measurements. The frame models can absorb any smooth function
   of position, magnitude and colour added to the master, so that part of its update is removed:
   the master keeps the reference frame's large-scale system and cannot creep from round to round.
5. Steps 2-4 repeat until the master changes by less than ``tolerance`` (rms) or
   ``max_iterations`` rounds have run. From the second round on a clipped point stays clipped,
   so that points at the clipping limit cannot make the rounds cycle.

The magnitude term is evaluated at the star's master magnitude, not at its magnitude on the frame:
a term in the frame's own magnitude would scale a variable star's amplitude by (1 + a_1) and so
absorb real signal; in the master magnitude it is one constant per star and frame, like the rest of
the model. A variable star is one point among hundreds in each frame's fit (and clipped when its
excursion is large), so its variation stays in its light curve.

With a given ``master`` (e.g. from earlier nights) no reference frame is picked: the frames are
fitted to it from the start, its stars keep their values, and stars missing from it get master
values from these data (they join the fit in later rounds). Magnitudes fitted on different nights
to the same master are thereby on one scale.

Everything is per band; the caller calls ``magfit`` once per band. Rows are vectorised with numpy
and pandas; the only Python loop is over frames, for a (P x P) normal matrix per frame.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from mstlake.config import MagfitConfig
from mstlake.phot.surface import n_terms, poly_terms

MAD_TO_SIGMA = 1.4826
# Clipping is never tighter than the errors claim (pulls are in units of the errors): from a few
# frames or a few dozen stars the MAD scatters low, and clipping at 3 x a low MAD drops good points
# and makes the master flip between rounds instead of converging.
MIN_SPREAD = 1.0
MASTER_CLIP_PASSES = 3
# From this round on a clipped point stays clipped. Points near the clipping limit can otherwise
# leave and re-enter in alternate rounds, and the master cycles instead of converging; the first
# round (fitted to a single frame) clips too much for its verdicts to be kept.
STICKY_CLIPPING_FROM_ROUND = 2


@dataclass(frozen=True)
class MagfitResult:
    mag: np.ndarray  # fitted magnitude per input row (NaN where the frame or row could not be corrected)
    master: pd.Series  # object_id -> master magnitude (stars with a value only)
    frame_rms: pd.Series  # frame_id -> rms of the fitted stars about the master after the fit (NaN if skipped)
    frame_stars: pd.Series  # frame_id -> stars used by the fit after clipping (0 if skipped)
    frame_terms: pd.Series  # frame_id -> terms of the frame's model (fewer with few stars; 0 if skipped)
    skipped: pd.Series  # frame_id -> why the frame was not corrected (only such frames)
    reference_frame: object  # frame_id of the starting reference; None when a master was given
    iterations: int  # rounds run
    converged: bool  # the master changed by less than the tolerance in the last round
    change: float  # rms change of the master in the last round (mag)


@dataclass(frozen=True)
class _Model:
    """Columns of the design: position terms (by total degree), magnitude powers 1..M, colour."""

    position_degree: int
    magnitude_degree: int
    colour: bool

    @property
    def n_columns(self) -> int:
        return n_terms(self.position_degree) + self.magnitude_degree + int(self.colour)

    def active(self, full: _Model) -> np.ndarray:
        """Which columns of the ``full`` design this (nested) model uses."""
        position = np.arange(n_terms(full.position_degree)) < n_terms(self.position_degree)
        magnitude = np.arange(full.magnitude_degree) < self.magnitude_degree
        return np.concatenate([position, magnitude, [self.colour] if full.colour else []]).astype(bool)


def _model_ladder(full: _Model) -> list[_Model]:
    """Nested models from ``full`` down to a constant offset. Higher-order terms go first (they
    need the most stars to be measured well), the constant stays to the end."""
    ladder = [full]
    for degree in range(full.position_degree - 1, 0, -1):
        ladder.append(replace(ladder[-1], position_degree=degree))
    if full.magnitude_degree > 1:
        ladder.append(replace(ladder[-1], magnitude_degree=1))
    if full.position_degree > 0:
        ladder.append(replace(ladder[-1], position_degree=0))
    if full.colour:
        ladder.append(replace(ladder[-1], colour=False))
    if full.magnitude_degree > 0:
        ladder.append(replace(ladder[-1], magnitude_degree=0))
    return ladder


def magfit(frame_id, object_id, x, y, mag, mag_err, *, good, colour=None, shape: tuple[int, int], master: pd.Series | None = None, cfg: MagfitConfig = MagfitConfig()) -> MagfitResult:
    """Remove frame-to-frame systematics from the magnitudes of one band (see the module docstring).

    One row per (frame, object) measurement: ``frame_id`` and ``object_id`` label it, ``x``, ``y``
    are detector pixel positions (``shape`` = (ny, nx) of the detector), ``mag``, ``mag_err`` the
    magnitude and its error, ``good`` the caller's quality mask (clean flags, not saturated):
    rows outside it are corrected too (their flags travel with them) but enter neither the fits
    nor the master; ``colour`` (optional, NaN allowed) a colour index per row. ``master``
    (object_id -> mag) fixes the scale to earlier data; NaN entries count as absent. Raises
    ``ValueError`` on malformed inputs; frames that cannot be fitted are returned as NaN and
    listed in ``skipped``."""
    rows = _validate(frame_id, object_id, x, y, mag, mag_err, good, colour, shape, master)
    frame_index, frame_ids = pd.factorize(rows["frame_id"], sort=True)
    star_index, star_ids = pd.factorize(rows["object_id"], sort=True)
    frame_ids, star_ids = pd.Index(frame_ids), pd.Index(star_ids)
    n_frames, n_stars = len(frame_ids), len(star_ids)
    if pd.Series(frame_index.astype(np.int64) * n_stars + star_index).duplicated().any():
        raise ValueError("an object appears more than once on a frame: (frame_id, object_id) must be unique")

    # work in frame order, so that each frame is one contiguous slice
    order = np.argsort(frame_index, kind="stable")
    frame_index, star_index = frame_index[order], star_index[order]
    x, y, mag, mag_err, good = (rows[k][order] for k in ("x", "y", "mag", "mag_err", "good"))
    colour = None if rows["colour"] is None else rows["colour"][order]
    frame_bounds = np.searchsorted(frame_index, np.arange(n_frames + 1))

    usable = good & np.isfinite(mag) & np.isfinite(mag_err) & (mag_err > 0) & np.isfinite(x) & np.isfinite(y)
    fit_quality = usable & (mag_err < cfg.max_error)
    weight = np.zeros(mag.size)
    weight[usable] = 1.0 / (mag_err[usable] ** 2 + cfg.error_floor**2)

    colour_column = _colour_column(colour, fit_quality, star_index, n_stars) if cfg.colour_term and colour is not None else None
    full = _Model(cfg.position_degree, cfg.magnitude_degree, colour_column is not None)
    ladder = _model_ladder(full)
    ny, nx = shape
    position = poly_terms(x, y, ((nx - 1) / 2, (ny - 1) / 2), max(nx, ny) / 2, full.position_degree)
    fit_candidate = (fit_quality & np.isfinite(colour)) if full.colour else fit_quality

    fixed = np.zeros(n_stars, bool)
    master_mag = np.full(n_stars, np.nan)
    reference_frame = None
    if master is not None:
        given = master.dropna()
        master_mag = given.reindex(star_ids).to_numpy(float)
        fixed = np.isfinite(master_mag)
    else:
        reference = _pick_reference(frame_index, fit_quality, mag_err, n_frames)
        if reference is not None:
            reference_frame = frame_ids[reference]
            on_reference = fit_quality & (frame_index == reference)
            master_mag[star_index[on_reference]] = mag[on_reference]

    known = (np.bincount(star_index[fit_quality], minlength=n_stars) > 0) & np.isfinite(master_mag)
    magnitude_zero = float(np.median(master_mag[known])) if known.any() else 0.0

    star_terms, star_weight = _star_terms(full, usable, star_index, n_stars, x, y, colour_column, shape, magnitude_zero, weight)
    iterations, converged, change = 0, False, np.inf
    fit_admitted, master_admitted = np.ones(mag.size, bool), np.ones(mag.size, bool)
    fitted = np.full(mag.size, np.nan)
    frame_rms, frame_stars, frame_terms = np.full(n_frames, np.nan), np.zeros(n_frames, int), np.zeros(n_frames, int)
    no_master = "no star of the given master is among the good stars" if master is not None else "no frame has good stars to serve as the reference"
    skip_reason = np.full(n_frames, no_master, dtype=object)
    if np.isfinite(master_mag).any():
        for iterations in range(1, cfg.max_iterations + 1):
            fitted, frame_rms, frame_stars, frame_terms, skip_reason, fit_rejected = _fit_frames(
                master_mag, magnitude_zero, frame_index, star_index, frame_bounds, mag, weight, fit_candidate, fit_admitted, position, colour_column, full, ladder, cfg, n_frames
            )
            new_master, master_rejected = _update_master(master_mag, fixed, fitted, weight, usable, master_admitted, star_index, n_stars, cfg)
            if iterations >= STICKY_CLIPPING_FROM_ROUND:
                fit_admitted &= ~fit_rejected
                master_admitted &= ~master_rejected
            if master is None:
                new_master = _pin_model_space(master_mag, new_master, star_terms(np.where(np.isfinite(master_mag), master_mag, new_master)), star_weight, cfg.clip_sigma)
            change = _master_change(master_mag, new_master, fixed)
            master_mag = new_master
            if change < cfg.tolerance:
                converged = True
                break

    mag_out = np.empty_like(fitted)
    mag_out[order] = fitted
    master_out = pd.Series(master_mag, index=star_ids, name="master").dropna()
    if master is not None:
        new_stars = master_out[~fixed[star_ids.get_indexer(master_out.index)]]
        master_out = pd.concat([master.dropna().astype(float), new_stars]).rename("master")
        try:
            master_out = master_out.sort_index()
        except TypeError:  # object ids of mixed types: keep the given ones first
            pass
    skipped = pd.Series(skip_reason, index=frame_ids, name="reason")
    return MagfitResult(
        mag=mag_out,
        master=master_out,
        frame_rms=pd.Series(frame_rms, index=frame_ids, name="rms"),
        frame_stars=pd.Series(frame_stars, index=frame_ids, name="stars"),
        frame_terms=pd.Series(frame_terms, index=frame_ids, name="terms"),
        skipped=skipped[skipped.notna()],
        reference_frame=reference_frame,
        iterations=iterations,
        converged=converged,
        change=float(change),
    )


def _validate(frame_id, object_id, x, y, mag, mag_err, good, colour, shape, master) -> dict:
    named = {"frame_id": frame_id, "object_id": object_id, "x": x, "y": y, "mag": mag, "mag_err": mag_err, "good": good}
    if colour is not None:
        named["colour"] = colour
    arrays = {}
    for name, value in named.items():
        value = np.asarray(value)
        if value.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {value.shape}")
        arrays[name] = value
    n = arrays["frame_id"].size
    for name, value in arrays.items():
        if value.size != n:
            raise ValueError(f"{name} has {value.size} rows but frame_id has {n}: all inputs must have one entry per measurement")
    for name in ("frame_id", "object_id"):
        if pd.isna(arrays[name]).any():
            raise ValueError(f"{name} has missing values")
    if arrays["good"].dtype != bool:
        raise ValueError(f"good must be a boolean mask, got dtype {arrays['good'].dtype}")
    for name in ("x", "y", "mag", "mag_err", "colour"):
        if name in arrays:
            try:
                arrays[name] = arrays[name].astype(float)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be numeric, got dtype {arrays[name].dtype}") from None
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (ny, nx) with positive sizes, got {shape}")
    if master is not None:
        if not isinstance(master, pd.Series):
            raise ValueError(f"master must be a pandas Series (object_id -> mag), got {type(master).__name__}")
        if not master.index.is_unique:
            raise ValueError("master has duplicated object ids")
    arrays.setdefault("colour", None)
    return arrays


def _colour_column(colour, fit_quality, star_index, n_stars) -> np.ndarray | None:
    """Colour relative to the median colour of the stars that can enter the fits, 0 where unknown
    (so objects without a colour are corrected as typical ones); None if no such star has one."""
    with_colour = fit_quality & np.isfinite(colour)
    if not with_colour.any():
        return None
    per_star = _group_median(colour[with_colour], star_index[with_colour], n_stars)
    typical = float(np.median(per_star[np.isfinite(per_star)]))
    return np.where(np.isfinite(colour), colour - typical, 0.0)


def _group_median(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per group 0..n_groups-1 (NaN for groups without values)."""
    out = np.full(n_groups, np.nan)
    if values.size:
        median = pd.Series(values).groupby(groups).median()
        out[median.index.to_numpy()] = median.to_numpy()
    return out


def _pick_reference(frame_index, fit_quality, mag_err, n_frames) -> int | None:
    counts = np.bincount(frame_index[fit_quality], minlength=n_frames)
    if counts.max(initial=0) == 0:
        return None
    median_error = _group_median(mag_err[fit_quality], frame_index[fit_quality], n_frames)
    # most good stars, then the lowest median error, then the first frame
    candidates = np.flatnonzero(counts == counts.max())
    return int(candidates[np.argmin(median_error[candidates])])


def _fit_frames(master_mag, magnitude_zero, frame_index, star_index, frame_bounds, mag, weight, fit_candidate, admitted, position, colour_column, full, ladder, cfg, n_frames):
    """Fit every frame to the master (rows outside ``admitted`` are treated as clipped); return the
    fitted magnitudes, per-frame rms, stars used and model terms, the reason for each frame left
    uncorrected (None for fitted ones), and the rows clipped."""
    star_master = master_mag[star_index]
    delta = star_master - mag
    eligible = fit_candidate & np.isfinite(star_master)
    n_eligible = np.bincount(frame_index[eligible], minlength=n_frames)
    skipped = n_eligible < cfg.min_stars
    skip_reason = np.where(skipped, [f"only {k} good stars matched to the master (at least {cfg.min_stars} needed)" for k in n_eligible], None).astype(object)
    eligible &= ~skipped[frame_index]

    # the magnitude term is evaluated at the master magnitude; stars without one (too few frames)
    # are placed on the master's scale by the frame's median offset, which is good enough for a
    # term of a few mmag per mag
    frame_offset = _group_median(delta[eligible], frame_index[eligible], n_frames)
    magnitude_proxy = np.where(np.isfinite(star_master), star_master, mag + frame_offset[frame_index]) - magnitude_zero
    columns = [position] + [magnitude_proxy[:, None] ** k for k in range(1, full.magnitude_degree + 1)]
    if full.colour:
        columns.append(colour_column[:, None])
    design = np.hstack(columns)

    level = np.full(n_frames, len(ladder) - 1)
    for i, model in reversed(list(enumerate(ladder))):
        level[n_eligible >= cfg.stars_per_parameter * model.n_columns] = i
    active = np.array([model.active(full) for model in ladder])[level]
    active[skipped] = False
    n_parameters = active.sum(axis=1)

    sqrt_weight = np.sqrt(weight)
    keep = eligible & admitted
    for clip_pass in range(cfg.clip_iterations):
        coefficients = _solve_frames(design, delta, weight, keep, frame_bounds, active)
        if clip_pass == cfg.clip_iterations - 1:
            break
        pull = np.where(eligible, (delta - _evaluate(design, coefficients, frame_bounds)) * sqrt_weight, np.nan)
        centre = _group_median(pull[keep], frame_index[keep], n_frames)
        spread = MAD_TO_SIGMA * _group_median(np.abs(pull[keep] - centre[frame_index[keep]]), frame_index[keep], n_frames)
        limit = cfg.clip_sigma * np.maximum(np.nan_to_num(spread), MIN_SPREAD)
        # about the median, not the fit: outliers that bias the fit must not take good stars with them
        new_keep = eligible & admitted & (np.abs(pull - centre[frame_index]) <= limit[frame_index])
        # a frame whose clipping would leave too few stars for its model keeps its previous set
        too_few = np.bincount(frame_index[new_keep], minlength=n_frames) < np.maximum(n_parameters, 1)
        new_keep = np.where(too_few[frame_index], keep, new_keep)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep

    fitted = mag + _evaluate(design, coefficients, frame_bounds)
    fitted[skipped[frame_index]] = np.nan
    frame_stars = np.bincount(frame_index[keep], minlength=n_frames)
    residual_sq = np.bincount(frame_index[keep], weights=(fitted[keep] - star_master[keep]) ** 2, minlength=n_frames)
    frame_rms = np.full(n_frames, np.nan)
    fitted_frames = frame_stars > 0
    frame_rms[fitted_frames] = np.sqrt(residual_sq[fitted_frames] / frame_stars[fitted_frames])
    return fitted, frame_rms, frame_stars, n_parameters, skip_reason, eligible & ~keep


def _solve_frames(design, delta, weight, keep, frame_bounds, active) -> np.ndarray:
    """Weighted least-squares coefficients per frame (rows of a frame are contiguous); columns a
    frame does not use get 0."""
    n_frames, n_columns = active.shape
    normal = np.zeros((n_frames, n_columns, n_columns))
    rhs = np.zeros((n_frames, n_columns))
    for f in range(n_frames):
        if not active[f].any():
            continue
        rows = slice(frame_bounds[f], frame_bounds[f + 1])
        used = keep[rows]
        a = design[rows][used]
        w = weight[rows][used]
        aw = a * w[:, None]
        normal[f] = aw.T @ a
        rhs[f] = aw.T @ delta[rows][used]
    # unused columns decouple; unit diagonal scaling keeps position, magnitude and colour columns
    # comparable, and the pseudo-inverse leaves a degenerate term (e.g. one colour) at 0
    normal *= active[:, :, None] & active[:, None, :]
    rhs *= active
    diagonal = np.einsum("fii->fi", normal)
    scale = np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    scaled = normal / (scale[:, :, None] * scale[:, None, :])
    solution = np.einsum("fij,fj->fi", np.linalg.pinv(scaled, rcond=1e-10, hermitian=True), rhs / scale)
    return np.where(active, solution / scale, 0.0)


def _evaluate(design, coefficients, frame_bounds) -> np.ndarray:
    """Each frame's model at all its rows (a frame's rows are the slice between its bounds)."""
    model = np.empty(design.shape[0])
    for f in range(coefficients.shape[0]):
        rows = slice(frame_bounds[f], frame_bounds[f + 1])
        model[rows] = design[rows] @ coefficients[f]
    return model


def _update_master(master_mag, fixed, fitted, weight, usable, admitted, star_index, n_stars, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Clipped weighted mean of each star's fitted magnitudes (rows outside ``admitted`` count as
    clipped); stars of a given master keep theirs. Also returns the rows clipped."""
    rows = usable & np.isfinite(fitted)
    star, value, w = star_index[rows], fitted[rows], weight[rows]
    counts = np.bincount(star, minlength=n_stars)
    keep = admitted[rows]
    for _ in range(MASTER_CLIP_PASSES):
        sum_w = np.bincount(star[keep], weights=w[keep], minlength=n_stars)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(star[keep], weights=(w * value)[keep], minlength=n_stars) / sum_w
        pull = (value - mean[star]) * np.sqrt(w)
        # about the median: an outlier with a small error drags the weighted mean far enough
        # that every other point would sit beyond the limit
        centre = _group_median(pull[keep], star[keep], n_stars)
        spread = MAD_TO_SIGMA * _group_median(np.abs(pull[keep] - centre[star[keep]]), star[keep], n_stars)
        new_keep = admitted[rows] & (np.abs(pull - centre[star]) <= cfg.clip_sigma * np.maximum(np.nan_to_num(spread), MIN_SPREAD)[star])
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    new_master = np.where(counts >= cfg.min_frames, mean, np.nan)
    rejected = np.zeros(fitted.size, bool)
    rejected[np.flatnonzero(rows)[~keep]] = True
    return np.where(fixed, master_mag, new_master), rejected


def _star_terms(full, usable, star_index, n_stars, x, y, colour_column, shape, magnitude_zero, weight):
    """The model's columns per star (at its mean position, its colour and a given master) and its
    mean weight: the directions in which the master is not constrained by the frame fits."""
    star, count = star_index[usable], np.bincount(star_index[usable], minlength=n_stars)
    with np.errstate(invalid="ignore", divide="ignore"):
        star_x, star_y, star_weight = (np.bincount(star, weights=value[usable], minlength=n_stars) / count for value in (x, y, weight))
        star_colour = np.bincount(star, weights=colour_column[usable], minlength=n_stars) / count if full.colour else None
    ny, nx = shape
    position = poly_terms(star_x, star_y, ((nx - 1) / 2, (ny - 1) / 2), max(nx, ny) / 2, full.position_degree)

    def terms(master_mag: np.ndarray) -> np.ndarray:
        columns = [position] + [(master_mag[:, None] - magnitude_zero) ** k for k in range(1, full.magnitude_degree + 1)]
        return np.hstack(columns + ([star_colour[:, None]] if full.colour else []))

    return terms, star_weight


def _pin_model_space(old, new, terms, star_weight, clip_sigma) -> np.ndarray:
    """Remove from the master's update the part the frame models can absorb (a smooth function of
    position, magnitude and colour). The frame fits cannot see that part, so nothing holds it
    still: when the model does not describe a frame exactly, the clipped fits and the per-star means
    disagree slightly and the master creeps along it round after round instead of converging.
    Pinned, the master keeps the reference frame's large-scale system."""
    common = np.isfinite(old) & np.isfinite(new) & np.isfinite(terms).all(axis=1) & (star_weight > 0)
    if common.sum() < 2 * terms.shape[1]:
        return new
    design, change, w = terms[common], (new - old)[common], np.sqrt(star_weight[common])
    keep = np.ones(change.size, bool)
    for _ in range(MASTER_CLIP_PASSES):
        coefficients = np.linalg.lstsq(design[keep] * w[keep, None], change[keep] * w[keep], rcond=None)[0]
        pull = (change - design @ coefficients) * w
        centre = np.median(pull[keep])
        spread = MAD_TO_SIGMA * np.median(np.abs(pull[keep] - centre))
        new_keep = np.abs(pull - centre) <= clip_sigma * max(spread, MIN_SPREAD)
        if np.array_equal(new_keep, keep) or new_keep.sum() < 2 * terms.shape[1]:
            break
        keep = new_keep
    absorbable = terms @ coefficients
    return np.where(np.isfinite(absorbable), new - absorbable, new)


def _master_change(old, new, fixed) -> float:
    """Rms change of the stars whose master values are free; a master that gained stars has not
    converged (they enter the fits of the next round)."""
    common = np.isfinite(old) & np.isfinite(new) & ~fixed
    if (np.isfinite(new) & ~np.isfinite(old)).any():
        return np.inf
    if not common.any():
        return 0.0
    return float(np.sqrt(np.mean((new[common] - old[common]) ** 2)))
