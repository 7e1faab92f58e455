"""Photometry (the paper's STATIC, second half): pure functions on arrays and tables."""
