-- Studies completed (end_to_end events) and images inferred per minute.
SELECT date_trunc('minute', ts) AS minute,
       count_if(stage = 'end_to_end') AS studies_completed,
       sum(CASE WHEN stage = 'inference' THEN instances ELSE 0 END) AS images_inferred
FROM telemetry
WHERE schema_version = '1'
GROUP BY date_trunc('minute', ts)
ORDER BY minute
