-- Engine exactness (docs/semantics.md):
-- * a firing whose event version a reorg replaced before its action ran is recorded
--   with the terminal status 'retracted' instead of being delivered;
-- * a trigger with a cooldown and no stateful condition keeps state (the time of its
--   last firing), so it is stateful: rows stored before said otherwise.

-- migrate:up
ALTER TABLE action_results DROP CONSTRAINT action_results_status_check;
ALTER TABLE action_results ADD CONSTRAINT action_results_status_check
    CHECK (status IN ('success', 'failed', 'retrying', 'dead', 'retracted'));
UPDATE triggers SET is_stateful = true
WHERE is_stateful IS NOT TRUE AND coalesce(cooldown_seconds, 0) > 0;

-- migrate:down
DELETE FROM action_results WHERE status = 'retracted';
ALTER TABLE action_results DROP CONSTRAINT action_results_status_check;
ALTER TABLE action_results ADD CONSTRAINT action_results_status_check
    CHECK (status IN ('success', 'failed', 'retrying', 'dead'));
