"""What each telescope exposes, and when: one night of an MST observing plan.

Times follow the Sun at the site (ERFA ephemeris): 10 bias frames just before sunset, ~20 twilight
flats while the Sun is 3-8 deg below the horizon (exposure times set to reach ~20000 ADU in the
darkening sky, so they lengthen through the series), a few darks, then science frames spread evenly
(with jitter) over the part of the night when the Sun is below -12 deg and the field is below the
airmass limit. On the first night a series of bias frames for the pepper-and-salt map follows the
morning twilight. The three telescopes observe the same plan a few seconds apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstlake.astro import airmass, night_to_mjd_local_noon, sun_altitude_deg
from mstlake.config import ObservingSimConfig, SiteConfig

_MINUTE = 1.0 / 1440.0


@dataclass(frozen=True)
class Exposure:
    night: int
    night_index: int
    telescope: str
    kind: str  # bias, dark, flat, science
    mjd_start: float
    exptime: float
    sequence: int  # per telescope and night
    bad_flat: str | None = None  # faint, cloudy, saturated
    flat_level_adu: float | None = None
    ps_series: bool = False

    @property
    def mjd_mid(self) -> float:
        return self.mjd_start + self.exptime / 2.0 / 86400.0


def _grid(night: int, site: SiteConfig):
    noon = night_to_mjd_local_noon(night, site.utc_offset_hours)
    t = noon + np.arange(0, 1.0, 2 * _MINUTE)
    return t, sun_altitude_deg(t, site.latitude_deg, site.longitude_deg)


def _crossing(t, alt, level, *, evening: bool) -> float:
    idx = np.flatnonzero((alt[:-1] > level) & (alt[1:] <= level)) if evening else np.flatnonzero((alt[:-1] < level) & (alt[1:] >= level))
    if idx.size == 0:
        raise ValueError(f"the Sun never crosses {level} deg on this night at this site")
    i = idx[0] if evening else idx[-1]
    frac = (level - alt[i]) / (alt[i + 1] - alt[i])
    return float(t[i] + frac * (t[i + 1] - t[i]))


def plan_night(
    rng: np.random.Generator,
    *,
    night: int,
    night_index: int,
    telescope: str,
    telescope_index: int,
    science_frames: int,
    field_ra: float,
    field_dec: float,
    site: SiteConfig,
    cfg: ObservingSimConfig,
) -> list[Exposure]:
    t, alt = _grid(night, site)
    sunset = _crossing(t, alt, 0.0, evening=True)
    flats_start = _crossing(t, alt, -3.0, evening=True)
    dusk = _crossing(t, alt, -12.0, evening=True)
    dawn = _crossing(t, alt, -12.0, evening=False)
    stagger = telescope_index * 4.0 / 86400.0
    plan: list[Exposure] = []
    seq = 0

    def add(kind, mjd, exptime, **extra):
        nonlocal seq
        seq += 1
        plan.append(Exposure(night, night_index, telescope, kind, float(mjd + stagger), float(exptime), seq, **extra))

    for k in range(cfg.bias_per_night):
        add("bias", sunset - 20 * _MINUTE + k * 3.0 / 86400.0, 0.0)

    n_bad = int(rng.integers(cfg.bad_flats_per_night[0], cfg.bad_flats_per_night[1] + 1)) if cfg.flats_per_night > 2 else 0
    bad_slots = set(rng.choice(cfg.flats_per_night, size=n_bad, replace=False).tolist()) if n_bad else set()
    clock = flats_start
    for k in range(cfg.flats_per_night):
        level = float(rng.normal(20000, 2500))
        bad = None
        if k in bad_slots:
            bad = str(rng.choice(["faint", "cloudy", "saturated"]))
            level = {"faint": rng.uniform(1000, 2500), "saturated": rng.uniform(70000, 120000), "cloudy": level}[bad]
        # twilight fades ~ 1 mag per 5 deg of solar depression: exposures lengthen through the series
        exptime = float(np.clip(1.0 * 10 ** (0.4 * k * 0.25), 0.5, 30.0))
        add("flat", clock, exptime, bad_flat=bad, flat_level_adu=float(level))
        clock += (exptime + 8.0) / 86400.0

    clock += 2 * _MINUTE
    for _ in range(cfg.darks_per_night):
        add("dark", clock, cfg.dark_exptime_s)
        clock += (cfg.dark_exptime_s + 3.0) / 86400.0

    start = max(dusk, clock + 5 * _MINUTE)
    window = t[(t >= start) & (t <= dawn - cfg.science_exptime_s / 86400.0)]
    up = window[airmass(field_ra, field_dec, window, site.latitude_deg, site.longitude_deg) <= cfg.max_airmass]
    if up.size and science_frames > 0:
        cadence = max((up[-1] - up[0]) / science_frames, (cfg.science_exptime_s + 5.0) / 86400.0)
        times = up[0] + cadence * (np.arange(science_frames) + 0.5)
        times = times[times <= up[-1]]
        times += rng.uniform(-0.2, 0.2, times.size) * min(cadence, 10 * _MINUTE)
        for mjd in np.sort(times):
            add("science", mjd, cfg.science_exptime_s)

    if night_index == 0:
        for k in range(cfg.ps_series_frames):
            add("bias", dawn + 10 * _MINUTE + k * 3.0 / 86400.0, 0.0, ps_series=True)
    return plan
