"""An effective PSF (ePSF) that varies across the detector, and PSF photometry with it.

The model is empirical (Anderson & King 2000): the pixel-integrated PSF sampled on a grid finer
than the pixels, built from bright isolated stars, with each grid node a low-order polynomial in
the star's position on the detector (like DAOPHOT's and PSFEx's variable PSFs). Nothing about its
shape is assumed, so it fits whatever the optics make (Moffat wings, coma, astigmatism).

Evaluation goes through precomputed *phase stamps*: per detector cell, the model on the native
pixel grid for 16 x 16 sub-pixel phases (cubic-spline interpolation of the fine grid, once per
frame), blended bilinearly in phase for each star. That makes tens of thousands of stars cheap.

Photometry fits every star at once: all stars' models are rendered into one image (updated as
the fits change), and each star is refitted on the image with every *other* star subtracted (its neighbours' light
is then not in its flux, its centroid or its growth curve). Stars marked ``fit_position`` get
Gauss-Newton updates of (flux, x, y); the rest (faint detections, forced photometry at catalogue
positions) get the linear flux fit at a fixed position, which can be negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mstlake.phot.stamps import cutout_index, scatter_into
from mstlake.phot.surface import poly_terms
from mstlake.phot.surface import n_terms as count_terms

PHASES = 16  # sub-pixel phase steps per pixel for the precomputed stamps
WING_STARS = 300  # the ePSF's wings (beyond 2 FWHM) come from this many of its brightest stars
RELAX = 1.6  # over-relaxation of the ePSF's correction passes: the bilinear sample sharing converges slowly
# from this FWHM (px) on, the pixel-integrated PSF is smooth enough for a grid at the pixel pitch
# (cubic-spline interpolated): a finer grid has 4x the nodes to fit from the same stars, and its
# noise, different on every frame, was the bright stars' light-curve floor (2.2 -> 0.4 mmag at
# 12-13 mag on half-size frames of FWHM 1.9-3.3 px)
WELL_SAMPLED_FWHM = 1.8

# flag bits of PSF photometry
PSF_MASKED = 1  # masked pixels inside the fit radius (they are left out of the fit)
PSF_EDGE = 2  # the fit stamp crosses the image edge
PSF_POOR_FIT = 4  # reduced chi^2 above the limit: not a single point source (blend, artefact)
PSF_NOT_CONVERGED = 8  # the position moved by more than a pixel, or the fit had no usable pixels
PSF_BLENDED = 16  # catalogue stars too close to fit apart: fitted as one, the flux shared by catalogue brightness


@dataclass(frozen=True)
class EffectivePSF:
    """Fine-grid pixel-integrated PSF; ``basis[k]`` is the k-th polynomial term's grid, nodes at
    offsets (j - half * oversampling) / oversampling px from the star (rows y, columns x)."""

    basis: np.ndarray  # (K, n, n), n = 2 * half * oversampling + 1
    oversampling: int
    half: int  # native pixels covered each side of the star
    centre: tuple[float, float]
    scale: float
    degree: int
    fwhm: float  # at the detector centre, px
    # phase stamps made from this model, by (half, with derivatives): one frame asks for the same
    # few several times (photometry, forced photometry, star subtraction)
    _stamps: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def grid_at(self, x: float, y: float) -> np.ndarray:
        """The fine-grid model at one detector position."""
        return np.tensordot(poly_terms([x], [y], self.centre, self.scale, self.degree)[0], self.basis, axes=1)

    def phase_stamps(self, half: int, *, derivatives: bool = True) -> PhaseStamps:
        half = min(half, self.half)
        made = self._stamps.get((half, True))  # with derivatives serves either request
        if made is None and not derivatives:
            made = self._stamps.get((half, False))
        if made is None:
            made = self._stamps[(half, derivatives)] = PhaseStamps.from_psf(self, half, derivatives=derivatives)
        return made


CELL_PX = 600  # the spatially varying model is tabulated per detector cell of about this size ...
MIN_CELLS = 8  # ... and at least this many along each axis (small frames vary as much across)


@dataclass(frozen=True)
class PhaseStamps:
    """The model on native pixels (offsets -half..half) at (PHASES + 1)^2 sub-pixel phases, per
    detector cell (the polynomial variation evaluated at the cell's centre, blended bilinearly
    between cell centres for each star): values and, when asked, the x/y derivatives with respect
    to the star's position (float32)."""

    values: np.ndarray  # (cells, P + 1, P + 1, s, s), s = 2 * half + 1; [cell, phase_y, phase_x, dy, dx]
    d_dx: np.ndarray | None
    d_dy: np.ndarray | None
    psf: EffectivePSF
    half: int
    cells: tuple[int, int]  # (rows, columns) of cells over the detector

    @classmethod
    def from_psf(cls, psf: EffectivePSF, half: int, *, derivatives: bool = True) -> PhaseStamps:
        half = min(half, psf.half)
        offsets = np.arange(-half, half + 1, dtype=float)
        phases = np.linspace(-0.5, 0.5, PHASES + 1)
        # node coordinate of pixel offset (o - phase): star at phase, pixel at o
        coords = (offsets[None, :] - phases[:, None]) * psf.oversampling + psf.half * psf.oversampling  # (P+1, s)
        size = offsets.size
        cy = np.broadcast_to(coords[:, None, :, None], (PHASES + 1, PHASES + 1, size, size))
        cx = np.broadcast_to(coords[None, :, None, :], (PHASES + 1, PHASES + 1, size, size))
        nx, ny = 2 * psf.centre[0] + 1, 2 * psf.centre[1] + 1
        cells = (1, 1) if psf.degree == 0 else (max(MIN_CELLS, round(ny / CELL_PX)), max(MIN_CELLS, round(nx / CELL_PX)))
        cell_y = (np.arange(cells[0]) + 0.5) * ny / cells[0] - 0.5
        cell_x = (np.arange(cells[1]) + 0.5) * nx / cells[1] - 0.5
        gx_, gy_ = np.meshgrid(cell_x, cell_y)
        weights = poly_terms(gx_.ravel(), gy_.ravel(), psf.centre, psf.scale, psf.degree).astype(np.float32)  # (cells, K)

        def tabulate(grids) -> np.ndarray:
            per_term = np.stack([_spline_at(g, cy, cx).astype(np.float32) for g in grids])
            return np.tensordot(weights, per_term, axes=1)

        values = tabulate(psf.basis)
        d_dx = d_dy = None
        if derivatives:
            # derivatives with respect to the star position: minus the gradient in offset
            gradients = [np.gradient(g, 1.0 / psf.oversampling) for g in psf.basis]
            d_dx = -tabulate([g[1] for g in gradients])
            d_dy = -tabulate([g[0] for g in gradients])
        return cls(values, d_dx, d_dy, psf, half, cells)

    def _cell_corners(self, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The cells whose tables a star at (x, y) blends, with their shares: bilinear between the
        four nearest cell centres (linear beyond the outermost ones). A star takes its cell's
        table alone only on a single-cell model: as stars move by hundreds of pixels between
        frames, a table held over a cell (the FWHM changes by up to 2% across one on half-size
        frames) put a different error into a star's flux on each frame."""
        rows, cols = self.cells
        if rows * cols == 1:  # a constant model: one table, a quarter of the work
            return [(np.zeros(x.size, np.int64), np.ones(x.size, np.float32))]
        nx, ny = 2 * self.psf.centre[0] + 1, 2 * self.psf.centre[1] + 1
        u = (x + 0.5) * cols / nx - 0.5  # fractional cell column: integers at the centres from_psf tabulates
        v = (y + 0.5) * rows / ny - 0.5
        # a single row or column of cells gives both neighbours the same cell: the shares still sum to 1
        cu = np.clip(np.floor(u), 0, max(cols - 2, 0)).astype(np.int64)
        cv = np.clip(np.floor(v), 0, max(rows - 2, 0)).astype(np.int64)
        tu, tv = (u - cu).astype(np.float32), (v - cv).astype(np.float32)
        cu1, cv1 = np.minimum(cu + 1, cols - 1), np.minimum(cv + 1, rows - 1)
        return [(cv * cols + cu, (1 - tu) * (1 - tv)), (cv * cols + cu1, tu * (1 - tv)), (cv1 * cols + cu, (1 - tu) * tv), (cv1 * cols + cu1, tu * tv)]

    def evaluate(self, x, y, *, derivatives: bool = False, nearest_cell: bool = False):
        """Stamps for stars at (x, y): pixel rows/columns (n, s) and values (n, s, s) (and their
        derivatives with respect to x and y when asked). Pixel (row iy + dy, column ix + dx).
        ``nearest_cell``: the values from the nearest cell's table alone (a quarter of the cost;
        for the faint outer wings, where the small change across a cell is lost in the noise)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        tx = np.clip((x - ix + 0.5) * PHASES, 0, PHASES)
        ty = np.clip((y - iy + 0.5) * PHASES, 0, PHASES)
        jx, jy = np.minimum(tx.astype(int), PHASES - 1), np.minimum(ty.astype(int), PHASES - 1)
        wx, wy = (tx - jx).astype(np.float32), (ty - jy).astype(np.float32)
        # each star blends 4 phase corners in each of its cells (4 cells, 1 on a constant model):
        # one gather and one weighted sum
        corners = self._cell_corners(x, y)
        phase_share = np.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy], axis=1)  # (n, 4)
        index = np.stack([np.stack([(cell * (PHASES + 1) + jy + dy) * (PHASES + 1) + jx + dx for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))], axis=1) for cell, _ in corners], axis=1).astype(np.int32)  # (n, cells, 4)
        cell_share = np.stack([share for _, share in corners], axis=1)  # (n, cells)
        size = 2 * self.half + 1

        def blend(table, index, share):
            return np.einsum("nk,nkp->np", share, np.take(table.reshape(-1, size * size), index, axis=0)).reshape(-1, size, size)

        rows = iy[:, None] + np.arange(-self.half, self.half + 1)
        cols = ix[:, None] + np.arange(-self.half, self.half + 1)
        nearest = index[np.arange(x.size), np.argmax(cell_share, axis=1)]
        if nearest_cell:
            values = blend(self.values, nearest, phase_share)
        else:
            values = blend(self.values, index.reshape(x.size, -1), (cell_share[:, :, None] * phase_share[:, None, :]).reshape(x.size, -1))
        if derivatives:
            if self.d_dx is None:
                raise ValueError("these phase stamps were made without derivatives")
            # the derivatives only steer the position fits: the nearest cell's serve (a 1-2% change
            # in a step's size), at a quarter of the cost
            return rows, cols, values, blend(self.d_dx, nearest, phase_share), blend(self.d_dy, nearest, phase_share)
        return rows, cols, values


# --------------------------------------------------------------------------------------------------
# building the model


def build_psf(residual: np.ndarray, background_variance: np.ndarray, hidden: np.ndarray, x, y, flux, *, fwhm: float, gain: float | None = None, half: int | None = None, degree: int | None = None, oversampling: int | None = None, iterations: int = 2, passes: int = 4, clip_sigma: float = 4.0) -> EffectivePSF:
    """An ePSF from bright isolated stars at (x, y) with first-guess fluxes, on a background-
    subtracted ``residual`` (noise as in ``psf_photometry``). ``degree`` of the spatial
    polynomial follows the number of stars when not given (each node needs samples from enough
    stars), the ``oversampling`` the FWHM (``WELL_SAMPLED_FWHM``). Each of ``iterations`` runs
    ``passes`` model corrections, then refits the stars' positions and fluxes and drops those the
    model does not fit."""
    x, y, flux = (np.asarray(a, float).copy() for a in (x, y, flux))
    hidden = np.asarray(hidden, bool)
    ny, nx = residual.shape
    n_stars = x.size
    if n_stars < 5:
        raise ValueError(f"only {n_stars} PSF stars; at least 5 are needed for a PSF model")
    if degree is None:
        degree = 0 if n_stars < 40 else 1 if n_stars < 150 else 2
    n_terms = count_terms(degree)
    if oversampling is None:
        oversampling = 1 if fwhm >= WELL_SAMPLED_FWHM else 2
    half = int(half if half is not None else max(8, np.ceil(3.5 * fwhm)))
    centre, scale = ((nx - 1) / 2, (ny - 1) / 2), max(nx, ny) / 2  # as in mstlake.phot.surface
    m = half * oversampling
    n_nodes = 2 * m + 1
    offsets = np.arange(-half, half + 1)

    # the wings come from the brightest WING_STARS stars, the core from all: the faint stars' wing
    # pixels are mostly sky noise and would double the work
    core_half = max(3, int(np.ceil(2.0 * fwhm)))
    wing_star = np.zeros(n_stars, bool)
    wing_star[np.argsort(-flux)[:WING_STARS]] = True
    near_core = (np.abs(offsets)[:, None] <= core_half) & (np.abs(offsets)[None, :] <= core_half)

    def cutouts(x, y):
        rows, cols = np.rint(y).astype(int)[:, None] + offsets, np.rint(x).astype(int)[:, None] + offsets
        flat, inside = cutout_index(residual.shape, rows, cols)
        data, masked, noise = (a.reshape(-1)[flat] for a in (residual, hidden, background_variance))
        usable = inside & ~masked & (noise > 0) & (wing_star[:, None, None] | near_core[None, :, :])
        return rows, cols, data, noise, usable, poly_terms(x, y, centre, scale, degree)

    rows, cols, data, noise, usable, terms = cutouts(x, y)
    basis = np.zeros((n_terms, n_nodes, n_nodes))
    keep_star = np.ones(n_stars, bool)
    for iteration in range(iterations):
        # offsets of each sample from its star, in fine-grid node units
        ox = np.broadcast_to((cols[:, None, :] - x[:, None, None]) * oversampling + m, data.shape)
        oy = np.broadcast_to((rows[:, :, None] - y[:, None, None]) * oversampling + m, data.shape)
        normalised = data / flux[:, None, None]
        sel = usable & keep_star[:, None, None]
        fx, fy = ox[sel], oy[sel]
        # each sample shares itself among its four nearest nodes (bilinear): four times the samples
        # per node where stars are few; the blur this causes is undone by the passes below, each
        # fitting what the model, evaluated at the samples' exact offsets, still misses
        x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
        nodes, kernels = [], []
        corners = ((0, 0), (1, 0), (0, 1), (1, 1))
        for ddx, ddy in corners:
            kernels.append((1 - np.abs(fx - (x0 + ddx))) * (1 - np.abs(fy - (y0 + ddy))))
            nodes.append(np.where((x0 + ddx >= 0) & (x0 + ddx < n_nodes) & (y0 + ddy >= 0) & (y0 + ddy < n_nodes), (y0 + ddy) * n_nodes + x0 + ddx, -1))
        copies = len(corners)
        node, kernel = np.concatenate(nodes), np.concatenate(kernels)
        on_grid = node >= 0
        node = node[on_grid]
        star_flux = np.broadcast_to(flux[:, None, None], data.shape)[sel]
        star_terms = np.broadcast_to(terms[:, None, None, :], data.shape + (n_terms,))[sel]
        sample_star = np.tile(np.broadcast_to(np.arange(n_stars)[:, None, None], data.shape)[sel], copies)[on_grid]
        for correction_pass in range(passes):
            current = _evaluate_samples(basis, star_terms, fx, fy) if (correction_pass or iteration) else np.zeros(fx.size)
            # photon weights, capped at a 0.2% model error so that no single bright star owns a node
            photons = np.maximum(star_flux * (current if (correction_pass or iteration) else normalised[sel]), 0) / gain if gain else 0.0
            weight = 1.0 / ((noise[sel] + photons).clip(1e-12) / star_flux**2 + (0.002 * np.abs(normalised[sel])) ** 2 + 1e-12)
            target = normalised[sel] - current
            correction = _node_fit(node, np.tile(target, copies)[on_grid], (np.tile(weight, copies) * kernel)[on_grid], sample_star, terms, n_nodes, clip_sigma)
            basis = _tidy(basis + RELAX * correction, fwhm * oversampling, oversampling)
        # refit the stars' fluxes and positions with the new model; drop the ones it does not fit
        psf = EffectivePSF(basis, oversampling, half, centre, scale, degree, fwhm)
        fit = psf_photometry(residual, background_variance, hidden, psf, x, y, flux, fit_position=np.ones(n_stars, bool), gain=gain, iterations=3, fit_half=max(2, int(np.ceil(1.5 * fwhm))))
        good = np.isfinite(fit.flux) & (fit.flux > 0) & (fit.flag & (PSF_NOT_CONVERGED | PSF_EDGE) == 0)
        x, y, flux = np.where(good, fit.x, x), np.where(good, fit.y, y), np.where(good, fit.flux, flux)
        chi = fit.chi2_reduced
        limit = np.nanmedian(chi[good]) + 5 * 1.4826 * np.nanmedian(np.abs(chi[good] - np.nanmedian(chi[good])))
        keep_star = good & (chi <= limit)
        if keep_star.sum() < max(5, n_terms * 5):
            keep_star = good
        rows, cols, data, noise, usable, terms = cutouts(x, y)
    measured = _fwhm_of(basis[0], oversampling)
    return EffectivePSF(basis, oversampling, half, centre, scale, degree, measured)


def _evaluate_samples(basis: np.ndarray, terms: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """The model at fine-grid coordinates (fx, fy) for samples whose stars have polynomial terms
    ``terms`` (n, K)."""
    return sum(terms[:, k] * _spline_at(grid, fy, fx) for k, grid in enumerate(basis))


def _spline_at(grid: np.ndarray, rows, cols) -> np.ndarray:
    """Cubic-spline interpolation of a fine grid at fractional (rows, cols); zero outside."""
    return ndimage.map_coordinates(ndimage.spline_filter(grid, order=3, mode="constant"), [rows, cols], order=3, prefilter=False, mode="constant")


def _node_fit(node, target, weight, star, star_terms, n_nodes: int, clip_sigma: float) -> np.ndarray:
    """Per fine-grid node, the weighted least-squares polynomial (in star position) through the
    samples that fall on it (sample i from star ``star[i]``, whose polynomial terms are
    ``star_terms[star[i]]``), clipped once at ``clip_sigma`` robust sigma; nodes with too few
    samples are filled from their neighbours. Returns (K, n_nodes, n_nodes)."""
    total = n_nodes * n_nodes
    n_stars, n_terms = star_terms.shape
    # a star's terms are the same for all its samples, so the normal equations of a node need only
    # each star's summed weight (and weighted target) on it: two bincounts instead of one per term pair
    node_star = node * n_stars + star
    outer = (star_terms[:, :, None] * star_terms[:, None, :]).reshape(n_stars, n_terms * n_terms)
    keep = np.ones(node.size, bool)
    for round_ in range(2):
        w = weight * keep
        summed_weight = np.bincount(node_star, weights=w, minlength=total * n_stars).reshape(total, n_stars)
        summed_target = np.bincount(node_star, weights=w * target, minlength=total * n_stars).reshape(total, n_stars)
        normal = (summed_weight @ outer).reshape(total, n_terms, n_terms)
        rhs = summed_target @ star_terms
        support = np.bincount(node, weights=keep * (weight > 0) * 1.0, minlength=total)
        ok = support >= 3 * n_terms
        ridge = 1e-9 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(n_terms)
        solution = np.zeros((total, n_terms))
        solution[ok] = np.linalg.solve(normal[ok] + ridge[ok], rhs[ok][..., None])[..., 0]
        if round_ == 1:
            break  # the clipping that follows would go unused
        fitted = np.einsum("nk,nk->n", star_terms[star], solution[node])
        pull = (target - fitted) * np.sqrt(weight)
        spread = 1.4826 * np.median(np.abs(pull[keep])) if keep.any() else 1.0
        keep = np.abs(pull) <= clip_sigma * max(spread, 1.0)  # pulls are in noise units: never clip tighter
    grids = solution.T.reshape(n_terms, n_nodes, n_nodes)
    known = ok.reshape(n_nodes, n_nodes).astype(float)
    if not known.all():
        for k in range(n_terms):
            filled = ndimage.gaussian_filter(grids[k] * known, 1.5) / np.maximum(ndimage.gaussian_filter(known, 1.5), 1e-6)
            grids[k] = np.where(known > 0, grids[k], filled)
    return grids


def _tidy(basis: np.ndarray, fwhm_nodes: float, oversampling: int) -> np.ndarray:
    """Smooth the faint wings (noise dominates them, the optics make them smooth), keep the core
    exactly as measured, centre the constant term (the model and the star positions could
    otherwise drift together) and normalise it to unit flux over the grid."""
    n = basis.shape[-1]
    r = np.hypot(*np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2))
    blend = np.clip((r - 1.5 * fwhm_nodes) / fwhm_nodes, 0.0, 1.0)
    out = np.empty_like(basis)
    for k, grid in enumerate(basis):
        smooth = ndimage.gaussian_filter(grid, sigma=0.5 * oversampling, mode="constant")
        out[k] = (1 - blend) * grid + blend * smooth
    core = (r <= 1.5 * fwhm_nodes) & (out[0] > 0)
    weight = np.where(core, out[0], 0.0)
    if weight.sum() > 0:
        yy, xx = np.mgrid[0:n, 0:n]
        shift = (n // 2 - (weight * yy).sum() / weight.sum(), n // 2 - (weight * xx).sum() / weight.sum())
        out = np.stack([ndimage.shift(grid, shift, order=3, mode="constant") for grid in out])
    total = out[0].sum() / oversampling**2
    if total > 0:
        out /= total
    return out


def _fwhm_of(grid: np.ndarray, oversampling: int, resolution: int = 8) -> float:
    """Width of the area above half the peak, as the diameter of a circle of that area, on the
    grid resampled to ``resolution`` nodes per pixel (a pixel-pitch grid counts whole pixels)."""
    fine = ndimage.zoom(grid, resolution / oversampling, order=3, grid_mode=False) if oversampling < resolution else grid
    step = resolution if oversampling < resolution else oversampling
    above = fine >= 0.5 * fine.max()
    return float(2 * np.sqrt(above.sum() / np.pi) / step)


# --------------------------------------------------------------------------------------------------
# photometry


@dataclass(frozen=True)
class PsfFit:
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray  # image units (ADU); negative allowed at fixed positions
    flux_err: np.ndarray
    chi2_reduced: np.ndarray
    n_pixels: np.ndarray  # unmasked pixels in the fit
    flag: np.ndarray  # PSF_* bits


def psf_photometry(residual: np.ndarray, background_variance: np.ndarray, hidden: np.ndarray, psf: EffectivePSF, x, y, flux, *, fit_position, gain: float | None = None, iterations: int = 3, fit_half: int | None = None, subtract_half: int | None = None, max_chi2: float = 5.0) -> PsfFit:
    """Fit the PSF to every star at once, each with all the others subtracted.

    ``residual`` is the background-subtracted image, ``background_variance`` its noise without the
    stars' photon noise (ADU^2; read noise, sky, and whatever a pixel adds of its own) and
    ``hidden`` the pixels to leave out. The weights add each star's model photon noise (``gain``,
    e-/ADU): weights from the data's own noise would bias faint fluxes low and let bright stars'
    noise decide their weights. ``fit_position`` (bool per star) chooses Gauss-Newton (flux, x, y)
    or a linear flux fit at the given position (flux then may be negative)."""
    n = np.size(x)
    hidden = np.asarray(hidden, bool)
    order = np.argsort(np.asarray(y, float), kind="stable")  # row order: compact scatters
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    flux = np.nan_to_num(np.asarray(flux, float), nan=0.0)[order]
    fit_position = np.broadcast_to(np.asarray(fit_position, bool), (n,))[order]
    fit_half = int(fit_half if fit_half is not None else max(2, int(np.ceil(1.5 * psf.fwhm))))
    subtract_half = int(subtract_half if subtract_half is not None else psf.half)
    moving_any = bool(fit_position.any()) and iterations > 1
    small = psf.phase_stamps(fit_half, derivatives=moving_any)
    big = psf.phase_stamps(subtract_half, derivatives=False) if subtract_half > fit_half else None
    shape = residual.shape
    error, chi2 = np.full(n, np.nan), np.full(n, np.nan)
    npix, flag = np.zeros(n, int), np.zeros(n, np.int32)
    start_x, start_y = x.copy(), y.copy()
    chunks = _chunks(n, 20_000)
    stamps = [small.evaluate(x[c], y[c], derivatives=moving_any) for c in chunks]  # fixed stars keep theirs
    wing_limit = _wing_limit(psf, small.half, background_variance) if big is not None else np.inf
    wide = np.abs(flux) > wing_limit  # stars whose model is placed with its full extent (fixed for the call)

    # wide stars are placed as their fit stamp plus the wings beyond it; the wings come from the
    # nearest cell's table and are made once per star, again only when it moves (each fit
    # iteration places every star's change)
    far_slot = np.cumsum(wide) - 1
    if big is not None:
        count, size = int(wide.sum()), 2 * big.half + 1
        wings = (np.empty((count, size), np.int64), np.empty((count, size), np.int64), np.empty((count, size, size), np.float32))

    def wing_stamp(index, *, refresh: bool = False):
        slots = far_slot[index]
        if not refresh:
            return tuple(held[slots] for held in wings)
        rows, cols, p = big.evaluate(x[index], y[index], nearest_cell=True)
        inner = big.half - small.half
        p[:, inner : size - inner, inner : size - inner] = 0.0
        for held, value in zip(wings, (rows, cols, p), strict=True):
            held[slots] = value
        return rows, cols, p

    def place(model, index, amount, stamp, *, refresh: bool = False):
        """model += amount x the models of stars ``index``: their fit stamps, and the wide ones'
        wings (``refresh``: they have moved, their wings are made anew)."""
        scatter_into(model, stamp[0], stamp[1], amount[:, None, None] * stamp[2])
        far = np.flatnonzero(wide[index])
        for part in _chunks(far.size, 2_000):
            rows, cols, p = wing_stamp(index[far[part]], refresh=refresh)
            scatter_into(model, rows, cols, amount[far[part], None, None] * p)

    # every star's model in one image, kept up to date star by star as fits change (a full
    # rebuild per iteration costs a pass over the frame even for a few hundred stars)
    model = np.zeros(shape, np.float32)
    for c, stamp in zip(chunks, stamps, strict=True):
        place(model, np.arange(c.start, c.stop), flux[c], stamp, refresh=True)
    pixels: list[tuple | None] = [None] * len(chunks)  # each chunk's cutouts, read again only when its stars move
    for iteration in range(iterations):
        last = iteration == iterations - 1
        for k, c in enumerate(chunks):
            rows, cols, p = stamps[k][:3]
            if pixels[k] is None:
                flat, inside = cutout_index(shape, rows, cols)
                pixels[k] = (flat, inside, *(a.reshape(-1)[flat] for a in (residual, hidden, background_variance)))
            flat, inside, data, masked, var = pixels[k]
            data = data - model.reshape(-1)[flat] + flux[c, None, None] * p  # every other star out, this one back in
            usable = inside & ~masked & (var > 0)
            if gain is not None:
                var = var + np.maximum(flux[c, None, None] * p, 0) / gain
            w = np.where(usable, 1.0 / np.where(var > 0, var, 1.0), 0.0)
            f = flux[c]
            moving = fit_position[c]
            # linear flux fit (every star); Gauss-Newton step in position where asked
            spp = np.einsum("nij,nij->n", w * p, p)
            spd = np.einsum("nij,nij->n", w * p, data)
            new_flux = np.where(spp > 0, spd / np.where(spp > 0, spp, 1.0), np.nan)
            moved = np.zeros(f.size, bool)
            if moving.any() and not last:
                px, py = stamps[k][3], stamps[k][4]
                m = np.flatnonzero(moving)
                design = np.stack([p[m], f[m, None, None] * px[m], f[m, None, None] * py[m]], axis=-1)  # (m, s, s, 3)
                wm = w[m][..., None]
                normal = np.einsum("nija,nijb->nab", design * wm, design)
                rhs = np.einsum("nija,nij->na", design * wm, data[m] - f[m, None, None] * p[m])
                ok = (np.linalg.det(normal) > 0) & (f[m] > 0)
                step = np.zeros((m.size, 3))
                step[ok] = np.linalg.solve(normal[ok], rhs[ok][..., None])[..., 0]
                step[:, 1:] = np.clip(step[:, 1:], -0.5, 0.5)
                new_flux[m[ok]] = f[m[ok]] + step[ok, 0]
                moved[m] = True
            if not last:
                # the model follows the fits at once (Gauss-Seidel across chunks): a star that
                # stayed changes by its flux step, one that moved is taken out and put back
                index = np.arange(c.start, c.stop)
                change = np.nan_to_num(new_flux, nan=0.0) - f
                stay = ~moved
                place(model, index[stay], change[stay], tuple(a[stay] for a in stamps[k][:3]))
                if moved.any():
                    pixels[k] = None
                    m = np.flatnonzero(moved)
                    place(model, index[m], -f[m], tuple(a[m] for a in stamps[k][:3]))
                    x[c][m] += step[:, 1]
                    y[c][m] += step[:, 2]
                    fresh = small.evaluate(x[c][m], y[c][m], derivatives=True)
                    for held, value in zip(stamps[k], fresh, strict=True):
                        held[m] = value
                    place(model, index[m], np.nan_to_num(new_flux[m], nan=0.0), fresh[:3], refresh=True)
            if last:
                resid = data - new_flux[:, None, None] * p
                npix[c] = usable.sum(axis=(1, 2))
                chi2[c] = np.einsum("nij,nij->n", w * resid, resid) / np.maximum(npix[c] - np.where(moving, 3, 1), 1)
                error[c] = np.where(spp > 0, 1.0 / np.sqrt(np.where(spp > 0, spp, 1.0)), np.nan)
                central = np.abs(np.arange(-fit_half, fit_half + 1)) <= 1
                core = central[:, None] & central[None, :]
                flag[c] = (np.where((masked & core).any(axis=(1, 2)), PSF_MASKED, 0) | np.where((~inside).any(axis=(1, 2)), PSF_EDGE, 0)
                           | np.where(npix[c] == 0, PSF_NOT_CONVERGED, 0))
            flux[c] = np.nan_to_num(new_flux, nan=0.0)
    flag |= np.where(np.hypot(x - start_x, y - start_y) > 1.0, PSF_NOT_CONVERGED, 0).astype(np.int32)
    flag |= np.where(chi2 > max_chi2, PSF_POOR_FIT, 0).astype(np.int32)
    flux = np.where(npix > 0, flux, np.nan)
    back = np.empty(n, int)
    back[order] = np.arange(n)
    return PsfFit(x[back], y[back], flux[back], error[back], chi2[back], npix[back], flag[back])


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _wing_limit(psf: EffectivePSF, fit_half: int, variance: np.ndarray) -> float:
    """The flux above which a star's wing beyond the fit stamp is worth a tenth of the typical
    pixel noise: such stars are subtracted with the model's full extent."""
    grid = psf.grid_at(*psf.centre)
    m = psf.half * psf.oversampling
    edge_value = max(float(grid[m, m + fit_half * psf.oversampling]), 1e-6)
    ny, nx = variance.shape
    typical_sigma = float(np.sqrt(np.median(variance[:: max(1, ny // 64), :: max(1, nx // 64)])))
    return 0.1 * typical_sigma / edge_value


def model_image(shape, psf: EffectivePSF, x, y, flux) -> np.ndarray:
    """All the stars' PSF models, over the model's full extent, in one image."""
    x, y, flux = (np.asarray(a, float) for a in (x, y, flux))
    chosen = np.flatnonzero(np.isfinite(flux) & (flux != 0))
    chosen = chosen[np.argsort(y[chosen], kind="stable")]
    stamps = psf.phase_stamps(psf.half, derivatives=False)
    out = np.zeros(shape, np.float32)
    for part in _chunks(chosen.size, 2_000):
        idx = chosen[part]
        rows, cols, p = stamps.evaluate(x[idx], y[idx])
        scatter_into(out, rows, cols, flux[idx, None, None] * p)
    return out


def subtract_stars(residual: np.ndarray, psf: EffectivePSF, x, y, flux, *, keep=None) -> np.ndarray:
    """The image with the PSF models of the stars removed, except those where ``keep`` is true."""
    flux = np.asarray(flux, float)
    if keep is not None:
        flux = np.where(np.asarray(keep, bool), 0.0, flux)
    return residual - model_image(residual.shape, psf, x, y, flux)
