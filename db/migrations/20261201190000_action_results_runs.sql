-- One action_results row per attempt of a run of a job: run_id is NULL for the
-- matcher's firing and a fresh id for each redrive through the API. The unique
-- index makes recording an attempt idempotent (the dispatcher inserts with
-- ON CONFLICT DO NOTHING): a redelivered or guard-copied attempt that ran twice
-- (at least once toward the outside world) is still recorded once.

-- migrate:up
ALTER TABLE action_results ADD COLUMN run_id TEXT;
CREATE UNIQUE INDEX action_results_attempt_once
    ON action_results (job_id, (coalesce(run_id, '')), attempt);

-- migrate:down
DROP INDEX IF EXISTS action_results_attempt_once;
ALTER TABLE action_results DROP COLUMN IF EXISTS run_id;
