\restrict dbmate

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: pgcrypto; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;


--
-- Name: EXTENSION pgcrypto; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON EXTENSION pgcrypto IS 'cryptographic functions';


--
-- Name: authenticate_api_key(text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.authenticate_api_key(p_key_hash text) RETURNS TABLE(api_key_id text, user_id text)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    UPDATE api_keys k
    SET last_used_at = NOW()
    FROM users u
    WHERE k.key_hash = p_key_hash
      AND k.revoked_at IS NULL
      AND u.id = k.user_id
      AND u.is_active IS NOT FALSE
    RETURNING k.id, k.user_id
$$;


--
-- Name: bump_trigger_version(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.bump_trigger_version() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.version_xact IS DISTINCT FROM pg_current_xact_id() THEN
        NEW.version := OLD.version + 1;
        NEW.version_xact := pg_current_xact_id();
    END IF;
    RETURN NEW;
END;
$$;


--
-- Name: bump_versions_of_changed_triggers(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.bump_versions_of_changed_triggers() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
DECLARE
    ids TEXT[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT trigger_id) INTO ids FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT trigger_id) INTO ids FROM old_rows;
    ELSIF TG_TABLE_NAME = 'trigger_conditions' THEN
        -- rows whose read columns changed, on either side (a moved row bumps both)
        SELECT array_agg(DISTINCT d.trigger_id) INTO ids FROM (
            (SELECT id, trigger_id, condition_type, field, operator, value, config FROM new_rows
             EXCEPT
             SELECT id, trigger_id, condition_type, field, operator, value, config FROM old_rows)
            UNION ALL
            (SELECT id, trigger_id, condition_type, field, operator, value, config FROM old_rows
             EXCEPT
             SELECT id, trigger_id, condition_type, field, operator, value, config FROM new_rows)
        ) d;
    ELSE
        SELECT array_agg(DISTINCT d.trigger_id) INTO ids FROM (
            (SELECT id, trigger_id, action_type, priority, config FROM new_rows
             EXCEPT
             SELECT id, trigger_id, action_type, priority, config FROM old_rows)
            UNION ALL
            (SELECT id, trigger_id, action_type, priority, config FROM old_rows
             EXCEPT
             SELECT id, trigger_id, action_type, priority, config FROM new_rows)
        ) d;
    END IF;
    IF ids IS NOT NULL THEN
        UPDATE triggers SET version = version + 1, version_xact = pg_current_xact_id()
        WHERE id = ANY (ids) AND version_xact IS DISTINCT FROM pg_current_xact_id();
    END IF;
    RETURN NULL;
END;
$$;


--
-- Name: cleanup_old_action_results(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.cleanup_old_action_results() RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM cleanup_old_action_results(INTERVAL '90 days', NOW());
END;
$$;


--
-- Name: cleanup_old_action_results(interval, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.cleanup_old_action_results(older_than interval, reference timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: cleanup_old_trigger_evaluations(interval); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.cleanup_old_trigger_evaluations(older_than interval DEFAULT '30 days'::interval) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN cleanup_old_trigger_evaluations(older_than, NOW());
END;
$$;


--
-- Name: cleanup_old_trigger_evaluations(interval, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.cleanup_old_trigger_evaluations(older_than interval, reference timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: current_app_user_id(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.current_app_user_id() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.current_user_id', true), '') $$;


--
-- Name: drop_event_partitions_older_than(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.drop_event_partitions_older_than(cutoff timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
DECLARE
    part RECORD;
    bounds TEXT[];
    lower_bound TIMESTAMPTZ;
    upper_bound TIMESTAMPTZ;
    dropped INTEGER := 0;
BEGIN
    IF cutoff IS NULL THEN
        RAISE EXCEPTION 'cutoff must not be NULL';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'events'::regclass) THEN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            EXECUTE 'SELECT count(*) FROM drop_chunks(''events'', older_than => $1)'
                INTO dropped USING cutoff;
            DELETE FROM event_ids e
            WHERE e.block_time < cutoff
              AND NOT EXISTS (SELECT 1 FROM events ev
                              WHERE ev.id = e.id AND ev.block_time = e.block_time);
        END IF;
        RETURN dropped;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('erc8004.ensure_event_partitions'));
    FOR part IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass
    LOOP
        -- "FOR VALUES FROM ('<lower>') TO ('<upper>')", or "DEFAULT".
        bounds := regexp_match(part.bound, '^FOR VALUES FROM \(''([^'']+)''\) TO \(''([^'']+)''\)$');
        CONTINUE WHEN bounds IS NULL;
        lower_bound := bounds[1]::TIMESTAMPTZ;
        upper_bound := bounds[2]::TIMESTAMPTZ;
        CONTINUE WHEN upper_bound > cutoff;
        EXECUTE format('DROP TABLE %s', part.rel);
        DELETE FROM event_ids WHERE block_time >= lower_bound AND block_time < upper_bound;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END;
$_$;


--
-- Name: ensure_event_partitions(integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.ensure_event_partitions(months_ahead integer DEFAULT 3, months_back integer DEFAULT 1) RETURNS integer
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN ensure_event_partitions(months_ahead, months_back, NOW());
END;
$$;


--
-- Name: ensure_event_partitions(integer, integer, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.ensure_event_partitions(months_ahead integer, months_back integer, reference timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
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
$_$;


--
-- Name: events_append_only(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.events_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF current_setting('erc8004.events_maintenance', true) = 'on' THEN
        IF TG_LEVEL = 'ROW' AND TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'a reorganised chain is recorded in reorgs; old events are removed by dropping partitions';
END;
$$;


--
-- Name: maintenance_claim(text, interval); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_claim(task text, min_interval interval DEFAULT '00:00:00'::interval) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
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


--
-- Name: maintenance_cleanup_action_results(interval, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_cleanup_action_results(retention interval DEFAULT '90 days'::interval, reference timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
BEGIN
    RETURN cleanup_old_action_results(
        maintenance_retention(retention, INTERVAL '1 day', 'action_results'),
        maintenance_reference(reference));
END;
$$;


--
-- Name: maintenance_cleanup_heartbeats(interval, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_cleanup_heartbeats(retention interval DEFAULT '365 days'::interval, reference timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
DECLARE
    removed BIGINT;
BEGIN
    DELETE FROM heartbeats
    WHERE block_time < maintenance_reference(reference)
        - maintenance_retention(retention, INTERVAL '1 day', 'heartbeats');
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END;
$$;


--
-- Name: maintenance_cleanup_trigger_evaluations(interval, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_cleanup_trigger_evaluations(retention interval DEFAULT '30 days'::interval, reference timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
BEGIN
    RETURN cleanup_old_trigger_evaluations(
        maintenance_retention(retention, INTERVAL '1 hour', 'trigger_evaluations'),
        maintenance_reference(reference));
END;
$$;


--
-- Name: maintenance_drop_event_partitions(interval, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_drop_event_partitions(retention interval DEFAULT '365 days'::interval, reference timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
BEGIN
    RETURN drop_event_partitions_older_than(
        maintenance_reference(reference)
        - maintenance_retention(retention, INTERVAL '30 days', 'events'));
END;
$$;


--
-- Name: maintenance_ensure_event_partitions(integer, integer, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_ensure_event_partitions(months_ahead integer DEFAULT 3, months_back integer DEFAULT 1, reference timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
BEGIN
    IF months_ahead > 24 OR months_back > 24 THEN
        RAISE EXCEPTION 'months_ahead and months_back must be <= 24'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN ensure_event_partitions(months_ahead, months_back, maintenance_reference(reference));
END;
$$;


--
-- Name: maintenance_last_runs(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_last_runs() RETURNS TABLE(task text, last_run_at timestamp with time zone)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$ SELECT r.task, r.last_run_at FROM maintenance_runs r $$;


--
-- Name: maintenance_max_clock_skew(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_max_clock_skew() RETURNS interval
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT INTERVAL '5 minutes' $$;


--
-- Name: maintenance_reference(timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_reference(reference timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE plpgsql
    AS $$
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
$$;


--
-- Name: maintenance_refresh_stats_views(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_refresh_stats_views() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
BEGIN
    PERFORM refresh_stats_views();
END;
$$;


--
-- Name: maintenance_retention(interval, interval, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.maintenance_retention(retention interval, floor interval, what text) RETURNS interval
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF retention IS NULL OR retention < floor THEN
        RAISE EXCEPTION '% retention % is below its floor %', what, retention, floor
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN retention;
END;
$$;


--
-- Name: notify_new_event(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.notify_new_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('new_event', '');
    RETURN NULL;
END;
$$;


--
-- Name: notify_outbox(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.notify_outbox() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$;


--
-- Name: notify_trigger_changed(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.notify_trigger_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    old_id TEXT;
    new_id TEXT;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_id := to_jsonb(OLD) ->> TG_ARGV[0];
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_id := to_jsonb(NEW) ->> TG_ARGV[0];
    END IF;
    IF new_id IS NOT NULL THEN
        PERFORM pg_notify('trigger_changed', new_id);
    END IF;
    IF old_id IS NOT NULL AND old_id IS DISTINCT FROM new_id THEN
        PERFORM pg_notify('trigger_changed', old_id);
    END IF;
    RETURN NULL;
END;
$$;


--
-- Name: recorded_attempts(text[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.recorded_attempts(job_ids text[]) RETURNS TABLE(job_id text, run_id text, attempt integer, status text)
    LANGUAGE sql STABLE
    SET enable_seqscan TO 'off'
    AS $$
    SELECT r.job_id, r.run_id, r.attempt, r.status
    FROM action_results r
    WHERE r.job_id = ANY(job_ids)
$$;


--
-- Name: refresh_stats_views(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.refresh_stats_views() RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_matviews
               WHERE schemaname = current_schema() AND matviewname = 'events_hourly') THEN
        REFRESH MATERIALIZED VIEW CONCURRENTLY events_hourly;
    END IF;
    REFRESH MATERIALIZED VIEW CONCURRENTLY action_metrics_hourly;
END;
$$;


--
-- Name: set_trigger_enabled_at(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.set_trigger_enabled_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.enabled_at = NOW();
    RETURN NEW;
END;
$$;


--
-- Name: update_updated_at_column(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.update_updated_at_column() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: action_results; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.action_results (
    id text DEFAULT (gen_random_uuid())::text NOT NULL,
    job_id text NOT NULL,
    trigger_id text,
    event_id text,
    user_id text,
    action_type text NOT NULL,
    status text NOT NULL,
    executed_at timestamp with time zone DEFAULT now(),
    duration_ms integer,
    error_message text,
    response_data jsonb,
    retry_count integer DEFAULT 0,
    attempt integer DEFAULT 1 NOT NULL,
    run_id text,
    event_version text,
    trigger_version integer,
    CONSTRAINT action_results_action_type_check CHECK ((action_type = ANY (ARRAY['telegram'::text, 'rest'::text, 'mcp'::text]))),
    CONSTRAINT action_results_attempt_check CHECK ((attempt >= 1)),
    CONSTRAINT action_results_status_check CHECK ((status = ANY (ARRAY['success'::text, 'failed'::text, 'retrying'::text, 'dead'::text, 'retracted'::text])))
);


--
-- Name: action_metrics_hourly; Type: MATERIALIZED VIEW; Schema: public; Owner: -
--

CREATE MATERIALIZED VIEW public.action_metrics_hourly AS
 SELECT date_trunc('hour'::text, action_results.executed_at, 'UTC'::text) AS hour,
    action_results.user_id,
    action_results.action_type,
    count(*) AS total_executions,
    sum(
        CASE
            WHEN (action_results.status = 'success'::text) THEN 1
            ELSE 0
        END) AS success_count,
    sum(
        CASE
            WHEN (action_results.status = 'failed'::text) THEN 1
            ELSE 0
        END) AS failure_count,
    avg(action_results.duration_ms) AS avg_duration_ms,
    percentile_cont((0.95)::double precision) WITHIN GROUP (ORDER BY ((action_results.duration_ms)::double precision)) AS p95_duration_ms
   FROM public.action_results
  GROUP BY (date_trunc('hour'::text, action_results.executed_at, 'UTC'::text)), action_results.user_id, action_results.action_type
  WITH NO DATA;


--
-- Name: action_metrics_hourly_mine; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.action_metrics_hourly_mine WITH (security_barrier='true') AS
 SELECT action_metrics_hourly.hour,
    action_metrics_hourly.action_type,
    action_metrics_hourly.total_executions,
    action_metrics_hourly.success_count,
    action_metrics_hourly.failure_count,
    action_metrics_hourly.avg_duration_ms,
    action_metrics_hourly.p95_duration_ms
   FROM public.action_metrics_hourly
  WHERE (action_metrics_hourly.user_id = public.current_app_user_id());


--
-- Name: agent_mcp_token_nonces; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_mcp_token_nonces (
    chain_id integer NOT NULL,
    agent_id bigint NOT NULL,
    nonce text NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    agent_registry text DEFAULT ''::text NOT NULL
);


--
-- Name: agent_mcp_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_mcp_tokens (
    chain_id integer NOT NULL,
    agent_id bigint NOT NULL,
    token_ciphertext bytea NOT NULL,
    owner_address text NOT NULL,
    created_at timestamp with time zone DEFAULT now(),
    updated_at timestamp with time zone DEFAULT now(),
    allowed_tools text[],
    allowed_users text[],
    agent_registry text DEFAULT ''::text NOT NULL
);


--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_keys (
    id text DEFAULT (gen_random_uuid())::text NOT NULL,
    user_id text NOT NULL,
    name text,
    prefix text NOT NULL,
    key_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone
);


--
-- Name: checkpoints; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.checkpoints (
    chain_id integer NOT NULL,
    last_block_number bigint NOT NULL,
    last_block_hash text NOT NULL,
    updated_at timestamp with time zone DEFAULT now()
);


--
-- Name: event_ids; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.event_ids (
    id text NOT NULL,
    block_time timestamp with time zone NOT NULL
);


--
-- Name: event_outbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.event_outbox (
    seq bigint NOT NULL,
    topic text DEFAULT 'erc8004.events'::text NOT NULL,
    msg_key text NOT NULL,
    payload bytea NOT NULL,
    broadcast boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
)
WITH (vacuum_truncate='false');


--
-- Name: event_outbox_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.event_outbox_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: event_outbox_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.event_outbox_seq_seq OWNED BY public.event_outbox.seq;


--
-- Name: events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
)
PARTITION BY RANGE (block_time);


--
-- Name: events_default; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events_default (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
);


--
-- Name: events_hourly; Type: MATERIALIZED VIEW; Schema: public; Owner: -
--

CREATE MATERIALIZED VIEW public.events_hourly AS
 SELECT date_trunc('hour'::text, events.block_time, 'UTC'::text) AS hour,
    events.chain_id,
    events.registry,
    events.event_type,
    count(*) AS event_count
   FROM public.events
  GROUP BY (date_trunc('hour'::text, events.block_time, 'UTC'::text)), events.chain_id, events.registry, events.event_type
  WITH NO DATA;


--
-- Name: events_p202611; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events_p202611 (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
);


--
-- Name: events_p202612; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events_p202612 (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
);


--
-- Name: events_p202701; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events_p202701 (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
);


--
-- Name: events_p202702; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events_p202702 (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
);


--
-- Name: events_p202703; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events_p202703 (
    id text NOT NULL,
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    transaction_hash text NOT NULL,
    log_index integer NOT NULL,
    registry text NOT NULL,
    event_type text NOT NULL,
    agent_id bigint,
    "timestamp" bigint NOT NULL,
    block_time timestamp with time zone NOT NULL,
    owner text,
    previous_owner text,
    updated_by text,
    token_uri text,
    metadata_key text,
    metadata_value text,
    client_address text,
    feedback_index bigint,
    score numeric,
    value numeric,
    value_decimals smallint,
    tag1 text,
    tag2 text,
    endpoint text,
    file_uri text,
    file_hash text,
    responder text,
    validator_address text,
    request_uri text,
    request_hash text,
    response integer,
    response_uri text,
    response_hash text,
    tag text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    registry_address text,
    agent_registry text,
    CONSTRAINT events_agent_id_check CHECK ((agent_id >= 0)),
    CONSTRAINT events_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT events_block_time_check CHECK ((block_time = to_timestamp(("timestamp")::double precision))),
    CONSTRAINT events_chain_id_check CHECK ((chain_id > 0)),
    CONSTRAINT events_feedback_index_check CHECK ((feedback_index >= 0)),
    CONSTRAINT events_log_index_check CHECK ((log_index >= 0)),
    CONSTRAINT events_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text]))),
    CONSTRAINT events_response_check CHECK (((response >= 0) AND (response <= 100))),
    CONSTRAINT events_value_check CHECK ((abs(value) <= '100000000000000000000000000000000000000'::numeric)),
    CONSTRAINT events_value_decimals_check CHECK (((value_decimals >= 0) AND (value_decimals <= 18)))
);


--
-- Name: heartbeats; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.heartbeats (
    chain_id integer NOT NULL,
    block_number bigint NOT NULL,
    block_hash text NOT NULL,
    block_time timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT heartbeats_block_number_check CHECK ((block_number >= 0)),
    CONSTRAINT heartbeats_chain_id_check CHECK ((chain_id > 0))
);


--
-- Name: job_redrives; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.job_redrives (
    job_id text NOT NULL,
    user_id text NOT NULL,
    run_id text NOT NULL,
    requested_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: maintenance_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.maintenance_runs (
    task text NOT NULL,
    last_run_at timestamp with time zone NOT NULL
);


--
-- Name: reorgs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.reorgs (
    id text DEFAULT (gen_random_uuid())::text NOT NULL,
    chain_id integer NOT NULL,
    from_block bigint NOT NULL,
    to_block bigint,
    new_block_hash text,
    reason text,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT reorgs_from_block_check CHECK ((from_block >= 0))
);


--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version character varying NOT NULL
);


--
-- Name: telegram_chats; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.telegram_chats (
    user_id text NOT NULL,
    chat_id text NOT NULL,
    chat_type text NOT NULL,
    title text,
    username text,
    linked_by bigint,
    linked_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT telegram_chats_chat_id_check CHECK ((chat_id ~ '^-?[0-9]{1,20}$'::text)),
    CONSTRAINT telegram_chats_chat_type_check CHECK ((chat_type = ANY (ARRAY['private'::text, 'group'::text, 'supergroup'::text, 'channel'::text])))
);


--
-- Name: telegram_link_codes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.telegram_link_codes (
    code_sha256 bytea NOT NULL,
    user_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    used_at timestamp with time zone,
    used_in_chat text
);


--
-- Name: telegram_updates; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.telegram_updates (
    id integer NOT NULL,
    next_offset bigint DEFAULT 0 NOT NULL,
    polled_at timestamp with time zone,
    CONSTRAINT telegram_updates_id_check CHECK ((id = 1))
);


--
-- Name: trigger_actions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trigger_actions (
    id integer NOT NULL,
    trigger_id text NOT NULL,
    action_type text NOT NULL,
    priority integer DEFAULT 1,
    config jsonb NOT NULL,
    secret_ciphertext bytea,
    created_at timestamp with time zone DEFAULT now(),
    secret_headers_ciphertext bytea,
    secret_header_names text[],
    CONSTRAINT trigger_actions_action_type_check CHECK ((action_type = ANY (ARRAY['telegram'::text, 'rest'::text, 'mcp'::text])))
);


--
-- Name: trigger_actions_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.trigger_actions_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: trigger_actions_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.trigger_actions_id_seq OWNED BY public.trigger_actions.id;


--
-- Name: trigger_conditions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trigger_conditions (
    id integer NOT NULL,
    trigger_id text NOT NULL,
    condition_type text NOT NULL,
    field text NOT NULL,
    operator text NOT NULL,
    value text NOT NULL,
    config jsonb,
    created_at timestamp with time zone DEFAULT now()
);


--
-- Name: trigger_conditions_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.trigger_conditions_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: trigger_conditions_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.trigger_conditions_id_seq OWNED BY public.trigger_conditions.id;


--
-- Name: trigger_definitions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trigger_definitions (
    trigger_id text NOT NULL,
    version integer NOT NULL,
    definition jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: trigger_evaluations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trigger_evaluations (
    trigger_id text NOT NULL,
    event_id text NOT NULL,
    fired boolean NOT NULL,
    explain jsonb,
    evaluated_at timestamp with time zone DEFAULT now() NOT NULL,
    seq bigint,
    block_time timestamp with time zone,
    trigger_version integer,
    states_before jsonb,
    excluded text
);


--
-- Name: trigger_evaluations_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.trigger_evaluations_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: trigger_evaluations_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.trigger_evaluations_seq OWNED BY public.trigger_evaluations.seq;


--
-- Name: trigger_state; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trigger_state (
    trigger_id text NOT NULL,
    scope_key text DEFAULT ''::text NOT NULL,
    state_data jsonb NOT NULL,
    last_updated timestamp with time zone DEFAULT now(),
    due_at bigint GENERATED ALWAYS AS (((state_data ->> 'due_at'::text))::bigint) STORED
);


--
-- Name: triggers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.triggers (
    id text DEFAULT (gen_random_uuid())::text NOT NULL,
    user_id text NOT NULL,
    name text NOT NULL,
    description text,
    chain_id integer NOT NULL,
    registry text NOT NULL,
    enabled boolean DEFAULT true,
    is_stateful boolean DEFAULT false,
    cooldown_seconds integer,
    enabled_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now(),
    updated_at timestamp with time zone DEFAULT now(),
    version integer DEFAULT 1 NOT NULL,
    version_xact xid8 DEFAULT pg_current_xact_id(),
    CONSTRAINT triggers_cooldown_seconds_check CHECK ((cooldown_seconds >= 0)),
    CONSTRAINT triggers_registry_check CHECK ((registry = ANY (ARRAY['identity'::text, 'reputation'::text, 'validation'::text])))
);


--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    id text DEFAULT (gen_random_uuid())::text NOT NULL,
    username text NOT NULL,
    email text NOT NULL,
    password_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now(),
    updated_at timestamp with time zone DEFAULT now(),
    last_login_at timestamp with time zone,
    is_active boolean DEFAULT true,
    tokens_valid_after timestamp with time zone
);


--
-- Name: events_default; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_default DEFAULT;


--
-- Name: events_p202611; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_p202611 FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00');


--
-- Name: events_p202612; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_p202612 FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00');


--
-- Name: events_p202701; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_p202701 FOR VALUES FROM ('2027-01-01 00:00:00+00') TO ('2027-02-01 00:00:00+00');


--
-- Name: events_p202702; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_p202702 FOR VALUES FROM ('2027-02-01 00:00:00+00') TO ('2027-03-01 00:00:00+00');


--
-- Name: events_p202703; Type: TABLE ATTACH; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_p202703 FOR VALUES FROM ('2027-03-01 00:00:00+00') TO ('2027-04-01 00:00:00+00');


--
-- Name: event_outbox seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.event_outbox ALTER COLUMN seq SET DEFAULT nextval('public.event_outbox_seq_seq'::regclass);


--
-- Name: trigger_actions id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_actions ALTER COLUMN id SET DEFAULT nextval('public.trigger_actions_id_seq'::regclass);


--
-- Name: trigger_conditions id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_conditions ALTER COLUMN id SET DEFAULT nextval('public.trigger_conditions_id_seq'::regclass);


--
-- Name: trigger_evaluations seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_evaluations ALTER COLUMN seq SET DEFAULT nextval('public.trigger_evaluations_seq'::regclass);


--
-- Name: action_results action_results_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.action_results
    ADD CONSTRAINT action_results_pkey PRIMARY KEY (id);


--
-- Name: agent_mcp_token_nonces agent_mcp_token_nonces_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_mcp_token_nonces
    ADD CONSTRAINT agent_mcp_token_nonces_pkey PRIMARY KEY (chain_id, agent_registry, agent_id, nonce);


--
-- Name: agent_mcp_tokens agent_mcp_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_mcp_tokens
    ADD CONSTRAINT agent_mcp_tokens_pkey PRIMARY KEY (chain_id, agent_registry, agent_id);


--
-- Name: api_keys api_keys_key_hash_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);


--
-- Name: checkpoints checkpoints_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.checkpoints
    ADD CONSTRAINT checkpoints_pkey PRIMARY KEY (chain_id);


--
-- Name: event_ids event_ids_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.event_ids
    ADD CONSTRAINT event_ids_pkey PRIMARY KEY (id);


--
-- Name: event_outbox event_outbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.event_outbox
    ADD CONSTRAINT event_outbox_pkey PRIMARY KEY (seq);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: events_default events_default_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events_default
    ADD CONSTRAINT events_default_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: events_p202611 events_p202611_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events_p202611
    ADD CONSTRAINT events_p202611_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: events_p202612 events_p202612_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events_p202612
    ADD CONSTRAINT events_p202612_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: events_p202701 events_p202701_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events_p202701
    ADD CONSTRAINT events_p202701_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: events_p202702 events_p202702_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events_p202702
    ADD CONSTRAINT events_p202702_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: events_p202703 events_p202703_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events_p202703
    ADD CONSTRAINT events_p202703_pkey PRIMARY KEY (id, block_time, block_hash);


--
-- Name: heartbeats heartbeats_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.heartbeats
    ADD CONSTRAINT heartbeats_pkey PRIMARY KEY (chain_id, block_number, block_hash);


--
-- Name: job_redrives job_redrives_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_redrives
    ADD CONSTRAINT job_redrives_pkey PRIMARY KEY (job_id);


--
-- Name: maintenance_runs maintenance_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.maintenance_runs
    ADD CONSTRAINT maintenance_runs_pkey PRIMARY KEY (task);


--
-- Name: reorgs reorgs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.reorgs
    ADD CONSTRAINT reorgs_pkey PRIMARY KEY (id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: telegram_chats telegram_chats_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.telegram_chats
    ADD CONSTRAINT telegram_chats_pkey PRIMARY KEY (user_id, chat_id);


--
-- Name: telegram_link_codes telegram_link_codes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.telegram_link_codes
    ADD CONSTRAINT telegram_link_codes_pkey PRIMARY KEY (code_sha256);


--
-- Name: telegram_updates telegram_updates_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.telegram_updates
    ADD CONSTRAINT telegram_updates_pkey PRIMARY KEY (id);


--
-- Name: trigger_actions trigger_actions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_actions
    ADD CONSTRAINT trigger_actions_pkey PRIMARY KEY (id);


--
-- Name: trigger_conditions trigger_conditions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_conditions
    ADD CONSTRAINT trigger_conditions_pkey PRIMARY KEY (id);


--
-- Name: trigger_definitions trigger_definitions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_definitions
    ADD CONSTRAINT trigger_definitions_pkey PRIMARY KEY (trigger_id, version);


--
-- Name: trigger_evaluations trigger_evaluations_excluded_check; Type: CHECK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.trigger_evaluations
    ADD CONSTRAINT trigger_evaluations_excluded_check CHECK ((excluded = ANY (ARRAY['retracted'::text, 'revoked'::text]))) NOT VALID;


--
-- Name: trigger_evaluations trigger_evaluations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_evaluations
    ADD CONSTRAINT trigger_evaluations_pkey PRIMARY KEY (trigger_id, event_id);


--
-- Name: trigger_state trigger_state_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_state
    ADD CONSTRAINT trigger_state_pkey PRIMARY KEY (trigger_id, scope_key);


--
-- Name: triggers triggers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.triggers
    ADD CONSTRAINT triggers_pkey PRIMARY KEY (id);


--
-- Name: users users_email_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_email_key UNIQUE (email);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: users users_username_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_username_key UNIQUE (username);


--
-- Name: action_results_attempt_once; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX action_results_attempt_once ON public.action_results USING btree (job_id, COALESCE(run_id, ''::text), attempt);


--
-- Name: idx_events_agent_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_agent_block_time ON ONLY public.events USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: events_default_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_agent_id_block_time_idx ON public.events_default USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: idx_events_agent_feedback; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_agent_feedback ON ONLY public.events USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: events_default_agent_id_feedback_index_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_agent_id_feedback_index_idx ON public.events_default USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: idx_events_agent_registry; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_agent_registry ON ONLY public.events USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: events_default_agent_registry_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_agent_registry_agent_id_block_time_idx ON public.events_default USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: idx_events_listing; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_listing ON ONLY public.events USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: events_default_block_time_id_block_hash_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_block_time_id_block_hash_idx ON public.events_default USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: idx_events_block_number; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_block_number ON ONLY public.events USING btree (chain_id, block_number);


--
-- Name: events_default_chain_id_block_number_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_chain_id_block_number_idx ON public.events_default USING btree (chain_id, block_number);


--
-- Name: idx_events_chain_id_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_chain_id_block_time ON ONLY public.events USING btree (chain_id, block_time DESC);


--
-- Name: events_default_chain_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_chain_id_block_time_idx ON public.events_default USING btree (chain_id, block_time DESC);


--
-- Name: idx_events_client_address; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_client_address ON ONLY public.events USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: events_default_client_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_client_address_idx ON public.events_default USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: idx_events_type_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_type_block_time ON ONLY public.events USING btree (event_type, block_time DESC);


--
-- Name: events_default_event_type_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_event_type_block_time_idx ON public.events_default USING btree (event_type, block_time DESC);


--
-- Name: idx_events_registry_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_registry_block_time ON ONLY public.events USING btree (registry, block_time DESC);


--
-- Name: events_default_registry_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_registry_block_time_idx ON public.events_default USING btree (registry, block_time DESC);


--
-- Name: idx_events_validator_address; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_events_validator_address ON ONLY public.events USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: events_default_validator_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_default_validator_address_idx ON public.events_default USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: events_p202611_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_agent_id_block_time_idx ON public.events_p202611 USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202611_agent_id_feedback_index_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_agent_id_feedback_index_idx ON public.events_p202611 USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202611_agent_registry_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_agent_registry_agent_id_block_time_idx ON public.events_p202611 USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: events_p202611_block_time_id_block_hash_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_block_time_id_block_hash_idx ON public.events_p202611 USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: events_p202611_chain_id_block_number_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_chain_id_block_number_idx ON public.events_p202611 USING btree (chain_id, block_number);


--
-- Name: events_p202611_chain_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_chain_id_block_time_idx ON public.events_p202611 USING btree (chain_id, block_time DESC);


--
-- Name: events_p202611_client_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_client_address_idx ON public.events_p202611 USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: events_p202611_event_type_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_event_type_block_time_idx ON public.events_p202611 USING btree (event_type, block_time DESC);


--
-- Name: events_p202611_registry_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_registry_block_time_idx ON public.events_p202611 USING btree (registry, block_time DESC);


--
-- Name: events_p202611_validator_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202611_validator_address_idx ON public.events_p202611 USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: events_p202612_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_agent_id_block_time_idx ON public.events_p202612 USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202612_agent_id_feedback_index_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_agent_id_feedback_index_idx ON public.events_p202612 USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202612_agent_registry_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_agent_registry_agent_id_block_time_idx ON public.events_p202612 USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: events_p202612_block_time_id_block_hash_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_block_time_id_block_hash_idx ON public.events_p202612 USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: events_p202612_chain_id_block_number_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_chain_id_block_number_idx ON public.events_p202612 USING btree (chain_id, block_number);


--
-- Name: events_p202612_chain_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_chain_id_block_time_idx ON public.events_p202612 USING btree (chain_id, block_time DESC);


--
-- Name: events_p202612_client_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_client_address_idx ON public.events_p202612 USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: events_p202612_event_type_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_event_type_block_time_idx ON public.events_p202612 USING btree (event_type, block_time DESC);


--
-- Name: events_p202612_registry_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_registry_block_time_idx ON public.events_p202612 USING btree (registry, block_time DESC);


--
-- Name: events_p202612_validator_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202612_validator_address_idx ON public.events_p202612 USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: events_p202701_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_agent_id_block_time_idx ON public.events_p202701 USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202701_agent_id_feedback_index_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_agent_id_feedback_index_idx ON public.events_p202701 USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202701_agent_registry_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_agent_registry_agent_id_block_time_idx ON public.events_p202701 USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: events_p202701_block_time_id_block_hash_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_block_time_id_block_hash_idx ON public.events_p202701 USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: events_p202701_chain_id_block_number_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_chain_id_block_number_idx ON public.events_p202701 USING btree (chain_id, block_number);


--
-- Name: events_p202701_chain_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_chain_id_block_time_idx ON public.events_p202701 USING btree (chain_id, block_time DESC);


--
-- Name: events_p202701_client_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_client_address_idx ON public.events_p202701 USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: events_p202701_event_type_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_event_type_block_time_idx ON public.events_p202701 USING btree (event_type, block_time DESC);


--
-- Name: events_p202701_registry_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_registry_block_time_idx ON public.events_p202701 USING btree (registry, block_time DESC);


--
-- Name: events_p202701_validator_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202701_validator_address_idx ON public.events_p202701 USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: events_p202702_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_agent_id_block_time_idx ON public.events_p202702 USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202702_agent_id_feedback_index_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_agent_id_feedback_index_idx ON public.events_p202702 USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202702_agent_registry_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_agent_registry_agent_id_block_time_idx ON public.events_p202702 USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: events_p202702_block_time_id_block_hash_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_block_time_id_block_hash_idx ON public.events_p202702 USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: events_p202702_chain_id_block_number_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_chain_id_block_number_idx ON public.events_p202702 USING btree (chain_id, block_number);


--
-- Name: events_p202702_chain_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_chain_id_block_time_idx ON public.events_p202702 USING btree (chain_id, block_time DESC);


--
-- Name: events_p202702_client_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_client_address_idx ON public.events_p202702 USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: events_p202702_event_type_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_event_type_block_time_idx ON public.events_p202702 USING btree (event_type, block_time DESC);


--
-- Name: events_p202702_registry_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_registry_block_time_idx ON public.events_p202702 USING btree (registry, block_time DESC);


--
-- Name: events_p202702_validator_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202702_validator_address_idx ON public.events_p202702 USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: events_p202703_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_agent_id_block_time_idx ON public.events_p202703 USING btree (agent_id, block_time DESC) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202703_agent_id_feedback_index_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_agent_id_feedback_index_idx ON public.events_p202703 USING btree (agent_id, feedback_index) WHERE (agent_id IS NOT NULL);


--
-- Name: events_p202703_agent_registry_agent_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_agent_registry_agent_id_block_time_idx ON public.events_p202703 USING btree (agent_registry, agent_id, block_time DESC) WHERE (agent_registry IS NOT NULL);


--
-- Name: events_p202703_block_time_id_block_hash_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_block_time_id_block_hash_idx ON public.events_p202703 USING btree (block_time DESC, id DESC, block_hash DESC);


--
-- Name: events_p202703_chain_id_block_number_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_chain_id_block_number_idx ON public.events_p202703 USING btree (chain_id, block_number);


--
-- Name: events_p202703_chain_id_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_chain_id_block_time_idx ON public.events_p202703 USING btree (chain_id, block_time DESC);


--
-- Name: events_p202703_client_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_client_address_idx ON public.events_p202703 USING btree (client_address) WHERE (client_address IS NOT NULL);


--
-- Name: events_p202703_event_type_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_event_type_block_time_idx ON public.events_p202703 USING btree (event_type, block_time DESC);


--
-- Name: events_p202703_registry_block_time_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_registry_block_time_idx ON public.events_p202703 USING btree (registry, block_time DESC);


--
-- Name: events_p202703_validator_address_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX events_p202703_validator_address_idx ON public.events_p202703 USING btree (validator_address) WHERE (validator_address IS NOT NULL);


--
-- Name: idx_action_metrics_hourly_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX idx_action_metrics_hourly_key ON public.action_metrics_hourly USING btree (hour, user_id, action_type) NULLS NOT DISTINCT;


--
-- Name: idx_action_results_action_type; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_action_results_action_type ON public.action_results USING btree (action_type);


--
-- Name: idx_action_results_event_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_action_results_event_id ON public.action_results USING btree (event_id);


--
-- Name: idx_action_results_executed_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_action_results_executed_at ON public.action_results USING btree (executed_at DESC);


--
-- Name: idx_action_results_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_action_results_status ON public.action_results USING btree (status);


--
-- Name: idx_action_results_trigger_id_executed_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_action_results_trigger_id_executed_at ON public.action_results USING btree (trigger_id, executed_at DESC);


--
-- Name: idx_action_results_user_id_executed_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_action_results_user_id_executed_at ON public.action_results USING btree (user_id, executed_at DESC);


--
-- Name: idx_agent_mcp_token_nonces_expires_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_agent_mcp_token_nonces_expires_at ON public.agent_mcp_token_nonces USING btree (expires_at);


--
-- Name: idx_api_keys_user_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_api_keys_user_id ON public.api_keys USING btree (user_id);


--
-- Name: idx_event_ids_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_event_ids_block_time ON public.event_ids USING btree (block_time);


--
-- Name: idx_events_hourly_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX idx_events_hourly_key ON public.events_hourly USING btree (hour, chain_id, registry, event_type);


--
-- Name: idx_heartbeats_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_heartbeats_block_time ON public.heartbeats USING btree (block_time);


--
-- Name: idx_heartbeats_chain_id_block_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_heartbeats_chain_id_block_time ON public.heartbeats USING btree (chain_id, block_time);


--
-- Name: idx_reorgs_chain_id_created_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_reorgs_chain_id_created_at ON public.reorgs USING btree (chain_id, created_at);


--
-- Name: idx_reorgs_chain_id_from_block; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_reorgs_chain_id_from_block ON public.reorgs USING btree (chain_id, from_block);


--
-- Name: idx_trigger_actions_trigger_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_trigger_actions_trigger_id ON public.trigger_actions USING btree (trigger_id);


--
-- Name: idx_trigger_conditions_trigger_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_trigger_conditions_trigger_id ON public.trigger_conditions USING btree (trigger_id);


--
-- Name: idx_trigger_evaluations_evaluated_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_trigger_evaluations_evaluated_at ON public.trigger_evaluations USING btree (evaluated_at);


--
-- Name: idx_trigger_evaluations_ticks; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_trigger_evaluations_ticks ON public.trigger_evaluations USING btree (trigger_id, block_time) WHERE (event_id ~~ 'tick:%'::text);


--
-- Name: idx_trigger_evaluations_trigger_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_trigger_evaluations_trigger_seq ON public.trigger_evaluations USING btree (trigger_id, seq);


--
-- Name: idx_trigger_state_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_trigger_state_due ON public.trigger_state USING btree (trigger_id, due_at) WHERE (due_at IS NOT NULL);


--
-- Name: idx_triggers_chain_registry_enabled; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_triggers_chain_registry_enabled ON public.triggers USING btree (chain_id, registry, enabled) WHERE (enabled = true);


--
-- Name: idx_triggers_user_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_triggers_user_id ON public.triggers USING btree (user_id);


--
-- Name: idx_users_email; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_users_email ON public.users USING btree (email);


--
-- Name: idx_users_username; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_users_username ON public.users USING btree (username);


--
-- Name: telegram_chats_chat; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX telegram_chats_chat ON public.telegram_chats USING btree (chat_id);


--
-- Name: telegram_chats_username; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX telegram_chats_username ON public.telegram_chats USING btree (user_id, username) WHERE (username IS NOT NULL);


--
-- Name: telegram_link_codes_user; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX telegram_link_codes_user ON public.telegram_link_codes USING btree (user_id, expires_at);


--
-- Name: events_default_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_block_time ATTACH PARTITION public.events_default_agent_id_block_time_idx;


--
-- Name: events_default_agent_id_feedback_index_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_feedback ATTACH PARTITION public.events_default_agent_id_feedback_index_idx;


--
-- Name: events_default_agent_registry_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_registry ATTACH PARTITION public.events_default_agent_registry_agent_id_block_time_idx;


--
-- Name: events_default_block_time_id_block_hash_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_listing ATTACH PARTITION public.events_default_block_time_id_block_hash_idx;


--
-- Name: events_default_chain_id_block_number_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_block_number ATTACH PARTITION public.events_default_chain_id_block_number_idx;


--
-- Name: events_default_chain_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_chain_id_block_time ATTACH PARTITION public.events_default_chain_id_block_time_idx;


--
-- Name: events_default_client_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_client_address ATTACH PARTITION public.events_default_client_address_idx;


--
-- Name: events_default_event_type_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_type_block_time ATTACH PARTITION public.events_default_event_type_block_time_idx;


--
-- Name: events_default_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_default_pkey;


--
-- Name: events_default_registry_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_registry_block_time ATTACH PARTITION public.events_default_registry_block_time_idx;


--
-- Name: events_default_validator_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_validator_address ATTACH PARTITION public.events_default_validator_address_idx;


--
-- Name: events_p202611_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_block_time ATTACH PARTITION public.events_p202611_agent_id_block_time_idx;


--
-- Name: events_p202611_agent_id_feedback_index_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_feedback ATTACH PARTITION public.events_p202611_agent_id_feedback_index_idx;


--
-- Name: events_p202611_agent_registry_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_registry ATTACH PARTITION public.events_p202611_agent_registry_agent_id_block_time_idx;


--
-- Name: events_p202611_block_time_id_block_hash_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_listing ATTACH PARTITION public.events_p202611_block_time_id_block_hash_idx;


--
-- Name: events_p202611_chain_id_block_number_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_block_number ATTACH PARTITION public.events_p202611_chain_id_block_number_idx;


--
-- Name: events_p202611_chain_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_chain_id_block_time ATTACH PARTITION public.events_p202611_chain_id_block_time_idx;


--
-- Name: events_p202611_client_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_client_address ATTACH PARTITION public.events_p202611_client_address_idx;


--
-- Name: events_p202611_event_type_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_type_block_time ATTACH PARTITION public.events_p202611_event_type_block_time_idx;


--
-- Name: events_p202611_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_p202611_pkey;


--
-- Name: events_p202611_registry_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_registry_block_time ATTACH PARTITION public.events_p202611_registry_block_time_idx;


--
-- Name: events_p202611_validator_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_validator_address ATTACH PARTITION public.events_p202611_validator_address_idx;


--
-- Name: events_p202612_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_block_time ATTACH PARTITION public.events_p202612_agent_id_block_time_idx;


--
-- Name: events_p202612_agent_id_feedback_index_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_feedback ATTACH PARTITION public.events_p202612_agent_id_feedback_index_idx;


--
-- Name: events_p202612_agent_registry_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_registry ATTACH PARTITION public.events_p202612_agent_registry_agent_id_block_time_idx;


--
-- Name: events_p202612_block_time_id_block_hash_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_listing ATTACH PARTITION public.events_p202612_block_time_id_block_hash_idx;


--
-- Name: events_p202612_chain_id_block_number_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_block_number ATTACH PARTITION public.events_p202612_chain_id_block_number_idx;


--
-- Name: events_p202612_chain_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_chain_id_block_time ATTACH PARTITION public.events_p202612_chain_id_block_time_idx;


--
-- Name: events_p202612_client_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_client_address ATTACH PARTITION public.events_p202612_client_address_idx;


--
-- Name: events_p202612_event_type_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_type_block_time ATTACH PARTITION public.events_p202612_event_type_block_time_idx;


--
-- Name: events_p202612_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_p202612_pkey;


--
-- Name: events_p202612_registry_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_registry_block_time ATTACH PARTITION public.events_p202612_registry_block_time_idx;


--
-- Name: events_p202612_validator_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_validator_address ATTACH PARTITION public.events_p202612_validator_address_idx;


--
-- Name: events_p202701_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_block_time ATTACH PARTITION public.events_p202701_agent_id_block_time_idx;


--
-- Name: events_p202701_agent_id_feedback_index_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_feedback ATTACH PARTITION public.events_p202701_agent_id_feedback_index_idx;


--
-- Name: events_p202701_agent_registry_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_registry ATTACH PARTITION public.events_p202701_agent_registry_agent_id_block_time_idx;


--
-- Name: events_p202701_block_time_id_block_hash_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_listing ATTACH PARTITION public.events_p202701_block_time_id_block_hash_idx;


--
-- Name: events_p202701_chain_id_block_number_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_block_number ATTACH PARTITION public.events_p202701_chain_id_block_number_idx;


--
-- Name: events_p202701_chain_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_chain_id_block_time ATTACH PARTITION public.events_p202701_chain_id_block_time_idx;


--
-- Name: events_p202701_client_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_client_address ATTACH PARTITION public.events_p202701_client_address_idx;


--
-- Name: events_p202701_event_type_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_type_block_time ATTACH PARTITION public.events_p202701_event_type_block_time_idx;


--
-- Name: events_p202701_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_p202701_pkey;


--
-- Name: events_p202701_registry_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_registry_block_time ATTACH PARTITION public.events_p202701_registry_block_time_idx;


--
-- Name: events_p202701_validator_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_validator_address ATTACH PARTITION public.events_p202701_validator_address_idx;


--
-- Name: events_p202702_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_block_time ATTACH PARTITION public.events_p202702_agent_id_block_time_idx;


--
-- Name: events_p202702_agent_id_feedback_index_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_feedback ATTACH PARTITION public.events_p202702_agent_id_feedback_index_idx;


--
-- Name: events_p202702_agent_registry_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_registry ATTACH PARTITION public.events_p202702_agent_registry_agent_id_block_time_idx;


--
-- Name: events_p202702_block_time_id_block_hash_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_listing ATTACH PARTITION public.events_p202702_block_time_id_block_hash_idx;


--
-- Name: events_p202702_chain_id_block_number_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_block_number ATTACH PARTITION public.events_p202702_chain_id_block_number_idx;


--
-- Name: events_p202702_chain_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_chain_id_block_time ATTACH PARTITION public.events_p202702_chain_id_block_time_idx;


--
-- Name: events_p202702_client_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_client_address ATTACH PARTITION public.events_p202702_client_address_idx;


--
-- Name: events_p202702_event_type_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_type_block_time ATTACH PARTITION public.events_p202702_event_type_block_time_idx;


--
-- Name: events_p202702_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_p202702_pkey;


--
-- Name: events_p202702_registry_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_registry_block_time ATTACH PARTITION public.events_p202702_registry_block_time_idx;


--
-- Name: events_p202702_validator_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_validator_address ATTACH PARTITION public.events_p202702_validator_address_idx;


--
-- Name: events_p202703_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_block_time ATTACH PARTITION public.events_p202703_agent_id_block_time_idx;


--
-- Name: events_p202703_agent_id_feedback_index_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_feedback ATTACH PARTITION public.events_p202703_agent_id_feedback_index_idx;


--
-- Name: events_p202703_agent_registry_agent_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_agent_registry ATTACH PARTITION public.events_p202703_agent_registry_agent_id_block_time_idx;


--
-- Name: events_p202703_block_time_id_block_hash_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_listing ATTACH PARTITION public.events_p202703_block_time_id_block_hash_idx;


--
-- Name: events_p202703_chain_id_block_number_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_block_number ATTACH PARTITION public.events_p202703_chain_id_block_number_idx;


--
-- Name: events_p202703_chain_id_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_chain_id_block_time ATTACH PARTITION public.events_p202703_chain_id_block_time_idx;


--
-- Name: events_p202703_client_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_client_address ATTACH PARTITION public.events_p202703_client_address_idx;


--
-- Name: events_p202703_event_type_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_type_block_time ATTACH PARTITION public.events_p202703_event_type_block_time_idx;


--
-- Name: events_p202703_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_p202703_pkey;


--
-- Name: events_p202703_registry_block_time_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_registry_block_time ATTACH PARTITION public.events_p202703_registry_block_time_idx;


--
-- Name: events_p202703_validator_address_idx; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.idx_events_validator_address ATTACH PARTITION public.events_p202703_validator_address_idx;


--
-- Name: event_outbox event_outbox_notify_trigger; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER event_outbox_notify_trigger AFTER INSERT ON public.event_outbox FOR EACH STATEMENT EXECUTE FUNCTION public.notify_outbox();


--
-- Name: events events_append_only; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER events_append_only BEFORE DELETE OR UPDATE ON public.events FOR EACH ROW EXECUTE FUNCTION public.events_append_only();


--
-- Name: events events_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON public.events FOR EACH STATEMENT EXECUTE FUNCTION public.events_append_only();


--
-- Name: events events_notify_trigger; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER events_notify_trigger AFTER INSERT ON public.events FOR EACH STATEMENT EXECUTE FUNCTION public.notify_new_event();


--
-- Name: triggers set_triggers_enabled_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER set_triggers_enabled_at BEFORE UPDATE OF enabled ON public.triggers FOR EACH ROW WHEN (((new.enabled IS TRUE) AND (old.enabled IS NOT TRUE))) EXECUTE FUNCTION public.set_trigger_enabled_at();


--
-- Name: trigger_actions trigger_actions_notify_changed; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_actions_notify_changed AFTER INSERT OR DELETE OR UPDATE ON public.trigger_actions FOR EACH ROW EXECUTE FUNCTION public.notify_trigger_changed('trigger_id');


--
-- Name: trigger_actions trigger_actions_version_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_actions_version_delete AFTER DELETE ON public.trigger_actions REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.bump_versions_of_changed_triggers();


--
-- Name: trigger_actions trigger_actions_version_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_actions_version_insert AFTER INSERT ON public.trigger_actions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.bump_versions_of_changed_triggers();


--
-- Name: trigger_actions trigger_actions_version_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_actions_version_update AFTER UPDATE ON public.trigger_actions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.bump_versions_of_changed_triggers();


--
-- Name: trigger_conditions trigger_conditions_notify_changed; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_conditions_notify_changed AFTER INSERT OR DELETE OR UPDATE ON public.trigger_conditions FOR EACH ROW EXECUTE FUNCTION public.notify_trigger_changed('trigger_id');


--
-- Name: trigger_conditions trigger_conditions_version_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_conditions_version_delete AFTER DELETE ON public.trigger_conditions REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.bump_versions_of_changed_triggers();


--
-- Name: trigger_conditions trigger_conditions_version_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_conditions_version_insert AFTER INSERT ON public.trigger_conditions REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.bump_versions_of_changed_triggers();


--
-- Name: trigger_conditions trigger_conditions_version_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER trigger_conditions_version_update AFTER UPDATE ON public.trigger_conditions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.bump_versions_of_changed_triggers();


--
-- Name: triggers triggers_notify_changed; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER triggers_notify_changed AFTER INSERT OR DELETE OR UPDATE ON public.triggers FOR EACH ROW EXECUTE FUNCTION public.notify_trigger_changed('id');


--
-- Name: agent_mcp_tokens update_agent_mcp_tokens_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER update_agent_mcp_tokens_updated_at BEFORE UPDATE ON public.agent_mcp_tokens FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();


--
-- Name: triggers update_triggers_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER update_triggers_updated_at BEFORE UPDATE ON public.triggers FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();


--
-- Name: users update_users_updated_at; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER update_users_updated_at BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();


--
-- Name: triggers version_triggers_bump; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER version_triggers_bump BEFORE UPDATE ON public.triggers FOR EACH ROW WHEN ((((((((old.user_id IS DISTINCT FROM new.user_id) OR (old.name IS DISTINCT FROM new.name)) OR (old.chain_id IS DISTINCT FROM new.chain_id)) OR (old.registry IS DISTINCT FROM new.registry)) OR (old.enabled IS DISTINCT FROM new.enabled)) OR (old.enabled_at IS DISTINCT FROM new.enabled_at)) OR (old.cooldown_seconds IS DISTINCT FROM new.cooldown_seconds))) EXECUTE FUNCTION public.bump_trigger_version();


--
-- Name: action_results fk_trigger; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.action_results
    ADD CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES public.triggers(id) ON DELETE SET NULL;


--
-- Name: trigger_actions fk_trigger; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_actions
    ADD CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES public.triggers(id) ON DELETE CASCADE;


--
-- Name: trigger_conditions fk_trigger; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_conditions
    ADD CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES public.triggers(id) ON DELETE CASCADE;


--
-- Name: trigger_evaluations fk_trigger; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_evaluations
    ADD CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES public.triggers(id) ON DELETE CASCADE;


--
-- Name: trigger_state fk_trigger; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_state
    ADD CONSTRAINT fk_trigger FOREIGN KEY (trigger_id) REFERENCES public.triggers(id) ON DELETE CASCADE;


--
-- Name: action_results fk_user; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.action_results
    ADD CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: api_keys fk_user; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: triggers fk_user; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.triggers
    ADD CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: job_redrives job_redrives_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_redrives
    ADD CONSTRAINT job_redrives_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: telegram_chats telegram_chats_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.telegram_chats
    ADD CONSTRAINT telegram_chats_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: telegram_link_codes telegram_link_codes_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.telegram_link_codes
    ADD CONSTRAINT telegram_link_codes_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: trigger_definitions trigger_definitions_trigger_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trigger_definitions
    ADD CONSTRAINT trigger_definitions_trigger_id_fkey FOREIGN KEY (trigger_id) REFERENCES public.triggers(id) ON DELETE CASCADE;


--
-- Name: action_results; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.action_results ENABLE ROW LEVEL SECURITY;

--
-- Name: action_results action_results_dispatcher_insert; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY action_results_dispatcher_insert ON public.action_results FOR INSERT TO erc8004_dispatcher WITH CHECK (true);


--
-- Name: action_results action_results_dispatcher_read; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY action_results_dispatcher_read ON public.action_results FOR SELECT TO erc8004_dispatcher USING (true);


--
-- Name: action_results action_results_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY action_results_user_isolation ON public.action_results FOR SELECT TO erc8004_api USING ((user_id = public.current_app_user_id()));


--
-- Name: api_keys; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.api_keys ENABLE ROW LEVEL SECURITY;

--
-- Name: api_keys api_keys_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY api_keys_user_isolation ON public.api_keys TO erc8004_api USING ((user_id = public.current_app_user_id())) WITH CHECK ((user_id = public.current_app_user_id()));


--
-- Name: job_redrives; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.job_redrives ENABLE ROW LEVEL SECURITY;

--
-- Name: job_redrives job_redrives_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY job_redrives_user_isolation ON public.job_redrives TO erc8004_api USING ((user_id = public.current_app_user_id())) WITH CHECK ((user_id = public.current_app_user_id()));


--
-- Name: telegram_chats; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.telegram_chats ENABLE ROW LEVEL SECURITY;

--
-- Name: telegram_chats telegram_chats_dispatcher; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY telegram_chats_dispatcher ON public.telegram_chats TO erc8004_dispatcher USING (true) WITH CHECK (true);


--
-- Name: telegram_chats telegram_chats_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY telegram_chats_user_isolation ON public.telegram_chats TO erc8004_api USING ((user_id = public.current_app_user_id())) WITH CHECK ((user_id = public.current_app_user_id()));


--
-- Name: telegram_link_codes; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.telegram_link_codes ENABLE ROW LEVEL SECURITY;

--
-- Name: telegram_link_codes telegram_link_codes_dispatcher; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY telegram_link_codes_dispatcher ON public.telegram_link_codes TO erc8004_dispatcher USING (true) WITH CHECK (true);


--
-- Name: telegram_link_codes telegram_link_codes_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY telegram_link_codes_user_isolation ON public.telegram_link_codes TO erc8004_api USING ((user_id = public.current_app_user_id())) WITH CHECK ((user_id = public.current_app_user_id()));


--
-- Name: trigger_actions; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.trigger_actions ENABLE ROW LEVEL SECURITY;

--
-- Name: trigger_actions trigger_actions_dispatcher_read; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_actions_dispatcher_read ON public.trigger_actions FOR SELECT TO erc8004_dispatcher USING (true);


--
-- Name: trigger_actions trigger_actions_matcher_read; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_actions_matcher_read ON public.trigger_actions FOR SELECT TO erc8004_matcher USING (true);


--
-- Name: trigger_actions trigger_actions_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_actions_user_isolation ON public.trigger_actions TO erc8004_api USING ((EXISTS ( SELECT 1
   FROM public.triggers t
  WHERE ((t.id = trigger_actions.trigger_id) AND (t.user_id = public.current_app_user_id()))))) WITH CHECK ((EXISTS ( SELECT 1
   FROM public.triggers t
  WHERE ((t.id = trigger_actions.trigger_id) AND (t.user_id = public.current_app_user_id())))));


--
-- Name: trigger_conditions; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.trigger_conditions ENABLE ROW LEVEL SECURITY;

--
-- Name: trigger_conditions trigger_conditions_matcher_read; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_conditions_matcher_read ON public.trigger_conditions FOR SELECT TO erc8004_matcher USING (true);


--
-- Name: trigger_conditions trigger_conditions_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_conditions_user_isolation ON public.trigger_conditions TO erc8004_api USING ((EXISTS ( SELECT 1
   FROM public.triggers t
  WHERE ((t.id = trigger_conditions.trigger_id) AND (t.user_id = public.current_app_user_id()))))) WITH CHECK ((EXISTS ( SELECT 1
   FROM public.triggers t
  WHERE ((t.id = trigger_conditions.trigger_id) AND (t.user_id = public.current_app_user_id())))));


--
-- Name: trigger_evaluations; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.trigger_evaluations ENABLE ROW LEVEL SECURITY;

--
-- Name: trigger_evaluations trigger_evaluations_matcher_all; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_evaluations_matcher_all ON public.trigger_evaluations TO erc8004_matcher USING (true) WITH CHECK (true);


--
-- Name: trigger_evaluations trigger_evaluations_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_evaluations_user_isolation ON public.trigger_evaluations FOR SELECT TO erc8004_api USING ((EXISTS ( SELECT 1
   FROM public.triggers t
  WHERE ((t.id = trigger_evaluations.trigger_id) AND (t.user_id = public.current_app_user_id())))));


--
-- Name: trigger_state; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.trigger_state ENABLE ROW LEVEL SECURITY;

--
-- Name: trigger_state trigger_state_matcher_all; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_state_matcher_all ON public.trigger_state TO erc8004_matcher USING (true) WITH CHECK (true);


--
-- Name: trigger_state trigger_state_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY trigger_state_user_isolation ON public.trigger_state FOR SELECT TO erc8004_api USING ((EXISTS ( SELECT 1
   FROM public.triggers t
  WHERE ((t.id = trigger_state.trigger_id) AND (t.user_id = public.current_app_user_id())))));


--
-- Name: triggers; Type: ROW SECURITY; Schema: public; Owner: -
--

ALTER TABLE public.triggers ENABLE ROW LEVEL SECURITY;

--
-- Name: triggers triggers_dispatcher_read; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY triggers_dispatcher_read ON public.triggers FOR SELECT TO erc8004_dispatcher USING (true);


--
-- Name: triggers triggers_matcher_read; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY triggers_matcher_read ON public.triggers FOR SELECT TO erc8004_matcher USING (true);


--
-- Name: triggers triggers_user_isolation; Type: POLICY; Schema: public; Owner: -
--

CREATE POLICY triggers_user_isolation ON public.triggers TO erc8004_api USING ((user_id = public.current_app_user_id())) WITH CHECK ((user_id = public.current_app_user_id()));


--
-- PostgreSQL database dump complete
--

\unrestrict dbmate


--
-- Dbmate schema migrations
--

INSERT INTO public.schema_migrations (version) VALUES
    ('20261124190001'),
    ('20261124190002'),
    ('20261124190003'),
    ('20261124190004'),
    ('20261124190005'),
    ('20261124190006'),
    ('20261201120000'),
    ('20261201170000'),
    ('20261201180000'),
    ('20261201190000'),
    ('20261201200000'),
    ('20261201210000'),
    ('20261201220000'),
    ('20261206090000'),
    ('20261206090001'),
    ('20261206100000'),
    ('20261206120000'),
    ('20261206130000'),
    ('20261206140000'),
    ('20261206140001'),
    ('20261206150000'),
    ('20261206160000'),
    ('20261207090000'),
    ('20261208090000'),
    ('20261208100000'),
    ('20261209120000'),
    ('20261210090000'),
    ('20261211090000'),
    ('20261212090000');
