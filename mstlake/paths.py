"""Every path mstlake reads or writes is formed here and nowhere else.

Three trees matter:

* the **configuration** (``ingest/``) and **schemas** (``schemas/``) that ship with the code;
* a **lake** (``LakePaths``): tables, cubes and everything the pipeline produces;
* a **simulation** (``SimulationPaths``): raw FITS frames laid out as the camera PCs write them, with
  the simulator's truth in a sibling directory that the pipeline never reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The shipped copy of a top-level resource directory (``"ingest"`` or ``"schemas"``).

    A source checkout (editable install) has it at the repository top; a wheel carries it inside the
    package under ``_bundled/``.
    """
    for candidate in (_PACKAGE_DIR.parent / name, _PACKAGE_DIR / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mstlake resource directory {name!r} not found next to {_PACKAGE_DIR}")


def config_dir(explicit: str | Path | None = None) -> Path:
    """The configuration directory: ``explicit`` if given, else ``./ingest`` when the current
    directory holds one (a user's edited copy), else the shipped defaults."""
    if explicit is not None:
        path = Path(explicit)
        if not (path / "telescopes.toml").is_file():
            raise FileNotFoundError(f"{path} is not an mstlake config directory (no telescopes.toml)")
        return path
    local = Path.cwd() / "ingest"
    if (local / "telescopes.toml").is_file() and (local / "pipeline.toml").is_file():
        return local
    return bundled_dir("ingest")


def schema_file(table: str) -> Path:
    return bundled_dir("schemas") / f"{table}.toml"


def schema_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir("schemas").glob("*.toml"))


@dataclass(frozen=True)
class ConfigPaths:
    root: Path

    @property
    def telescopes(self) -> Path:
        return self.root / "telescopes.toml"

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline.toml"

    @property
    def simulate(self) -> Path:
        return self.root / "simulate.toml"

    def field(self, name: str) -> Path:
        return self.root / "fields" / f"{name}.toml"

    def field_files(self) -> list[Path]:
        return sorted((self.root / "fields").glob("*.toml"))


@dataclass(frozen=True)
class LakePaths:
    """Layout of a lake. Tables are single Parquet files for now; the archive issue moves them to
    HEALPix-partitioned datasets behind the same names."""

    root: Path

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    def table(self, name: str) -> Path:
        return self.tables_dir / f"{name}.parquet"

    @property
    def frames_table(self) -> Path:
        return self.table("frames")

    @property
    def quarantine_table(self) -> Path:
        return self.table("quarantine")

    @property
    def calibration_log_table(self) -> Path:
        return self.table("calibration_log")

    @property
    def astrometry_table(self) -> Path:
        return self.table("astrometry")

    @property
    def photometry_table(self) -> Path:
        return self.table("photometry")

    @property
    def sources_dir(self) -> Path:
        return self.tables_dir / "sources"

    @property
    def forced_dir(self) -> Path:
        return self.tables_dir / "forced_photometry"

    @property
    def sources_pattern(self) -> str:
        """A glob that matches every per-night ``sources`` file (for DuckDB's read_parquet)."""
        return str(self.sources_dir / "*" / "*" / "*.parquet")

    def sources_file(self, field: str, band: str, night: int) -> Path:
        """Every detection on the calibrated frames of one field, band and night (Parquet)."""
        return self.sources_dir / field / band / f"{night}.parquet"

    def forced_file(self, field: str, band: str, night: int) -> Path:
        """Forced photometry of the reference stars on one field, band and night (Parquet)."""
        return self.forced_dir / field / band / f"{night}.parquet"

    @property
    def archive_dir(self) -> Path:
        """The light-curve archive (DuckLake): its catalogue of snapshots, its data files, its writer lock."""
        return self.root / "archive"

    @property
    def archive_catalogue(self) -> Path:
        """The archive's snapshot catalogue (SQLite), kept outside the data directory."""
        return self.archive_dir / "catalogue.sqlite"

    @property
    def archive_data(self) -> Path:
        """The archive's Parquet data files, laid out <schema>/<table>/healpix_partition=<pixel>/ by DuckLake."""
        return self.archive_dir / "data"

    @property
    def archive_writer_lock(self) -> Path:
        return self.archive_dir / "writer.lock"

    @property
    def archive_writer_active(self) -> Path:
        """Present while a writer works: found by the next writer, it means the last one died
        (its uncommitted data files must go)."""
        return self.archive_dir / "writer.active"

    def reference_catalogue(self, field: str) -> Path:
        """The field's reference catalogue, cut to the field with a margin (Parquet)."""
        return self.root / "reference" / f"{field}.parquet"

    def cube(self, field: str, band: str, night: int) -> Path:
        """Calibrated frames of one field, band and night (Zarr v3)."""
        return self.root / "cubes" / field / band / f"{night}.zarr"

    def stack(self, field: str, band: str, name: str) -> Path:
        """An image stack of a field and band (Zarr v3); ``name`` says which frames (e.g. a night)."""
        return self.root / "stacks" / field / band / f"{name}.zarr"

    def stack_fits(self, field: str, band: str, name: str) -> Path:
        """The same stack as FITS (image, variance, count and mask HDUs with the grid's WCS)."""
        return self.root / "stacks" / field / band / f"{name}.fits"

    def field_cubes(self, field: str | None = None) -> list[tuple[str, str, int, Path]]:
        """The calibrated cubes in the lake (of one field, or all): (field, band, night, path)."""
        found = sorted((self.root / "cubes").glob(f"{field or '*'}/*/*.zarr"))
        return [(p.parent.parent.name, p.parent.name, int(p.stem), p) for p in found]

    def masters(self, telescope: str, night: int) -> Path:
        return self.root / "masters" / telescope / f"{night}.zarr"

    def masters_stores(self) -> list[Path]:
        """Every night's masters in the lake."""
        return sorted((self.root / "masters").glob("*/*.zarr"))

    @property
    def releases_dir(self) -> Path:
        return self.root / "releases"

    def release_lake(self, name: str) -> LakePaths:
        """A reprocessed data release (``mstlake reprocess``): a whole lake of its own, inside this one."""
        return LakePaths(self.releases_dir / name)

    def release_lakes(self) -> list[LakePaths]:
        """The lakes of the reprocessed releases, finished or not (a finished one has its manifest)."""
        return [LakePaths(p) for p in sorted(self.releases_dir.glob("*")) if p.is_dir() and not p.name.startswith(".")]

    @property
    def release_manifest(self) -> Path:
        """In a release's lake: what it was made from and with; written last (no manifest: unfinished)."""
        return self.root / "release.json"

    @property
    def qa_dir(self) -> Path:
        """QA reports (``mstlake qa``): <field>-<night>.html and <field>.html."""
        return self.root / "qa"

    def masters_fits_dir(self, telescope: str, night: int) -> Path:
        return self.root / "masters" / telescope / f"{night}_fits"

    def masters_fits_file(self, telescope: str, night: int, product: str) -> Path:
        return self.masters_fits_dir(telescope, night) / f"{telescope}_{night}_{product}.fits"

    @staticmethod
    def staging(final: Path) -> Path:
        """A sibling directory to build ``final`` in before swapping it into place."""
        return final.with_name(f".{final.name}.staging")

    @staticmethod
    def retired(final: Path) -> Path:
        """Where the previous version of ``final`` waits while the new one is swapped in."""
        return final.with_name(f".{final.name}.old")


@dataclass(frozen=True)
class SimulationPaths:
    """Raw frames under ``raw``: ``raw/<night>/<telescope>/<file>.fits``, as the MST hosts upload
    them. Truth under ``truth`` (never inside ``raw``, so an inventory of ``raw`` sees only what a
    telescope would have produced)."""

    raw: Path
    truth: Path

    @classmethod
    def beside(cls, raw: str | Path, truth: str | Path | None = None) -> SimulationPaths:
        raw = Path(raw)
        return cls(raw=raw, truth=Path(truth) if truth is not None else raw.parent / f"{raw.name}-truth")

    @staticmethod
    def frame_relpath(night: int, telescope: str, filename: str) -> str:
        """Where a camera host puts a frame, relative to the raw directory."""
        return f"{night}/{telescope}/{filename}"

    @staticmethod
    def backup_relpath(night: int, filename: str) -> str:
        """Where an observer's stray copy of a frame ends up (a duplicate for the inventory)."""
        return f"{night}/backup/{filename}"

    @staticmethod
    def stem(raw_path: str | Path) -> str:
        """A raw file's name without its FITS and compression extensions: the key of its truth."""
        return Path(raw_path).name.split(".fit")[0]

    def raw_file(self, relpath: str) -> Path:
        return self.raw / relpath

    @property
    def standard_library(self) -> Path:
        """The simulated Gaia-XP-like standard star library (the pipeline's reference catalogue)."""
        return self.truth / "standard_library.parquet"

    @property
    def stars(self) -> Path:
        return self.truth / "stars.parquet"

    @property
    def frames(self) -> Path:
        return self.truth / "frames.parquet"

    def frame_stars(self, stem: str) -> Path:
        return self.truth / "frame_stars" / f"{stem}.parquet"

    def frame_artefacts(self, stem: str) -> Path:
        return self.truth / "artefacts" / f"{stem}.parquet"

    def static_map(self, telescope: str, name: str) -> Path:
        return self.truth / "static" / telescope / f"{name}.fits"

    def nightly_flat(self, telescope: str, night: int) -> Path:
        return self.truth / "static" / telescope / f"pixel_response_{night}.fits"

    @property
    def manifest(self) -> Path:
        return self.truth / "simulation.json"


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def simulation(self) -> SimulationPaths:
        # the truth beside the raw frames, where ingest/fields/f02.toml expects the reference catalogue
        return SimulationPaths.beside(self.root / "raw" / "f02")

    @property
    def lake(self) -> LakePaths:
        return LakePaths(self.root / "lake")


def resolve_against(base: Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path
