"""Calibration kernels (the paper's STIR): master frames, CMOS pixel maps and masks.

Plain numpy functions on arrays. Functions that combine frames take a stack with frames along axis 0
and work on any spatial block, so a Dask graph can run them on row chunks of full-size frames.
"""
