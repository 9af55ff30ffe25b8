-- Failed studies by reason, and as a share of all studies that finished (completed or failed).
SELECT coalesce(reason, 'none') AS reason,
       count(*) AS failures,
       CAST(count(*) AS double) / (SELECT count(*) FROM radstream_telemetry WHERE stage IN ('end_to_end', 'failed')) AS error_rate
FROM radstream_telemetry
WHERE stage = 'failed'
GROUP BY coalesce(reason, 'none')
ORDER BY failures DESC
