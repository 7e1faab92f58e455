"""The true mapping from the sky to detector pixels, and the PSF across the field.

Sky to pixel, in the order light takes:

1. **Differential refraction**: each star is lifted by the refraction at its own altitude
   (Saemundsson's formula), relative to the optical axis (the mount points so that the axis sees its
   target). Across 2.3 deg at airmass 1.5 this squeezes the field by a few pixels along the vertical.
2. **Gnomonic projection** about the optical axis, then a camera rotation, an optional mirror flip and
   a plate scale that varies by ~3e-5 with focus.
3. **Optical distortion** about the optical axis, which is *off* the detector centre: Brown-Conrady
   radial (rho^3 and rho^5) plus tangential (decentring) terms, reaching ~1 px at the far corner. The
   rho^5 term and the off-centre axis mean no low-order polynomial (e.g. the pipeline's SIP) equals
   it exactly.

Pixel coordinates are 0-based with pixel centres at integers (numpy convention; FITS/WCS add 1).

PSF: an elliptical Moffat whose FWHM grows towards the field edge (+10% at rho = 1, with a small tilt
of the focal plane) and whose ellipticity is a frame-wide part (tracking, wind) plus optical
astigmatism growing as rho^2 and oriented tangentially.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstlake.astro import altaz_deg, radec_from_altaz_deg, refraction_deg


@dataclass(frozen=True)
class FrameGeometry:
    axis_ra: float
    axis_dec: float
    axis_x: float
    axis_y: float
    rotation_deg: float
    mirrored: bool
    pixel_scale_arcsec: float
    k1: float  # radial displacement at rho = 1 (pixels), rho^3 term
    k2: float  # rho^5 term
    p1: float  # tangential terms (pixels at rho = 1)
    p2: float
    norm_radius: float  # detector half-diagonal (pixels)
    mjd: float
    latitude_deg: float
    longitude_deg: float
    refraction: bool = True

    # -- sky -> pixel -------------------------------------------------------------------------
    def _apparent(self, ra, dec):
        if not self.refraction:
            return np.asarray(ra, float), np.asarray(dec, float)
        az, alt = altaz_deg(ra, dec, self.mjd, self.latitude_deg, self.longitude_deg)
        return radec_from_altaz_deg(az, alt + refraction_deg(alt), self.mjd, self.latitude_deg, self.longitude_deg)

    def sky_to_ideal(self, ra, dec):
        """Undistorted pixel offsets (u, v) from the optical axis."""
        ra_a, dec_a = self._apparent(ra, dec)
        ra0, dec0 = self._apparent(np.array([self.axis_ra]), np.array([self.axis_dec]))
        ra_r, dec_r = np.radians(ra_a), np.radians(dec_a)
        ra0, dec0 = np.radians(ra0[0]), np.radians(dec0[0])
        cos_c = np.sin(dec0) * np.sin(dec_r) + np.cos(dec0) * np.cos(dec_r) * np.cos(ra_r - ra0)
        xi = np.cos(dec_r) * np.sin(ra_r - ra0) / cos_c
        eta = (np.cos(dec0) * np.sin(dec_r) - np.sin(dec0) * np.cos(dec_r) * np.cos(ra_r - ra0)) / cos_c
        scale = np.radians(self.pixel_scale_arcsec / 3600.0)
        east = xi if self.mirrored else -xi  # unmirrored: north up puts east on the left
        theta = np.radians(self.rotation_deg)
        u = (np.cos(theta) * east - np.sin(theta) * eta) / scale
        v = (np.sin(theta) * east + np.cos(theta) * eta) / scale
        return u, v

    def distort(self, u, v):
        a, b = u / self.norm_radius, v / self.norm_radius
        r2 = a * a + b * b
        radial = self.k1 * r2 + self.k2 * r2 * r2
        du = a * radial + self.p1 * 2 * a * b + self.p2 * (r2 + 2 * a * a)
        dv = b * radial + self.p1 * (r2 + 2 * b * b) + self.p2 * 2 * a * b
        return u + du, v + dv

    def sky_to_pixel(self, ra, dec):
        u, v = self.distort(*self.sky_to_ideal(ra, dec))
        return self.axis_x + u, self.axis_y + v

    # -- pixel -> sky (numerical inverse) -----------------------------------------------------
    def pixel_to_sky(self, x, y, *, iterations: int = 6):
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        scale = self.pixel_scale_arcsec / 3600.0
        theta = np.radians(self.rotation_deg)
        # linear first guess, then Newton steps with a finite-difference Jacobian
        u, v = x - self.axis_x, y - self.axis_y
        east = np.cos(theta) * u + np.sin(theta) * v
        north = -np.sin(theta) * u + np.cos(theta) * v
        xi = (east if self.mirrored else -east) * scale
        cos_dec = np.cos(np.radians(self.axis_dec))
        ra = self.axis_ra + xi / cos_dec
        dec = self.axis_dec + north * scale
        h = 1e-5
        for _ in range(iterations):
            px, py = self.sky_to_pixel(ra, dec)
            pxa, pya = self.sky_to_pixel(ra + h, dec)
            pxd, pyd = self.sky_to_pixel(ra, dec + h)
            j11, j21 = (pxa - px) / h, (pya - py) / h
            j12, j22 = (pxd - px) / h, (pyd - py) / h
            det = j11 * j22 - j12 * j21
            ex, ey = x - px, y - py
            ra = ra + (j22 * ex - j12 * ey) / det
            dec = dec + (-j21 * ex + j11 * ey) / det
        return np.mod(ra, 360.0), dec

    @classmethod
    def from_truth(cls, row, *, latitude_deg: float, longitude_deg: float) -> "FrameGeometry":
        """The true mapping of a science frame from its ``truth_frames`` row (a mapping or a
        namedtuple/Series with those column names)."""
        get = row.get if hasattr(row, "get") else lambda key: getattr(row, key)
        return cls(
            axis_ra=float(get("axis_ra")), axis_dec=float(get("axis_dec")), axis_x=float(get("axis_x")), axis_y=float(get("axis_y")),
            rotation_deg=float(get("rotation_deg")), mirrored=bool(get("mirrored")), pixel_scale_arcsec=float(get("pixel_scale_arcsec")),
            k1=float(get("distortion_k1")), k2=float(get("distortion_k2")), p1=float(get("distortion_p1")), p2=float(get("distortion_p2")),
            norm_radius=float(np.hypot(get("nx"), get("ny")) / 2), mjd=float(get("mjd")), latitude_deg=latitude_deg, longitude_deg=longitude_deg,
        )

    def corner_distortion_px(self, nx: int, ny: int) -> float:
        """Largest distortion displacement at the detector corners."""
        corners_x = np.array([0, nx - 1, 0, nx - 1], float) - self.axis_x
        corners_y = np.array([0, 0, ny - 1, ny - 1], float) - self.axis_y
        du, dv = self.distort(corners_x, corners_y)
        return float(np.max(np.hypot(du - corners_x, dv - corners_y)))


def distortion_terms(rng: np.random.Generator, corner_px: float, corner_rho: float) -> tuple[float, float, float, float]:
    """k1, k2, p1, p2 in pixels such that the radial displacement at the far corner is ~corner_px."""
    sign = rng.choice([-1.0, 1.0])
    shape = corner_rho**3 * 0.75 + corner_rho**5 * 0.25
    k1 = sign * 0.75 * corner_px / shape
    k2 = sign * 0.25 * corner_px / shape
    p1, p2 = rng.normal(0, 0.08 * corner_px, 2)
    return float(k1), float(k2), float(p1), float(p2)


def moffat_alpha(fwhm_px, beta: float):
    """The Moffat core width of a profile with this FWHM."""
    return np.asarray(fwhm_px, float) / (2 * np.sqrt(2 ** (1 / beta) - 1))


@dataclass(frozen=True)
class PsfField:
    fwhm_px: float  # at the optical axis
    beta: float
    ellipticity: float  # frame-wide
    angle_deg: float  # frame-wide, from +x towards +y
    axis_x: float
    axis_y: float
    norm_radius: float
    fwhm_growth: float = 0.10  # relative FWHM increase at rho = 1
    tilt_x: float = 0.0  # relative FWHM gradient per norm_radius along x (focal plane tilt)
    astigmatism: float = 0.06  # tangential ellipticity at rho = 1

    def at(self, x, y):
        """Moffat parameters at pixel positions: alpha along the major and minor axes, the major
        axis angle (radians, from +x towards +y) and the FWHM (geometric mean of the axes)."""
        a = (np.asarray(x, float) - self.axis_x) / self.norm_radius
        b = (np.asarray(y, float) - self.axis_y) / self.norm_radius
        rho2 = a * a + b * b
        fwhm = self.fwhm_px * (1 + self.fwhm_growth * rho2 + self.tilt_x * a)
        psi = np.arctan2(b, a) + np.pi / 2  # tangential
        phi = np.radians(self.angle_deg)
        e1 = self.ellipticity * np.cos(2 * phi) + self.astigmatism * rho2 * np.cos(2 * psi)
        e2 = self.ellipticity * np.sin(2 * phi) + self.astigmatism * rho2 * np.sin(2 * psi)
        e = np.clip(np.hypot(e1, e2), 0, 0.5)
        angle = 0.5 * np.arctan2(e2, e1)
        alpha = moffat_alpha(fwhm, self.beta)
        return alpha / np.sqrt(1 - e), alpha * np.sqrt(1 - e), angle, fwhm
