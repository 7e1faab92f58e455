import pytest

from mstlake.raw import header as hdr


@pytest.mark.parametrize(
    "value, kind",
    [
        ("BIAS", "bias"), ("Bias Frame", "bias"), ("ZERO", "bias"), ("bias_frame", "bias"),
        ("DARK", "dark"), ("Dark Frame", "dark"),
        ("FLAT", "flat"), ("Flat Field", "flat"), ("Flat Frame", "flat"), ("SKYFLAT", "flat"), ("sky flat", "flat"),
        ("LIGHT", "science"), ("Light Frame", "science"), ("OBJECT", "science"), ("SCIENCE", "science"), ("  light  ", "science"),
    ],
)
def test_every_imagetyp_spelling(value, kind):
    assert hdr.frame_type({"IMAGETYP": value}) == kind


def test_unknown_and_missing_imagetyp():
    with pytest.raises(hdr.HeaderProblem) as err:
        hdr.frame_type({"IMAGETYP": "Tricolor Image"})
    assert err.value.code == "unknown_type" and "Tricolor Image" in str(err.value)
    with pytest.raises(hdr.HeaderProblem) as err:
        hdr.frame_type({})
    assert err.value.code == "missing_keyword"


def test_frametyp_used_when_imagetyp_absent():
    assert hdr.frame_type({"FRAMETYP": "Flat"}) == "flat"


@pytest.mark.parametrize(
    "cards, ra, dec, source",
    [
        ({"RA": 116.25, "DEC": 28.5}, 116.25, 28.5, "RA/DEC"),
        ({"OBJCTRA": "07 45 00.00", "OBJCTDEC": "+28 30 00.0"}, 116.25, 28.5, "OBJCTRA/OBJCTDEC"),
        ({"OBJCTRA": "07:45:00", "OBJCTDEC": "-05:30:00"}, 116.25, -5.5, "OBJCTRA/OBJCTDEC"),
        ({"OBJCTRA": "7h45m00s", "OBJCTDEC": "+28d30m00s"}, 116.25, 28.5, "OBJCTRA/OBJCTDEC"),
        ({"RA": "07 45 00", "DEC": "+28 30 00"}, 116.25, 28.5, "RA/DEC"),
        ({"RA": "116.25", "DEC": "28.5"}, 116.25, 28.5, "RA/DEC"),
    ],
)
def test_pointing_spellings(cards, ra, dec, source):
    p = hdr.pointing(cards)
    assert p.ra_deg == pytest.approx(ra, abs=1e-9) and p.dec_deg == pytest.approx(dec, abs=1e-9) and p.source == source


def test_numeric_ra_preferred_over_objctra():
    p = hdr.pointing({"RA": 10.0, "DEC": 20.0, "OBJCTRA": "07 45 00", "OBJCTDEC": "+28 30 00"})
    assert (p.ra_deg, p.dec_deg) == (10.0, 20.0)


def test_bad_and_missing_pointing():
    assert hdr.pointing({"OBJECT": "f02"}) is None
    with pytest.raises(hdr.HeaderProblem, match="not a sky position"):
        hdr.pointing({"OBJCTRA": "nowhere", "OBJCTDEC": "+28 30 00"})
    with pytest.raises(hdr.HeaderProblem, match="outside the sky"):
        hdr.pointing({"RA": 10.0, "DEC": 95.0})


@pytest.mark.parametrize(
    "cards, iso",
    [
        ({"DATE-OBS": "2023-01-18T13:03:04.123"}, "2023-01-18T13:03:04.123"),
        ({"DATE-OBS": "2023-01-18T13:03:04Z"}, "2023-01-18T13:03:04.000"),
        ({"DATE-OBS": "2023-01-18", "TIME-OBS": "13:03:04"}, "2023-01-18T13:03:04.000"),
        ({"DATE-OBS": "2023-01-18", "UT": "13:03:04.5"}, "2023-01-18T13:03:04.500"),
        ({"DATE-OBS": "18/01/98", "UT": "13:03:04"}, "1998-01-18T13:03:04.000"),
    ],
)
def test_exposure_start_spellings(cards, iso):
    assert hdr.exposure_start(cards).isot == iso


def test_exposure_start_problems():
    with pytest.raises(hdr.HeaderProblem) as err:
        hdr.exposure_start({})
    assert err.value.code == "missing_keyword"
    with pytest.raises(hdr.HeaderProblem) as err:
        hdr.exposure_start({"DATE-OBS": "yesterday"})
    assert err.value.code == "bad_keyword"


def test_exposure_time_keywords():
    assert hdr.exposure_time({"EXPTIME": 60}) == 60.0
    assert hdr.exposure_time({"EXPOSURE": "30.5"}) == 30.5
    with pytest.raises(hdr.HeaderProblem):
        hdr.exposure_time({"EXPTIME": -1})


def test_telescope_aliases(instrument):
    for value in ("MST2", "MST-2", "mst 2", "Mini-SiTian 2"):
        assert hdr.telescope_name({"TELESCOP": value}, instrument.telescopes) == "MST2"
    with pytest.raises(hdr.HeaderProblem) as err:
        hdr.telescope_name({"TELESCOP": "Hubble"}, instrument.telescopes)
    assert err.value.code == "unknown_telescope"


def test_band_from_filter(instrument):
    assert hdr.band_from_filter("g", instrument.bands) == "g"
    assert hdr.band_from_filter("i'", instrument.bands) == "i"
    assert hdr.band_from_filter("SDSS_R", instrument.bands) == "r"
    assert hdr.band_from_filter("Halpha", instrument.bands) is None
    assert hdr.band_from_filter(None, instrument.bands) is None
