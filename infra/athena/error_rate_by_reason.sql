-- Failed studies by reason, and as a share of all studies that finished (completed or failed).
SELECT coalesce(reason, 'none') AS reason,
       count(*) AS failures,
       CAST(count(*) AS double) / (
           SELECT count(*) FROM telemetry WHERE schema_version = '1' AND stage IN ('end_to_end', 'failed')
       ) AS error_rate
FROM telemetry
WHERE schema_version = '1' AND stage = 'failed'
GROUP BY coalesce(reason, 'none')
ORDER BY failures DESC
