-- A redrive through the API (POST /v1/triggers/{id}/results/{job_id}/retry) is
-- recorded here, one row per job: a second redrive of the same job within
-- REDRIVE_INTERVAL is refused (429), so a destination is not hammered by repeated
-- clicks while the first run is still on its way. The user's own rows only (RLS).

-- migrate:up
CREATE TABLE job_redrives (
    job_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE job_redrives ENABLE ROW LEVEL SECURITY;
CREATE POLICY job_redrives_user_isolation ON job_redrives
    FOR ALL TO erc8004_api
    USING (user_id = current_app_user_id())
    WITH CHECK (user_id = current_app_user_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON job_redrives TO erc8004_api;

-- migrate:down
DROP TABLE IF EXISTS job_redrives;
