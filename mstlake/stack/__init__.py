"""Image stacking (issue 6): calibrated frames resampled onto a field's tangent-plane grid and combined."""
