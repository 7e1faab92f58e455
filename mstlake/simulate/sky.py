"""Stars on the sky, the standard-star library that lists them, and their variability.

Star counts follow dN/dm ∝ 10^(slope·m) (slope 0.30/mag) normalised to 16000 stars/deg² brighter than
r = 19, i.e. ~56000 on the 2.29 x 1.53 deg MST frame as in the paper. Colours: a main-sequence locus
(g-r ~ N(0.55, 0.2)) with 10% M dwarfs (g-r ~ 1.3); r-i follows g-r. About 3% of stars vary
(sinusoidal pulsators, detached eclipsing binaries, RR Lyrae); one supernova-like transient that no
catalogue lists sits near the field centre. The library (as the paper's Gaia-XP-based gri library)
lists stars brighter than r = 20 with realistic errors, misses 1% of them, and gives mean magnitudes
for variables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstlake.config import SkySimConfig

BANDS = ("g", "r", "i")
_PULSATOR_BAND_FACTOR = {"g": 1.0, "r": 0.8, "i": 0.65}
_RRLYRAE_BAND_FACTOR = {"g": 1.0, "r": 0.75, "i": 0.6}
_TRANSIENT_DECLINE_FACTOR = {"g": 1.0, "r": 1.4, "i": 1.7}
_TRANSIENT_PEAK_COLOUR = {"g": 0.0, "r": 0.05, "i": 0.2}


@dataclass(frozen=True)
class StarField:
    """Truth for every star, as columns of the ``truth_stars`` table."""

    columns: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.columns["star_id"])

    def mean_mag(self, band: str) -> np.ndarray:
        return self.columns[f"mag_{band}"]


def tangent_to_sky(xi_deg, eta_deg, ra0_deg: float, dec0_deg: float):
    """Gnomonic de-projection of standard coordinates (degrees) about (ra0, dec0)."""
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(np.mod(ra, 2 * np.pi)), np.degrees(dec)


def sample_magnitudes(rng: np.random.Generator, n: int, bright: float, faint: float, slope: float) -> np.ndarray:
    lo, hi = 10 ** (slope * bright), 10 ** (slope * faint)
    return np.log10(lo + rng.random(n) * (hi - lo)) / slope


def expected_star_count(area_deg2: float, cfg: SkySimConfig) -> float:
    s = cfg.count_slope_per_mag
    return area_deg2 * cfg.stars_per_deg2_brighter_than_19 * (10 ** (s * (cfg.faint_limit_mag - 19)) - 10 ** (s * (cfg.bright_limit_mag - 19)))


def make_star_field(
    rng: np.random.Generator, *, centre_ra: float, centre_dec: float, width_deg: float, height_deg: float, cfg: SkySimConfig, mjd_span: tuple[float, float]
) -> StarField:
    area = width_deg * height_deg
    n = int(rng.poisson(expected_star_count(area, cfg)))
    xi = (rng.random(n) - 0.5) * width_deg
    eta = (rng.random(n) - 0.5) * height_deg
    ra, dec = tangent_to_sky(xi, eta, centre_ra, centre_dec)
    mag_r = sample_magnitudes(rng, n, cfg.bright_limit_mag, cfg.faint_limit_mag, cfg.count_slope_per_mag)
    m_dwarf = rng.random(n) < 0.10
    g_r = np.where(m_dwarf, rng.normal(1.30, 0.15, n), rng.normal(0.55, 0.20, n)).clip(-0.3, 1.7)
    r_i = np.where(g_r < 1.1, 0.42 * g_r - 0.04, 0.9 * g_r - 0.57) + rng.normal(0, 0.04, n)

    columns: dict[str, np.ndarray] = {
        "star_id": np.arange(1, n + 1, dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "mag_g": mag_r + g_r,
        "mag_r": mag_r,
        "mag_i": mag_r - r_i,
    }
    _add_variability(rng, columns, cfg, mjd_span)
    _add_transient(rng, columns, cfg, mjd_span, centre_ra, centre_dec)
    _add_library_membership(rng, columns, cfg)
    return StarField(columns)


def _add_variability(rng: np.random.Generator, columns: dict[str, np.ndarray], cfg: SkySimConfig, mjd_span: tuple[float, float]) -> None:
    n = len(columns["star_id"])
    kind = np.full(n, "constant", dtype=object)
    period = np.full(n, np.nan)
    amplitude = np.full(n, np.nan)
    t0 = np.full(n, np.nan)
    shape = np.full(n, np.nan)
    width = np.full(n, np.nan)
    variable = np.flatnonzero(rng.random(n) < cfg.variable_fraction)
    draw = rng.random(variable.size)
    sinus, eclip, rrl = variable[draw < 0.6], variable[(draw >= 0.6) & (draw < 0.9)], variable[draw >= 0.9]
    kind[sinus], kind[eclip], kind[rrl] = "sinusoid", "eclipsing", "rrlyrae"
    period[sinus] = 10 ** rng.uniform(np.log10(0.05), np.log10(20.0), sinus.size)
    amplitude[sinus] = 10 ** rng.uniform(np.log10(0.005), np.log10(0.3), sinus.size)
    period[eclip] = 10 ** rng.uniform(np.log10(0.3), np.log10(10.0), eclip.size)
    amplitude[eclip] = rng.uniform(0.05, 0.8, eclip.size)
    shape[eclip] = rng.uniform(0.0, 0.7, eclip.size)
    width[eclip] = rng.uniform(0.02, 0.08, eclip.size)
    period[rrl] = rng.uniform(0.45, 0.75, rrl.size)
    amplitude[rrl] = rng.uniform(0.5, 1.2, rrl.size)
    t0[variable] = mjd_span[0] + rng.random(variable.size) * np.nan_to_num(period[variable], nan=1.0)
    columns.update(variable_type=kind, var_period_d=period, var_amplitude_mag=amplitude, var_t0_mjd=t0, var_shape=shape, var_width=width)


def _add_transient(rng, columns, cfg: SkySimConfig, mjd_span, centre_ra: float, centre_dec: float) -> None:
    """One supernova-like transient (Bazin light curve) within 1 arcmin of the field centre. It peaks
    half-way through the simulated span but at least 10 days after its start, so even a short run
    sees it rise from faint."""
    ra, dec = tangent_to_sky(rng.uniform(-1, 1) / 60.0, rng.uniform(-1, 1) / 60.0, centre_ra, centre_dec)
    span = mjd_span[1] - mjd_span[0]
    extra = {
        "star_id": columns["star_id"].max(initial=0) + 1,
        "ra": ra,
        "dec": dec,
        "mag_g": cfg.transient_peak_mag + _TRANSIENT_PEAK_COLOUR["g"],
        "mag_r": cfg.transient_peak_mag + _TRANSIENT_PEAK_COLOUR["r"],
        "mag_i": cfg.transient_peak_mag + _TRANSIENT_PEAK_COLOUR["i"],
        "variable_type": "transient",
        "var_period_d": rng.uniform(2.0, 4.0),  # rise time
        "var_amplitude_mag": np.nan,
        "var_t0_mjd": mjd_span[0] + max(span / 2.0, 10.0),  # time of peak
        "var_shape": rng.uniform(15.0, 25.0),  # g-band decline time
        "var_width": np.nan,
    }
    for key, value in extra.items():
        columns[key] = np.append(columns[key], np.array([value], dtype=columns[key].dtype))


def _add_library_membership(rng, columns, cfg: SkySimConfig) -> None:
    n = len(columns["star_id"])
    listed = (columns["mag_r"] < cfg.library_limit_mag) & (columns["variable_type"] != "transient")
    listed &= rng.random(n) >= cfg.library_missing_fraction
    columns["in_library"] = listed
    source_id = np.where(listed, 3_400_000_000_000_000 + columns["star_id"] * 7919, 0)
    columns["library_source_id"] = np.where(listed, source_id, -1)


def library_errors(mag: np.ndarray) -> np.ndarray:
    """Gaia-XP-like synthetic-photometry errors: ~2 mmag floor, ~1.3% at 17, ~5% at 18.5."""
    return np.hypot(0.002, 0.012 * 10 ** (0.4 * (mag - 17.0)))


def make_library(rng: np.random.Generator, stars: StarField) -> dict[str, np.ndarray]:
    """The standard-star library as columns of the ``standard_library`` table."""
    c = stars.columns
    listed = c["in_library"]
    out: dict[str, np.ndarray] = {"source_id": c["library_source_id"][listed]}
    pos_error_mas = np.clip(0.05 * 10 ** (0.2 * (c["mag_r"][listed] - 13.0)), 0.02, 2.0)
    cos_dec = np.cos(np.radians(c["dec"][listed]))
    out["ra"] = c["ra"][listed] + rng.normal(0, 1, listed.sum()) * pos_error_mas / 3.6e6 / cos_dec
    out["dec"] = c["dec"][listed] + rng.normal(0, 1, listed.sum()) * pos_error_mas / 3.6e6
    out["pos_error_mas"] = pos_error_mas.astype(np.float32)
    for band in BANDS:
        true = c[f"mag_{band}"][listed]
        err = library_errors(true)
        out[f"mag_{band}"] = (true + rng.normal(0, 1, true.size) * err).astype(np.float32)
        out[f"mag_{band}_error"] = err.astype(np.float32)
    return out


def magnitudes_at(stars: StarField, band: str, mjd: float, index: np.ndarray | None = None) -> np.ndarray:
    """True magnitudes of (a subset of) the stars at time ``mjd`` in ``band``; 99 where a transient
    gives no light."""
    c = stars.columns
    idx = np.arange(stars.size) if index is None else index
    mag = c[f"mag_{band}"][idx].astype(float).copy()
    kind = c["variable_type"][idx]
    period, amp, t0 = c["var_period_d"][idx], c["var_amplitude_mag"][idx], c["var_t0_mjd"][idx]
    shape, width = c["var_shape"][idx], c["var_width"][idx]

    s = kind == "sinusoid"
    mag[s] += amp[s] * _PULSATOR_BAND_FACTOR[band] * np.sin(2 * np.pi * (mjd - t0[s]) / period[s])

    e = kind == "eclipsing"
    phase = np.mod((mjd - t0[e]) / period[e] + 0.5, 1.0) - 0.5  # primary eclipse at 0
    u1 = np.abs(phase) / width[e]
    u2 = np.abs(np.abs(phase) - 0.5) / width[e]
    mag[e] += amp[e] * np.clip(1 - u1**2, 0, None) + amp[e] * shape[e] * np.clip(1 - u2**2, 0, None)

    r = kind == "rrlyrae"
    ph = np.mod((mjd - t0[r]) / period[r], 1.0)  # phase 0: maximum light
    sawtooth = np.where(ph < 0.85, ph / 0.85, 1.0 - (ph - 0.85) / 0.15)  # slow fade, fast rise
    mag[r] += amp[r] * _RRLYRAE_BAND_FACTOR[band] * (sawtooth - 0.5)

    t = kind == "transient"
    if np.any(t):
        rise, peak, decline = period[t], t0[t], shape[t] * _TRANSIENT_DECLINE_FACTOR[band]
        ratio = decline / rise
        bazin_t0 = peak - rise * np.log(ratio - 1.0)

        def bazin(time):
            return np.exp(-(time - bazin_t0) / decline) / (1.0 + np.exp(-(time - bazin_t0) / rise))

        flux = bazin(mjd) / bazin(peak)
        with np.errstate(divide="ignore"):
            mag[t] = np.where(flux > 1e-6, mag[t] - 2.5 * np.log10(flux), 99.0)
    return mag
