-- How many inference requests ran at each (median per study) Triton batch size.
SELECT batch_size,
       count(*) AS studies,
       approx_percentile(queue_wait_ms, 0.95) AS p95_queue_wait_ms
FROM telemetry
WHERE schema_version = '1' AND stage = 'inference' AND batch_size IS NOT NULL
GROUP BY batch_size
ORDER BY batch_size
