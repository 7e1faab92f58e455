"""The MST raw-data simulator: physically honest raw frames with their full truth.

Modules: ``sky`` (stars, the standard-star library, variability), ``optics`` (the true sky-to-pixel
mapping and the PSF across the field), ``detector`` (the CMOS camera: bias, pepper-and-salt pixels,
hot/dead pixels, flat field, read-out), ``render`` (stars, sky, tracks, cosmic rays onto pixels),
``schedule`` (what each telescope exposes, and when), ``headers`` (FITS headers as acquisition
software writes them) and ``frames`` (one exposure from all of these). They are pure functions of a
seed; ``mstlake.pipeline.simulate`` writes the files.

The pipeline never imports these modules: the simulator's models (distortion, PSF, flat) are its own,
so scoring the pipeline against the truth is honest.
"""
