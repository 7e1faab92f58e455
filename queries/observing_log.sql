-- The science frames, night by night: when, where the mount pointed, airmass and sky level.
SELECT night,
       telescope,
       band,
       date_obs,
       round(mjd, 6)                        AS mjd_mid,
       exptime,
       round(airmass, 3)                    AS airmass,
       round(ra_pointing, 4)                AS ra_pointing,
       round(dec_pointing, 4)               AS dec_pointing,
       round((median_adu - bias_level) * egain / exptime, 2) AS sky_e_per_s,
       warnings
FROM read_parquet(getvariable('lake') || '/tables/frames.parquet') AS f
LEFT JOIN (
    SELECT telescope AS bias_telescope, night AS bias_night, median(median_adu) AS bias_level
    FROM read_parquet(getvariable('lake') || '/tables/frames.parquet')
    WHERE type = 'bias'
    GROUP BY ALL
) AS b ON f.telescope = b.bias_telescope AND f.night = b.bias_night
WHERE type = 'science'
ORDER BY mjd;
