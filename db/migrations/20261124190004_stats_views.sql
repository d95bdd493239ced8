-- Statistics views of the first schema draft: events_hourly, action_metrics_hourly,
-- and refresh_stats_views(). Every change against the document is marked
-- "DEVIATION" and listed in db/README.md.
--
-- events_hourly:
--   TimescaleDB installed: the document's continuous aggregate with its refresh
--     policy, bucketed on block_time (the document's created_at is no longer the
--     time column of the hypertable).
--   Plain PostgreSQL (DEVIATION): a plain materialized view with the same columns
--     (hour, chain_id, registry, event_type, event_count), hours in UTC, with a
--     unique index so that it can be refreshed CONCURRENTLY (readers are never
--     blocked) by refresh_stats_views().
-- action_metrics_hourly: the document's materialized view, hours in UTC
--   (DEVIATION: date_trunc('hour', executed_at, 'UTC') instead of the session time
--   zone's hours), plus a unique index on (hour, action_type) for CONCURRENTLY.

-- migrate:up
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $ts$
            CREATE MATERIALIZED VIEW events_hourly
            WITH (timescaledb.continuous) AS
            SELECT
                time_bucket('1 hour', block_time) AS hour,
                chain_id,
                registry,
                event_type,
                COUNT(*) AS event_count
            FROM events
            GROUP BY hour, chain_id, registry, event_type
            WITH NO DATA
        $ts$;
        EXECUTE $ts$
            SELECT add_continuous_aggregate_policy('events_hourly',
                start_offset => INTERVAL '3 hours',
                end_offset => INTERVAL '1 hour',
                schedule_interval => INTERVAL '1 hour')
        $ts$;
    ELSE
        CREATE MATERIALIZED VIEW events_hourly AS
        SELECT
            date_trunc('hour', block_time, 'UTC') AS hour,
            chain_id,
            registry,
            event_type,
            COUNT(*) AS event_count
        FROM events
        GROUP BY 1, chain_id, registry, event_type;

        CREATE UNIQUE INDEX idx_events_hourly_key
            ON events_hourly(hour, chain_id, registry, event_type);
    END IF;
END
$migration$;

CREATE MATERIALIZED VIEW action_metrics_hourly AS
SELECT
    date_trunc('hour', executed_at, 'UTC') AS hour,
    action_type,
    COUNT(*) AS total_executions,
    SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) AS success_count,
    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failure_count,
    AVG(duration_ms) AS avg_duration_ms,
    PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM action_results
GROUP BY 1, action_type;

-- (hour is NULL only for rows without executed_at; GROUP BY makes at most one
-- such row per action_type, so the key stays unique.)
CREATE UNIQUE INDEX idx_action_metrics_hourly_key
    ON action_metrics_hourly(hour, action_type);

-- refresh_stats_views(): refreshes both views CONCURRENTLY (the TimescaleDB
-- continuous aggregate refreshes itself through its policy and is skipped).
-- Run by the schema owner on a schedule, e.g. every few minutes (EXECUTE is
-- revoked from PUBLIC; REFRESH needs the views' owner anyway).
CREATE FUNCTION refresh_stats_views()
RETURNS void AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_matviews
               WHERE schemaname = current_schema() AND matviewname = 'events_hourly') THEN
        REFRESH MATERIALIZED VIEW CONCURRENTLY events_hourly;
    END IF;
    REFRESH MATERIALIZED VIEW CONCURRENTLY action_metrics_hourly;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION refresh_stats_views() FROM PUBLIC;

-- migrate:down
DROP FUNCTION IF EXISTS refresh_stats_views();
DROP MATERIALIZED VIEW IF EXISTS action_metrics_hourly;
DROP MATERIALIZED VIEW IF EXISTS events_hourly;
