-- migrate:up

-- Absence conditions (docs/semantics.md section 5a). The matcher writes the block
-- time after which a scope's silence fires into its state row ("due_at"); this
-- stored column follows it, so a batch asks only for the rows due before its
-- newest tick. Adding a stored generated column rewrites trigger_state once.
ALTER TABLE trigger_state
    ADD COLUMN due_at bigint GENERATED ALWAYS AS ((state_data ->> 'due_at')::bigint) STORED;
CREATE INDEX idx_trigger_state_due ON trigger_state (trigger_id, due_at)
    WHERE due_at IS NOT NULL;

-- The records of firing ticks (event_id 'tick:{scope}:{tick}'), found by block time
-- when a batch is redelivered (their jobs are produced again).
CREATE INDEX idx_trigger_evaluations_ticks ON trigger_evaluations (trigger_id, block_time)
    WHERE event_id LIKE 'tick:%';

-- Heartbeats (the chains' ticks between events) are kept as long as events, for
-- backtests: the ingest's maintenance deletes older ones through this wrapper.
CREATE INDEX idx_heartbeats_block_time ON heartbeats (block_time);
CREATE FUNCTION maintenance_cleanup_heartbeats(
    retention INTERVAL DEFAULT INTERVAL '365 days', reference TIMESTAMPTZ DEFAULT NULL)
RETURNS BIGINT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
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
REVOKE EXECUTE ON FUNCTION maintenance_cleanup_heartbeats(INTERVAL, TIMESTAMPTZ) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION maintenance_cleanup_heartbeats(INTERVAL, TIMESTAMPTZ)
    TO erc8004_ingest;

-- migrate:down

DROP FUNCTION IF EXISTS maintenance_cleanup_heartbeats(INTERVAL, TIMESTAMPTZ);
DROP INDEX IF EXISTS idx_heartbeats_block_time;

DROP INDEX IF EXISTS idx_trigger_evaluations_ticks;
DROP INDEX IF EXISTS idx_trigger_state_due;
ALTER TABLE trigger_state DROP COLUMN IF EXISTS due_at;
