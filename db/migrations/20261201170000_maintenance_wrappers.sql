-- Maintenance run by the system itself (issue 7): the ingest service's scheduler
-- (shared/maintenance.py) creates event partitions ahead, drops expired ones,
-- removes old action_results and trigger_evaluations and refreshes the stats
-- views. The services' roles own no table, so they cannot run the owner's
-- maintenance functions (EXECUTE revoked from PUBLIC; DROP TABLE, REFRESH
-- MATERIALIZED VIEW need the owner). This migration
--   * gives the owner's functions a reference time (the "now" they compute from),
--     as new overloads; the old signatures stay and call them with now(), so
--     nothing that calls them changes;
--   * adds SECURITY DEFINER wrappers maintenance_*() (owned by the migrating
--     owner, search_path pinned) with EXECUTE granted to erc8004_ingest only,
--     and maintenance_claim() over the table maintenance_runs, so that one
--     replica runs each task per interval.
--
-- Guards in the wrappers, because a role that may call them could otherwise
-- expire everything: the retention periods have floors (events 30 days,
-- action_results 1 day, trigger_evaluations 1 hour), and the reference time may
-- be at most maintenance_max_clock_skew() (5 minutes) ahead of the database's
-- clock. Only the owner can change that limit (tests replace the function in
-- their scratch database to move the clock forward).

-- migrate:up

-- ensure_event_partitions(months_ahead, months_back, reference): as the two-argument
-- version of 20261124190003_events.sql, with the months counted from `reference`.
CREATE FUNCTION ensure_event_partitions(months_ahead INTEGER, months_back INTEGER,
                                        reference TIMESTAMPTZ)
RETURNS INTEGER AS $$
DECLARE
    this_month TIMESTAMP;
    month_start TIMESTAMP;
    lower_bound TIMESTAMPTZ;
    upper_bound TIMESTAMPTZ;
    partition_name TEXT;
    created INTEGER := 0;
BEGIN
    IF months_ahead IS NULL OR months_back IS NULL OR months_ahead < 0 OR months_back < 0 THEN
        RAISE EXCEPTION 'months_ahead and months_back must be >= 0';
    END IF;
    IF reference IS NULL THEN
        RAISE EXCEPTION 'reference must not be NULL';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'events'::regclass) THEN
        RETURN 0;
    END IF;
    this_month := date_trunc('month', reference AT TIME ZONE 'UTC');
    -- One run at a time (two concurrent runs would race on CREATE TABLE).
    PERFORM pg_advisory_xact_lock(hashtext('erc8004.ensure_event_partitions'));

    FOR month_start IN
        SELECT m FROM generate_series(this_month - make_interval(months => months_back),
                                      this_month + make_interval(months => months_ahead),
                                      INTERVAL '1 month') AS m
        UNION
        SELECT DISTINCT date_trunc('month', block_time AT TIME ZONE 'UTC') FROM events_default
        ORDER BY 1
    LOOP
        partition_name := 'events_p' || to_char(month_start, 'YYYYMM');
        CONTINUE WHEN to_regclass(quote_ident(partition_name)) IS NOT NULL;
        lower_bound := month_start AT TIME ZONE 'UTC';
        upper_bound := (month_start + INTERVAL '1 month') AT TIME ZONE 'UTC';

        IF EXISTS (SELECT 1 FROM events_default
                   WHERE block_time >= lower_bound AND block_time < upper_bound) THEN
            EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           partition_name);
            PERFORM set_config('erc8004.events_maintenance', 'on', true);
            EXECUTE format(
                'WITH moved AS (DELETE FROM events_default'
                '               WHERE block_time >= $1 AND block_time < $2 RETURNING *)'
                ' INSERT INTO %I SELECT * FROM moved', partition_name)
                USING lower_bound, upper_bound;
            PERFORM set_config('erc8004.events_maintenance', 'off', true);
            EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           partition_name, lower_bound, upper_bound);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                           partition_name, lower_bound, upper_bound);
        END IF;
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION ensure_event_partitions(INTEGER, INTEGER, TIMESTAMPTZ) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ensure_event_partitions(months_ahead INTEGER DEFAULT 3,
                                                   months_back INTEGER DEFAULT 1)
RETURNS INTEGER AS $$
BEGIN
    RETURN ensure_event_partitions(months_ahead, months_back, NOW());
END;
$$ LANGUAGE plpgsql;

-- cleanup_old_action_results(older_than, reference): deletes action_results
-- executed before reference - older_than; returns the number deleted.
CREATE FUNCTION cleanup_old_action_results(older_than INTERVAL, reference TIMESTAMPTZ)
RETURNS BIGINT AS $$
DECLARE
    deleted BIGINT;
BEGIN
    IF older_than IS NULL OR reference IS NULL THEN
        RAISE EXCEPTION 'older_than and reference must not be NULL';
    END IF;
    DELETE FROM action_results WHERE executed_at < reference - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION cleanup_old_action_results(INTERVAL, TIMESTAMPTZ) FROM PUBLIC;

CREATE OR REPLACE FUNCTION cleanup_old_action_results()
RETURNS void AS $$
BEGIN
    PERFORM cleanup_old_action_results(INTERVAL '90 days', NOW());
END;
$$ LANGUAGE plpgsql;

-- cleanup_old_trigger_evaluations(older_than, reference): the same for the
-- matcher's idempotency records; returns the number deleted.
CREATE FUNCTION cleanup_old_trigger_evaluations(older_than INTERVAL, reference TIMESTAMPTZ)
RETURNS BIGINT AS $$
DECLARE
    deleted BIGINT;
BEGIN
    IF older_than IS NULL OR reference IS NULL THEN
        RAISE EXCEPTION 'older_than and reference must not be NULL';
    END IF;
    DELETE FROM trigger_evaluations WHERE evaluated_at < reference - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION cleanup_old_trigger_evaluations(INTERVAL, TIMESTAMPTZ) FROM PUBLIC;

CREATE OR REPLACE FUNCTION cleanup_old_trigger_evaluations(
    older_than INTERVAL DEFAULT INTERVAL '30 days')
RETURNS BIGINT AS $$
BEGIN
    RETURN cleanup_old_trigger_evaluations(older_than, NOW());
END;
$$ LANGUAGE plpgsql;

-- ---------------------------------------------------------------------------
-- How far ahead of the database's clock a caller may put the reference time.
-- The owner may replace this function (tests do, to move the clock forward).
CREATE FUNCTION maintenance_max_clock_skew()
RETURNS INTERVAL LANGUAGE sql IMMUTABLE AS $$ SELECT INTERVAL '5 minutes' $$;

REVOKE EXECUTE ON FUNCTION maintenance_max_clock_skew() FROM PUBLIC;

-- maintenance_reference(reference): the reference to use (NULL: now()), refused
-- when it is further ahead than maintenance_max_clock_skew().
CREATE FUNCTION maintenance_reference(reference TIMESTAMPTZ)
RETURNS TIMESTAMPTZ AS $$
BEGIN
    IF reference IS NULL THEN
        RETURN NOW();
    END IF;
    IF reference > NOW() + maintenance_max_clock_skew() THEN
        RAISE EXCEPTION 'reference time % is more than % ahead of the database clock',
            reference, maintenance_max_clock_skew()
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN reference;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION maintenance_reference(TIMESTAMPTZ) FROM PUBLIC;

-- maintenance_retention(value, floor, what): value, refused under floor.
CREATE FUNCTION maintenance_retention(retention INTERVAL, floor INTERVAL, what TEXT)
RETURNS INTERVAL AS $$
BEGIN
    IF retention IS NULL OR retention < floor THEN
        RAISE EXCEPTION '% retention % is below its floor %', what, retention, floor
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN retention;
END;
$$ LANGUAGE plpgsql;

REVOKE EXECUTE ON FUNCTION maintenance_retention(INTERVAL, INTERVAL, TEXT) FROM PUBLIC;

-- maintenance_runs: when each task last ran to completion (committed), so that
-- of several ingest replicas only one runs a task per interval. Owned by the
-- owner, no grants: only maintenance_claim() writes it.
CREATE TABLE maintenance_runs (
    task TEXT PRIMARY KEY,
    last_run_at TIMESTAMPTZ NOT NULL
);

-- maintenance_claim(task, min_interval): true when the task has not run within
-- min_interval, recording this run. Called in the task's own transaction, so a
-- run that fails rolls its claim back and another replica may try again.
CREATE FUNCTION maintenance_claim(task TEXT, min_interval INTERVAL DEFAULT INTERVAL '0')
RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    claimed BOOLEAN;
BEGIN
    IF task IS NULL OR min_interval IS NULL THEN
        RAISE EXCEPTION 'task and min_interval must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO maintenance_runs AS r (task, last_run_at)
    VALUES (maintenance_claim.task, NOW())
    ON CONFLICT ON CONSTRAINT maintenance_runs_pkey DO UPDATE
        SET last_run_at = NOW()
        WHERE r.last_run_at <= NOW() - min_interval
    RETURNING true INTO claimed;
    RETURN COALESCE(claimed, false);
END;
$$;

REVOKE EXECUTE ON FUNCTION maintenance_claim(TEXT, INTERVAL) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION maintenance_claim(TEXT, INTERVAL) TO erc8004_ingest;

-- The wrappers the scheduler calls (SECURITY DEFINER: they run as the owner).
CREATE FUNCTION maintenance_ensure_event_partitions(months_ahead INTEGER DEFAULT 3,
                                                    months_back INTEGER DEFAULT 1,
                                                    reference TIMESTAMPTZ DEFAULT NULL)
RETURNS INTEGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    IF months_ahead > 24 OR months_back > 24 THEN
        RAISE EXCEPTION 'months_ahead and months_back must be <= 24'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN ensure_event_partitions(months_ahead, months_back, maintenance_reference(reference));
END;
$$;

CREATE FUNCTION maintenance_drop_event_partitions(retention INTERVAL DEFAULT INTERVAL '365 days',
                                                  reference TIMESTAMPTZ DEFAULT NULL)
RETURNS INTEGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    RETURN drop_event_partitions_older_than(
        maintenance_reference(reference)
        - maintenance_retention(retention, INTERVAL '30 days', 'events'));
END;
$$;

CREATE FUNCTION maintenance_cleanup_action_results(retention INTERVAL DEFAULT INTERVAL '90 days',
                                                   reference TIMESTAMPTZ DEFAULT NULL)
RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    RETURN cleanup_old_action_results(
        maintenance_retention(retention, INTERVAL '1 day', 'action_results'),
        maintenance_reference(reference));
END;
$$;

CREATE FUNCTION maintenance_cleanup_trigger_evaluations(
    retention INTERVAL DEFAULT INTERVAL '30 days', reference TIMESTAMPTZ DEFAULT NULL)
RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    RETURN cleanup_old_trigger_evaluations(
        maintenance_retention(retention, INTERVAL '1 hour', 'trigger_evaluations'),
        maintenance_reference(reference));
END;
$$;

CREATE FUNCTION maintenance_refresh_stats_views()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM refresh_stats_views();
END;
$$;

REVOKE EXECUTE ON FUNCTION maintenance_ensure_event_partitions(INTEGER, INTEGER, TIMESTAMPTZ)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION maintenance_drop_event_partitions(INTERVAL, TIMESTAMPTZ) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION maintenance_cleanup_action_results(INTERVAL, TIMESTAMPTZ) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION maintenance_cleanup_trigger_evaluations(INTERVAL, TIMESTAMPTZ)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION maintenance_refresh_stats_views() FROM PUBLIC;

GRANT EXECUTE ON FUNCTION maintenance_ensure_event_partitions(INTEGER, INTEGER, TIMESTAMPTZ)
    TO erc8004_ingest;
GRANT EXECUTE ON FUNCTION maintenance_drop_event_partitions(INTERVAL, TIMESTAMPTZ)
    TO erc8004_ingest;
GRANT EXECUTE ON FUNCTION maintenance_cleanup_action_results(INTERVAL, TIMESTAMPTZ)
    TO erc8004_ingest;
GRANT EXECUTE ON FUNCTION maintenance_cleanup_trigger_evaluations(INTERVAL, TIMESTAMPTZ)
    TO erc8004_ingest;
GRANT EXECUTE ON FUNCTION maintenance_refresh_stats_views() TO erc8004_ingest;

-- migrate:down
DROP FUNCTION IF EXISTS maintenance_claim(TEXT, INTERVAL);
DROP TABLE IF EXISTS maintenance_runs;
DROP FUNCTION IF EXISTS maintenance_refresh_stats_views();
DROP FUNCTION IF EXISTS maintenance_cleanup_trigger_evaluations(INTERVAL, TIMESTAMPTZ);
DROP FUNCTION IF EXISTS maintenance_cleanup_action_results(INTERVAL, TIMESTAMPTZ);
DROP FUNCTION IF EXISTS maintenance_drop_event_partitions(INTERVAL, TIMESTAMPTZ);
DROP FUNCTION IF EXISTS maintenance_ensure_event_partitions(INTEGER, INTEGER, TIMESTAMPTZ);
DROP FUNCTION IF EXISTS maintenance_retention(INTERVAL, INTERVAL, TEXT);
DROP FUNCTION IF EXISTS maintenance_reference(TIMESTAMPTZ);
DROP FUNCTION IF EXISTS maintenance_max_clock_skew();

-- The owner's functions as 20261124190002/3 left them.
CREATE OR REPLACE FUNCTION cleanup_old_trigger_evaluations(
    older_than INTERVAL DEFAULT INTERVAL '30 days')
RETURNS BIGINT AS $$
DECLARE
    deleted BIGINT;
BEGIN
    DELETE FROM trigger_evaluations WHERE evaluated_at < NOW() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
$$ LANGUAGE plpgsql;
DROP FUNCTION IF EXISTS cleanup_old_trigger_evaluations(INTERVAL, TIMESTAMPTZ);

CREATE OR REPLACE FUNCTION cleanup_old_action_results()
RETURNS void AS $$
BEGIN
    DELETE FROM action_results
    WHERE executed_at < NOW() - INTERVAL '90 days';
END;
$$ LANGUAGE plpgsql;
DROP FUNCTION IF EXISTS cleanup_old_action_results(INTERVAL, TIMESTAMPTZ);

CREATE OR REPLACE FUNCTION ensure_event_partitions(months_ahead INTEGER DEFAULT 3,
                                                   months_back INTEGER DEFAULT 1)
RETURNS INTEGER AS $$
DECLARE
    this_month TIMESTAMP := date_trunc('month', NOW() AT TIME ZONE 'UTC');
    month_start TIMESTAMP;
    lower_bound TIMESTAMPTZ;
    upper_bound TIMESTAMPTZ;
    partition_name TEXT;
    created INTEGER := 0;
BEGIN
    IF months_ahead IS NULL OR months_back IS NULL OR months_ahead < 0 OR months_back < 0 THEN
        RAISE EXCEPTION 'months_ahead and months_back must be >= 0';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'events'::regclass) THEN
        RETURN 0;
    END IF;
    -- One run at a time (two concurrent runs would race on CREATE TABLE).
    PERFORM pg_advisory_xact_lock(hashtext('erc8004.ensure_event_partitions'));

    FOR month_start IN
        SELECT m FROM generate_series(this_month - make_interval(months => months_back),
                                      this_month + make_interval(months => months_ahead),
                                      INTERVAL '1 month') AS m
        UNION
        SELECT DISTINCT date_trunc('month', block_time AT TIME ZONE 'UTC') FROM events_default
        ORDER BY 1
    LOOP
        partition_name := 'events_p' || to_char(month_start, 'YYYYMM');
        CONTINUE WHEN to_regclass(quote_ident(partition_name)) IS NOT NULL;
        lower_bound := month_start AT TIME ZONE 'UTC';
        upper_bound := (month_start + INTERVAL '1 month') AT TIME ZONE 'UTC';

        IF EXISTS (SELECT 1 FROM events_default
                   WHERE block_time >= lower_bound AND block_time < upper_bound) THEN
            -- CREATE ... PARTITION OF would fail on the rows of that range in the
            -- DEFAULT partition: build the partition apart, move the rows, attach
            -- (ATTACH adds the indexes, the foreign key and the triggers of events).
            EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           partition_name);
            PERFORM set_config('erc8004.events_maintenance', 'on', true);
            EXECUTE format(
                'WITH moved AS (DELETE FROM events_default'
                '               WHERE block_time >= $1 AND block_time < $2 RETURNING *)'
                ' INSERT INTO %I SELECT * FROM moved', partition_name)
                USING lower_bound, upper_bound;
            PERFORM set_config('erc8004.events_maintenance', 'off', true);
            EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           partition_name, lower_bound, upper_bound);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                           partition_name, lower_bound, upper_bound);
        END IF;
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$ LANGUAGE plpgsql;
DROP FUNCTION IF EXISTS ensure_event_partitions(INTEGER, INTEGER, TIMESTAMPTZ);
