-- The matcher asks, for each FeedbackRevoked with a stateful candidate, which
-- triggers evaluated the NewFeedback it names, found by (agent_id, feedback_index).
-- idx_events_agent_id (agent_id alone) made that read every stored event of the
-- agent: for a busy agent its whole history, so the matcher's database work grew
-- with it (41 ms per batch in make bench after 600,000 events). An index on both
-- finds the one event; queries on agent_id alone use it (or
-- idx_events_agent_block_time) as they used the old one, which it replaces, so
-- ingest maintains no more indexes than before.
-- Building it reads every partition and blocks writes to events meanwhile: run the
-- migration while ingest is scaled to 0 or in a quiet hour.

-- migrate:up
CREATE INDEX idx_events_agent_feedback ON events (agent_id, feedback_index)
    WHERE agent_id IS NOT NULL;
DROP INDEX idx_events_agent_id;

-- migrate:down
CREATE INDEX idx_events_agent_id ON events (agent_id) WHERE agent_id IS NOT NULL;
DROP INDEX IF EXISTS idx_events_agent_feedback;
