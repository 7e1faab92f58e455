-- Forced-photometry light curves of the reference stars with the most points: time, band,
-- calibrated magnitude (null for a non-detection) and flux with its error (kept when negative).
WITH points AS (
    SELECT fp.source_id,
           fr.mjd,
           p.band,
           fp.mag,
           fp.mag_err,
           fp.flux,
           fp.flux_err,
           fp.flag,
           p.cloudy
    FROM read_parquet(getvariable('lake') || '/tables/forced_photometry/*/*/*.parquet') AS fp
    JOIN read_parquet(getvariable('lake') || '/tables/photometry.parquet') AS p USING (frame_id)
    JOIN read_parquet(getvariable('lake') || '/tables/frames.parquet') AS fr USING (frame_id)
),
busiest AS (
    SELECT source_id FROM points WHERE mag IS NOT NULL AND NOT cloudy
    GROUP BY source_id ORDER BY count(*) DESC, source_id LIMIT 3
)
SELECT source_id, mjd, band, round(mag, 4) AS mag, round(mag_err, 4) AS mag_err, flux, flux_err, flag, cloudy
FROM points JOIN busiest USING (source_id)
ORDER BY source_id, mjd;
