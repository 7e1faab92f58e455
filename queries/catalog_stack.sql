-- A catalogue stack: the best-covered bright star's light curve binned by N consecutive epochs per
-- band (SET VARIABLE object_id = ...; n = ...; default N = 3): weighted mean magnitude, its error,
-- mean time. The scatter of the binned points falls as 1/sqrt(N) down to the systematic floor.
-- catalog_stack() takes a constant id: the default (the best-covered library star) is found first
SET VARIABLE object_id = coalesce(getvariable('object_id'), (SELECT object_id FROM objects WHERE library_id IS NOT NULL ORDER BY n_g + n_r + n_i DESC, mean_g LIMIT 1));
SELECT object_id, band, bin, epochs, round(mjd, 5) AS mjd, round(mag, 4) AS mag, round(mag_err, 4) AS mag_err
FROM catalog_stack(getvariable('object_id'), coalesce(getvariable('n'), 3));
