"""One frame, start to finish: extraction, blind solve, refinement (arrays in, solution out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mstlake.astro import separation_deg
from mstlake.astrom import extract, solve
from mstlake.config import AstrometryConfig


@dataclass(frozen=True)
class FrameSolution:
    extraction: extract.Extraction
    fitted: pd.DataFrame  # the clean sources the TAN-SIP fit used (solution indices refer to it)
    solution: solve.Solution
    pointing_offset_arcmin: float  # header pointing to solved frame centre

    @property
    def mirrored(self) -> bool:
        """With north up, east to the right: a mirror image of the sky."""
        return bool(np.linalg.det(self.solution.wcs.wcs.cd) > 0)


def solve_image(image, variance, mask, *, pointing: tuple[float, float], ref_ra, ref_dec, ref_mag, pixel_scale_deg: float, cfg: AstrometryConfig) -> FrameSolution:
    """Extract the sources of a calibrated frame and solve it against the reference stars, from
    the header ``pointing``. Raises ``solve.SolveError`` with the reason when it cannot."""
    if not np.all(np.isfinite(pointing)):
        raise solve.SolveError("the header gives no pointing (RA/DEC): the blind solve starts from one")
    found = extract.extract_sources(image, variance, mask, thresh=cfg.detect_sigma, minarea=cfg.min_area_px)
    sources = found.sources
    clean = sources[sources.flag == 0]
    ny, nx = np.shape(image)
    ref_ra, ref_dec, ref_mag = (np.asarray(a, float) for a in (ref_ra, ref_dec, ref_mag))
    reach = np.hypot(nx, ny) * pixel_scale_deg / 2 + cfg.max_pointing_error_arcmin / 60
    near = (separation_deg(ref_ra, ref_dec, *pointing) < reach) & np.isfinite(ref_mag)
    # every source for the asterisms: the brightest stars are saturated (flagged), and they are the
    # ones the catalogue's brightest are; the fit then uses the clean ones
    wcs, _, parity = solve.blind_solve(sources.x, sources.y, sources.flux, ref_ra[near], ref_dec[near], ref_mag[near], pointing=pointing, pixel_scale_deg=pixel_scale_deg, shape=(ny, nx), n_bright=cfg.bright_sources, scale_tolerance=cfg.scale_tolerance)
    solution = solve.refine(wcs, clean.x, clean.y, ref_ra[near], ref_dec[near], shape=(ny, nx), sip_degree=cfg.sip_degree, match_radius_px=cfg.match_radius_px, clip_sigma=cfg.clip_sigma, parity=parity)
    if solution.n_matched < cfg.min_matches:
        raise solve.SolveError(f"only {solution.n_matched} reference stars matched (at least {cfg.min_matches} needed)")
    centre = solution.wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    offset = float(separation_deg(centre[0], centre[1], *pointing)) * 60
    return FrameSolution(found, clean.reset_index(drop=True), solution, offset)
