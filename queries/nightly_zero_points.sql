-- Per night, telescope and band: frames, zero point (median and spread), its fit rms, calibrators,
-- cloudy frames and the magfit rms (how far the frames' stars sit from the master reference).
SELECT night, telescope, band, count(*) AS frames, count(*) FILTER (WHERE status = 'calibrated') AS calibrated,
       count(*) FILTER (WHERE cloudy) AS cloudy, round(median(zero_point_mag), 4) AS zero_point_mag,
       round(stddev_samp(zero_point_mag), 4) AS zero_point_spread, round(median(zero_point_rms_mag), 4) AS zero_point_rms_mag,
       median(n_calibrators)::INTEGER AS calibrators, round(median(magfit_rms_mag), 4) AS magfit_rms_mag,
       round(median(seeing_arcsec), 2) AS seeing_arcsec
FROM frames
GROUP BY ALL
ORDER BY night, telescope, band;
