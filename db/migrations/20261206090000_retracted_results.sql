-- Engine exactness (docs/semantics.md):
-- * a firing whose event version a reorg replaced before its action ran is recorded
--   with the terminal status 'retracted' instead of being delivered. The new check is
--   added NOT VALID (a short lock, no scan of action_results) and validated by the
--   next migration, which scans without blocking writes;
-- * a trigger with a cooldown and no stateful condition keeps state (the time of its
--   last firing), so it is stateful: rows stored before said otherwise;
-- * events.created_at and reorgs.created_at take the clock at the row's insert, not
--   at the transaction's start. Ingest inserts both only after taking the chain's
--   advisory lock (shared to store, exclusive to record a reorg), so their order is
--   the lock order: "an event stored before the reorg" (shared/sql.py CANONICAL, the
--   dispatcher's retracted check) can no longer be misjudged for a store that began
--   before a reorg but waited for it.

-- migrate:up
ALTER TABLE action_results DROP CONSTRAINT action_results_status_check;
ALTER TABLE action_results ADD CONSTRAINT action_results_status_check
    CHECK (status IN ('success', 'failed', 'retrying', 'dead', 'retracted')) NOT VALID;
UPDATE triggers SET is_stateful = true
WHERE is_stateful IS NOT TRUE AND coalesce(cooldown_seconds, 0) > 0;
ALTER TABLE events ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE reorgs ALTER COLUMN created_at SET DEFAULT clock_timestamp();

-- migrate:down
ALTER TABLE reorgs ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE events ALTER COLUMN created_at SET DEFAULT now();
-- the audit rows stay, as failed attempts that say why
UPDATE action_results SET status = 'failed' WHERE status = 'retracted';
ALTER TABLE action_results DROP CONSTRAINT action_results_status_check;
ALTER TABLE action_results ADD CONSTRAINT action_results_status_check
    CHECK (status IN ('success', 'failed', 'retrying', 'dead'));
