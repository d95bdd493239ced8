-- What the API (issue 6) needs beyond the first grants, with tenant isolation kept
-- in the database (see db/README.md, "Row-level security"):
--
-- * trigger_evaluations: row-level security (the matcher keeps every row, the API
--   reads the rows of its user's triggers) and SELECT for erc8004_api: a redriven
--   job carries the explain block its firing recorded.
-- * reorgs: SELECT for erc8004_api (public chain data): history, backtests and the
--   owner of an agent read canonical events only, i.e. not those a later reorg
--   replaced.
-- * action_metrics_hourly gains user_id, and erc8004_api no longer reads it: it
--   reads action_metrics_hourly_mine, a security-barrier view of the rows of
--   app.current_user_id (a materialized view cannot have row-level security, and
--   the totals of every user are not one user's business).
-- * agent_mcp_token_nonces: the nonces of accepted MCP token signatures, so a
--   signed message is accepted once (replay protection beside its expiry).

-- migrate:up

ALTER TABLE trigger_evaluations ENABLE ROW LEVEL SECURITY;
CREATE POLICY trigger_evaluations_matcher_all ON trigger_evaluations
    FOR ALL TO erc8004_matcher USING (true) WITH CHECK (true);
CREATE POLICY trigger_evaluations_user_isolation ON trigger_evaluations
    FOR SELECT TO erc8004_api
    USING (EXISTS (SELECT 1 FROM triggers t
                   WHERE t.id = trigger_evaluations.trigger_id
                     AND t.user_id = current_app_user_id()));
GRANT SELECT ON trigger_evaluations TO erc8004_api;

GRANT SELECT ON reorgs TO erc8004_api;

DROP MATERIALIZED VIEW action_metrics_hourly;
CREATE MATERIALIZED VIEW action_metrics_hourly AS
SELECT
    date_trunc('hour', executed_at, 'UTC') AS hour,
    user_id,
    action_type,
    COUNT(*) AS total_executions,
    SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) AS success_count,
    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failure_count,
    AVG(duration_ms) AS avg_duration_ms,
    PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM action_results
GROUP BY 1, user_id, action_type;

-- NULLS NOT DISTINCT: rows without executed_at or user_id still make one key each,
-- as REFRESH ... CONCURRENTLY requires.
CREATE UNIQUE INDEX idx_action_metrics_hourly_key
    ON action_metrics_hourly(hour, user_id, action_type) NULLS NOT DISTINCT;

CREATE VIEW action_metrics_hourly_mine WITH (security_barrier) AS
SELECT hour, action_type, total_executions, success_count, failure_count,
       avg_duration_ms, p95_duration_ms
FROM action_metrics_hourly
WHERE user_id = current_app_user_id();

GRANT SELECT ON action_metrics_hourly_mine TO erc8004_api;

CREATE TABLE agent_mcp_token_nonces (
    chain_id INTEGER NOT NULL,
    agent_id BIGINT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (chain_id, agent_id, nonce)
);

CREATE INDEX idx_agent_mcp_token_nonces_expires_at ON agent_mcp_token_nonces(expires_at);

GRANT SELECT, INSERT, DELETE ON agent_mcp_token_nonces TO erc8004_api;

-- migrate:down
REVOKE SELECT, INSERT, DELETE ON agent_mcp_token_nonces FROM erc8004_api;
DROP TABLE IF EXISTS agent_mcp_token_nonces;

DROP VIEW IF EXISTS action_metrics_hourly_mine;
DROP MATERIALIZED VIEW IF EXISTS action_metrics_hourly;
CREATE MATERIALIZED VIEW action_metrics_hourly AS
SELECT
    date_trunc('hour', executed_at, 'UTC') AS hour,
    action_type,
    COUNT(*) AS total_executions,
    SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) AS success_count,
    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failure_count,
    AVG(duration_ms) AS avg_duration_ms,
    PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_duration_ms
FROM action_results
GROUP BY 1, action_type;
CREATE UNIQUE INDEX idx_action_metrics_hourly_key
    ON action_metrics_hourly(hour, action_type);
GRANT SELECT ON action_metrics_hourly TO erc8004_api;

REVOKE SELECT ON reorgs FROM erc8004_api;

REVOKE SELECT ON trigger_evaluations FROM erc8004_api;
DROP POLICY IF EXISTS trigger_evaluations_user_isolation ON trigger_evaluations;
DROP POLICY IF EXISTS trigger_evaluations_matcher_all ON trigger_evaluations;
ALTER TABLE trigger_evaluations DISABLE ROW LEVEL SECURITY;
