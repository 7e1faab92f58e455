import gzip
import io

import numpy as np
import pytest
from astropy.io import fits

from mstlake.raw.fitsfile import read_fits_bytes
from mstlake.raw.header import HeaderProblem


def _image():
    return np.random.default_rng(3).integers(400, 60000, (40, 64)).astype(np.uint16)


def _fits(data, **cards):
    hdu = fits.PrimaryHDU(data)
    for k, v in cards.items():
        hdu.header[k] = v
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def _fpack(data, **cards):
    header = fits.Header(cards)
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type="RICE_1")]).writeto(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("form", ["plain", "gzip", "fpack"])
def test_reads_every_form_identically(form):
    data = _image()
    raw = {"plain": lambda: _fits(data, IMAGETYP="LIGHT"), "gzip": lambda: gzip.compress(_fits(data, IMAGETYP="LIGHT")), "fpack": lambda: _fpack(data, IMAGETYP="LIGHT")}[form]()
    content = read_fits_bytes(raw, stride=1, saturation_adu=50000)
    assert content.compression == {"plain": "none", "gzip": "gzip", "fpack": "fpack"}[form]
    assert content.shape == (40, 64) and content.bitpix == 16
    assert content.header["IMAGETYP"] == "LIGHT"
    assert content.stats.max_adu == data.max() and content.stats.min_adu == data.min()
    assert content.stats.median_adu == np.median(data)
    assert content.stats.saturated_fraction == pytest.approx(np.mean(data > 50000))


def test_uint16_bzero_round_trip_keeps_values():
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    content = read_fits_bytes(_fits(data), stride=1, saturation_adu=50000)
    assert (content.stats.min_adu, content.stats.max_adu) == (0, 65535)


@pytest.mark.parametrize("cut", [3000, 5000])
def test_truncated_plain(cut):
    with pytest.raises(HeaderProblem) as err:
        read_fits_bytes(_fits(_image())[:cut], stride=1, saturation_adu=50000)
    assert err.value.code == "truncated"


def test_truncated_gzip():
    with pytest.raises(HeaderProblem) as err:
        read_fits_bytes(gzip.compress(_fits(_image()))[:500], stride=1, saturation_adu=50000)
    assert err.value.code == "truncated"


def test_not_fits_and_no_image():
    with pytest.raises(HeaderProblem) as err:
        read_fits_bytes(b"this is a log file\n" * 100, stride=1, saturation_adu=50000)
    assert err.value.code == "not_fits"
    buffer = io.BytesIO()
    fits.PrimaryHDU().writeto(buffer)
    with pytest.raises(HeaderProblem) as err:
        read_fits_bytes(buffer.getvalue(), stride=1, saturation_adu=50000)
    assert err.value.code == "no_image"
