-- What did each telescope take each night?
SELECT telescope,
       band,
       night,
       count(*) FILTER (WHERE type = 'bias')    AS bias,
       count(*) FILTER (WHERE type = 'dark')    AS dark,
       count(*) FILTER (WHERE type = 'flat')    AS flat,
       count(*) FILTER (WHERE type = 'science') AS science,
       round(sum(exptime) FILTER (WHERE type = 'science') / 3600, 2) AS science_hours
FROM read_parquet(getvariable('lake') || '/tables/frames.parquet')
GROUP BY telescope, band, night
ORDER BY night, telescope;
