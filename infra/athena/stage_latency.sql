-- p50/p95/p99 latency per pipeline stage and end to end (milliseconds), over the last day.
SELECT stage,
       count(*) AS events,
       approx_percentile(duration_ms, 0.50) AS p50_ms,
       approx_percentile(duration_ms, 0.95) AS p95_ms,
       approx_percentile(duration_ms, 0.99) AS p99_ms
FROM radstream_telemetry
WHERE duration_ms IS NOT NULL AND outcome <> 'failed'
GROUP BY stage
ORDER BY p50_ms
