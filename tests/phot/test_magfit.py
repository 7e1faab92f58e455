"""Ensemble magnitude fitting: systematics removed, real variability and the master's scale kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mstlake.phot.magfit import MagfitConfig, magfit

SHAPE = (1000, 1500)  # (ny, nx)


def _stars(rng, n_stars=200):
    mag = rng.uniform(11, 18, n_stars)
    colour = rng.normal(0.8, 0.3, n_stars)
    return pd.DataFrame({"object_id": np.arange(1000, 1000 + n_stars), "true_mag": mag, "colour": colour, "x0": rng.uniform(20, SHAPE[1] - 20, n_stars), "y0": rng.uniform(20, SHAPE[0] - 20, n_stars)})


def _photon_error(mag):
    # scintillation/flat floor, source photon noise, sky-limited noise
    return np.sqrt(0.001**2 + (0.002 * 10 ** (0.2 * (mag - 14))) ** 2 + (0.003 * 10 ** (0.4 * (mag - 16))) ** 2)


def _observe(rng, stars, n_frames=40, first_frame=0, true_mag_of=None):
    """One row per star and frame with an injected per-frame systematic: offset, gradient and
    curvature in position, a magnitude term and a colour term."""
    n_stars = len(stars)
    frame = np.repeat(np.arange(first_frame, first_frame + n_frames), n_stars)
    star = np.tile(np.arange(n_stars), n_frames)
    x = stars.x0.to_numpy()[star] + rng.normal(0, 3, star.size)  # pointing jitter
    y = stars.y0.to_numpy()[star] + rng.normal(0, 3, star.size)
    u, v = (x - (SHAPE[1] - 1) / 2) / (SHAPE[1] / 2), (y - (SHAPE[0] - 1) / 2) / (SHAPE[1] / 2)
    offset, grad_u, grad_v, curvature, mag_term, colour_term = (rng.normal(0, s, n_frames)[frame - first_frame] for s in (0.1, 0.02, 0.02, 0.01, 0.005, 0.02))
    true_mag = stars.true_mag.to_numpy()[star]
    if true_mag_of is not None:
        true_mag = true_mag_of(star, frame, true_mag)
    colour = stars.colour.to_numpy()[star]
    systematic = offset + grad_u * u + grad_v * v + curvature * (u * u + v * v) + mag_term * (stars.true_mag.to_numpy()[star] - 14.5) + colour_term * (colour - 0.8)
    error = _photon_error(stars.true_mag.to_numpy()[star])
    mag = true_mag + systematic + rng.normal(0, 1, star.size) * error
    return pd.DataFrame({"frame_id": frame, "object_id": stars.object_id.to_numpy()[star], "star": star, "x": x, "y": y, "mag": mag, "mag_err": error, "colour": colour, "good": np.ones(star.size, bool)})


def _run(rows, **kwargs):
    return magfit(rows.frame_id, rows.object_id, rows.x, rows.y, rows.mag, rows.mag_err, good=rows.good.to_numpy(), colour=rows.colour, shape=SHAPE, **kwargs)


def _scatter_over_error(rows, mag):
    """Per star: rms about its mean over frames divided by its photon error."""
    table = pd.DataFrame({"star": rows.star, "mag": mag, "err": rows.mag_err})
    per_star = table.groupby("star").agg(rms=("mag", lambda m: np.std(m, ddof=1)), err=("err", "mean"))
    return per_star.rms / per_star.err


def test_frame_systematics_are_removed_down_to_the_photon_noise():
    rng = np.random.default_rng(11)
    stars = _stars(rng)
    rows = _observe(rng, stars)
    result = _run(rows)
    assert result.converged and result.skipped.empty
    before = _scatter_over_error(rows, rows.mag)
    after = _scatter_over_error(rows, result.mag)
    assert before.median() > 5
    assert 0.9 < after.median() < 1.1
    # no frame is left with an offset: each frame's mean residual about the stars' means vanishes
    residual = result.mag - pd.Series(result.mag).groupby(rows.star).transform("mean").to_numpy()
    frame_offset = pd.Series(residual).groupby(rows.frame_id).mean()
    assert frame_offset.abs().max() < 0.002
    assert (result.frame_stars > 100).all() and result.frame_rms.median() < 0.02


def test_stars_without_a_colour_are_corrected_as_typical():
    rng = np.random.default_rng(12)
    stars = _stars(rng)
    stars.loc[:19, "colour"] = 0.8  # a typical colour, but unknown to the fit
    rows = _observe(rng, stars)
    rows.loc[rows.star < 20, "colour"] = np.nan
    result = _run(rows)
    no_colour = (rows.star < 20).to_numpy()
    assert np.isfinite(result.mag[no_colour]).all()
    ratio = _scatter_over_error(rows, result.mag)
    assert ratio[:20].median() < 1.2


def test_a_variable_star_keeps_its_amplitude():
    rng = np.random.default_rng(13)
    stars = _stars(rng)
    variable = int(np.argmin(np.abs(stars.true_mag - 13.0)))
    phase = rng.uniform(0, 2 * np.pi, 40)

    def with_variable(star, frame, true_mag):
        return true_mag + np.where(star == variable, 0.1 * np.sin(phase[frame]), 0.0)

    rows = _observe(rng, stars, true_mag_of=with_variable)
    result = _run(rows)
    on_variable = (rows.star == variable).to_numpy()
    design = np.column_stack([np.sin(phase), np.cos(phase), np.ones(40)])
    amplitude = np.hypot(*np.linalg.lstsq(design, result.mag[on_variable], rcond=None)[0][:2])
    assert amplitude == pytest.approx(0.1, abs=0.003)


def test_a_second_night_fitted_to_the_first_nights_master_lands_on_its_scale():
    rng = np.random.default_rng(14)
    stars = _stars(rng, 220)
    night1 = _observe(rng, stars.iloc[:200].reset_index(drop=True))
    first = _run(night1)
    night2 = _observe(rng, stars, first_frame=100)  # 20 stars new on night 2
    second = _run(night2, master=first.master)
    # the given master is returned unchanged and extended by the new stars
    assert second.master.reindex(first.master.index).equals(first.master)
    new_ids = stars.object_id.iloc[200:]
    assert second.master.reindex(new_ids).notna().all() and second.reference_frame is None
    bright = stars.object_id[stars.true_mag < 14]
    mean1 = pd.Series(first.mag).groupby(night1.object_id.to_numpy()).mean().reindex(bright)
    mean2 = pd.Series(second.mag).groupby(night2.object_id.to_numpy()).mean().reindex(bright)
    assert abs((mean2 - mean1).mean()) < 0.001
    # without the master, night 2 lands on its own reference frame's zero point
    alone = _run(night2)
    mean_alone = pd.Series(alone.mag).groupby(night2.object_id.to_numpy()).mean().reindex(bright)
    assert abs((mean_alone - mean1).mean()) > 0.005


def test_outliers_on_a_frame_do_not_pull_its_fit():
    rng = np.random.default_rng(19)
    stars = _stars(rng)
    rows = _observe(rng, stars, n_frames=10)
    blended = (rows.frame_id == 5) & (rows.star < 20)
    rows.loc[blended, "mag"] -= 0.2  # a tenth of the stars brightened by blends on one frame
    result = _run(rows)
    clean = pd.Series(result.mag - stars.true_mag.to_numpy()[rows.star])[~blended.to_numpy()]
    per_star = clean.groupby(rows.star[~blended].to_numpy())
    frame5 = (clean - per_star.transform("median")).groupby(rows.frame_id[~blended].to_numpy()).mean()[5]
    assert abs(frame5) < 0.002
    assert result.frame_stars[5] <= 180 and len(result.master) == 200  # the blended frame costs no star its master


def test_a_frame_with_too_few_good_stars_is_left_uncorrected_and_reported():
    rng = np.random.default_rng(15)
    stars = _stars(rng)
    rows = _observe(rng, stars, n_frames=10)
    cloudy = rows.frame_id == 3
    rows.loc[cloudy & (rows.star >= 10), "good"] = False  # only 10 clean stars left
    result = _run(rows, cfg=MagfitConfig(min_stars=20))
    assert np.isnan(result.mag[cloudy.to_numpy()]).all()
    assert np.isfinite(result.mag[~cloudy.to_numpy()]).all()
    assert list(result.skipped.index) == [3] and "only 10 good stars" in result.skipped[3]
    assert result.frame_stars[3] == 0 and np.isnan(result.frame_rms[3])


def test_few_stars_fall_back_to_fewer_terms():
    rng = np.random.default_rng(16)
    rows = _observe(rng, _stars(rng, 60), n_frames=10)  # 60 stars pay for all 6 + 1 + 1 terms
    rows.loc[(rows.frame_id == 4) & (rows.star >= 30), "good"] = False  # 30 stars: 5 stars per term buy 5 terms
    rows.loc[(rows.frame_id == 7) & (rows.star >= 12), "good"] = False  # 12 stars: an offset and the magnitude term
    result = _run(rows, cfg=MagfitConfig(min_stars=10))
    assert result.skipped.empty and np.isfinite(result.mag).all()
    assert result.frame_terms[0] == 8 and result.frame_terms[4] == 5 and result.frame_terms[7] == 2
    assert _scatter_over_error(rows, result.mag).median() < 1.5


def test_convergence_is_reported():
    rng = np.random.default_rng(17)
    rows = _observe(rng, _stars(rng), n_frames=10)
    assert _run(rows).converged
    once = _run(rows, cfg=MagfitConfig(max_iterations=1))
    assert not once.converged and once.iterations == 1 and once.change > 1e-4
    # a model too simple for the frames (no position terms against injected gradients) leaves
    # residuals that the clipped fits and the master's means treat differently; the master still
    # settles instead of creeping along what the frame models could absorb
    simple = _run(rows, cfg=MagfitConfig(position_degree=0))
    assert simple.converged and simple.iterations < 10


def test_malformed_inputs_are_refused():
    rows = _observe(np.random.default_rng(18), _stars(np.random.default_rng(18), 30), n_frames=3)
    with pytest.raises(ValueError, match="mag_err has 89 rows but frame_id has 90"):
        magfit(rows.frame_id, rows.object_id, rows.x, rows.y, rows.mag, rows.mag_err[:-1], good=rows.good.to_numpy(), shape=SHAPE)
    with pytest.raises(ValueError, match="good must be a boolean mask"):
        magfit(rows.frame_id, rows.object_id, rows.x, rows.y, rows.mag, rows.mag_err, good=np.ones(90), shape=SHAPE)
    duplicated = pd.concat([rows, rows.iloc[:1]])
    with pytest.raises(ValueError, match="more than once on a frame"):
        _run(duplicated)
    with pytest.raises(ValueError, match="magnitude_degree"):
        MagfitConfig(magnitude_degree=3)
