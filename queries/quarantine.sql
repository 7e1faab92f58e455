-- Files set aside by the inventory, with the reason in words (the files themselves are untouched).
SELECT reason_code,
       path,
       reason,
       duplicate_of,
       quarantined_at
FROM read_parquet(getvariable('lake') || '/tables/quarantine.parquet')
ORDER BY reason_code, path;
