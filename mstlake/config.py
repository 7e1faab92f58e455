"""Configuration: one frozen dataclass per stage, loaded from the TOML files in ``ingest/``.

Loading is strict: an unknown key, a missing key or a value of the wrong kind is an error that names
the file and the key, so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mstlake.paths import ConfigPaths, config_dir


class ConfigError(ValueError):
    """A configuration file is missing, malformed or holds a wrong value."""


# --------------------------------------------------------------------------------------------------
# Instrument: ingest/telescopes.toml


@dataclass(frozen=True)
class SiteConfig:
    name: str
    latitude_deg: float
    longitude_deg: float
    height_m: float
    utc_offset_hours: float


@dataclass(frozen=True)
class DetectorConfig:
    model: str
    shape: tuple[int, int]
    pixel_size_um: float
    pixel_scale_arcsec: float
    gain_e_per_adu: float
    read_noise_e: float
    saturation_adu: float
    adc_max_adu: int
    dark_current_e_per_s: float

    @property
    def area_cm2(self) -> float:
        return self.shape[0] * self.shape[1] * (self.pixel_size_um * 1e-4) ** 2


@dataclass(frozen=True)
class OpticsConfig:
    aperture_m: float
    focal_ratio: float
    efficiency: float


@dataclass(frozen=True)
class BandConfig:
    wavelength_angstrom: float
    width_angstrom: float
    filter_names: tuple[str, ...]


@dataclass(frozen=True)
class TelescopeConfig:
    band: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstrumentConfig:
    site: SiteConfig
    detector: DetectorConfig
    optics: OpticsConfig
    bands: dict[str, BandConfig]
    telescopes: dict[str, TelescopeConfig]

    def __post_init__(self) -> None:
        for name, telescope in self.telescopes.items():
            if telescope.band not in self.bands:
                raise ConfigError(f"telescope {name} has band {telescope.band!r}, not one of {sorted(self.bands)}")


# --------------------------------------------------------------------------------------------------
# Fields: ingest/fields/<name>.toml


@dataclass(frozen=True)
class ReferenceCatalogueConfig:
    """The field's reference catalogue: a Parquet, FITS-table or CSV file, or a HATS catalogue
    directory (read with lsdb, e.g. Gaia DR3), whose columns map onto the ``standard_library``
    schema (``columns``: our name -> the catalogue's name, for those that differ)."""

    path: str
    format: str = "auto"  # parquet, fits, csv, hats, or auto (from the name; a directory with HATS properties is hats)
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    margin_deg: float = 0.25  # beyond the field's footprint: pointing errors, rotation


@dataclass(frozen=True)
class FieldConfig:
    name: str
    centre_ra_deg: float
    centre_dec_deg: float
    width_deg: float
    height_deg: float
    telescopes: tuple[str, ...]
    raw_dir: str
    lake_dir: str
    aliases: tuple[str, ...] = ()
    centre_is_placeholder: bool = False
    reference: ReferenceCatalogueConfig | None = None


# --------------------------------------------------------------------------------------------------
# Pipeline stages: ingest/pipeline.toml


@dataclass(frozen=True)
class InventoryConfig:
    extensions: tuple[str, ...]
    stats_stride: int
    no_light_max_sky_e: float
    min_exptime_for_light_check_s: float
    airmass_range: tuple[float, float]
    scheduler: str
    workers: int

    def __post_init__(self) -> None:
        if self.scheduler not in ("threads", "processes", "synchronous"):
            raise ConfigError(f"inventory.scheduler must be threads, processes or synchronous, not {self.scheduler!r}")
        if self.stats_stride < 1:
            raise ConfigError("inventory.stats_stride must be >= 1")


@dataclass(frozen=True)
class CalibrationConfig:
    bias_clip_sigma: float
    frame_reject_sigma: float
    frame_noise_ratio_max: float
    min_bias_frames: int
    ps_std_threshold_adu: float
    ps_groups: int
    ps_min_frames: int
    hot_sigma: float
    dead_response_max: float
    flat_min_level_fraction: float
    flat_max_saturated_fraction: float
    flat_max_patchiness: float
    flat_max_star_fraction: float
    flat_smoothing_px: int
    flat_clip_sigma: float
    flat_window_nights: int
    flat_max_span_days: int
    track_pixel_sigma: float
    track_min_significance: float
    track_half_width_px: float
    track_mask_sigma: float
    track_core_half_width_px: float
    cosmic_min_snr: float
    cosmic_significance: float
    cosmic_grow_sigma: float
    cosmic_lacosmic_objlim: float
    row_block: int
    scheduler: str
    workers: int
    subtract_dark: bool

    def __post_init__(self) -> None:
        if self.scheduler not in ("threads", "processes", "synchronous"):
            raise ConfigError(f"calibration.scheduler must be threads, processes or synchronous, not {self.scheduler!r}")
        if self.ps_groups < 1 or self.ps_min_frames < 2 * self.ps_groups:
            raise ConfigError("calibration.ps_min_frames must allow at least two frames per group")
        if self.flat_smoothing_px < 3 or self.flat_smoothing_px % 2 == 0:
            raise ConfigError("calibration.flat_smoothing_px must be an odd number >= 3")


@dataclass(frozen=True)
class AstrometryConfig:
    detect_sigma: float  # sep detection threshold, in units of each pixel's noise
    min_area_px: int
    bright_sources: int  # brightest sources matched by asterisms
    scale_tolerance: float  # allowed pixel-scale error of the instrument config
    max_pointing_error_arcmin: float
    sip_degree: int
    match_radius_px: float  # first matching radius after the blind solve
    clip_sigma: float
    min_matches: int  # fewer matched stars after refinement: the frame is not solved
    scheduler: str
    workers: int


@dataclass(frozen=True)
class PhotometryConfig:
    psf_min_snr: float  # PSF stars: clean, isolated detections above this S/N ...
    psf_max_stars: int  # ... at most this many, the brightest
    psf_rebuild: bool  # build the ePSF again with every other star subtracted (crowded stars join)
    fit_position_min_snr: float  # PSF fits refine positions above this S/N; fainter stay put
    psf_iterations: int  # rounds of fitting every star with all the others subtracted
    forced_iterations: int  # the same for forced photometry at the catalogue positions
    forced_match_radius_px: float  # a detection this close to a catalogue position is that star
    blend_separation_fwhm: float  # catalogue stars closer than this (in FWHM) are fitted as one blend
    apcorr_max_stars: int  # stars (neighbours subtracted) for the growth curve and aperture correction
    aperture_correction: str  # "model": ePSF growth inside its extent + measured outer growth; "direct": fit of measured mag_ref - mag_best
    calibrator_max_error: float  # mag, in both the measurement and the library
    calibrator_max_chi2: float  # reduced chi^2 of the PSF fit
    zero_point_degree: int  # highest order of the zero-point surface (the data choose up to it)
    zero_point_clip_sigma: float
    cloudy_zero_point_rms: float  # mag: standards' scatter about the zero-point surface above this: cloudy

    def __post_init__(self) -> None:
        if self.aperture_correction not in ("model", "direct"):
            raise ConfigError(f"photometry.aperture_correction must be \"model\" or \"direct\", not {self.aperture_correction!r}")


@dataclass(frozen=True)
class ArchiveConfig:
    partition_order: int  # NESTED HEALPix order of the archive's data partitions
    lock_timeout_s: float  # how long a writer waits for another writer before giving up
    association_radius_arcsec: float = 1.0  # a detection joins the nearest object within this
    compact_after_files: int = 8  # a commit leaving a partition in more files than this compacts the archive (0: never)

    def __post_init__(self) -> None:
        if not 0 <= self.partition_order <= 13:
            raise ConfigError(f"archive.partition_order must be 0-13 (coarse pixels: every commit writes a file per pixel it touches), not {self.partition_order}")
        if not 0 < self.association_radius_arcsec <= 60:
            raise ConfigError(f"archive.association_radius_arcsec must be in (0, 60], not {self.association_radius_arcsec}")
        if self.compact_after_files < 0:
            raise ConfigError(f"archive.compact_after_files must be >= 0 (0: never compact on commit), not {self.compact_after_files}")


@dataclass(frozen=True)
class StackConfig:
    """Image stacks (``mstlake.stack``): the field grid's tiles, how frames are resampled and
    combined, and the Dask scheduler of the graph over tiles; ``[stack]`` in pipeline.toml."""

    method: str = "mean"  # "mean" (background-weighted, isolated values dropped) or "median"
    clip_sigma: float = 4.0  # a value this many noise units from both neighbours in value is dropped (0: never)
    clip_amplitude_fraction: float = 0.3  # of the neighbour's value, added to that noise (bright cores vary with seeing)
    resampling: str = "spline"  # "spline" (interpolating, flux-conserving) or "adaptive" (reproject, for coarser grids)
    weight_by_seeing: bool = True  # point-source weights: background weight x (median FWHM / frame FWHM)^2
    tile_px: int = 2048  # largest grid tile; a multiple of the stack cube's chunk (512)
    tile_memory_gb: float = 2.0  # resampled frames held for one tile: tiles shrink as frames grow in number
    margin_deg: float = 0.1  # the grid reaches this far beyond the field's width and height (pointing offsets)
    scene_detect_sigma: float = 1.2  # stack measurement: stars found on the image with the fitted ones subtracted, at this threshold (0: none)
    scene_passes: int = 1  # how many times they are looked for, each time with those found before fitted
    forced_iterations: int = 4  # of the stack's forced fit (photometry.forced_iterations on frames): crowded deep stacks converge slower
    background_without_stars: bool = True  # stack measurement: the background mapped again with the fitted stars subtracted
    forced_match_radius_px: float = 2.0  # of the stack's forced fit (photometry.forced_match_radius_px on frames): a detection this near a catalogue star is its own
    scheduler: str = "processes"  # Dask scheduler of the graph over tiles
    workers: int = 2

    def __post_init__(self) -> None:
        if self.method not in ("mean", "median"):
            raise ConfigError(f"stack.method must be 'mean' or 'median', not {self.method!r}")
        if self.resampling not in ("spline", "adaptive"):
            raise ConfigError(f"stack.resampling must be 'spline' or 'adaptive', not {self.resampling!r}")
        if self.clip_sigma < 0 or self.clip_amplitude_fraction < 0:
            raise ConfigError("stack.clip_sigma and stack.clip_amplitude_fraction must be >= 0")
        if not 512 <= self.tile_px <= 16384 or self.tile_px % 512:
            raise ConfigError(f"stack.tile_px must be a multiple of 512 in 512-16384, not {self.tile_px}")
        if self.tile_memory_gb <= 0:
            raise ConfigError(f"stack.tile_memory_gb must be positive, not {self.tile_memory_gb}")
        if self.forced_iterations < 1:
            raise ConfigError(f"stack.forced_iterations must be >= 1, not {self.forced_iterations}")
        if self.forced_match_radius_px <= 0:
            raise ConfigError(f"stack.forced_match_radius_px must be positive, not {self.forced_match_radius_px}")
        if self.scene_detect_sigma < 0 or self.scene_passes < 0:
            raise ConfigError(f"stack.scene_detect_sigma and stack.scene_passes must be >= 0, not {self.scene_detect_sigma} and {self.scene_passes}")
        if self.scheduler not in ("threads", "processes", "synchronous") or self.workers < 1:
            raise ConfigError(f"stack.scheduler must be threads, processes or synchronous with workers >= 1, not {self.scheduler!r} x {self.workers}")


@dataclass(frozen=True)
class MagfitConfig:
    """magfit (``mstlake.phot.magfit``): ensemble fitting of each frame's magnitudes to a master
    reference. Magnitudes and errors in mag; ``[magfit]`` in pipeline.toml."""

    enabled: bool = True  # store magfit magnitudes with the light-curve points

    position_degree: int = 2  # of the polynomial in detector position (0 = constant offset)
    magnitude_degree: int = 1  # of the polynomial in (mag_master - m0): 0, 1 or 2
    colour_term: bool = True  # fit a linear colour term when colours are given
    max_error: float = 0.03  # only stars with smaller errors on a frame enter its fit
    error_floor: float = 0.002  # added in quadrature to the errors: the brightest stars do not decide alone
    clip_sigma: float = 3.0  # residuals beyond this many robust (MAD) standard deviations, and errors, are clipped
    clip_iterations: int = 5  # fit-and-clip passes per frame and round
    min_stars: int = 20  # a frame with fewer good stars (matched to the master) is not corrected
    stars_per_parameter: int = 5  # the model loses terms until every term has this many stars
    min_frames: int = 3  # a star needs this many good measurements to get a master magnitude
    max_iterations: int = 10  # rounds of fit-to-master and master update
    tolerance: float = 1e-4  # convergence: rms change of the master between rounds

    def __post_init__(self):
        if self.position_degree < 0:
            raise ConfigError(f"magfit.position_degree must be >= 0, got {self.position_degree}")
        if self.magnitude_degree not in (0, 1, 2):
            raise ConfigError(f"magfit.magnitude_degree must be 0, 1 or 2, got {self.magnitude_degree}")
        if not self.max_error > 0 or self.error_floor < 0:
            raise ConfigError(f"max_error must be > 0 and error_floor >= 0, got {self.max_error} and {self.error_floor}")
        if not self.clip_sigma > 0 or self.clip_iterations < 1:
            raise ConfigError(f"clip_sigma must be > 0 and clip_iterations >= 1, got {self.clip_sigma} and {self.clip_iterations}")
        if self.min_stars < 1 or self.stars_per_parameter < 1 or self.min_frames < 1 or self.max_iterations < 1:
            raise ConfigError("min_stars, stars_per_parameter, min_frames and max_iterations must be >= 1")
        if not self.tolerance > 0:
            raise ConfigError(f"tolerance must be > 0, got {self.tolerance}")



@dataclass(frozen=True)
class PipelineConfig:
    inventory: InventoryConfig
    calibration: CalibrationConfig
    astrometry: AstrometryConfig
    photometry: PhotometryConfig
    archive: ArchiveConfig
    magfit: MagfitConfig = MagfitConfig()
    stack: StackConfig = StackConfig()


# --------------------------------------------------------------------------------------------------
# Simulator: ingest/simulate.toml


@dataclass(frozen=True)
class SkySimConfig:
    bright_limit_mag: float
    faint_limit_mag: float
    count_slope_per_mag: float
    stars_per_deg2_brighter_than_19: float
    library_limit_mag: float
    library_missing_fraction: float
    variable_fraction: float
    dark_sky_mag_arcsec2: dict[str, float]
    extinction_mag_per_airmass: dict[str, float]
    transient_peak_mag: float


@dataclass(frozen=True)
class ObservingSimConfig:
    start_night: int
    science_exptime_s: float
    max_airmass: float
    bias_per_night: int
    flats_per_night: int
    darks_per_night: int
    dark_exptime_s: float
    bad_flats_per_night: tuple[int, int]
    ps_series_frames: int
    cloudy_frame_fraction: float
    satellite_frame_fraction: float
    aircraft_frame_fraction: float
    cosmic_rays_per_cm2_per_min: float


@dataclass(frozen=True)
class OpticsSimConfig:
    seeing_fwhm_arcsec: tuple[float, float]
    psf_beta: tuple[float, float]
    distortion_corner_px: float
    pointing_error_arcmin: float
    pointing_jitter_arcmin: float
    scintillation: bool


@dataclass(frozen=True)
class TelescopeSimConfig:
    rotation_deg: float
    mirrored: bool
    header_dialect: str

    def __post_init__(self) -> None:
        if self.header_dialect not in ("nina", "maxim"):
            raise ConfigError(f"header_dialect must be 'nina' or 'maxim', not {self.header_dialect!r}")


@dataclass(frozen=True)
class SimulationConfig:
    sky: SkySimConfig
    observing: ObservingSimConfig
    optics: OpticsSimConfig
    telescopes: dict[str, TelescopeSimConfig]


# --------------------------------------------------------------------------------------------------
# Loading


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return build(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build the frozen dataclass ``cls`` from a parsed TOML table, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def load_instrument(directory: str | Path | None = None) -> InstrumentConfig:
    path = ConfigPaths(config_dir(directory)).telescopes
    return build(InstrumentConfig, read_toml(path), str(path))


def load_pipeline(directory: str | Path | None = None) -> PipelineConfig:
    path = ConfigPaths(config_dir(directory)).pipeline
    return build(PipelineConfig, read_toml(path), str(path))


def load_simulation(directory: str | Path | None = None) -> SimulationConfig:
    path = ConfigPaths(config_dir(directory)).simulate
    return build(SimulationConfig, read_toml(path), str(path))


def load_field(name: str, directory: str | Path | None = None) -> FieldConfig:
    paths = ConfigPaths(config_dir(directory))
    path = paths.field(name)
    if not path.is_file():
        known = [p.stem for p in paths.field_files()]
        raise ConfigError(f"no field {name!r}: {path} does not exist (known fields: {known})")
    return build(FieldConfig, read_toml(path), str(path))


def load_fields(directory: str | Path | None = None) -> dict[str, FieldConfig]:
    paths = ConfigPaths(config_dir(directory))
    return {p.stem: build(FieldConfig, read_toml(p), str(p)) for p in paths.field_files()}
