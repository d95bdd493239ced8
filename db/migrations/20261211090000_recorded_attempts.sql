-- The dispatcher asks, before each batch of jobs, which of them already have an
-- attempt recorded (a redelivery after a crash, a guard copy). Asked as a plain
-- query, PostgreSQL read the whole of action_results whenever the table had no
-- statistics yet (a fresh install, the first minute of a large backlog before
-- autovacuum analyzed it): 31 ms per batch at 20,000 rows and growing with the
-- table, halving the dispatcher's throughput. recorded_attempts() finds the rows
-- by index whatever the statistics say.
-- idx_action_results_job_id is dropped: action_results_attempt_once starts with
-- job_id and serves every lookup by job id, and one index fewer is maintained
-- for every attempt recorded.

-- Dropping the index takes a short exclusive lock on action_results, which waits
-- for reads already running (the hourly refresh of action_metrics_hourly, the
-- retention cleanup) while the dispatcher's writes queue behind it: the wait is
-- bounded, and the migration fails (and is run again) rather than stall them.

-- migrate:up
SET LOCAL lock_timeout = '5s';
CREATE FUNCTION recorded_attempts(job_ids TEXT[])
RETURNS TABLE (job_id TEXT, run_id TEXT, attempt INTEGER, status TEXT)
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$
    SELECT r.job_id, r.run_id, r.attempt, r.status
    FROM action_results r
    WHERE r.job_id = ANY(job_ids)
$$;
REVOKE EXECUTE ON FUNCTION recorded_attempts(TEXT[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recorded_attempts(TEXT[]) TO erc8004_dispatcher;
DROP INDEX idx_action_results_job_id;

-- migrate:down
-- Roll the dispatcher back first: the previous release does not call the function.
-- Building the index blocks writes to action_results while it reads the table.
CREATE INDEX idx_action_results_job_id ON action_results (job_id);
DROP FUNCTION IF EXISTS recorded_attempts(TEXT[]);
