"""Source extraction and astrometry (the paper's STATIC, first half): pure functions on arrays."""
