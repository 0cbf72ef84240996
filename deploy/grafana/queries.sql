-- The SQL of every panel of edgeflow-dashboard.json, in panel order: each
-- query follows its "-- panel: <title>" line, the same text as the panel's
-- rawSql (tests/it/postgres.rs checks both, and runs every query against
-- tables a node filled). ${schema} is the dashboard's `schema` variable
-- (default edgeflow, the sink's schema); $__timeFilter(col) is Grafana's
-- macro for the dashboard's time range.

-- panel: Segments, latest window
SELECT DISTINCT ON (c.segment_id)
  c.window_start AS "time",
  c.segment_id,
  s.name,
  ST_Y(ST_LineInterpolatePoint(s.geom, 0.5)) AS latitude,
  ST_X(ST_LineInterpolatePoint(s.geom, 0.5)) AS longitude,
  c.speed_ratio::float8 AS speed_ratio,
  c.level,
  c.mean_speed_mps::float8 AS mean_speed_mps,
  c.samples
FROM ${schema}.congestion c
JOIN ${schema}.segments s ON s.id = c.segment_id
WHERE $__timeFilter(c.window_start) AND s.geom IS NOT NULL
ORDER BY c.segment_id, c.window_start DESC

-- panel: Speed ratio, the 10 busiest segments
WITH top AS (
  SELECT segment_id
  FROM ${schema}.congestion
  WHERE $__timeFilter(window_start)
  GROUP BY segment_id
  ORDER BY sum(samples) DESC, segment_id
  LIMIT 10
)
SELECT c.window_start AS "time", c.segment_id AS metric, c.speed_ratio::float8 AS speed_ratio
FROM ${schema}.congestion c
JOIN top USING (segment_id)
WHERE $__timeFilter(c.window_start)
ORDER BY 1, 2

-- panel: Mean speed, the 10 busiest segments (m/s)
WITH top AS (
  SELECT segment_id
  FROM ${schema}.congestion
  WHERE $__timeFilter(window_start)
  GROUP BY segment_id
  ORDER BY sum(samples) DESC, segment_id
  LIMIT 10
)
SELECT c.window_start AS "time", c.segment_id AS metric, c.mean_speed_mps::float8 AS mean_speed_mps
FROM ${schema}.congestion c
JOIN top USING (segment_id)
WHERE $__timeFilter(c.window_start)
ORDER BY 1, 2

-- panel: Charging energy per zone (kWh per window)
SELECT z.window_start AS "time", coalesce(n.name, z.zone_id) AS metric, z.energy_wh / 1000.0 AS energy_kwh
FROM ${schema}.zone_stats z
LEFT JOIN ${schema}.zones n ON n.zone_type = z.zone_type AND n.id = z.zone_id
WHERE $__timeFilter(z.window_start) AND z.zone_type = 'zone' AND z.chargers > 0
ORDER BY 1, 2

-- panel: Charging power per zone (kW)
SELECT z.window_start AS "time", coalesce(n.name, z.zone_id) AS metric, z.power_kw::float8 AS power_kw
FROM ${schema}.zone_stats z
LEFT JOIN ${schema}.zones n ON n.zone_type = z.zone_type AND n.id = z.zone_id
WHERE $__timeFilter(z.window_start) AND z.zone_type = 'zone' AND z.chargers > 0
ORDER BY 1, 2

-- panel: Charging energy per charger (kWh per window)
SELECT c.window_start AS "time", coalesce(ch.name, c.charger_id) AS metric, c.energy_wh / 1000.0 AS energy_kwh
FROM ${schema}.charging c
LEFT JOIN ${schema}.chargers ch ON ch.id = c.charger_id
WHERE $__timeFilter(c.window_start)
ORDER BY 1, 2

-- panel: Charging power per charger (kW)
SELECT c.window_start AS "time", coalesce(ch.name, c.charger_id) AS metric, c.mean_power_kw::float8 AS power_kw
FROM ${schema}.charging c
LEFT JOIN ${schema}.chargers ch ON ch.id = c.charger_id
WHERE $__timeFilter(c.window_start)
ORDER BY 1, 2

-- panel: Connectors occupied per charger
SELECT c.window_start AS "time", coalesce(ch.name, c.charger_id) AS metric, c.occupied
FROM ${schema}.charging c
LEFT JOIN ${schema}.chargers ch ON ch.id = c.charger_id
WHERE $__timeFilter(c.window_start)
ORDER BY 1, 2
