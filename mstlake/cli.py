"""The ``mstlake`` command: a thin shell over functions in ``mstlake.pipeline``."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mstlake
from mstlake import config as cfg
from mstlake.paths import DemoPaths, LakePaths, SimulationPaths, resolve_against

console = Console()
err_console = Console(stderr=True)

CONFIG_OPTION = click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory with telescopes.toml, pipeline.toml, simulate.toml and fields/ (default: ./ingest if present, else the shipped defaults).",
)


READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "SET"}  # what mstlake sql runs (SET: variables and settings of its own connection)


def cluster_options(command):
    """--workers / --scheduler: run the command's Dask graphs on a distributed cluster."""
    command = click.option("--scheduler", "scheduler_address", default=None, metavar="ADDRESS", help="Run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786; `dask scheduler` and `dask worker` start one, dask-jobqueue on SLURM/PBS).")(command)
    return click.option("--workers", type=click.IntRange(1), default=None, help="Run on a local Dask cluster of this many worker processes (default: the local schedulers ingest/pipeline.toml names).")(command)


@contextlib.contextmanager
def _on_cluster(scheduler_address: str | None, workers: int | None):
    from mstlake.pipeline.execute import ClusterError, cluster

    if scheduler_address and workers:
        _fail("give --scheduler or --workers, not both")
    try:
        with cluster(scheduler_address=scheduler_address, workers=workers, console=err_console) as client:
            yield client
    except ClusterError as err:
        _fail(str(err))


def _field_lake(field_cfg, lake_dir: Path | None) -> LakePaths:
    """--lake, else the field's lake_dir (relative to the working directory)."""
    return LakePaths(Path(lake_dir) if lake_dir else resolve_against(Path.cwd(), field_cfg.lake_dir))


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(mstlake.__version__, prog_name="mstlake")
def main() -> None:
    """mstlake: the data lake and light-curve archive of the Mini-SiTian (MST) survey.

    Raw FITS frames go in (never modified); calibrated image cubes, HEALPix-partitioned catalogues
    and SQL light curves come out: simulate, inventory, ingest (calibration, astrometry,
    photometry, the archive), stack, sql, lightcurve, release, reprocess, releases, compact,
    export-hats. Start with
    `mstlake demo`.
    """


@main.command()
@click.option("--field", "field_name", default="f02", show_default=True, help="Field from ingest/fields/ to point at.")
@click.option("--nights", type=click.IntRange(1), default=2, show_default=True, help="Consecutive nights to simulate.")
@click.option("--frames-per-night", type=click.IntRange(0), default=10, show_default=True, help="Science frames per telescope and night (calibration frames come on top).")
@click.option("--telescopes", default="MST2,MST3", show_default=True, help="Comma-separated telescopes (MST1=i, MST2=g, MST3=r).")
@click.option("--scale", type=float, default=0.1, show_default=True, help="Detector size relative to the real 9576x6288 at the same pixel scale; 1 makes full 60-Mpx frames.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed: the same seed gives the same files.")
@click.option("--start-night", type=int, default=None, help="First night YYYYMMDD (default from simulate.toml).")
@click.option("--with-bad-files", is_flag=True, help="Also write broken inputs (truncated, not FITS, no DATE-OBS, wrong shape, all zero, duplicate, dome closed).")
@click.option("--out", "raw_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Raw directory to write (as RAW/<night>/<telescope>/*.fits).")
@click.option("--truth", "truth_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where the truth goes (default: a sibling RAW-truth directory).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Threads simulating exposures in parallel.")
@CONFIG_OPTION
def simulate(field_name, nights, frames_per_night, telescopes, scale, seed, start_night, with_bad_files, raw_dir, truth_dir, workers, config_dir):
    """Simulate MST raw data for a field, with its full truth.

    Writes bias, twilight flats, darks and science frames as the MST cameras do (uint16 FITS, N.I.N.A.
    or MaxIm DL headers, no WCS), plus the standard-star library and the truth (stars, per-frame
    geometry, PSF, sky, zero point, artefacts, static detector maps) beside them.
    """
    from mstlake.pipeline.simulate import SimulationRequest
    from mstlake.pipeline.simulate import simulate as run

    try:
        instrument, sim, field_cfg = cfg.load_instrument(config_dir), cfg.load_simulation(config_dir), cfg.load_field(field_name, config_dir)
    except (cfg.ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    request = SimulationRequest(field=field_name, nights=nights, frames_per_night=frames_per_night, telescopes=tuple(t.strip() for t in telescopes.split(",") if t.strip()), scale=scale, seed=seed, with_bad_files=with_bad_files, start_night=start_night)
    started = time.perf_counter()
    try:
        summary = run(request, SimulationPaths.beside(raw_dir, truth_dir), instrument=instrument, sim=sim, field_cfg=field_cfg, workers=workers)
    except ValueError as err:
        _fail(str(err))
    _print_simulation(summary, time.perf_counter() - started)


@main.command()
@click.argument("raw_dir", type=click.Path(path_type=Path))
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory to record the inventory in (created if needed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@CONFIG_OPTION
def inventory(raw_dir, lake_dir, quiet, config_dir):
    """Take inventory of every FITS file under RAW_DIR.

    Classifies each file by its header (never its name), records usable frames in the lake's `frames`
    table and unusable files in `quarantine` with the reason. Files are never modified, moved or
    deleted; re-running adds only what is new. Exits non-zero only when nothing usable was found.
    """
    report = _inventory(raw_dir, LakePaths(lake_dir), config_dir, progress=not quiet)
    _print_inventory(report)
    if not report.usable:
        err_console.print(f"[bold red]no usable frames found under {raw_dir}[/]")
        sys.exit(1)


@main.command()
@click.option("--field", "field_name", required=True, help="Field to ingest (a file in ingest/fields/).")
@click.option("--raw", "raw_dir", type=click.Path(path_type=Path), default=None, help="Raw directory (default: the field's raw_dir).")
@click.option("--lake", "lake_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Lake directory (default: the field's lake_dir).")
@click.option("--nights", default=None, help="Calibrate and measure these nights only: YYYYMMDD, comma-separated, or ranges FIRST-LAST (default: all; the inventory always reads the whole raw directory).")
@click.option("--force", is_flag=True, help="Calibrate and measure again nights already done; their rows in the archive are replaced in a new snapshot (earlier snapshots and releases keep the old ones).")
@click.option("--retry-failed", is_flag=True, help="Calibrate and measure again the frames that failed in an earlier run (their reasons are in the calibration log and the astrometry and photometry tables); their archive rows are replaced.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@cluster_options
@CONFIG_OPTION
def ingest(field_name, raw_dir, lake_dir, nights, force, retry_failed, quiet, workers, scheduler_address, config_dir):
    """Run every pipeline stage that exists on a field's raw data.

    Now: the inventory, then calibration (master bias, pepper-and-salt map, bad pixels, flats over
    +-5 nights, calibrated Zarr cubes with variance and masks), then per frame astrometry (blind
    solve and TAN-SIP against the field's reference catalogue) and photometry (an ePSF varying
    across the detector, PSF photometry of every detection with its neighbours subtracted, forced
    photometry of every reference star, 25 apertures with the aperture correction, a zero-point
    surface from the standards, cloudy frames flagged), and each night's light-curve points
    committed to the archive in one snapshot.

    Each night is measured as one Dask graph and committed before the next starts: a re-run (or a
    run after an interruption) measures only the frames not yet committed, so running it every
    morning adds the new nights.
    """
    from mstlake.lake.archive import ArchiveError

    try:
        with _on_cluster(scheduler_address, workers):
            report = _ingest(field_name, raw_dir, lake_dir, config_dir, progress=not quiet, force=force, retry_failed=retry_failed, nights=nights)
    except (ArchiveError, OSError) as err:  # disk full, permissions (LakeWriteError is an OSError)
        _fail(f"ingest stopped: {err}\nEvery night committed before stays as it was (a night is committed whole); run ingest again once the cause is fixed: it resumes where it stopped.")
    if not report.usable:
        sys.exit(1)


@main.command()
@click.option("--field", "field_name", required=True, help="Field (a file in ingest/fields/).")
@click.option("--band", type=click.Choice(["g", "r", "i"]), required=True, help="Band to stack.")
@click.option("--nights", default=None, help="Nights to stack: YYYYMMDD, comma-separated, or ranges FIRST-LAST (default: all).")
@click.option("--n", "first_n", type=click.IntRange(1), default=None, help="Only the first N frames (in time) of those nights.")
@click.option("--skip", type=click.IntRange(0), default=0, help="Pass over this many frames (in time) first: --n 64 --skip 64 stacks frames 65-128.")
@click.option("--include-cloudy", is_flag=True, help="Also stack frames flagged cloudy (left out by default; unsolved and uncalibrated frames always are).")
@click.option("--name", default=None, help="Name of the stack (default: <first night>[-<last night>]-n<frames>[-from<first frame>]).")
@click.option("--lake", "lake_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Lake directory (default: the field's lake_dir).")
@click.option("--no-measure", is_flag=True, help="Only make the stack; do not measure it into the archive's deep catalogue.")
@click.option("--force", is_flag=True, help="Measure again a stack the archive already holds, replacing its rows.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cluster_options
@CONFIG_OPTION
def stack(field_name, band, nights, first_n, skip, include_cloudy, name, lake_dir, no_measure, force, quiet, workers, scheduler_address, config_dir):
    """Stack calibrated frames of a field on its tangent-plane grid, and measure the stack.

    Frames (solved, flux-calibrated, not cloudy) are sky-subtracted, scaled to a common zero
    point, resampled through their TAN-SIP solutions (flux-conserving cubic splines) and combined
    with background and seeing weights, dropping values isolated from the rest (cosmic rays,
    tracks the masks missed), tile by tile as one Dask graph. Writes lake/stacks/<field>/<band>/<name>.zarr and .fits (image with
    WCS, VARIANCE, COUNT, MASK, FRAMES), then measures the stack like a frame (astrometric check,
    ePSF and aperture photometry, zero point, 5-sigma depth) into the archive's `stacks` and
    `stack_sources` tables (query them with `mstlake sql`).
    """
    from mstlake.astro import parse_nights
    from mstlake.pipeline import stack as pipeline

    try:
        field_cfg = cfg.load_field(field_name, config_dir)
    except (cfg.ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    lake = _field_lake(field_cfg, lake_dir)
    try:
        available = sorted({night for _, b, night, _ in lake.field_cubes(field_cfg.name) if b == band})
        selection = pipeline.FrameSelection(nights=parse_nights(nights, available), first_n=first_n, skip=skip, include_cloudy=include_cloudy)
    except ValueError as err:  # pipeline.StackError among them
        _fail(str(err))
    with _on_cluster(scheduler_address, workers):
        _stack_and_measure(field_cfg, lake, band, selection, config_dir, name=name, measure=not no_measure, replace=force, reference_base=Path.cwd(), progress=not quiet)


def _stack_and_measure(field_cfg, lake: LakePaths, band: str, selection, config_dir, *, name=None, measure: bool = True, replace: bool = False, reference_base: Path, progress: bool):
    from mstlake.lake.refcat import ReferenceCatalogueError, load_reference
    from mstlake.pipeline import stack as pipeline

    try:
        instrument, pipeline_cfg = cfg.load_instrument(config_dir), cfg.load_pipeline(config_dir)
    except (cfg.ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    started = time.perf_counter()
    try:
        result = pipeline.stack_field(lake, field_cfg, band, selection, instrument=instrument, cfg=pipeline_cfg.stack, name=name, progress=progress)
    except pipeline.StackError as err:
        _fail(str(err))
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(result.left_out.items())) or "none"
    console.print(f"stack [bold]{band} {result.name}[/]: {len(result.frames)} frames ({selection.describe()}; left out: {left_out}) on a {result.shape[1]}x{result.shape[0]} grid "
                  f"in {result.n_tiles} tiles of {result.tile_px} px, {time.perf_counter() - started:.1f} s\n[cyan]{result.store}[/]\n[cyan]{result.fits}[/]")
    if not measure:
        return result
    try:
        reference = load_reference(field_cfg, lake, base=reference_base)
    except ReferenceCatalogueError as err:
        _fail(f"the stack is made but cannot be measured: {err}")
    measured = pipeline.measure_stack(lake, result.store, reference.to_pandas(), instrument=instrument, astrometry_cfg=pipeline_cfg.astrometry, photometry_cfg=pipeline_cfg.photometry, stack_cfg=pipeline_cfg.stack, archive_cfg=pipeline_cfg.archive, replace=replace)
    row = measured.stack.to_pylist()[0]
    zp = "no zero point: " + str(row["reason"]) if row["zero_point_mag"] is None else f"zero point {row['zero_point_mag']:.3f} (rms {row['zero_point_rms_mag']:.3f}, {row['n_calibrators']} standards)"
    depth = "-" if row["depth_5sigma_mag"] is None else f"{row['depth_5sigma_mag']:.2f}"
    astrometry = "-" if row["rms_x_mas"] is None else f"{row['rms_x_mas']:.0f} / {row['rms_y_mas']:.0f} mas ({row['n_matched']} stars)"
    console.print(f"measured: {row['n_sources']} sources, {zp}, 5-sigma depth {depth} mag, PSF FWHM {row['psf_fwhm_px']:.2f} px (inputs {row['inputs_fwhm_px']:.2f}), astrometric check {astrometry}")
    console.print("deep catalogue " + ("already in the archive (use --force to replace it)" if measured.snapshot is None else f"in the archive, snapshot {measured.snapshot}: tables stacks and stack_sources"))
    return result


@main.command()
@click.argument("query")
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
@click.option("--release", default=None, help="Query a named release (e.g. DR1) instead of the last committed snapshot.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "parquet"]), default="table", show_default=True, help="How to write the result.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the result to this file (required for parquet; csv goes to stdout without it).")
def sql(query, lake_dir, release, output_format, out_file):
    """Run a read-only SQL query on a lake and print or write the result.

    The lake's tables are views of the same name: frames, quarantine, calibration_log,
    astrometry, photometry, sources, and forced (the archive's light-curve points). QUERY is SQL
    text or the path of a .sql file (the files in queries/ run as they are). Example:

        mstlake sql --lake data/lake "SELECT object_id, count(*) FROM forced GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
    """
    import duckdb

    from mstlake.lake.archive import ArchiveError
    from mstlake.query import open_lake

    text = Path(query).read_text() if query.endswith(".sql") and Path(query).is_file() else query
    if output_format == "parquet" and out_file is None:
        raise click.UsageError("--format parquet needs --out FILE")
    try:
        refused = sorted({s.type.name for s in duckdb.extract_statements(text)} - READ_ONLY_STATEMENTS)
        if refused:
            _fail(f"mstlake sql is read-only: {', '.join(refused)} statements are refused (queries, EXPLAIN and SET VARIABLE run)")
        con = open_lake(lake_dir, release=release)
        result = con.sql(text)
        if result is None:
            _fail("the statement returned no rows (only queries that return a result are useful here)")
        _write_result(result.df(), output_format, out_file)
    except (FileNotFoundError, ArchiveError, duckdb.Error) as err:
        hint = ("\nhint: lightcurve(), catalog_stack(), cone() and lightcurve_at() take constant arguments (literals, "
                "parameters or getvariable()): SET VARIABLE ra = (SELECT ...); first, then cone(getvariable('ra'), ...)"
                ) if "subqueries in lambda" in str(err) or "cannot contain subqueries" in str(err) else ""
        _fail(str(err) + hint)


def _write_result(frame, output_format: str, out_file: Path | None, *, shown_columns=None, float_format: str = "") -> None:
    """A query's result as Parquet (to ``out_file``), CSV (to ``out_file`` or stdout) or a table
    on the terminal (``shown_columns`` of it, floats as ``float_format``)."""
    if output_format == "parquet":
        frame.to_parquet(out_file, index=False)
    elif output_format == "csv" or out_file is not None:
        if out_file is None:
            click.echo(frame.to_csv(index=False), nl=False)
            return
        frame.to_csv(out_file, index=False)
    else:
        shown = frame if shown_columns is None else frame[list(shown_columns)]
        table = Table(*[str(c) for c in shown.columns])
        for row in shown.itertuples(index=False):
            table.add_row(*[format(v, float_format) if isinstance(v, float) else str(v) for v in row])
        console.print(table)
        return
    console.print(f"{len(frame)} rows written to [cyan]{out_file}[/]")


@main.command()
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
@click.option("--ra", type=float, required=True, help="Right ascension, degrees (ICRS).")
@click.option("--dec", type=float, required=True, help="Declination, degrees (ICRS).")
@click.option("--radius", type=float, default=1.0, show_default=True, help="Search radius, arcsec: every object within it.")
@click.option("--band", type=click.Choice(["g", "r", "i"]), default=None, help="Only this band (default: all).")
@click.option("--release", default=None, help="Read a named release (e.g. DR1) instead of the last committed snapshot.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "parquet"]), default="table", show_default=True, help="How to write the points.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the points to this file (required for parquet).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also draw the light curves (PNG, PDF or SVG by suffix).")
@click.option("--fold", default=None, metavar="DAYS|auto", help="Draw the plot folded on a period: DAYS, or auto for each object's Lomb-Scargle period (astropy).")
def lightcurve(lake_dir, ra, dec, radius, band, release, output_format, out_file, plot_file, fold):
    """Light curves of the objects at a position: every forced-photometry point (for objects the
    library lacks, every detection), nearest object first. Points flagged, or on cloudy or
    uncalibrated frames, have good = false (hollow grey in the plot). Example:

        mstlake lightcurve --lake data/lake --ra 116.02 --dec 28.01 --radius 2 --plot lc.png
        mstlake lightcurve --lake data/lake --ra 116.02 --dec 28.01 --plot lc.pdf --fold auto
    """
    from mstlake.lake.archive import ArchiveError
    from mstlake.query.lightcurves import lightcurves_at, plot_lightcurves

    if output_format == "parquet" and out_file is None:
        raise click.UsageError("--format parquet needs --out FILE")
    period = _fold_period(fold)
    if period and plot_file is None:
        raise click.UsageError("--fold draws a plot: give --plot FILE too")
    try:
        points = lightcurves_at(lake_dir, ra, dec, radius_arcsec=radius, band=band, release=release)
    except (FileNotFoundError, ArchiveError, ValueError) as err:
        _fail(str(err))
    if points.empty:
        _fail(f'no object within {radius:g}" of ({ra:.6f}, {dec:.6f}) in {lake_dir}')
    _write_result(points, output_format, out_file, shown_columns=("object_id", "separation_arcsec", "band", "mjd", "mag", "mag_err", "mag_magfit", "flag", "good"), float_format=".5f")
    summary = points.groupby("object_id", sort=False).agg(points=("mjd", "size"), good=("good", "sum"))
    console.print(f"{len(summary)} object(s), {len(points)} points ({int(summary.good.sum())} good)")
    if plot_file is not None:
        console.print(f"plot: [cyan]{plot_lightcurves(points, plot_file, title=f'({ra:.5f}, {dec:.5f})', fold=period or False)}[/]")


def _fold_period(fold: str | None) -> float | bool | None:
    """--fold: True for "auto", the period in days, or None."""
    if fold is None:
        return None
    if fold.strip().lower() == "auto":
        return True
    try:
        period = float(fold)
    except ValueError:
        raise click.BadParameter(f"{fold!r} is neither a period in days nor auto", param_hint="--fold") from None
    if not period > 0:
        raise click.BadParameter(f"the period must be positive, not {fold}", param_hint="--fold")
    return period


@main.command()
@click.argument("name")
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
@click.option("--note", default="", help="What the release holds (kept with it).")
def release(name, lake_dir, note):
    """Name the archive's current snapshot as a data release (e.g. DR1). A release never changes:
    later nights do not enter it, and `--release NAME` reads it as it was."""
    from mstlake.config import load_pipeline
    from mstlake.lake.archive import Archive, ArchiveError

    try:
        snapshot = Archive(LakePaths(lake_dir), load_pipeline().archive).release(name, note=note)
    except ArchiveError as err:
        _fail(str(err))
    console.print(f"release [bold]{name}[/] = snapshot {snapshot} of {lake_dir}")


@main.command()
@click.option("--release", "name", required=True, help="Name of the new release (e.g. DR1); a name is given once.")
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake whose raw frames (its inventory) are reprocessed.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@cluster_options
@CONFIG_OPTION
def reprocess(name, lake_dir, quiet, workers, scheduler_address, config_dir):
    """Calibrate and measure again every raw frame the lake's inventory knows, with today's
    pipeline and configuration (--config-dir), into a new release: a lake of its own under
    LAKE/releases/NAME (tables, cubes, masters, archive) that nothing changes afterwards; the
    nightly lake and earlier releases are not touched. Its manifest (release.json) records the
    pipeline version, the configuration's hash, the inputs' sha256 and the masters; the archive's
    frames rows carry the release's name. Interrupted, run it again: it resumes. Query it with
    `--release NAME` (sql, lightcurve, export-hats)."""
    from mstlake.lake.archive import ArchiveError
    from mstlake.pipeline.release import ReleaseError, reprocess as reprocess_release

    started = time.perf_counter()
    try:
        with _on_cluster(scheduler_address, workers):
            manifest = reprocess_release(LakePaths(lake_dir), name, fields=cfg.load_fields(config_dir), instrument=cfg.load_instrument(config_dir), pipeline=cfg.load_pipeline(config_dir), config_dir=config_dir, reference_base=Path.cwd(), progress=not quiet)
    except (ReleaseError, cfg.ConfigError) as err:
        _fail(str(err))
    except (ArchiveError, OSError) as err:  # disk full, permissions
        _fail(f"reprocess stopped: {err}\nThe release is not finished (no manifest yet); run the same command again once the cause is fixed: it resumes.")
    rows = ", ".join(f"{table} {count}" for table, count in manifest["rows"].items())
    console.print(f"release [bold]{name}[/] made in {time.perf_counter() - started:.0f} s at [cyan]{manifest['lake']}[/]: {rows}")
    for left_out in manifest["inputs"]["left_out"]:
        err_console.print(f"[yellow]left out[/] frame {left_out['frame_id']}: {escape(left_out['reason'])}", soft_wrap=True, highlight=False)


@main.command()
@click.option("--field", "field_name", required=True, help="Field (a file in ingest/fields/).")
@click.option("--night", type=int, default=None, metavar="YYYYMMDD", help="Report on one night (default: the survey-level report of the whole field).")
@click.option("--lake", "lake_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Lake directory (default: the field's lake_dir).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Directory for the report (default: LAKE/qa).")
@CONFIG_OPTION
def qa(field_name, night, lake_dir, out_dir, config_dir):
    """Write a QA report: one self-contained HTML file (figures embedded) to open in a browser.

    With --night: the night's frames (status, seeing, zero point, astrometric rms), its masters
    (bias, bias scatter, pepper-and-salt and bad pixels, small-scale flat), a frame with its mask
    planes and satellite tracks, astrometric residuals before and after the distortion fit,
    growth curves and the aperture correction, zero points and transparency, light-curve scatter
    against the photon and sky noise, and the files quarantined. Without: the whole field's
    nights, zero points, astrometry night by night, scatter against noise, image- and
    catalogue-stack gains with N, example light curves (constant, variable folded on its
    period, newest transients) and every quarantined file. Examples:

        mstlake qa --field f02 --night 20230118
        mstlake qa --field f02 --out report/
    """
    from mstlake.qa.report import QAError, night_report, survey_report

    try:
        field_cfg = cfg.load_field(field_name, config_dir)
        instrument = cfg.load_instrument(config_dir)
    except (cfg.ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    lake = _field_lake(field_cfg, lake_dir)
    started = time.perf_counter()
    try:
        with console.status("drawing the report"):
            path = night_report(lake, field_cfg.name, night, instrument=instrument, out_dir=out_dir) if night else survey_report(lake, field_cfg.name, instrument=instrument, out_dir=out_dir)
    except QAError as err:
        _fail(str(err))
    console.print(f"QA report written in {time.perf_counter() - started:.0f} s: [cyan]{path}[/]")


@main.command()
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
def releases(lake_dir):
    """List the lake's data releases: named snapshots of its archive (`mstlake release`) and
    reprocessed releases (`mstlake reprocess`), with their provenance and row counts."""
    from mstlake.lake.archive import ArchiveError, releases as named_snapshots
    from mstlake.pipeline.release import released

    lake = LakePaths(lake_dir)
    if not lake.root.is_dir():
        _fail(f"no lake at {lake_dir}")
    try:
        snapshots = named_snapshots(lake) if lake.archive_catalogue.exists() else []
    except ArchiveError as err:
        _fail(str(err))
    manifests = released(lake)
    if not snapshots and not manifests:
        console.print(f"no releases in {lake_dir} (make one with `mstlake release NAME` or `mstlake reprocess --release NAME`)")
        return
    for release_name, snapshot in snapshots:
        console.print(f"[bold]{release_name}[/]  snapshot {snapshot} of the nightly archive", soft_wrap=True)
    for m in manifests:
        rows = m["rows"]
        console.print(
            f"[bold]{m['name']}[/]  reprocessed {m['created']} at {m['lake']}\n    pipeline {m['pipeline_version']}, config sha256 {m['config_sha256'][:16]}, "
            f"{m['inputs']['frames']} input frames (sha256 of their list {m['inputs']['sha256_of_list'][:16]}), {len(m['masters'])} masters\n"
            f"    {rows.get('photometry', 0)} frames measured, {rows.get('archive.forced', 0)} light-curve points, {rows.get('archive.objects', 0)} objects", soft_wrap=True)


@main.command()
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
def compact(lake_dir):
    """Rewrite each HEALPix partition of the archive that nightly commits have spread over several
    files as one sorted file (run it now and then, e.g. weekly: every query's planning time grows
    with the number of files, and a light curve reads one row group of a sorted file). Snapshots
    and releases read exactly as before; the replaced files stay on disk for them."""
    from mstlake.config import load_pipeline
    from mstlake.lake.archive import Archive, ArchiveError

    try:
        counts = Archive(LakePaths(lake_dir), load_pipeline().archive).compact()
    except ArchiveError as err:
        _fail(str(err))
    for table, (before, after) in counts.items():
        console.print(f"{table}: {before} -> {after} data files")


@main.command("export-hats")
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
@click.option("--release", default=None, help="The release to export (default: the last committed snapshot).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory of the HATS collection.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out.")
def export_hats(lake_dir, release, out_dir, overwrite):
    """Write the archive's objects with their light curves (a nested column) as a HATS collection,
    with a 2" margin cache and an object_id index, for lsdb:

        lsdb.open_catalog(OUT).id_search(values={"object_id": ...})
    """
    from mstlake.lake.archive import ArchiveError
    from mstlake.lake.hats_export import export_release

    try:
        result = export_release(LakePaths(lake_dir), out_dir, release=release, overwrite=overwrite)
    except (FileNotFoundError, ArchiveError, ValueError) as err:
        _fail(str(err))
    console.print(f"{result.n_objects} objects, {result.n_points} light-curve points in {result.n_partitions} partitions ({result.n_margin_rows} margin rows): [cyan]{result.out_dir}[/]")


@main.command("export-masters")
@click.option("--lake", "lake_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Lake directory.")
@click.option("--telescope", required=True, help="MST1, MST2 or MST3.")
@click.option("--night", required=True, type=int, help="Night YYYYMMDD.")
def export_masters(lake_dir, telescope, night):
    """Write a night's master calibration products as FITS files (for DS9 and astropy)."""
    from mstlake.lake.cubes import export_masters_fits

    lake = LakePaths(lake_dir)
    masters = lake.masters(telescope, night)
    if not masters.exists():
        _fail(f"no masters for {telescope} night {night} in {lake_dir} (run `mstlake ingest` first)")
    for path in export_masters_fits(lake, telescope=telescope, night=night):
        console.print(str(path))


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("mstlake-demo"), show_default=True, help="Directory for the demo's raw data, truth and lake.")
@click.option("--seed", type=int, default=2023, show_default=True, help="Random seed of the simulated data.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir, seed, quiet):
    """Simulate a small f02 data set and run every stage that exists on it.

    Three telescopes (g, r, i), two nights, six science frames each at 1/10 detector scale, with
    calibration frames and a handful of broken files; then `ingest --field f02` into a lake and
    `stack` of each band's clear frames. Ends with a short summary.
    """
    from mstlake.pipeline.simulate import SimulationRequest
    from mstlake.pipeline.simulate import simulate as run

    paths = DemoPaths(out_dir)
    instrument, sim, field_cfg = cfg.load_instrument(), cfg.load_simulation(), cfg.load_field("f02")
    request = SimulationRequest(field="f02", nights=2, frames_per_night=6, telescopes=("MST1", "MST2", "MST3"), scale=0.1, seed=seed, with_bad_files=True)
    console.rule("[bold]mstlake demo: simulating f02")
    started = time.perf_counter()
    summary = run(request, paths.simulation, instrument=instrument, sim=sim, field_cfg=field_cfg, progress=not quiet)
    _print_simulation(summary, time.perf_counter() - started)
    console.rule("[bold]mstlake ingest --field f02")
    report = _ingest("f02", paths.simulation.raw, paths.lake.root, None, progress=not quiet, reference_base=paths.root)
    from mstlake.pipeline.stack import FrameSelection

    for band in ("g", "r", "i"):
        console.rule(f"[bold]mstlake stack --field f02 --band {band}")
        _stack_and_measure(field_cfg, paths.lake, band, FrameSelection(), None, reference_base=paths.root, progress=not quiet)
    from mstlake.qa.report import survey_report

    console.rule("[bold]mstlake qa --field f02")
    qa_report = survey_report(paths.lake, "f02", instrument=cfg.load_instrument())
    console.print(f"QA report of the field: [cyan]{qa_report}[/] (open it in a browser; a night's: mstlake qa --field f02 --lake {paths.lake.root} --night YYYYMMDD)")
    console.rule("[bold]summary")
    console.print(
        f"{report.total_frames} frames in the lake at [cyan]{paths.lake.root}[/], {report.total_quarantined} files quarantined with reasons.\n"
        f"Tables: [cyan]{paths.lake.frames_table}[/], [cyan]{paths.lake.quarantine_table}[/], [cyan]{paths.lake.calibration_log_table}[/] (Parquet; pyarrow, pandas, DuckDB).\n"
        f"Calibrated cubes (Zarr v3, open with xarray.open_zarr): [cyan]{paths.lake.root / 'cubes'}[/]; masters: [cyan]{paths.lake.root / 'masters'}[/].\n"
        f"Astrometric solutions (TAN-SIP FITS headers per frame): [cyan]{paths.lake.astrometry_table}[/]; zero points, PSF and apertures per frame: [cyan]{paths.lake.photometry_table}[/].\n"
        f"Detections and forced light-curve points per night: [cyan]{paths.lake.sources_dir}[/], [cyan]{paths.lake.forced_dir}[/].\n"
        f"Image stacks of each band (Zarr and FITS): [cyan]{paths.lake.root / 'stacks'}[/]; their deep catalogues in the archive (mstlake sql --lake {paths.lake.root} \"SELECT * FROM stacks\").\n"
        f"QA report: [cyan]{qa_report}[/]; notebooks on this lake: notebooks/ (01_quickstart.ipynb first).\n"
        f"Simulator truth: [cyan]{paths.simulation.truth}[/]."
    )


# -- helpers -------------------------------------------------------------------------------------


def _inventory(raw_dir: Path, lake: LakePaths, config_dir, *, progress: bool):
    from mstlake.pipeline.inventory import run_inventory

    try:
        instrument, pipeline, fields = cfg.load_instrument(config_dir), cfg.load_pipeline(config_dir), cfg.load_fields(config_dir)
        return run_inventory(raw_dir, lake, instrument=instrument, fields=fields, config=pipeline.inventory, progress=progress)
    except (cfg.ConfigError, FileNotFoundError, OSError) as err:
        _fail(str(err))


def _ingest(field_name: str, raw_dir, lake_dir, config_dir, *, progress: bool, force: bool = False, retry_failed: bool = False, reference_base: Path | None = None, nights: str | None = None):
    try:
        field_cfg = cfg.load_field(field_name, config_dir)
    except cfg.ConfigError as err:
        _fail(str(err))
    if field_cfg.centre_is_placeholder:
        err_console.print(f"[yellow]note:[/] the centre of field {field_name} in ingest/fields/{field_name}.toml is a placeholder.")
    raw = Path(raw_dir) if raw_dir else resolve_against(Path.cwd(), field_cfg.raw_dir)
    lake = _field_lake(field_cfg, lake_dir)
    started = time.perf_counter()
    report = _inventory(raw, lake, config_dir, progress=progress)
    _print_inventory(report)
    calibrated, measured = [], None
    if report.usable:
        chosen = _science_nights(lake, field_cfg.name, nights)
        calibrated = _calibrate(lake, config_dir, progress=progress, force=force, retry_failed=retry_failed, nights=chosen)
        if field_cfg.reference is not None:
            measured = _astrometry_and_photometry(field_cfg, lake, config_dir, reference_base=reference_base or Path.cwd(), progress=progress, nights=chosen, force=force, retry_failed=retry_failed)
    _print_night_summary(report, calibrated, measured, time.perf_counter() - started)
    return report


def _science_nights(lake: LakePaths, field: str, text: str | None) -> tuple[int, ...]:
    """``--nights`` against the nights of the field's science frames in the lake (empty: all)."""
    from mstlake.astro import parse_nights
    from mstlake.pipeline.inventory import science_nights

    try:
        return parse_nights(text, science_nights(lake, field)) if text else ()
    except ValueError as err:
        _fail(str(err))


def _print_night_summary(report, calibrated, measured, seconds: float) -> None:
    """Per night: science frames new to the lake, calibrated, solved, flux-calibrated, cloudy, and
    light-curve points committed; then the quarantine and the wall time."""
    new = defaultdict(int)
    for (_, night, kind), count in report.frames_by_kind.items():
        if kind == "science":
            new[night] += count
    calibration = defaultdict(lambda: [0, 0])
    for result in calibrated or []:
        calibration[result.night][0] += result.science - len(result.failed)
        calibration[result.night][1] += len(result.failed)
    photometry = defaultdict(lambda: defaultdict(int))
    for row in measured.nights if measured is not None else []:
        for key in ("frames", "solved", "calibrated", "cloudy", "points"):
            photometry[row["night"]][key] += row[key]
    nights = sorted(set(new) | set(calibration) | set(photometry))
    if nights:
        table = Table(title="science frames per night", caption="calib./failed: calibrated in this run or not (-: not calibrated in this run); zp: flux-calibrated; points: light-curve points committed", show_edge=False)
        for column in ("night", "new", "calib.", "failed", "meas.", "solved", "zp", "cloudy", "points"):
            table.add_column(column, justify="left" if column == "night" else "right", no_wrap=True)
        for night in nights:
            done, failed = calibration.get(night, ("-", "-"))
            p = photometry.get(night, {})
            table.add_row(str(night), str(new.get(night, 0)), str(done), str(failed), *(str(p.get(k, "-")) for k in ("frames", "solved", "calibrated", "cloudy", "points")))
        console.print(table)
    quarantined = f"{report.new_quarantined} new files quarantined ({report.total_quarantined} in all; reasons in the quarantine table)" if report.total_quarantined else "nothing quarantined"
    console.print(f"{quarantined}; wall time {seconds:.0f} s")


def _astrometry_and_photometry(field_cfg, lake: LakePaths, config_dir, *, reference_base: Path, progress: bool, nights: tuple[int, ...] = (), force: bool = False, retry_failed: bool = False):
    from mstlake.lake.refcat import ReferenceCatalogueError, load_reference
    from mstlake.pipeline.static import measure_field

    try:
        reference = load_reference(field_cfg, lake, base=reference_base)
    except ReferenceCatalogueError as err:
        err_console.print(f"[yellow]astrometry and photometry skipped:[/] {escape(str(err))}", soft_wrap=True)
        return None
    pipeline = cfg.load_pipeline(config_dir)
    result = measure_field(lake, field_cfg.name, reference, instrument=cfg.load_instrument(config_dir), astrometry_cfg=pipeline.astrometry, photometry_cfg=pipeline.photometry, archive_cfg=pipeline.archive, magfit_cfg=pipeline.magfit, nights=nights, force=force, retry_failed=retry_failed, progress=progress)
    if result.skipped:
        console.print(f"astrometry and photometry: {result.skipped} nights (per band) already measured and committed, left as they are (--force measures them again)")
    if not result.nights:
        return result
    console.print(
        f"astrometry: {result.solved} frames solved, {len(result.failed)} not ({len(reference)} reference stars); solutions in [cyan]{lake.astrometry_table}[/]\n"
        f"photometry: {result.calibrated} frames flux-calibrated ({len(result.cloudy)} flagged cloudy); zero points in [cyan]{lake.photometry_table}[/], "
        f"detections and forced photometry in [cyan]{lake.sources_dir}[/] and [cyan]{lake.forced_dir}[/]; "
        f"light-curve points in the archive [cyan]{lake.archive_dir}[/] (DuckLake: mstlake.lake.archive.Archive(...).reader())"
    )
    for frame_id, reason in result.failed:
        err_console.print(f"[yellow]frame {frame_id} not solved:[/] {escape(str(reason))}", soft_wrap=True)
    for frame_id, reason in result.uncalibrated:
        err_console.print(f"[yellow]frame {frame_id} not flux-calibrated:[/] {escape(str(reason))}", soft_wrap=True)
    return result


def _calibrate(lake: LakePaths, config_dir, *, progress: bool, force: bool, retry_failed: bool = False, nights: tuple[int, ...] = ()):
    from mstlake.pipeline.calibrate import CalibrationError, calibrate_nights

    try:
        results = calibrate_nights(lake, nights=list(nights) or None, instrument=cfg.load_instrument(config_dir), cfg=cfg.load_pipeline(config_dir).calibration, force=force, retry_failed=retry_failed, progress=progress)
    except (CalibrationError, cfg.ConfigError) as err:
        _fail(f"calibration: {err}")
    if not results:
        console.print("calibration: every night is already calibrated (use --force to redo)")
        return results
    table = Table(title="calibration", show_edge=False)
    for column in ("telescope", "night", "science", "failed", "rejected", "flats from", "PS map from"):
        table.add_column(column)
    for r in results:
        table.add_row(r.telescope, str(r.night), str(r.science), str(len(r.failed)), str(len(r.rejected)), f"{len(r.flat_nights)} nights", str(r.ps_night))
    console.print(table)
    for r in results:
        for frame_id, reason in r.failed:
            err_console.print(f"[yellow]frame {frame_id} ({r.telescope} {r.night}) failed calibration:[/] {escape(reason)}", soft_wrap=True)
    return results


def _print_simulation(summary, seconds: float) -> None:
    table = Table(title=f"simulated {summary.shape[1]}x{summary.shape[0]} frames in {seconds:.1f} s", show_edge=False)
    table.add_column("kind")
    table.add_column("files", justify="right")
    for kind, count in sorted(summary.counts.items()):
        table.add_row(kind, str(count))
    console.print(table)
    console.print(f"{summary.n_stars} stars on the sky, {summary.n_library} in the standard-star library")
    console.print(f"raw: [cyan]{summary.raw_dir}[/]   truth: [cyan]{summary.truth_dir}[/]")


def _print_inventory(report) -> None:
    console.print(f"inventory of [cyan]{report.raw_dir}[/]: {report.files_seen} FITS files, {report.files_read} read, "
                  f"{report.new_frames} new frames, {report.new_quarantined} newly quarantined "
                  f"(lake now holds {report.total_frames} frames, {report.total_quarantined} quarantined)")
    if report.frames_by_kind:
        rows: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
        for (telescope, night, kind), n in report.frames_by_kind.items():
            rows[(telescope, night)][kind] = n
        table = Table(title="new frames", show_edge=False)
        for column in ("telescope", "night", "bias", "dark", "flat", "science"):
            table.add_column(column, justify="right" if column not in ("telescope",) else "left")
        for (telescope, night), counts in sorted(rows.items()):
            table.add_row(telescope, str(night), *(str(counts.get(k, 0)) for k in ("bias", "dark", "flat", "science")))
        console.print(table)
    if report.quarantine_reasons:
        table = Table(title="quarantined (files left untouched)", show_edge=False)
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for path, code, reason in report.quarantine_reasons:
            shown = Path(path).relative_to(report.raw_dir) if Path(path).is_relative_to(report.raw_dir) else Path(path)
            table.add_row(str(shown), f"[bold]{code}[/]: {reason}")
        console.print(table)


if __name__ == "__main__":
    main()
