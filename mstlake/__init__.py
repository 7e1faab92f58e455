"""mstlake: the data-lake catalogue and light-curve archive of the Mini-SiTian survey."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mstlake")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
