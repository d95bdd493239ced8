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

-- migrate:down

DROP INDEX IF EXISTS idx_trigger_evaluations_ticks;
DROP INDEX IF EXISTS idx_trigger_state_due;
ALTER TABLE trigger_state DROP COLUMN IF EXISTS due_at;
