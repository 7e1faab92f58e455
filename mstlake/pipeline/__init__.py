"""Dask wiring: every graph mstlake runs is assembled here; the work itself lives in the other
subpackages as plain functions."""
