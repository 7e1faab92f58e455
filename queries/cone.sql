-- Objects within a radius of a position (SET VARIABLE ra = ...; dec = ...; radius_arcsec = ...;
-- default: 2 arcmin around the middle of the archive's objects), nearest first, with their mean
-- magnitudes and variability indices. cone() reads only the HEALPix partitions it needs.
-- cone() needs a constant centre and radius (so that it reads only the partitions they touch):
-- compute them first, as variables
SET VARIABLE ra = coalesce(getvariable('ra'), (SELECT median(ra) FROM objects));
SET VARIABLE dec = coalesce(getvariable('dec'), (SELECT median(dec) FROM objects));
SET VARIABLE radius_arcsec = coalesce(getvariable('radius_arcsec'), 120.0);
SELECT object_id, library_id, round(separation_arcsec, 3) AS separation_arcsec, round(ra, 7) AS ra, round(dec, 7) AS dec,
       n_g, round(mean_g, 4) AS mean_g, n_r, round(mean_r, 4) AS mean_r, n_i, round(mean_i, 4) AS mean_i,
       round(chi2_g, 2) AS chi2_g, round(stetson_j_g, 2) AS stetson_j_g
FROM cone(getvariable('ra'), getvariable('dec'), getvariable('radius_arcsec'));
