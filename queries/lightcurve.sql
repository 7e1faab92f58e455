-- One object's light curve: every forced-photometry point (magfit magnitude where present), with
-- the frame's quality. Set the object first (SET VARIABLE object_id = 1234;), or get the
-- best-covered bright star's. Needs mstlake.open_lake (or `mstlake sql`), which defines lightcurve().
-- lightcurve() takes a constant id: the default (the best-covered library star) is found first
SET VARIABLE object_id = coalesce(getvariable('object_id'), (SELECT object_id FROM objects WHERE library_id IS NOT NULL ORDER BY n_g + n_r + n_i DESC, mean_g LIMIT 1));
SELECT object_id, band, round(mjd, 6) AS mjd, round(mag, 4) AS mag, round(mag_err, 4) AS mag_err,
       round(mag_magfit, 4) AS mag_magfit, flux, flux_err, flag, cloudy, good
FROM lightcurve(getvariable('object_id'))
ORDER BY band, mjd;
