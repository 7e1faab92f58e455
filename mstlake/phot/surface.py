"""Smooth functions of detector position: 2-D polynomials fitted with weights and clipping.

The aperture correction, the zero-point surface and the PSF's spatial variation are all such
functions; they share these terms so that one convention (u = (x - cx) / scale) holds for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def poly_terms(x, y, centre: tuple[float, float], scale: float, degree: int) -> np.ndarray:
    """(n, K) terms 1, u, v, u^2, uv, v^2, ... up to ``degree`` in scaled coordinates."""
    u = (np.asarray(x, float) - centre[0]) / scale
    v = (np.asarray(y, float) - centre[1]) / scale
    return np.column_stack([u ** (total - j) * v**j for total in range(degree + 1) for j in range(total + 1)])


def n_terms(degree: int) -> int:
    return (degree + 1) * (degree + 2) // 2


def detector_cell(x, y, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Row-major index of the cell of a ``grid`` (rows, columns) over a detector of ``shape``
    (ny, nx) that holds each position (pixel centres 0-based; edges clipped into the grid)."""
    ny, nx = shape
    row = np.clip((np.asarray(y, float) + 0.5) * grid[0] // ny, 0, grid[0] - 1).astype(int)
    col = np.clip((np.asarray(x, float) + 0.5) * grid[1] // nx, 0, grid[1] - 1).astype(int)
    return row * grid[1] + col


@dataclass(frozen=True)
class Surface:
    coefficients: np.ndarray
    centre: tuple[float, float]
    scale: float
    degree: int
    rms: float  # weighted-free rms of the kept points about the surface
    n_used: int
    n_rejected: int

    def __call__(self, x, y) -> np.ndarray:
        return poly_terms(x, y, self.centre, self.scale, self.degree) @ self.coefficients

    @classmethod
    def from_coefficients(cls, coefficients, shape: tuple[int, int]) -> Surface:
        """A surface stored as its coefficients (fitted by ``fit_surface`` on a detector of ``shape``)."""
        coefficients = np.asarray(coefficients, float)
        degree = next(d for d in range(12) if n_terms(d) >= len(coefficients))
        if n_terms(degree) != len(coefficients):
            raise ValueError(f"{len(coefficients)} coefficients make no 2-D polynomial")
        centre, scale = _geometry(shape)
        return cls(coefficients, centre, scale, degree, float("nan"), 0, 0)


def _geometry(shape: tuple[int, int]) -> tuple[tuple[float, float], float]:
    """The centre and scale a detector's polynomial coordinates are normalised by."""
    ny, nx = shape
    return ((nx - 1) / 2, (ny - 1) / 2), max(nx, ny) / 2


def fit_surface(x, y, value, *, shape: tuple[int, int], degree: int = 2, error=None, clip_sigma: float = 3.0, iterations: int = 10, floor: float = 0.0, select_degree: bool = False) -> Surface:
    """Least-squares polynomial of ``value`` over the detector (``shape`` = (ny, nx)), weighted by
    1 / (error^2 + floor^2) when errors are given, clipping points whose residual exceeds
    ``clip_sigma`` times the robust scatter (in units of their own errors). The degree drops when
    there are too few points for it (at least 3 per term). With ``select_degree``, ``degree`` is
    the highest allowed: after clipping at it, the lowest degree whose Bayesian information
    criterion (chi^2 scaled by the highest degree's reduced chi^2, plus ln n per term) is not
    beaten by a higher one is kept, so a few dozen noisy points do not buy a surface whose
    noise at the frame's edge exceeds the variation it follows."""
    x, y, value = (np.asarray(a, float) for a in (x, y, value))
    centre, scale = _geometry(shape)
    good = np.isfinite(value) & np.isfinite(x) & np.isfinite(y)
    sigma = np.ones_like(value) if error is None else np.sqrt(np.asarray(error, float) ** 2 + floor**2)
    good &= np.isfinite(sigma) & (sigma > 0)
    while degree > 0 and good.sum() < 3 * n_terms(degree):
        degree -= 1
    if good.sum() < 1:
        raise ValueError("no usable points for the surface fit")
    design = poly_terms(x, y, centre, scale, degree)
    keep = good.copy()
    for _ in range(iterations):
        w = 1.0 / sigma[keep]
        coefficients = np.linalg.lstsq(design[keep] * w[:, None], value[keep] * w, rcond=None)[0]
        pull = (value - design @ coefficients) / sigma
        spread = 1.4826 * np.median(np.abs(pull[keep] - np.median(pull[keep])))
        new = good & (np.abs(pull) <= clip_sigma * max(spread, 1e-9))
        if np.array_equal(new, keep) or new.sum() < n_terms(degree):
            break
        keep = new
    if select_degree and degree > 0:
        w = 1.0 / sigma[keep]
        n = int(keep.sum())
        chi2 = {}
        solutions = {}
        for d in range(degree + 1):
            columns = n_terms(d)
            solutions[d] = np.linalg.lstsq(design[keep][:, :columns] * w[:, None], value[keep] * w, rcond=None)[0]
            chi2[d] = float(np.sum(((value[keep] - design[keep][:, :columns] @ solutions[d]) * w) ** 2))
        scale2 = max(chi2[degree] / max(n - n_terms(degree), 1), 1e-12)
        score = {d: chi2[d] / scale2 + n_terms(d) * np.log(n) for d in chi2}
        chosen = min(score, key=lambda d: (score[d], d))
        if chosen < degree:
            degree, coefficients, design = chosen, solutions[chosen], design[:, : n_terms(chosen)]
    residual = value[keep] - design[keep] @ coefficients
    return Surface(coefficients, centre, scale, degree, float(np.sqrt(np.mean(residual**2))), int(keep.sum()), int(good.sum() - keep.sum()))
