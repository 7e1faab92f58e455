-- Flux calibration night by night: zero points, their scatter, transparency and cloudy frames.
SELECT p.night,
       f.telescope,
       p.band,
       count(*)                                             AS frames,
       count(*) FILTER (WHERE p.status = 'calibrated')      AS calibrated,
       count(*) FILTER (WHERE p.cloudy)                     AS cloudy,
       round(median(p.zero_point_mag), 3)                   AS median_zero_point_mag,
       round(1000 * median(p.zero_point_rms_mag), 1)        AS median_zp_scatter_mmag,
       median(p.n_calibrators)                              AS median_calibrators,
       round(min(p.transparency), 3)                        AS min_transparency,
       round(median(p.psf_fwhm_px), 2)                      AS median_psf_fwhm_px,
       string_agg(DISTINCT p.reason, '; ')                  AS problems
FROM read_parquet(getvariable('lake') || '/tables/photometry.parquet') AS p
JOIN read_parquet(getvariable('lake') || '/tables/frames.parquet') AS f USING (frame_id)
GROUP BY ALL
ORDER BY p.night, f.telescope;
