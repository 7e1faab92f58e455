-- Astrometric solutions night by night: how many frames solved, their fit quality, and why any failed.
SELECT a.night,
       f.telescope,
       a.band,
       count(*)                                          AS frames,
       count(*) FILTER (WHERE a.status = 'solved')       AS solved,
       round(median(a.rms_x_mas), 1)                     AS median_rms_x_mas,
       round(median(a.rms_y_mas), 1)                     AS median_rms_y_mas,
       median(a.n_matched)                               AS median_matched_stars,
       round(max(a.pointing_offset_arcmin), 2)           AS max_pointing_offset_arcmin,
       string_agg(DISTINCT a.reason, '; ')               AS failure_reasons
FROM read_parquet(getvariable('lake') || '/tables/astrometry.parquet') AS a
JOIN read_parquet(getvariable('lake') || '/tables/frames.parquet') AS f USING (frame_id)
GROUP BY ALL
ORDER BY a.night, f.telescope;
