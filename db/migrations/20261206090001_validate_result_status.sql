-- Validates the status check added NOT VALID by the previous migration: a scan of
-- action_results under a lock that lets the dispatcher keep inserting.

-- migrate:up
ALTER TABLE action_results VALIDATE CONSTRAINT action_results_status_check;

-- migrate:down
-- (nothing: the previous migration's down replaces the constraint)
SELECT 1;
