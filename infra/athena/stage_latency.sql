-- p50/p95/p99 latency (milliseconds) per pipeline stage and end to end, by outcome (end_to_end counts
-- studies with results, 'ok', apart from those no model applied to, 'no_model'); failures are in
-- error_rate_by_reason.
SELECT stage,
       outcome,
       count(*) AS events,
       approx_percentile(duration_ms, 0.50) AS p50_ms,
       approx_percentile(duration_ms, 0.95) AS p95_ms,
       approx_percentile(duration_ms, 0.99) AS p99_ms
FROM telemetry
WHERE schema_version = '1' AND duration_ms IS NOT NULL AND outcome <> 'failed'
GROUP BY stage, outcome
ORDER BY p50_ms
