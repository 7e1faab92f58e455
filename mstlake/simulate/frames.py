"""One exposure, from the survey's truth to raw pixels and a header.

A ``Survey`` holds everything fixed for a simulated run (stars, each telescope's optics and detector,
each night's conditions); ``make_exposure`` turns one planned exposure into a uint16 image, its header
and its truth. Every random draw comes from a generator keyed by (seed, purpose, telescope, night,
sequence), so an exposure is the same whichever order or process makes it.

Photometry follows the paper's eq. (4): electrons/s from a star of AB magnitude m =
eta * pi (D/2)^2 * 10^(-0.4 (m + 48.6)) * (d_lambda / lambda) / h, with eta = 0.32 the efficiency at
the zenith, so above the atmosphere the rate is 10^(0.4 k) higher and a star at airmass X is dimmed by
10^(-0.4 k X). The sky has the same spectral bandwidth, brightens with airmass (X^0.6) and under
clouds; clouds are a patchy grey extinction (0.2-1.5 mag); clear nights have 1-3% transparency
changes. Scintillation follows Young's formula for a 30 cm aperture at 900 m.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from mstlake.astro import altaz_deg, airmass_from_altitude
from mstlake.config import FieldConfig, InstrumentConfig, SimulationConfig
from mstlake.paths import SimulationPaths
from mstlake.simulate import render
from mstlake.simulate.detector import DetectorTruth, collect, make_detector, read_out
from mstlake.simulate.headers import raw_filename, raw_header
from mstlake.simulate.optics import FrameGeometry, PsfField, distortion_terms
from mstlake.simulate.schedule import Exposure
from mstlake.simulate.sky import StarField, magnitudes_at, tangent_to_sky

_H_ERG_S = 6.62607015e-27
_AB_ZERO_FLUX = 10 ** (-0.4 * 48.6)  # erg/s/cm^2/Hz
_STAMP_MARGIN_PX = 40

# random-stream purposes
_TELESCOPE, _NIGHT, _EXPOSURE = 1, 2, 3


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def photon_rate_mag0(instrument: InstrumentConfig, band: str) -> float:
    """Electrons per second from an m_AB = 0 star at the zenith (the paper's eq. 4)."""
    b = instrument.bands[band]
    area = np.pi * (instrument.optics.aperture_m * 100 / 2) ** 2
    return instrument.optics.efficiency * area * _AB_ZERO_FLUX * (b.width_angstrom / b.wavelength_angstrom) / _H_ERG_S


def scintillation_sigma(airmass, exptime: float, aperture_cm: float, height_m: float):
    """Young (1967): relative flux scatter."""
    return 0.09 * aperture_cm ** (-2.0 / 3.0) * np.asarray(airmass) ** 1.75 * np.exp(-height_m / 8000.0) / np.sqrt(2.0 * max(exptime, 1e-3))


@dataclass(frozen=True)
class TelescopeModel:
    name: str
    index: int
    band: str
    dialect: str
    axis_x: float
    axis_y: float
    rotation_deg: float
    mirrored: bool
    distortion: tuple[float, float, float, float]
    norm_radius: float
    detector: DetectorTruth


@dataclass(frozen=True)
class NightConditions:
    night: int
    index: int
    pointing_offset_arcmin: tuple[float, float]  # (east, north), per telescope via the key below
    rotation_drift_deg: float
    sky_offset_mag: float
    transparency: float
    transparency_wiggle: float
    seeing_median_arcsec: float


@dataclass(frozen=True)
class Survey:
    seed: int
    instrument: InstrumentConfig
    sim: SimulationConfig
    field: FieldConfig
    shape: tuple[int, int]
    stars: StarField
    telescopes: dict[str, TelescopeModel]
    nights: dict[tuple[str, int], NightConditions]
    star_xyz: np.ndarray = field(repr=False)  # unit vectors of the stars, for fast cone cuts

    @property
    def pixel_scale(self) -> float:
        return self.instrument.detector.pixel_scale_arcsec


def build_survey(
    *, seed: int, instrument: InstrumentConfig, sim: SimulationConfig, field_cfg: FieldConfig, telescopes: list[str], nights: list[int], scale: float
) -> Survey:
    full = instrument.detector.shape
    shape = (max(int(round(full[0] * scale)), 64), max(int(round(full[1] * scale)), 64))
    ny, nx = shape
    pix = instrument.detector.pixel_scale_arcsec / 3600.0
    margin = 4 * sim.optics.pointing_error_arcmin / 60.0 + 0.05
    side = np.hypot(nx, ny) * pix + 2 * margin  # any camera rotation fits
    from mstlake.astro import night_to_mjd_local_noon
    from mstlake.simulate.sky import make_star_field

    span = (night_to_mjd_local_noon(nights[0], instrument.site.utc_offset_hours), night_to_mjd_local_noon(nights[-1], instrument.site.utc_offset_hours) + 1.0)
    stars = make_star_field(rng_for(seed, 0), centre_ra=field_cfg.centre_ra_deg, centre_dec=field_cfg.centre_dec_deg, width_deg=side, height_deg=side, cfg=sim.sky, mjd_span=span)
    ra, dec = np.radians(stars.columns["ra"]), np.radians(stars.columns["dec"])
    xyz = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)

    norm = float(np.hypot(nx, ny) / 2)
    models: dict[str, TelescopeModel] = {}
    conditions: dict[tuple[str, int], NightConditions] = {}
    for name in telescopes:
        t_index = int(name.lstrip("MST")) if name.startswith("MST") else len(models) + 10
        rng = rng_for(seed, _TELESCOPE, t_index)
        tel_sim = sim.telescopes[name]
        axis_x = (nx - 1) / 2 + rng.normal(0, 0.03) * nx
        axis_y = (ny - 1) / 2 + rng.normal(0, 0.03) * ny
        corner_rho = max(np.hypot(cx - axis_x, cy - axis_y) for cx in (0, nx - 1) for cy in (0, ny - 1)) / norm
        models[name] = TelescopeModel(
            name=name,
            index=t_index,
            band=instrument.telescopes[name].band,
            dialect=tel_sim.header_dialect,
            axis_x=float(axis_x),
            axis_y=float(axis_y),
            rotation_deg=tel_sim.rotation_deg,
            mirrored=tel_sim.mirrored,
            distortion=distortion_terms(rng, sim.optics.distortion_corner_px, corner_rho),
            norm_radius=norm,
            detector=make_detector(rng, shape, axis_xy=(axis_x, axis_y), n_nights=len(nights), full_shape=full),
        )
        for i, night in enumerate(nights):
            nrng = rng_for(seed, _NIGHT, t_index, i)
            site_rng = rng_for(seed, _NIGHT, 0, i)  # weather is shared by the three telescopes
            lo, hi = sim.optics.seeing_fwhm_arcsec
            conditions[(name, night)] = NightConditions(
                night=night,
                index=i,
                pointing_offset_arcmin=tuple(nrng.normal(0, sim.optics.pointing_error_arcmin, 2)),
                rotation_drift_deg=float(nrng.normal(0, 0.02)),
                sky_offset_mag=float(site_rng.normal(0, 0.15)),
                transparency=float(site_rng.uniform(0.95, 1.0)),
                transparency_wiggle=float(site_rng.uniform(0.005, 0.03)),
                seeing_median_arcsec=float(site_rng.uniform(lo + 0.2, hi - 0.4)),
            )
    return Survey(seed=seed, instrument=instrument, sim=sim, field=field_cfg, shape=shape, stars=stars, telescopes=models, nights=conditions, star_xyz=xyz)


@dataclass
class ExposureResult:
    data: np.ndarray
    header: fits.Header
    filename: str
    truth: dict
    frame_stars: dict | None = None
    artefacts: dict | None = None


def _empty_truth(survey: Survey, exposure: Exposure, tel: TelescopeModel, filename: str) -> dict:
    ny, nx = survey.shape
    keys = [
        "commanded_ra", "commanded_dec", "axis_ra", "axis_dec", "axis_x", "axis_y", "rotation_deg", "mirrored", "pixel_scale_arcsec",
        "distortion_k1", "distortion_k2", "distortion_p1", "distortion_p2", "seeing_fwhm_arcsec", "psf_beta", "psf_ellipticity",
        "psf_angle_deg", "sky_e_per_pix", "airmass", "transparency", "extinction_k", "zero_point_mag", "cloud_mag_mean",
        "scintillation_sigma", "flat_level_adu",
    ]
    row = dict.fromkeys(keys)
    row.update(
        file=SimulationPaths.frame_relpath(exposure.night, tel.name, filename),
        stem=filename.rsplit(".", 1)[0],
        kind=exposure.kind,
        bad_flat=exposure.bad_flat,
        telescope=tel.name,
        band=tel.band,
        night=exposure.night,
        mjd=exposure.mjd_mid,
        exptime=exposure.exptime,
        nx=nx,
        ny=ny,
        cloudy=False,
        n_satellites=0,
        n_aircraft=0,
        n_cosmic_rays=0,
    )
    return row


def make_exposure(survey: Survey, exposure: Exposure, *, no_light: bool = False) -> ExposureResult:
    """Simulate one exposure. ``no_light`` makes a science frame taken with the dome closed."""
    tel = survey.telescopes[exposure.telescope]
    inst = survey.instrument
    rng = rng_for(survey.seed, _EXPOSURE, tel.index, exposure.night_index, exposure.sequence, int(no_light))
    filename = raw_filename(tel.dialect, kind=exposure.kind, telescope=tel.name, band=tel.band, mjd_start=exposure.mjd_start, exptime=exposure.exptime, sequence=exposure.sequence, utc_offset_hours=inst.site.utc_offset_hours)
    truth = _empty_truth(survey, exposure, tel, filename)
    night = survey.nights[(tel.name, exposure.night)]
    result = ExposureResult(data=None, header=None, filename=filename, truth=truth)

    site = inst.site
    commanded = (survey.field.centre_ra_deg, survey.field.centre_dec_deg)
    axis_alt = None
    if exposure.kind in ("science", "flat"):
        _, axis_alt = altaz_deg(commanded[0], commanded[1], exposure.mjd_mid, site.latitude_deg, site.longitude_deg)
        axis_alt = float(axis_alt)

    if exposure.kind in ("bias", "dark"):
        electrons = collect(rng, np.zeros(survey.shape), tel.detector, exposure.exptime)
        if exposure.kind == "dark":
            n_cr = _cosmic_count(rng, survey, exposure.exptime)
            cosmic = np.zeros(survey.shape)
            render.add_cosmic_rays(rng, cosmic, n_cr, pixel_um=inst.detector.pixel_size_um)
            electrons += cosmic
            truth["n_cosmic_rays"] = n_cr
            result.artefacts = _sparse_artefacts(None, cosmic)
        result.data, truth["bias_level_adu"] = read_out(rng, electrons, tel.detector, inst.detector)
        header_pointing = (None, None)
    elif exposure.kind == "flat":
        flat = tel.detector.pixel_response(night.index)
        result.data, header_pointing = _flat(rng, survey, exposure, tel, night, flat, truth, axis_alt)
    else:
        flat = tel.detector.pixel_response(night.index)
        result.data, header_pointing = _science(rng, survey, exposure, tel, night, flat, truth, result, axis_alt, no_light=no_light)

    airmass_hdr = float(airmass_from_altitude(axis_alt)) if axis_alt is not None and axis_alt > 0 else None
    result.header = raw_header(
        tel.dialect,
        kind=exposure.kind,
        telescope=tel.name,
        band=tel.band,
        mjd_start=exposure.mjd_start,
        exptime=exposure.exptime,
        ra=header_pointing[0],
        dec=header_pointing[1],
        airmass=airmass_hdr if exposure.kind in ("science", "flat") else None,
        altitude=axis_alt,
        object_name=survey.field.name if exposure.kind == "science" else None,
        ccd_temp=-10.0 + float(rng.normal(0, 0.05)),
        site=site,
        detector=inst.detector,
    )
    return result


def _linear_gradient(rng, shape, amplitude: float) -> np.ndarray:
    """1 + a linear ramp of the given peak-to-peak amplitude in a random direction."""
    ny, nx = shape
    direction = rng.uniform(0, 2 * np.pi)
    ramp_x = (np.arange(nx) / nx - 0.5) * (amplitude * np.cos(direction))
    ramp_y = (np.arange(ny) / ny - 0.5) * (amplitude * np.sin(direction))
    return 1.0 + ramp_y[:, None] + ramp_x[None, :]


def _cosmic_count(rng, survey: Survey, exptime: float) -> int:
    ny, nx = survey.shape
    area_cm2 = ny * nx * (survey.instrument.detector.pixel_size_um * 1e-4) ** 2
    return int(rng.poisson(survey.sim.observing.cosmic_rays_per_cm2_per_min * area_cm2 * exptime / 60.0))


def _flat(rng, survey: Survey, exposure: Exposure, tel: TelescopeModel, night: NightConditions, flat, truth, axis_alt):
    """A twilight flat on the field (dithered by ~2 arcmin between exposures), with a sky gradient."""
    inst = survey.instrument
    level_e = exposure.flat_level_adu * inst.detector.gain_e_per_adu
    sky = level_e * _linear_gradient(rng, survey.shape, rng.uniform(0.01, 0.04)) / float(np.mean(flat))
    if exposure.bad_flat == "cloudy":
        sky *= 1.0 + 0.06 * render.smooth_random_field(rng, survey.shape, (6, 9))
    dither = rng.normal(0, 2.0, 2)
    geometry, pointing = _geometry(survey, exposure, tel, night, rng, extra_offset=dither)
    x, y, idx, star_airmass = _stars_on_frame(survey, geometry, exposure.mjd_mid)
    electrons_expected = sky.copy()
    if idx.size:
        band = tel.band
        k = survey.sim.sky.extinction_mag_per_airmass[band]
        mags = magnitudes_at(survey.stars, band, exposure.mjd_mid, idx)
        x_star = np.where(np.isfinite(star_airmass), star_airmass, 3.0)
        flux = photon_rate_mag0(inst, band) * 10 ** (0.4 * k) * 10 ** (-0.4 * (mags + k * x_star)) * exposure.exptime
        bright = flux > 50.0
        psf = PsfField(fwhm_px=2.6 / survey.pixel_scale, beta=3.0, ellipticity=0.03, angle_deg=0.0, axis_x=tel.axis_x, axis_y=tel.axis_y, norm_radius=tel.norm_radius)
        a, b, ang, _ = psf.at(x[bright], y[bright])
        stars_e, _ = render.render_stars(survey.shape, x[bright], y[bright], flux[bright], a, b, ang, 3.0)
        electrons_expected += stars_e
    electrons = collect(rng, electrons_expected * flat, tel.detector, exposure.exptime)
    data, truth["bias_level_adu"] = read_out(rng, electrons, tel.detector, inst.detector)
    truth.update(flat_level_adu=exposure.flat_level_adu, sky_e_per_pix=float(np.mean(sky)), commanded_ra=pointing[0], commanded_dec=pointing[1])
    return data, pointing


def _geometry(survey: Survey, exposure: Exposure, tel: TelescopeModel, night: NightConditions, rng, extra_offset=(0.0, 0.0)):
    """The frame's true geometry and the pointing its header will claim."""
    sim = survey.sim
    commanded_ra, commanded_dec = survey.field.centre_ra_deg, survey.field.centre_dec_deg
    if extra_offset[0] or extra_offset[1]:
        commanded_ra, commanded_dec = (float(v[0]) for v in tangent_to_sky(np.array([extra_offset[0] / 60.0]), np.array([extra_offset[1] / 60.0]), commanded_ra, commanded_dec))
    off = np.array(night.pointing_offset_arcmin) + rng.normal(0, sim.optics.pointing_jitter_arcmin, 2)
    axis_ra, axis_dec = tangent_to_sky(np.array([off[0] / 60.0]), np.array([off[1] / 60.0]), commanded_ra, commanded_dec)
    k1, k2, p1, p2 = tel.distortion
    site = survey.instrument.site
    geometry = FrameGeometry(
        axis_ra=float(axis_ra[0]),
        axis_dec=float(axis_dec[0]),
        axis_x=tel.axis_x,
        axis_y=tel.axis_y,
        rotation_deg=tel.rotation_deg + night.rotation_drift_deg + float(rng.normal(0, 0.005)),
        mirrored=tel.mirrored,
        pixel_scale_arcsec=survey.pixel_scale * (1.0 + float(rng.normal(0, 3e-5))),
        k1=k1,
        k2=k2,
        p1=p1,
        p2=p2,
        norm_radius=tel.norm_radius,
        mjd=exposure.mjd_mid,
        latitude_deg=site.latitude_deg,
        longitude_deg=site.longitude_deg,
    )
    return geometry, (commanded_ra, commanded_dec)


def _stars_on_frame(survey: Survey, geometry: FrameGeometry, mjd: float):
    ny, nx = survey.shape
    ra0, dec0 = np.radians(geometry.axis_ra), np.radians(geometry.axis_dec)
    centre = np.array([np.cos(dec0) * np.cos(ra0), np.cos(dec0) * np.sin(ra0), np.sin(dec0)])
    radius = np.radians((np.hypot(nx, ny) / 2 + 2 * _STAMP_MARGIN_PX + max(abs(geometry.axis_x - nx / 2), abs(geometry.axis_y - ny / 2))) * geometry.pixel_scale_arcsec / 3600.0)
    near = np.flatnonzero(survey.star_xyz @ centre > np.cos(radius))
    ra, dec = survey.stars.columns["ra"][near], survey.stars.columns["dec"][near]
    x, y = geometry.sky_to_pixel(ra, dec)
    keep = (x > -_STAMP_MARGIN_PX) & (x < nx + _STAMP_MARGIN_PX) & (y > -_STAMP_MARGIN_PX) & (y < ny + _STAMP_MARGIN_PX)
    near, x, y = near[keep], x[keep], y[keep]
    _, alt = altaz_deg(ra[keep], dec[keep], mjd, geometry.latitude_deg, geometry.longitude_deg)
    return x, y, near, airmass_from_altitude(alt)


def _science(rng, survey: Survey, exposure: Exposure, tel: TelescopeModel, night: NightConditions, flat, truth, result: ExposureResult, axis_alt, *, no_light: bool):
    inst, sim = survey.instrument, survey.sim
    ny, nx = survey.shape
    band = tel.band
    k = sim.sky.extinction_mag_per_airmass[band]
    rate0 = photon_rate_mag0(inst, band) * 10 ** (0.4 * k)  # above the atmosphere
    pixel_area = survey.pixel_scale**2

    geometry, pointing = _geometry(survey, exposure, tel, night, rng)
    axis_airmass = float(airmass_from_altitude(axis_alt))
    lo, hi = sim.optics.seeing_fwhm_arcsec
    seeing = float(np.clip(night.seeing_median_arcsec * np.exp(rng.normal(0, 0.08)) * axis_airmass**0.6, lo, hi))
    beta = float(rng.uniform(*sim.optics.psf_beta))
    psf = PsfField(
        fwhm_px=seeing / survey.pixel_scale,
        beta=beta,
        ellipticity=float(rng.uniform(0.0, 0.06)),
        angle_deg=float(rng.uniform(0, 180)),
        axis_x=tel.axis_x,
        axis_y=tel.axis_y,
        norm_radius=tel.norm_radius,
        tilt_x=float(rng.normal(0, 0.03)),
    )
    phase = exposure.mjd_mid * 2 * np.pi / 0.31 + night.index
    transparency = night.transparency * (1.0 - night.transparency_wiggle * 0.5 * (1 + np.sin(phase)))
    cloudy = bool(rng.random() < sim.observing.cloudy_frame_fraction)
    cloud_map = np.zeros((4, 6))
    if cloudy:
        mean = rng.uniform(0.2, 1.5)
        cloud_map = np.clip(mean * (1 + 0.4 * rng.normal(0, 1, (4, 6))), 0, None)

    def cloud_at(x, y):
        from scipy import ndimage

        cy = np.clip(np.asarray(y) / ny * 4 - 0.5, 0, 3)
        cx = np.clip(np.asarray(x) / nx * 6 - 0.5, 0, 5)
        return ndimage.map_coordinates(cloud_map, [cy, cx], order=1, mode="nearest")

    x, y, idx, star_airmass = _stars_on_frame(survey, geometry, exposure.mjd_mid)
    mags = magnitudes_at(survey.stars, band, exposure.mjd_mid, idx)
    star_cloud = cloud_at(x, y) if cloudy else np.zeros(x.size)
    flux = rate0 * 10 ** (-0.4 * (mags + k * star_airmass + star_cloud)) * transparency * exposure.exptime
    flux = np.where(np.isfinite(flux), flux, 0.0)
    aperture_cm = inst.optics.aperture_m * 100
    scint = np.zeros(x.size)
    if sim.optics.scintillation:
        scint = scintillation_sigma(np.nan_to_num(star_airmass, nan=3.0), exposure.exptime, aperture_cm, inst.site.height_m)
    scint_factor = np.clip(1.0 + scint * rng.normal(0, 1, x.size), 0.5, 1.5)
    a, b, ang, fwhm = psf.at(x, y)
    stars_e, peak = render.render_stars(survey.shape, x, y, flux * scint_factor, a, b, ang, beta)

    sky_mag = sim.sky.dark_sky_mag_arcsec2[band] + night.sky_offset_mag
    sky_level = rate0 * 10 ** (-0.4 * (sky_mag + k)) * pixel_area * exposure.exptime * axis_airmass**0.6
    sky = sky_level * _linear_gradient(rng, survey.shape, rng.uniform(0.005, 0.02))
    if cloudy:
        big = render.smooth_random_field(rng, survey.shape, (4, 6))
        sky *= 1.0 + 0.3 * float(cloud_map.mean()) * (1 + 0.3 * big)
    sky_noise_e = float(np.sqrt(sky_level + (inst.detector.read_noise_e) ** 2))

    tracks = None
    n_sat = int(rng.random() < sim.observing.satellite_frame_fraction) * int(1 + rng.poisson(0.2))
    n_air = int(rng.random() < sim.observing.aircraft_frame_fraction)
    if n_sat or n_air:
        tracks = np.zeros(survey.shape)
        for _ in range(n_sat):
            render.add_satellite(rng, tracks, sky_noise_e=sky_noise_e)
        for _ in range(n_air):
            render.add_aircraft(rng, tracks, sky_noise_e=sky_noise_e)

    light = stars_e + sky + (tracks if tracks is not None else 0.0)
    if no_light:
        light = np.zeros(survey.shape)
    electrons = collect(rng, light * flat, tel.detector, exposure.exptime)
    n_cr = _cosmic_count(rng, survey, exposure.exptime)
    cosmic = np.zeros(survey.shape)
    render.add_cosmic_rays(rng, cosmic, n_cr, pixel_um=inst.detector.pixel_size_um)
    electrons += cosmic
    data, truth["bias_level_adu"] = read_out(rng, electrons, tel.detector, inst.detector)

    cloud_mean = float(cloud_map.mean()) if cloudy else 0.0
    truth.update(
        commanded_ra=pointing[0], commanded_dec=pointing[1], axis_ra=geometry.axis_ra, axis_dec=geometry.axis_dec, axis_x=geometry.axis_x,
        axis_y=geometry.axis_y, rotation_deg=geometry.rotation_deg, mirrored=geometry.mirrored, pixel_scale_arcsec=geometry.pixel_scale_arcsec,
        distortion_k1=geometry.k1, distortion_k2=geometry.k2, distortion_p1=geometry.p1, distortion_p2=geometry.p2,
        seeing_fwhm_arcsec=seeing, psf_beta=beta, psf_ellipticity=psf.ellipticity, psf_angle_deg=psf.angle_deg,
        sky_e_per_pix=0.0 if no_light else float(sky_level), airmass=axis_airmass, transparency=float(transparency), extinction_k=k,
        zero_point_mag=float(2.5 * np.log10(rate0 * transparency) - k * axis_airmass - cloud_mean), cloudy=cloudy, cloud_mag_mean=cloud_mean,
        scintillation_sigma=float(scintillation_sigma(axis_airmass, exposure.exptime, aperture_cm, inst.site.height_m)) if sim.optics.scintillation else 0.0,
        n_satellites=n_sat, n_aircraft=n_air, n_cosmic_rays=n_cr,
    )
    on = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    if not no_light:
        result.frame_stars = {
            "star_id": survey.stars.columns["star_id"][idx[on]],
            "x": x[on],
            "y": y[on],
            "mag": mags[on],
            "airmass": star_airmass[on],
            "flux_e": flux[on],
            "scintillation_factor": scint_factor[on],
            "fwhm_px": fwhm[on],
            "peak_e": peak[on] / scint_factor[on],
        }
    result.artefacts = _sparse_artefacts(None if no_light else tracks, cosmic)
    return data, pointing


def _sparse_artefacts(tracks, cosmic) -> dict:
    track_img = tracks if tracks is not None else 0.0
    touched = (cosmic > 0) | ((tracks > 0.01) if tracks is not None else False)
    rows, cols = np.nonzero(touched)
    return {
        "x": cols.astype(np.int32),
        "y": rows.astype(np.int32),
        "track_e": (track_img[rows, cols] if tracks is not None else np.zeros(rows.size)).astype(np.float32),
        "cosmic_e": cosmic[rows, cols].astype(np.float32),
    }
