-- Variable-star candidates: reduced chi^2 against a constant and Stetson J above thresholds in g
-- (SET VARIABLE band = 'r'; for another band; min_epochs, default 5), with their amplitudes in every band.
SELECT v.object_id, v.library_id, round(v.ra, 6) AS ra, round(v.dec, 6) AS dec, v.epochs,
       round(v.median_mag, 3) AS median_mag, round(v.chi2, 1) AS chi2, round(v.stetson_j, 2) AS stetson_j,
       round(v.stetson_k, 3) AS stetson_k, round(o.amplitude_g, 3) AS amplitude_g, round(o.amplitude_r, 3) AS amplitude_r,
       round(o.amplitude_i, 3) AS amplitude_i
FROM variables(coalesce(getvariable('band'), 'g'), coalesce(getvariable('min_epochs'), 5), 3.0, 0.3) v JOIN objects o USING (object_id)
ORDER BY v.stetson_j DESC
LIMIT 50;
