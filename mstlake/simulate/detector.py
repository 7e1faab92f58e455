"""The CMOS camera (ZWO ASI6200MM Pro / Sony IMX455) as the pipeline will meet it.

* **Bias**: an offset of ~500 ADU with a static column pattern (sigma 2 ADU), weak static row banding
  and a gentle 2-D gradient; each read adds a frame offset (0.5 ADU) and row noise (0.8 ADU per row),
  the CMOS signature.
* **Read noise**: 1.03 e- (4.1 ADU at 0.25 e-/ADU), Gaussian.
* **Pepper-and-salt pixels**: ~7% of pixels show random-telegraph noise: 2 (70%) or 3 discrete levels
  20-200 ADU apart (log-uniform), stable in position; each read picks a level at random, so the
  per-pixel std over a bias series is the RTN std. Truth keeps the analytic std of every pixel.
* **Hot and dead pixels** (~0.07%): hot pixels with 0.5-30 e-/s dark current (0.05%), dead or
  low-response pixels at 0-50% response (0.02%).
* **Flat field** = vignetting (~20% at the corners, about the off-centre optical axis) x pixel
  response non-uniformity (0.7% per pixel plus 0.2% per column) x dust donuts (annuli 1-3% deep);
  stable from night to night except a 0.05% drift pattern that grows linearly with time and one new
  dust donut that appears part-way through a long run.
* **Read-out**: electrons / gain + bias + noise, rounded and clipped to the 16-bit ADC (0-65535).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mstlake.config import DetectorConfig

BIAS_LEVEL_ADU = 500.0
PS_FRACTION = 0.07
HOT_FRACTION = 0.0005
DEAD_FRACTION = 0.0002
PRNU_SIGMA = 0.007
COLUMN_RESPONSE_SIGMA = 0.002
DRIFT_SIGMA_PER_30_NIGHTS = 0.0005
VIGNETTING_AT_CORNER = 0.20


@dataclass(frozen=True)
class Donut:
    x: float
    y: float
    radius: float
    width: float
    depth: float
    first_night_index: int


@dataclass(frozen=True)
class DetectorTruth:
    shape: tuple[int, int]
    bias_pattern: np.ndarray  # float32 ADU, static
    ps_index: np.ndarray  # flat indices of RTN pixels
    ps_levels: np.ndarray  # (n, 3) float32 ADU offsets
    ps_cumprob: np.ndarray  # (n, 3) float32 cumulative probabilities
    ps_std: np.ndarray  # float32 (ny, nx) analytic RTN std, 0 for normal pixels
    dark_current: np.ndarray  # float32 e-/s
    bad_pixels: np.ndarray  # uint8: 1 hot, 2 dead/low response
    response: np.ndarray  # float32 pixel response, without dust and drift
    vignetting: np.ndarray  # float32
    drift: np.ndarray  # float32 relative response change per 30 nights
    donuts: tuple[Donut, ...]

    def pixel_response(self, night_index: int) -> np.ndarray:
        """The true flat field (vignetting x pixel response x dust) on a given night."""
        flat = self.vignetting * self.response * (1.0 + self.drift * (night_index / 30.0))
        for donut in self.donuts:
            if night_index >= donut.first_night_index:
                _apply_donut(flat, donut)
        return flat.astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    coarse = rng.normal(0, 1, cells)
    zoom = (shape[0] / cells[0], shape[1] / cells[1])
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    return field / max(float(field.std()), 1e-12)


def _apply_donut(flat: np.ndarray, donut: Donut) -> None:
    ny, nx = flat.shape
    r_out = donut.radius + 3 * donut.width
    y0, y1 = max(int(donut.y - r_out), 0), min(int(donut.y + r_out) + 1, ny)
    x0, x1 = max(int(donut.x - r_out), 0), min(int(donut.x + r_out) + 1, nx)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(xx - donut.x, yy - donut.y)
    shadow = donut.depth * np.exp(-0.5 * ((r - donut.radius) / donut.width) ** 2)
    flat[y0:y1, x0:x1] *= 1.0 - shadow


def make_detector(rng: np.random.Generator, shape: tuple[int, int], *, axis_xy: tuple[float, float], n_nights: int, full_shape: tuple[int, int]) -> DetectorTruth:
    ny, nx = shape
    n = ny * nx
    scale = np.sqrt(n / (full_shape[0] * full_shape[1]))

    columns = rng.normal(0, 2.0, nx)
    rows = rng.normal(0, 0.3, ny)
    gradient = 3.0 * _smooth_field(rng, shape, (3, 4))
    bias = (BIAS_LEVEL_ADU + columns[None, :] + rows[:, None] + gradient).astype(np.float32)

    ps_index = np.sort(rng.choice(n, size=int(round(PS_FRACTION * n)), replace=False))
    n_ps = ps_index.size
    three = rng.random(n_ps) < 0.3
    step1 = 10 ** rng.uniform(np.log10(20), np.log10(200), n_ps)
    step2 = 10 ** rng.uniform(np.log10(20), np.log10(200), n_ps)
    sign = rng.choice([-1.0, 1.0], n_ps)
    levels = np.zeros((n_ps, 3), np.float32)
    levels[:, 1] = sign * step1
    levels[three, 2] = -sign[three] * step2[three]
    p_high = rng.uniform(0.15, 0.5, n_ps)
    p_third = np.where(three, rng.uniform(0.1, 0.3, n_ps), 0.0)
    probs = np.stack([1 - p_high - p_third, p_high, p_third], axis=1)
    cumprob = np.cumsum(probs, axis=1).astype(np.float32)
    mean = np.sum(probs * levels, axis=1)
    std = np.sqrt(np.sum(probs * (levels - mean[:, None]) ** 2, axis=1))
    ps_std = np.zeros(n, np.float32)
    ps_std[ps_index] = std
    # an RTN pixel's levels are offsets about its normal value: remove the mean so the bias pattern
    # stays the pixel's average level
    levels -= mean[:, None].astype(np.float32)

    dark = np.full(n, 0.002, np.float32)
    bad = np.zeros(n, np.uint8)
    hot = rng.choice(n, size=int(round(HOT_FRACTION * n)), replace=False)
    dark[hot] = 10 ** rng.uniform(np.log10(0.5), np.log10(30), hot.size)
    bad[hot] = 1

    response = 1.0 + PRNU_SIGMA * rng.normal(0, 1, n)
    response = response.reshape(shape) * (1.0 + COLUMN_RESPONSE_SIGMA * rng.normal(0, 1, nx))[None, :]
    dead = rng.choice(n, size=int(round(DEAD_FRACTION * n)), replace=False)
    response.reshape(-1)[dead] = rng.uniform(0.0, 0.5, dead.size)
    bad[dead] = 2

    ax, ay = axis_xy
    r2 = ((np.arange(ny, dtype=np.float32) - ay) ** 2)[:, None] + ((np.arange(nx, dtype=np.float32) - ax) ** 2)[None, :]
    r2_corner = max((cx - ax) ** 2 + (cy - ay) ** 2 for cx in (0, nx - 1) for cy in (0, ny - 1))
    vignetting = (1.0 - VIGNETTING_AT_CORNER * r2 / r2_corner).astype(np.float32)
    del r2

    drift = (DRIFT_SIGMA_PER_30_NIGHTS * _smooth_field(rng, shape, (6, 8))).astype(np.float32)

    n_donuts = max(2, int(rng.poisson(6 * scale**2)))
    donuts = []
    for i in range(n_donuts):
        first = 0
        if i == n_donuts - 1 and n_nights >= 3:
            first = int(rng.integers(1, n_nights))  # new dust lands part-way through the run
        donuts.append(Donut(x=float(rng.uniform(0, nx)), y=float(rng.uniform(0, ny)), radius=float(rng.uniform(20, 60)), width=float(rng.uniform(3, 8)), depth=float(rng.uniform(0.01, 0.03)), first_night_index=first))

    return DetectorTruth(
        shape=shape,
        bias_pattern=bias,
        ps_index=ps_index,
        ps_levels=levels,
        ps_cumprob=cumprob,
        ps_std=ps_std.reshape(shape),
        dark_current=dark.reshape(shape),
        bad_pixels=bad.reshape(shape),
        response=response.astype(np.float32),
        vignetting=vignetting,
        drift=drift,
        donuts=tuple(donuts),
    )


def read_out(rng: np.random.Generator, electrons: np.ndarray, detector: DetectorTruth, cfg: DetectorConfig) -> tuple[np.ndarray, float]:
    """Digitise an image of collected electrons (already Poisson-sampled) to uint16 ADU.

    Returns the raw image and the frame's mean bias level."""
    ny, nx = detector.shape
    frame_offset = rng.normal(0, 0.5)
    adu = electrons / cfg.gain_e_per_adu
    adu += detector.bias_pattern
    adu += frame_offset
    adu += rng.normal(0, 0.8, ny)[:, None]
    adu += rng.normal(0, cfg.read_noise_e / cfg.gain_e_per_adu, (ny, nx))
    state = _rtn_state(rng, detector.ps_cumprob)
    flat = adu.reshape(-1)
    flat[detector.ps_index] += detector.ps_levels[np.arange(detector.ps_index.size), state]
    raw = np.clip(np.rint(adu), 0, cfg.adc_max_adu).astype(np.uint16)
    return raw, float(BIAS_LEVEL_ADU + frame_offset)


def _rtn_state(rng: np.random.Generator, cumprob: np.ndarray) -> np.ndarray:
    u = rng.random(cumprob.shape[0]).astype(np.float32)
    return (u > cumprob[:, 0]).astype(np.int64) + (u > cumprob[:, 1])


def collect(rng: np.random.Generator, expected_e: np.ndarray, detector: DetectorTruth, exptime: float) -> np.ndarray:
    """Poisson-sample the photo-electrons plus dark current (float64 electrons)."""
    lam = expected_e + detector.dark_current * exptime
    return rng.poisson(np.clip(lam, 0, None)).astype(np.float64)
