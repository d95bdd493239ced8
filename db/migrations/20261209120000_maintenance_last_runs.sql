-- maintenance_last_runs(): each task's last successful run as maintenance_runs
-- records it (the claim commits with the task's work), for the ingest's
-- erc8004_ingest_maintenance_last_success_timestamp_seconds gauges. A replica
-- that starts reads it at once, so its gauges do not read 0 until it runs each
-- task itself (another replica's, or its own previous process', claim makes it
-- skip them for up to an interval). SECURITY DEFINER like maintenance_claim():
-- the table itself has no grants.

-- migrate:up
CREATE FUNCTION maintenance_last_runs()
RETURNS TABLE (task TEXT, last_run_at TIMESTAMPTZ)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$ SELECT r.task, r.last_run_at FROM maintenance_runs r $$;

REVOKE EXECUTE ON FUNCTION maintenance_last_runs() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION maintenance_last_runs() TO erc8004_ingest;

-- migrate:down
DROP FUNCTION IF EXISTS maintenance_last_runs();
