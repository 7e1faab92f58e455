"""QA reports of the small simulated night (issue 8): every figure the night has data for, every
frame and quarantined file in the tables, and a page a real browser shows whole."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mstlake.cli import main

NIGHT_FIGURES = ("MST1, night {night}: masters", "MST2, night {night}: masters", "track pixels", "astrometric rms per frame", "residuals before and after the distortion fit", "growth curves", "aperture correction", "zero-point surface", "zero point and transparency", "scatter against magnitude")


def _night(lake) -> int:
    import duckdb

    return int(duckdb.sql(f"SELECT min(night) FROM '{lake.astrometry_table}'").fetchone()[0])


def _figures(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data) for data, alt in re.findall(r"<img src='data:image/png;base64,([^']+)' alt='([^']*)'", page)}


@pytest.fixture(scope="module")
def night_report(solved_lake, tmp_path_factory):
    _, lake, _, _ = solved_lake
    out = tmp_path_factory.mktemp("qa")
    night = _night(lake)
    made = CliRunner().invoke(main, ["qa", "--field", "f02", "--night", str(night), "--lake", str(lake.root), "--out", str(out)])
    assert made.exit_code == 0, made.output
    return out / f"f02-{night}.html", night


def test_a_nights_report_has_each_figure_every_frame_and_the_quarantined_files(night_report, solved_lake):
    import duckdb
    from PIL import Image

    path, night = night_report
    _, lake, _, _ = solved_lake
    page = path.read_text()
    shown = _figures(page)
    for caption in NIGHT_FIGURES:
        matching = [alt for alt in shown if caption.format(night=night) in alt]
        assert matching, (caption, list(shown))
        image = Image.open(io.BytesIO(shown[matching[0]]))
        assert image.format == "PNG" and image.width >= 600
    for frame_id in duckdb.sql(f"SELECT frame_id FROM '{lake.astrometry_table}'").fetchnumpy()["frame_id"]:
        assert str(frame_id) in page
    quarantined = duckdb.sql(f"SELECT reason_code FROM '{lake.quarantine_table}'").fetchnumpy()["reason_code"]
    assert len(quarantined) and all(code in page for code in quarantined)


def test_the_distortion_fit_shrinks_the_residuals_the_report_shows(solved_lake, instrument):
    """The figures' numbers are the pipeline's: a TAN-only fit to the same stars leaves the
    camera's distortion in the residuals; the TAN-SIP solution takes it out."""
    import duckdb
    import pandas as pd
    from astropy.io import fits

    from mstlake.qa.figures import robust_rms
    from mstlake.qa.report import astrometric_residuals_of

    _, lake, field, _ = solved_lake
    frame_id, header, nx, ny, band, night = duckdb.sql(f"SELECT frame_id, a.wcs_header, naxis1, naxis2, band, night FROM '{lake.astrometry_table}' a JOIN '{lake.frames_table}' USING (frame_id, band, night) WHERE a.status = 'solved' ORDER BY n_matched DESC LIMIT 1").fetchone()
    sources = pd.read_parquet(lake.sources_file("f02", band, night))
    x, y, before, after = astrometric_residuals_of(sources[sources.frame_id == frame_id], pd.read_parquet(lake.reference_catalogue("f02")), fits.Header.fromstring(header), shape=(ny, nx), scale_mas=instrument.detector.pixel_scale_arcsec * 1000)
    assert len(x) >= 50
    after_rms, before_rms = (np.hypot(robust_rms(d[0]), robust_rms(d[1])) for d in (after, before))
    assert after_rms < 100 and before_rms > 1.5 * after_rms, (before_rms, after_rms)


def test_the_survey_report_says_what_the_lake_lacks_and_draws_the_rest(solved_lake, tmp_path):
    _, lake, _, _ = solved_lake
    made = CliRunner().invoke(main, ["qa", "--field", "f02", "--lake", str(lake.root), "--out", str(tmp_path)])
    assert made.exit_code == 0, made.output
    page = (tmp_path / "f02.html").read_text()
    shown = _figures(page)
    for caption in ("zero point and transparency", "median rms per night", "residual maps per night", "scatter against magnitude", "constant stars"):
        assert any(caption in alt for alt in shown), (caption, list(shown))
    assert "no measured image stack yet" in page
    missing = CliRunner().invoke(main, ["qa", "--field", "f02", "--lake", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no lake at" in missing.output


def test_the_report_opens_whole_in_headless_chromium(night_report):
    """Every figure decodes and shows in a real browser (Debian's chromium through its
    chromedriver); the screenshot is kept in test-artifacts/ (MSTLAKE_TEST_ARTIFACTS)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    path, night = night_report
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(path.resolve().as_uri())
        images = driver.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        assert len(images) >= len(NIGHT_FIGURES) and all(done and width >= 600 for _, done, width in images), images
        assert f"night {night}" in driver.title
        artefacts = Path(os.environ.get("MSTLAKE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
        artefacts.mkdir(parents=True, exist_ok=True)
        shot = artefacts / "qa-night-report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    finally:
        driver.quit()
