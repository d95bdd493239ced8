-- What the matcher keeps to recompute a trigger's state over its effective history
-- (docs/semantics.md section 6: a reorg retraction or a FeedbackRevoked takes
-- events out, and the state is restored to before the earliest of them and the
-- later events are evaluated again).
--
-- * trigger_evaluations.seq: the order in which the matcher evaluated a trigger's
--   events (a chain is consumed in order by one matcher at a time, and a trigger
--   watches one chain, so per trigger this is the order of its stream). Added
--   without a default first and given its default next: existing rows stay NULL
--   (written by the release before: not recomputable) and the table is not
--   rewritten.
-- * block_time: the event's partition key, to read the stored event back by
--   primary key (id, block_time, block_hash).
-- * trigger_version: triggers.version the event was evaluated under.
-- * states_before: the state rows the evaluation read, as they were before it
--   ({scope_key: state}).
-- * excluded: NULL while the event is in the trigger's effective history, else
--   'retracted' (a reorg replaced it) or 'revoked' (a later FeedbackRevoked
--   revoked this NewFeedback).
-- * trigger_definitions: each version of an enabled trigger the matcher loaded
--   (written by the matcher when it loads it), so a recomputation evaluates each
--   event under the definition it had then and applies the edits between. Removed
--   with the trigger.

-- migrate:up
CREATE SEQUENCE trigger_evaluations_seq AS BIGINT;
ALTER TABLE trigger_evaluations
    ADD COLUMN seq BIGINT,
    ADD COLUMN block_time TIMESTAMPTZ,
    ADD COLUMN trigger_version INTEGER,
    ADD COLUMN states_before JSONB,
    ADD COLUMN excluded TEXT;
-- NOT VALID: no scan of the table under this lock (every existing row is NULL);
-- new rows are checked all the same.
ALTER TABLE trigger_evaluations ADD CONSTRAINT trigger_evaluations_excluded_check
    CHECK (excluded IN ('retracted', 'revoked')) NOT VALID;
ALTER TABLE trigger_evaluations ALTER COLUMN seq SET DEFAULT nextval('trigger_evaluations_seq');
ALTER SEQUENCE trigger_evaluations_seq OWNED BY trigger_evaluations.seq;
CREATE INDEX idx_trigger_evaluations_trigger_seq ON trigger_evaluations (trigger_id, seq);
GRANT USAGE ON SEQUENCE trigger_evaluations_seq TO erc8004_matcher;

CREATE TABLE trigger_definitions (
    trigger_id TEXT NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    definition JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (trigger_id, version)
);
GRANT SELECT, INSERT, DELETE ON trigger_definitions TO erc8004_matcher;

-- migrate:down
DROP TABLE IF EXISTS trigger_definitions;
DROP INDEX IF EXISTS idx_trigger_evaluations_trigger_seq;
ALTER TABLE trigger_evaluations
    DROP CONSTRAINT IF EXISTS trigger_evaluations_excluded_check,
    DROP COLUMN IF EXISTS excluded,
    DROP COLUMN IF EXISTS states_before,
    DROP COLUMN IF EXISTS trigger_version,
    DROP COLUMN IF EXISTS block_time,
    DROP COLUMN IF EXISTS seq;
DROP SEQUENCE IF EXISTS trigger_evaluations_seq;
