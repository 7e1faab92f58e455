"""mstlake: the data-lake catalogue and light-curve archive of the Mini-SiTian survey."""

import os
from importlib.metadata import PackageNotFoundError, version

# tables that reach a Dask worker through pickling are not 64-byte aligned; Arrow's query engine
# then warns on every scan unless told to copy them into aligned buffers (set before Arrow reads it)
os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "reallocate")

try:
    __version__ = version("mstlake")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_lake"]


def __getattr__(name: str):
    if name == "open_lake":  # mstlake.open_lake(path): imported on first use (it brings DuckDB in)
        from mstlake.query import open_lake

        return open_lake
    raise AttributeError(f"module 'mstlake' has no attribute {name!r}")
