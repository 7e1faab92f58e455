-- Objects the reference library does not have (transients, asteroids, missing stars) first seen on
-- the last night of the archive, with how often and where they were detected.
WITH last_night AS (SELECT max(night) AS night, min(mjd) FILTER (WHERE night = (SELECT max(night) FROM frames)) AS start FROM frames)
SELECT o.object_id, round(o.ra, 6) AS ra, round(o.dec, 6) AS dec, o.n_detections, round(o.first_mjd, 5) AS first_mjd,
       round(o.last_mjd, 5) AS last_mjd, list(DISTINCT s.band ORDER BY s.band) AS bands, round(min(s.mag_psf), 3) AS brightest_mag,
       round(max(s.separation_arcsec), 3) AS max_separation_arcsec
FROM objects o JOIN sources s USING (object_id)
WHERE o.library_id IS NULL AND o.first_mjd >= (SELECT start FROM last_night)
GROUP BY ALL
ORDER BY o.n_detections DESC, brightest_mag
LIMIT 100;
